"""systemd ``sd_notify`` that never blocks the event loop.

A notify socket is a Unix datagram socket; when its reader stops reading, the queue
fills (``net.unix.max_dgram_qlen`` is 10 on many hosts) and a *blocking* send waits
forever. A relay that pings the watchdog with a blocking send then freezes: HTTP
stops answering and SIGTERM is never handled (the flake of
``test_cli_serve_notify_accounts_and_sigterm``). Here every send is non-blocking and
a datagram with no room is dropped: the next watchdog ping follows shortly, and a
systemd that really stopped reading restarts the unit either way.

>>> notifier_from_env({}) is None
True
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

__all__ = ["Notifier", "notifier_from_env"]


class Notifier:
    """A connected, non-blocking datagram socket to ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str) -> None:
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect(address)
        self.dropped = 0

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``); False when it was dropped (never blocks)."""
        try:
            self._sock.send(state.encode("ascii"))
        except (BlockingIOError, OSError):
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def notifier_from_env(env: Mapping[str, str]) -> Notifier | None:
    """A notifier for ``NOTIFY_SOCKET`` in ``env``, or None when unset or unreachable."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    try:
        return Notifier(address)
    except OSError:
        return None

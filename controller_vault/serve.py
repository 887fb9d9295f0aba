"""Running the vault service: one per state directory, the app on its port, systemd
readiness and watchdog.

With ``$NOTIFY_SOCKET`` set (systemd ``Type=notify``), READY=1 is sent once the port is
listening and WATCHDOG=1 every ``watchdog_interval_s``; SIGTERM stops cleanly, writing a
final audit checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pathlib
import signal

import sdnotify
from aiohttp import web

from .access_log import app_runner
from .app import create_app
from .config import VaultConfig
from .errors import AlreadyServing, ConfigError

__all__ = ["SERVE_LOCK", "hold_serve_lock", "serve"]

SERVE_LOCK = "serve.lock"

log = logging.getLogger("controller_vault")


async def _watchdog(notifier: sdnotify.SystemdNotifier, interval: float) -> None:
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def hold_serve_lock(state_dir: pathlib.Path) -> int:
    """Lock ``state_dir`` for this serve; the open descriptor, held until it is closed.

    Stops a second ``serve`` on the same vault (a stray manual start beside the
    systemd unit, a unit copied under another name): both would dial the relay and
    both would send every transcript email, since each mail worker's lock is only
    in-process. An advisory flock, not a pid file: the kernel drops it when the process
    dies, so a crash (kill -9, OOM) never leaves a stale lock to clear by hand. The
    staff commands (export, erase, audit, backup ...) do not take it: they run beside
    serve by design. ``restore`` holds it while it replaces the stores.
    """
    path = state_dir / SERVE_LOCK
    try:
        # O_NOFOLLOW: a symlink planted at serve.lock cannot make us create or lock
        # another file; 0600 like every file of the state directory.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise ConfigError(f"{state_dir} does not exist; run `controller-vault init` first, "
                          "or point state_dir at the vault's directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyServing(f"another controller-vault serve or restore is running on "
                             f"{state_dir} ({SERVE_LOCK} is held)") from None
    return fd


async def serve(config: VaultConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    # Before anything opens the stores, the relay link or the mail worker.
    lock = hold_serve_lock(config.state_path)
    try:
        await _serve_locked(config)
    finally:
        os.close(lock)


async def _serve_locked(config: VaultConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Not aiohttp's default access log: it writes staff IPs, User-Agents and the full
    # URL with its free-text ?purpose= to journald (see access_log).
    runner = app_runner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    log.info("vault serving on %s:%s", config.host, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = None
    if os.environ.get("NOTIFY_SOCKET"):
        notifier = sdnotify.SystemdNotifier()
        if notifier.socket is not None:
            # Never block the event loop on a full notify queue (max_dgram_qlen is often
            # 10): a blocking send there froze the relay's loop, HTTP and SIGTERM alike.
            # sdnotify swallows the BlockingIOError, so a ping with no room is dropped.
            notifier.socket.setblocking(False)
        notifier.notify("READY=1")
        watchdog = asyncio.create_task(_watchdog(notifier, config.watchdog_interval_s))
    try:
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        await runner.cleanup()

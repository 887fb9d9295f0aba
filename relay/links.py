"""Which vault link serves which account, and outbox wake-ups (memory only, no I/O).

One link per account: a newer authenticated link supersedes the older one, so two
vault processes (or a stale connection after a network split) never drain the same
outbox at once. The store hands every committed outbox entry to
:meth:`LinkRegistry.offer` in commit order; the account's live link queues it in memory
and is woken, so it streams the entry without polling or reading it back.

>>> reg = LinkRegistry()
>>> reg.claim("clinic", "first") is None
True
>>> reg.claim("clinic", "second")
'first'
>>> reg.release("clinic", "first"), reg.current("clinic")
(False, 'second')
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .store import OutboxEntry

__all__ = ["LinkRegistry"]


class LinkRegistry:
    """Live vault links by account, and one wake-up event per account."""

    #: All links' memory queues together (bytes of envelopes): past it, the link being
    #: offered to drops its queue and reads the outbox instead. Each link also has its
    #: own bound (vault_link); this one keeps many slow vaults (a restart: every link
    #: catching up at once) from adding up to gigabytes of relay memory.
    QUEUED_BYTES_MAX = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._links: dict[str, Any] = {}
        self._events: dict[str, asyncio.Event] = {}
        self.queued_bytes = 0  # kept by the links as they queue and send

    def claim(self, account: str, link: Any) -> Any:
        """Make ``link`` the account's link; return the one it supersedes (or None)."""
        previous = self._links.get(account)
        self._links[account] = link
        return previous

    def release(self, account: str, link: Any) -> bool:
        """Forget ``link`` if it is still the account's link."""
        if self._links.get(account) is link:
            del self._links[account]
            return True
        return False

    def current(self, account: str) -> Any:
        """The account's live link, or None."""
        return self._links.get(account)

    def all(self) -> list[Any]:
        """Every live link."""
        return list(self._links.values())

    def event(self, account: str) -> asyncio.Event:
        """The account's wake-up event (created on first use)."""
        ev = self._events.get(account)
        if ev is None:
            ev = self._events[account] = asyncio.Event()
        return ev

    def offer(self, entries: Sequence[OutboxEntry]) -> None:
        """Just-committed entries (commit order): queue each on its account's live link."""
        by_account: dict[str, list[OutboxEntry]] = {}
        for e in entries:
            by_account.setdefault(e.account, []).append(e)
        for account, mine in by_account.items():
            link = self._links.get(account)
            if link is not None:
                link.offer(mine)
            self.wake(account)

    def wake(self, account: str) -> None:
        """The account's outbox grew (after commit): wake its link's sender."""
        ev = self._events.get(account)
        if ev is not None:
            ev.set()

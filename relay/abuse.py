"""Abuse limits held in memory only (never written anywhere): per-address connection rate.

The address is the only personal value the relay keeps, and only here, only while it
matters: a sliding one-minute window, pruned on every call, so an address is
forgotten a minute after its last connection. Pure: the caller passes ``now``.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ConnectionRateLimiter"]


class ConnectionRateLimiter:
    """At most ``per_minute`` connections per address in any 60-second window."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}

    def allow(self, address: str, now: float) -> bool:
        """Record a connection attempt; False when the address is over its rate."""
        self._prune(now)
        window = self._seen.setdefault(address, deque())
        if len(window) >= self.per_minute:
            return False
        window.append(now)
        return True

    def _prune(self, now: float) -> None:
        for address in list(self._seen):
            window = self._seen[address]
            while window and now - window[0] >= 60:
                window.popleft()
            if not window:
                del self._seen[address]

    def __len__(self) -> int:
        return len(self._seen)

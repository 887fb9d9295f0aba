"""A party's resume buffer (delivery log), sans-I/O: bounded in frames and in bytes.

>>> log = PartyLog(limit=2, max_bytes=10)
>>> log.add({"type": "queued"}), log.has_room(11)
(1, False)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PartyLog"]


@dataclass
class PartyLog:
    """One party's delivery log: numbered frames kept for resume, bounded in frames and bytes."""

    limit: int
    max_bytes: int = 2 * 1024 * 1024
    next_dseq: int = 1
    size: int = 0
    items: deque[tuple[int, dict[str, Any] | bytes, int]] = field(default_factory=deque)

    def has_room(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes fits without evicting anything."""
        return len(self.items) < self.limit and self.size + size <= self.max_bytes

    def add(self, payload: dict[str, Any] | bytes, size: int = 0) -> int:
        """Append a frame with the next ``dseq``; evict the oldest past either bound."""
        dseq, self.next_dseq = self.next_dseq, self.next_dseq + 1
        self.items.append((dseq, payload, size))
        self.size += size
        # Only frames already sent to a connected party are ever evicted here: frames for
        # an absent party are refused by Router.check_room before they are added.
        while len(self.items) > self.limit or (self.size > self.max_bytes
                                               and len(self.items) > 1):
            self.size -= self.items.popleft()[2]
        return dseq

    def after(self, last: int) -> list[tuple[int, dict[str, Any] | bytes]]:
        """Every kept frame after ``last``, in order (what a resuming party gets)."""
        return [(d, p) for d, p, _ in self.items if d > last]

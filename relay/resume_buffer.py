"""A party's resume buffer (delivery log), sans-I/O: bounded in frames and in bytes.

>>> log = PartyLog(limit=2, max_bytes=10)
>>> log.add({"type": "queued"}), log.has_room(11)
(1, False)
"""

from __future__ import annotations

from typing import Any

__all__ = ["PartyLog"]

_Item = tuple[int, dict[str, Any] | bytes, int]

#: Evicted slots at the head are dropped from the list once there are at least this many
#: and they are at least half of it: amortised O(1) eviction without a deque.
_COMPACT_AT = 32


class PartyLog:
    """One party's delivery log: numbered frames kept for resume, bounded in frames and bytes.

    Every live engagement has two of these, most of them (idle visitors, queued
    engagements) holding a frame or none, so the log is small when it is: slots, and a
    plain list created at the first frame instead of a deque (whose first block alone
    is 624 bytes). Eviction moves a head index and compacts the list now and then.
    """

    __slots__ = ("_head", "_items", "limit", "max_bytes", "next_dseq", "size")

    def __init__(self, limit: int, max_bytes: int = 2 * 1024 * 1024) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.next_dseq = 1
        self.size = 0
        self._items: list[_Item | None] | None = None
        self._head = 0  # _items[:_head] were evicted (None)

    def __len__(self) -> int:
        return len(self._items) - self._head if self._items else 0

    def has_room(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes fits without evicting anything."""
        return len(self) < self.limit and self.size + size <= self.max_bytes

    def add(self, payload: dict[str, Any] | bytes, size: int = 0) -> int:
        """Append a frame with the next ``dseq``; evict the oldest past either bound."""
        dseq, self.next_dseq = self.next_dseq, self.next_dseq + 1
        if self._items is None:
            self._items = []
        items = self._items
        items.append((dseq, payload, size))
        self.size += size
        # Only frames already sent to a connected party are ever evicted here: frames for
        # an absent party are refused by Router.check_room before they are added.
        while len(items) - self._head > self.limit or (self.size > self.max_bytes
                                                       and len(items) - self._head > 1):
            evicted = items[self._head]
            assert evicted is not None
            self.size -= evicted[2]
            items[self._head] = None  # the payload is freed now, not at the next compaction
            self._head += 1
        if self._head >= _COMPACT_AT and 2 * self._head >= len(items):
            del items[:self._head]
            self._head = 0
        return dseq

    def after(self, last: int) -> list[tuple[int, dict[str, Any] | bytes]]:
        """Every kept frame after ``last``, in order (what a resuming party gets)."""
        items = self._items
        if not items or self._head >= len(items):
            return []
        first = items[self._head]
        assert first is not None
        # Kept frames carry consecutive dseqs, so the first one after ``last`` is found
        # by arithmetic rather than by scanning the whole buffer.
        start = self._head + max(0, last - first[0] + 1)
        return [(item[0], item[1]) for item in items[start:] if item is not None]

"""The resume buffer keeps exactly what a deque-based reference would, in order."""

from __future__ import annotations

import random
from collections import deque

from relay.resume_buffer import PartyLog


def test_party_log_matches_a_reference_model_through_evictions_and_compactions() -> None:
    rng = random.Random(7)
    for limit, max_bytes in ((1, 10), (3, 1000), (50, 700), (200, 10_000)):
        log = PartyLog(limit, max_bytes)
        ref: deque[tuple[int, bytes, int]] = deque()
        ref_size = 0
        for dseq in range(1, 2000):
            size = rng.randrange(0, 120)
            payload = bytes([dseq % 251]) * size
            assert log.has_room(size) == (len(ref) < limit and ref_size + size <= max_bytes)
            assert log.add(payload, size) == dseq
            ref.append((dseq, payload, size))
            ref_size += size
            while len(ref) > limit or (ref_size > max_bytes and len(ref) > 1):
                ref_size -= ref.popleft()[2]
            assert log.size == ref_size and len(log) == len(ref)
            last = rng.choice([0, dseq, dseq - 1, dseq + 3, max(0, dseq - rng.randrange(60))])
            assert log.after(last) == [(d, p) for d, p, _ in ref if d > last]


def test_an_empty_party_log_holds_no_list_and_replays_nothing() -> None:
    log = PartyLog(5)
    assert log.after(0) == [] and len(log) == 0 and log.has_room(100)
    assert log._items is None  # the point: nothing allocated until a frame

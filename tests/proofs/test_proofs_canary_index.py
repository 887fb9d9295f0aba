"""The fast canary index reports exactly what the per-canary scan reports."""

from __future__ import annotations

import random

import pytest

from tests.support.canary import CanaryIndex, encodings, new_canary, scan_bytes


@pytest.mark.timeout(30)
def test_index_agrees_with_scan_bytes_on_every_encoding_and_offset() -> None:
    rng = random.Random(8)
    canaries = [new_canary(f"f{i % 7}") for i in range(60)]
    canaries += [f"2001:db8:ca7a:{i:x}:{rng.getrandbits(16):x}:1:2:3" for i in range(20)]
    planted = rng.sample(canaries, 30)
    blob = bytearray(rng.randbytes(2000))
    for canary in planted:
        name, patterns = rng.choice(sorted(encodings(canary).items()))
        # Plant the full encoding at a random alignment, as a leak would write it.
        if name == "base64":
            import base64
            shift = rng.randrange(3)
            blob += base64.b64encode(rng.randbytes(shift) + canary.encode() + b"tail")
        else:
            blob += rng.choice(patterns)
        blob += rng.randbytes(rng.randrange(1, 50))
    data = bytes(blob)
    index = CanaryIndex(canaries)
    expected = {(h.canary, h.encoding) for h in scan_bytes("blob", data, canaries)}
    got = {(h.canary, h.encoding) for h in index.scan("blob", data)}
    assert got == expected
    assert {c for c, _ in got} >= set(planted)
    assert index.heads < 60  # shared prefixes keep the number of searches small

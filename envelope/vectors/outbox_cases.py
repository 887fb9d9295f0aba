"""The ``outbox-frame`` cases of ``v1.json``: the vault link's binary frames (envelope/link.py).

Kept apart from ``generate.py``, which calls :func:`outbox_frame_cases`. The frame
layer never parses the envelopes it carries, so the entries here are short opaque
byte strings; each invalid case breaks one rule of the OUTBOX BATCH layout, so it has
one reason to fail.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from envelope.limits import MAX_BATCH_ENTRIES, MAX_ENVELOPE_BYTES
from envelope.link import encode_outbox_batches, encode_outbox_frame

__all__ = ["outbox_frame_cases"]

_HEAD, _ENTRY = struct.Struct(">BH"), struct.Struct(">QI")


def _opaque(label: str, n: int) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=n, person=b"cr-vectors-v1").digest()


def _raw(tag: int, count: int, entries: list[tuple[int, int, bytes]]) -> bytes:
    """A batch laid out by hand: (seq, stated length, bytes) per entry, no checks."""
    return _HEAD.pack(tag, count) + b"".join(_ENTRY.pack(s, n) + e for s, n, e in entries)


def outbox_frame_cases() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Valid and invalid ``outbox-frame`` cases (decode_outbox_frame, decode_outbox_batch)."""
    a, b, c = _opaque("outbox/a", 40), _opaque("outbox/b", 17), _opaque("outbox/c", 64)
    entries = [(41, a), (42, b), (45, c)]
    batch = encode_outbox_batches(entries)[0]
    single = {"op": "decode_outbox_frame"}
    op = {"op": "decode_outbox_batch"}

    def valid(name: str, description: str, data: bytes, operation: dict[str, str],
              expect: list[tuple[int, bytes]]) -> dict[str, Any]:
        return {"name": name, "type": "outbox-frame", "description": description,
                "frame_hex": data.hex(), "operation": operation,
                "expect": {"entries": [[s, e.hex()] for s, e in expect]}}

    valid_cases = [
        valid("outbox-frame-single", "one entry: 8-byte seq then the envelope bytes",
              encode_outbox_frame(41, a), single, [(41, a)]),
        valid("outbox-batch-three", "three entries, seqs increasing with a gap",
              batch, op, entries),
        valid("outbox-batch-one-largest-seq", "one entry, seq 2**64-1",
              encode_outbox_batches([(2**64 - 1, b)])[0], op, [(2**64 - 1, b)]),
    ]
    bad: list[tuple[str, str, bytes]] = [
        ("outbox-batch-empty", "no bytes at all", b""),
        ("outbox-batch-tag-only", "the tag without a count", batch[:1]),
        ("outbox-batch-wrong-tag", "a single outbox frame given to the batch decoder",
         encode_outbox_frame(41, a)),
        ("outbox-batch-zero-count", "count 0, nothing after it", _raw(0xB1, 0, [])),
        ("outbox-batch-count-over-bound", f"count {MAX_BATCH_ENTRIES + 1} (one entry follows)",
         _raw(0xB1, MAX_BATCH_ENTRIES + 1, [(1, len(a), a)])),
        ("outbox-batch-missing-entry", "count 3, two entries", batch[:_HEAD.size] + b"".join(
            _ENTRY.pack(s, len(e)) + e for s, e in entries[:2])),
        ("outbox-batch-truncated-entry-head", "the last entry's seq and length cut short",
         _raw(0xB1, 2, [(41, len(a), a)]) + _ENTRY.pack(42, len(b))[:7]),
        ("outbox-batch-truncated-envelope", "the last envelope one byte short", batch[:-1]),
        ("outbox-batch-zero-length", "an entry of length 0", _raw(0xB1, 1, [(41, 0, b"")])),
        ("outbox-batch-length-over-bound",
         f"an entry stating length {MAX_ENVELOPE_BYTES + 1} (MAX_ENVELOPE_BYTES + 1)",
         _raw(0xB1, 1, [(41, MAX_ENVELOPE_BYTES + 1, a)])),
        ("outbox-batch-repeated-seq", "the second entry repeats the first's seq",
         _raw(0xB1, 2, [(41, len(a), a), (41, len(b), b)])),
        ("outbox-batch-decreasing-seq", "the second entry's seq is lower",
         _raw(0xB1, 2, [(42, len(a), a), (41, len(b), b)])),
        ("outbox-batch-trailing-byte", "one byte after the last entry", batch + b"\x00"),
    ]
    invalid_cases = [{"name": n, "type": "outbox-frame", "description": d,
                      "frame_hex": data.hex(), "operation": op, "error": "envelope.malformed"}
                     for n, d, data in bad]
    invalid_cases.append({
        "name": "outbox-frame-seq-only", "type": "outbox-frame",
        "description": "a single outbox frame with a seq and no envelope",
        "frame_hex": encode_outbox_frame(41, b"").hex(), "operation": single,
        "error": "envelope.malformed"})
    return valid_cases, invalid_cases

"""Fuzz the relay's client frame decoder: only ProtocolError may escape."""

from __future__ import annotations

import json

from relay.protocol import Frame, ProtocolError, parse_text_frame

__all__ = ["seeds", "test_one_input"]


def seeds() -> list[bytes]:
    """Frames of every type from the protocol catalogue (first byte picks role/mode)."""
    frames = [
        {"type": "hello", "resume": "r" * 24, "last": 3, "visitor_id": "visitor01",
         "keys": {"enc": "A" * 43, "sig": "B" * 43}},
        {"type": "hello", "key_id": "k" * 22, "capacity": 5, "last": {"eng-00000001": 2}},
        {"type": "msg", "seq": 1, "text": "hi"},
        {"type": "msg", "engagement": "eng-00000001", "seq": 2, "text": "hello"},
        {"type": "typing", "on": True}, {"type": "end"}, {"type": "ping"},
        {"type": "accept", "engagement": "eng-00000001"},
        {"type": "transfer", "engagement": "eng-00000001", "to": "bob"},
    ]
    return [bytes([i % 4]) + json.dumps(f).encode() for i, f in enumerate(frames)]


def test_one_input(data: bytes) -> None:
    """One input: byte 0 picks role and mode, the rest is the frame text."""
    if not data:
        return
    role = "agent" if data[0] & 1 else "visitor"
    compliance = bool(data[0] & 2)
    text = data[1:].decode("utf-8", errors="surrogateescape" if data[0] & 4 else "replace")
    try:
        frame = parse_text_frame(text, role=role, compliance=compliance)
    except ProtocolError as exc:
        assert isinstance(exc.code, str) and exc.code
        return
    assert isinstance(frame, Frame)
    # A compliance account's frame can never carry free text.
    assert not (compliance and frame.text is not None)

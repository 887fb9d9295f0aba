"""The vault link's binary frames and feature negotiation (envelope/link.py): batched
frames round-trip in order within their bounds, the decoder accepts only what the
encoder makes, and naming a feature in the auth frame leaves its signature alone."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeError,
    IdentityKey,
    MalformedError,
    decode_outbox_batch,
    decode_outbox_frame,
    encode_outbox_batches,
    encode_outbox_frame,
    link_auth_response,
    link_features,
    verify_link_auth,
)
from envelope.limits import MAX_BATCH_ENTRIES, MAX_BATCH_FRAME_BYTES, MAX_ENVELOPE_BYTES
from envelope.link import BATCH_FEATURE

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def outbox_runs(draw: st.DrawFn, max_entries: int = 40) -> list[tuple[int, bytes]]:
    """Entries as the relay sends them: seqs strictly increasing, gaps allowed."""
    envelopes = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=0,
                              max_size=max_entries))
    seq = draw(st.integers(0, 2**40))
    out = []
    for env in envelopes:
        out.append((seq, env))
        seq += draw(st.integers(1, 1000))
    return out


def _decode_all(frames: list[bytes]) -> list[tuple[int, bytes]]:
    return [entry for frame in frames for entry in decode_outbox_batch(frame)]


@SETTINGS
@given(outbox_runs())
def test_batches_round_trip_in_order(entries: list[tuple[int, bytes]]) -> None:
    frames = encode_outbox_batches(entries)
    assert _decode_all(frames) == entries
    assert len(frames) == (1 if entries else 0)  # small entries: one frame holds them all
    if entries:
        assert len(frames[0]) == 3 + sum(12 + len(e) for _, e in entries)


def test_frames_split_at_the_byte_bound_and_each_is_full() -> None:
    big = [(i + 1, bytes([i % 251]) * MAX_ENVELOPE_BYTES) for i in range(40)]
    frames = encode_outbox_batches(big)
    assert _decode_all(frames) == big
    assert all(len(f) <= MAX_BATCH_FRAME_BYTES for f in frames)
    per_frame = (MAX_BATCH_FRAME_BYTES - 3) // (12 + MAX_ENVELOPE_BYTES)
    assert [len(decode_outbox_batch(f)) for f in frames] == [per_frame, per_frame,
                                                              40 - 2 * per_frame]
    # A largest envelope always fits in a frame of its own.
    assert 3 + 12 + MAX_ENVELOPE_BYTES <= MAX_BATCH_FRAME_BYTES


def test_frames_split_at_the_entry_bound() -> None:
    many = [(i, b"e") for i in range(2 * MAX_BATCH_ENTRIES + 5)]
    frames = encode_outbox_batches(many)
    assert [len(decode_outbox_batch(f)) for f in frames] == [MAX_BATCH_ENTRIES,
                                                              MAX_BATCH_ENTRIES, 5]
    assert _decode_all(frames) == many


@pytest.mark.parametrize("entries", [
    [(1, b"")],                                  # empty envelope
    [(1, b"x" * (MAX_ENVELOPE_BYTES + 1))],      # oversized envelope
    [(2, b"a"), (2, b"b")],                      # repeated seq
    [(3, b"a"), (2, b"b")],                      # decreasing seq
    [(-1, b"a")],                                # not a uint64
    [(2**64, b"a")],
])
def test_encoder_refuses_what_the_decoder_would(entries: list[tuple[int, bytes]]) -> None:
    with pytest.raises(MalformedError):
        encode_outbox_batches(entries)


@SETTINGS
@given(outbox_runs(max_entries=6), st.integers(0, 10_000), st.binary(min_size=1, max_size=3))
def test_any_cut_or_addition_is_refused(entries: list[tuple[int, bytes]], cut: int,
                                        extra: bytes) -> None:
    if not entries:
        return
    frame = encode_outbox_batches(entries)[0]
    with pytest.raises(MalformedError):
        decode_outbox_batch(frame[:cut % len(frame)])
    with pytest.raises(MalformedError):
        decode_outbox_batch(frame + extra)


@settings(max_examples=400, deadline=None)
@given(outbox_runs(max_entries=5), st.data())
def test_an_accepted_frame_is_exactly_what_the_encoder_makes(
        entries: list[tuple[int, bytes]], data: st.DataObject) -> None:
    """Flip, cut or insert bytes anywhere: the decoder refuses the frame, or what it
    returns encodes back to the same bytes (no second reading of one frame)."""
    if not entries:
        return
    frame = bytearray(encode_outbox_batches(entries)[0])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frame) - 1))
        op = data.draw(st.integers(0, 2))
        if op == 0:
            frame[i] ^= data.draw(st.integers(1, 255))
        elif op == 1:
            del frame[i]
        else:
            frame[i:i] = data.draw(st.binary(min_size=1, max_size=12))
        if not frame:
            return
    try:
        decoded = decode_outbox_batch(bytes(frame))
    except MalformedError:
        return
    assert encode_outbox_batches(decoded) == [bytes(frame)]


def test_decoder_bounds() -> None:
    head = struct.Struct(">BH")
    with pytest.raises(MalformedError):
        decode_outbox_batch(b"\xb1" + b"\x00" * MAX_BATCH_FRAME_BYTES)  # one byte too many
    with pytest.raises(MalformedError):
        decode_outbox_batch(head.pack(0xB1, MAX_BATCH_ENTRIES + 1))
    # Exactly at the bounds is fine: 1024 entries, and a frame of exactly 1 MiB.
    assert len(decode_outbox_batch(encode_outbox_batches(
        [(i, b"e") for i in range(MAX_BATCH_ENTRIES)])[0])) == MAX_BATCH_ENTRIES
    n, left = divmod(MAX_BATCH_FRAME_BYTES - 3, 12 + MAX_ENVELOPE_BYTES)
    entries = [(i, b"a" * MAX_ENVELOPE_BYTES) for i in range(n)] + [(n, b"b" * (left - 12))]
    exact = encode_outbox_batches(entries)
    assert len(exact) == 1 and len(exact[0]) == MAX_BATCH_FRAME_BYTES
    assert decode_outbox_batch(exact[0]) == entries
    # One byte more and the last entry goes into a second frame.
    entries[-1] = (n, entries[-1][1] + b"b")
    assert [len(f) for f in encode_outbox_batches(entries)] == [
        MAX_BATCH_FRAME_BYTES - left, 3 + left + 1]


def test_the_two_frame_kinds_do_not_read_as_each_other() -> None:
    single = encode_outbox_frame(41, b"envelope")
    batch = encode_outbox_batches([(41, b"envelope")])[0]
    with pytest.raises(MalformedError):
        decode_outbox_batch(single)
    # A batch read as a single frame would give a seq of 0xB1... (far beyond any outbox),
    # so the vault decodes by what was negotiated, never by guessing.
    assert decode_outbox_frame(batch)[0] >> 56 == 0xB1


IDENTITY = IdentityKey.generate()


def test_features_ride_along_unsigned_and_old_frames_are_unchanged() -> None:
    nonce = b"n" * 32
    old = link_auth_response(IDENTITY, account="clinic", nonce=nonce, origin="https://r")
    new = link_auth_response(IDENTITY, account="clinic", nonce=nonce, origin="https://r",
                             features=[BATCH_FEATURE, BATCH_FEATURE])
    assert set(old) == {"type", "account", "identity_key", "sig"}  # what older vaults send
    assert new == dict(old, features=[BATCH_FEATURE])
    # A relay's verify_link_auth (old or new) accepts both: the field is not signed.
    for frame in (old, new):
        verify_link_auth(frame, IDENTITY.public_bytes, account="clinic", nonce=nonce,
                         origin="https://r")
    assert link_features(old) == frozenset()
    assert link_features(new) == {BATCH_FEATURE}
    assert link_features({"features": ["outbox-batch", "zstd-2"]}) == {"outbox-batch", "zstd-2"}


@pytest.mark.parametrize("value", [
    "outbox-batch", {"outbox-batch": 1}, [1], [None], ["Outbox-Batch"], ["a b"], [""],
    ["x" * 33], [f"f{i}" for i in range(9)], [["outbox-batch"]],
])
def test_malformed_features_are_refused(value: object) -> None:
    with pytest.raises(EnvelopeError) as info:
        link_features({"type": "auth", "features": value})
    assert info.value.code == "envelope.malformed"

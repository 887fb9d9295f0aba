"""The vault link protocol v1 (pure): frames, challenge-response and erasure notices.

The vault dials the relay (outbound only; nothing listens on the controller's
network) at ``GET /v1/vault/link`` and upgrades to a websocket::

    <- {"type":"challenge","v":1,"nonce":B64(32),"origin":RELAY_ORIGIN}
    -> {"type":"auth","account":ACCOUNT,"identity_key":B64(32),"sig":B64(64),
        "features":[FEATURE,...]}
           sig = Ed25519(identity, LINK_DOMAIN + canonical({"acct","nonce","origin"}))
           The vault signs only if "origin" is the origin it dialed, so a challenge
           relayed from another relay is useless (man-in-the-middle relay).
           "features" (optional; absent = none) names the link features the vault
           understands, today only "outbox-batch". It is not signed, and need not be:
           it only chooses how the relay frames what it sends, which the relay (hostile
           or not) controls anyway; every envelope is still checked on its own. Relays
           from before it ignore the field.
    <- {"type":"ready","backlog":N,"window":W,"features":[FEATURE,...]}
           "features": those the vault named that the relay uses on this link (absent =
           none, as from relays before it); never one the vault did not name
    <- binary  OUTBOX FRAME = 8-byte big-endian outbox sequence + envelope bytes
               at most W unacknowledged entries in flight, in outbox order
    <- binary  OUTBOX BATCH, instead of outbox frames once "outbox-batch" is in ready:
               0xB1 | uint16 count | count x (uint64 seq | uint32 length | envelope)
               big-endian; 1..MAX_BATCH_ENTRIES entries, each envelope 1..MAX_ENVELOPE_BYTES,
               seqs strictly increasing, MAX_BATCH_FRAME_BYTES in all, nothing after the
               last entry. The window counts entries, not frames.
    -> {"type":"ack","receipt":{"body","sig"}}          batched receipt (envelope.receipts)
    <- {"type":"acked","deleted":N,"backlog":M}           M: entries still queued (optional)
    -> {"type":"reject","seq":N,"code":CODE}              the vault refuses outbox entry N
           (tampered, forged, misaddressed: CODE is the vault's stable refusal code,
           pattern REJECT_CODE_PATTERN). The relay drops that entry's ciphertext, never
           retries it, and counts it on the engagement record and in a metric; without
           this a refused frame would sit in the window forever (a stalled link).
    <- {"type":"rejected","seq":N,"dropped":0|1}
    -> {"type":"erasure","notice":{"body","sig"}}       non-personal erasure evidence
    <- {"type":"erasure-recorded","engagements":N}
    -> {"type":"ping"}   <- {"type":"pong"}
    <- {"type":"error","code":CODE,"message":TEXT}      then a close

Close codes (reason = the stable code):

    1001  going-away            relay shutting down; reconnect with backoff
    4400  link.bad_frame        unparseable or unknown frame (or malformed features)
    4401  link.auth_failed      signature, key or account wrong
    4403  link.not_paired       the account has no paired vault
    4408  link.auth_timeout     no auth frame in time
    4409  link.superseded       a newer link for the account took over
    4422  link.bad_receipt      a receipt or reject that does not verify or parse

Erasure notice body (signed by the identity key)::

    {"t":"erasure","v":1,"acct":ACCOUNT,"engagements":[ENG,...],"at":UNIX,"rule":RULE}
    RULE in {"request","subject","retention"}

>>> from envelope.keys import IdentityKey
>>> ident = IdentityKey.generate()
>>> msg = link_auth_response(ident, account="clinic", nonce=b"n" * 32, origin="https://r")
>>> verify_link_auth(msg, ident.public_bytes, account="clinic", nonce=b"n" * 32,
...                  origin="https://r")
>>> frames = encode_outbox_batches([(7, b"env-7"), (8, b"env-8")])
>>> decode_outbox_batch(frames[0])
[(7, b'env-7'), (8, b'env-8')]
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._codec import b64d, b64e, canonical_json
from ._signed import open_signed, sign_body
from .errors import LinkAuthError, MalformedError
from .keys import IdentityKey, verify_key_from_bytes
from .limits import (
    ACCOUNT_PATTERN,
    ENGAGEMENT_PATTERN,
    MAX_BATCH_ENTRIES,
    MAX_BATCH_FRAME_BYTES,
    MAX_ENVELOPE_BYTES,
    MAX_RECEIPT_ITEMS,
)

__all__ = [
    "BATCH_FEATURE",
    "CLOSE_CODES",
    "ERASURE_RULES",
    "REJECT_CODE_PATTERN",
    "ErasureNotice",
    "decode_outbox_batch",
    "decode_outbox_frame",
    "encode_outbox_batches",
    "encode_outbox_frame",
    "link_auth_response",
    "link_features",
    "sign_erasure_notice",
    "verify_erasure_notice",
    "verify_link_auth",
]

_LINK_DOMAIN = b"compliance-relay/v1/link-auth\x00"
_ERASURE_DOMAIN = b"compliance-relay/v1/erasure\x00"
_SEQ = struct.Struct(">Q")
_BATCH_HEAD = struct.Struct(">BH")  # tag, entry count
_BATCH_ENTRY = struct.Struct(">QI")  # outbox seq, envelope length
# 0xB1 ("batch, format 1"). A single outbox frame starts with its seq's high byte,
# 0x00 for any real outbox, so one given to the batch decoder fails at its first byte;
# which decoder runs is decided by the negotiation, never guessed from the bytes.
_BATCH_TAG = 0xB1
#: The link feature a vault names to receive OUTBOX BATCH frames.
BATCH_FEATURE = "outbox-batch"
_FEATURE_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MAX_FEATURES = 8
ERASURE_RULES = frozenset({"request", "subject", "retention"})
CLOSE_CODES: dict[str, int] = {
    "going-away": 1001,
    "link.bad_frame": 4400,
    "link.auth_failed": 4401,
    "link.not_paired": 4403,
    "link.auth_timeout": 4408,
    "link.superseded": 4409,
    "link.bad_receipt": 4422,
}
#: What a ``reject`` frame's code may look like: a stable code, never free text.
REJECT_CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,47}")


def _challenge_bytes(account: str, nonce: bytes, origin: str) -> bytes:
    return _LINK_DOMAIN + canonical_json({"acct": account, "nonce": b64e(nonce),
                                          "origin": origin})


def link_auth_response(
    identity: IdentityKey, *, account: str, nonce: bytes, origin: str,
    features: Iterable[str] = (),
) -> dict[str, Any]:
    """The vault's ``auth`` frame answering a challenge (naming ``features`` if any)."""
    frame: dict[str, Any] = {
        "type": "auth", "account": account, "identity_key": b64e(identity.public_bytes),
        "sig": b64e(identity.sign(_challenge_bytes(account, nonce, origin)))}
    named = sorted(set(features))
    if named:
        frame["features"] = named
    return frame


def link_features(frame: Mapping[str, Any]) -> frozenset[str]:
    """The ``features`` an auth or ready frame names (absent: none); raise MalformedError.

    Names this library does not know are returned too (the caller intersects with
    what it supports), so a newer peer's extra feature does not break the link.
    """
    value = frame.get("features")
    if value is None:
        return frozenset()
    if not isinstance(value, list) or len(value) > _MAX_FEATURES or not all(
            isinstance(f, str) and _FEATURE_PATTERN.fullmatch(f) for f in value):
        raise MalformedError("bad link features")
    return frozenset(value)


def verify_link_auth(
    frame: object, paired_identity_key: bytes, *, account: str, nonce: bytes, origin: str,
) -> None:
    """Check an ``auth`` frame against the account's paired identity key; raise LinkAuthError."""
    try:
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise LinkAuthError("expected an auth frame")
        if frame.get("account") != account:
            raise LinkAuthError("auth is for another account")
        presented = b64d(frame.get("identity_key"), length=32)
        if presented != paired_identity_key:
            raise LinkAuthError("identity key is not the paired one")
        sig = b64d(frame.get("sig"), length=64)
        verify_key_from_bytes(presented).verify(_challenge_bytes(account, nonce, origin), sig)
    except LinkAuthError:
        raise
    except Exception as exc:  # nacl BadSignatureError, MalformedError, ...: one opaque answer
        raise LinkAuthError("link authentication failed") from exc


def encode_outbox_frame(outbox_seq: int, envelope: bytes) -> bytes:
    """A binary link frame: outbox sequence then the envelope bytes as received."""
    return _SEQ.pack(outbox_seq) + envelope


def decode_outbox_frame(data: bytes) -> tuple[int, bytes]:
    """Inverse of :func:`encode_outbox_frame` (the envelope is not parsed here)."""
    if not isinstance(data, bytes) or len(data) <= _SEQ.size:
        raise MalformedError("outbox frame truncated")
    if len(data) > _SEQ.size + MAX_ENVELOPE_BYTES:
        raise MalformedError("outbox frame too large")
    return _SEQ.unpack_from(data)[0], data[_SEQ.size:]


def encode_outbox_batches(entries: Iterable[tuple[int, bytes]]) -> list[bytes]:
    """OUTBOX BATCH frames carrying ``(seq, envelope)`` entries in order, each in bounds.

    A frame is closed when one more entry would pass MAX_BATCH_ENTRIES or
    MAX_BATCH_FRAME_BYTES; no entries, no frames. Raises MalformedError for an empty or
    oversized envelope or seqs that do not strictly increase (the decoder refuses them).
    """
    frames: list[bytes] = []
    parts: list[bytes] = []
    count, size, last = 0, _BATCH_HEAD.size, -1
    for seq, envelope in entries:
        if not 0 < len(envelope) <= MAX_ENVELOPE_BYTES or not last < seq < 1 << 64:
            raise MalformedError("outbox batch entry out of bounds")
        need = _BATCH_ENTRY.size + len(envelope)
        if count == MAX_BATCH_ENTRIES or size + need > MAX_BATCH_FRAME_BYTES:
            frames.append(_BATCH_HEAD.pack(_BATCH_TAG, count) + b"".join(parts))
            parts, count, size = [], 0, _BATCH_HEAD.size
        parts += (_BATCH_ENTRY.pack(seq, len(envelope)), envelope)
        count, size, last = count + 1, size + need, seq
    if count:
        frames.append(_BATCH_HEAD.pack(_BATCH_TAG, count) + b"".join(parts))
    return frames


def decode_outbox_batch(data: bytes) -> list[tuple[int, bytes]]:
    """Inverse of :func:`encode_outbox_batches` for one frame: ``[(seq, envelope), ...]``.

    Strict, so a hostile or broken relay cannot make the vault allocate or loop much:
    every length is checked against what is left before it is used, and the count
    against the bounds before any entry is read.
    """
    if not isinstance(data, bytes) or len(data) < _BATCH_HEAD.size:
        raise MalformedError("outbox batch truncated")
    if len(data) > MAX_BATCH_FRAME_BYTES:
        raise MalformedError("outbox batch too large")
    tag, count = _BATCH_HEAD.unpack_from(data)
    if tag != _BATCH_TAG:
        raise MalformedError("not an outbox batch")
    if not 0 < count <= MAX_BATCH_ENTRIES:
        raise MalformedError("outbox batch count out of bounds")
    out: list[tuple[int, bytes]] = []
    pos, last = _BATCH_HEAD.size, -1
    for _ in range(count):
        if len(data) - pos < _BATCH_ENTRY.size:
            raise MalformedError("outbox batch truncated")
        seq, length = _BATCH_ENTRY.unpack_from(data, pos)
        pos += _BATCH_ENTRY.size
        if not 0 < length <= MAX_ENVELOPE_BYTES:
            raise MalformedError("outbox batch entry length out of bounds")
        if length > len(data) - pos:
            raise MalformedError("outbox batch truncated")
        if seq <= last:
            # Strictly increasing, as the outbox is sent: a frame that repeats or
            # reorders entries comes from a broken or hostile relay and is refused
            # whole, never half ingested.
            raise MalformedError("outbox batch seqs not increasing")
        out.append((seq, data[pos:pos + length]))
        pos, last = pos + length, seq
    if pos != len(data):
        raise MalformedError("outbox batch has trailing bytes")
    return out


@dataclass(frozen=True)
class ErasureNotice:
    """Non-personal evidence that the controller erased engagements."""

    account: str
    engagements: tuple[str, ...]
    at: int
    rule: str


def sign_erasure_notice(
    identity: IdentityKey, *, account: str, engagements: list[str], at: int, rule: str,
) -> dict[str, str]:
    """Sign an erasure notice for the relay's engagement records."""
    if rule not in ERASURE_RULES:
        raise MalformedError("unknown erasure rule")
    return sign_body(identity, _ERASURE_DOMAIN, {"t": "erasure", "v": 1, "acct": account,
                                                 "engagements": engagements, "at": at,
                                                 "rule": rule})


def verify_erasure_notice(
    wire: object, identity_public_key: bytes, *, account: str,
) -> ErasureNotice:
    """Verify an erasure notice from the paired vault."""
    body: dict[str, Any] = open_signed(wire, identity_public_key, _ERASURE_DOMAIN,
                                       limit=100 * MAX_RECEIPT_ITEMS, error=MalformedError)
    engs = body.get("engagements")
    ok = (body.get("t") == "erasure" and body.get("v") == 1 and body.get("acct") == account
          and ACCOUNT_PATTERN.fullmatch(account) and isinstance(engs, list)
          and 0 < len(engs) <= MAX_RECEIPT_ITEMS
          and all(isinstance(e, str) and ENGAGEMENT_PATTERN.fullmatch(e) for e in engs)
          and type(body.get("at")) is int
          # isinstance first: an unhashable JSON value in a set lookup raises TypeError.
          and isinstance(body.get("rule"), str) and body.get("rule") in ERASURE_RULES)
    if not ok or not isinstance(engs, list):
        raise MalformedError("bad erasure notice")
    return ErasureNotice(account=account, engagements=tuple(engs), at=body["at"],
                         rule=body["rule"])



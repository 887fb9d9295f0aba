"""The vault link protocol v1 (pure): frames, challenge-response and erasure notices.

The vault dials the relay (outbound only; nothing listens on the controller's
network) at ``GET /v1/vault/link`` and upgrades to a websocket::

    <- {"type":"challenge","v":1,"nonce":B64(32),"origin":RELAY_ORIGIN}
    -> {"type":"auth","account":ACCOUNT,"identity_key":B64(32),"sig":B64(64)}
           sig = Ed25519(identity, LINK_DOMAIN + canonical({"acct","nonce","origin"}))
           The vault signs only if "origin" is the origin it dialed, so a challenge
           relayed from another relay is useless (man-in-the-middle relay).
    <- {"type":"ready","backlog":N,"window":W}
    <- binary  OUTBOX FRAME = 8-byte big-endian outbox sequence + envelope bytes
               at most W unacknowledged frames in flight, in outbox order
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
    4400  link.bad_frame        unparseable or unknown frame
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
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from ._codec import b64d, b64e, canonical_json
from ._signed import open_signed, sign_body
from .errors import LinkAuthError, MalformedError
from .keys import IdentityKey, verify_key_from_bytes
from .limits import ACCOUNT_PATTERN, ENGAGEMENT_PATTERN, MAX_ENVELOPE_BYTES, MAX_RECEIPT_ITEMS

__all__ = [
    "CLOSE_CODES",
    "ERASURE_RULES",
    "REJECT_CODE_PATTERN",
    "ErasureNotice",
    "decode_outbox_frame",
    "encode_outbox_frame",
    "link_auth_response",
    "sign_erasure_notice",
    "verify_erasure_notice",
    "verify_link_auth",
]

_LINK_DOMAIN = b"compliance-relay/v1/link-auth\x00"
_ERASURE_DOMAIN = b"compliance-relay/v1/erasure\x00"
_SEQ = struct.Struct(">Q")
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
) -> dict[str, str]:
    """The vault's ``auth`` frame answering a challenge."""
    return {"type": "auth", "account": account, "identity_key": b64e(identity.public_bytes),
            "sig": b64e(identity.sign(_challenge_bytes(account, nonce, origin)))}


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



"""Chat websocket protocol v1: the frame catalogue, and the parser of client frames.

Endpoints: ``GET /v1/chat/visitor/{account}`` (the ``Origin`` header must be one of
the account's origins) and ``GET /v1/chat/agent`` (``Authorization: Bearer
AGENT_TOKEN``). Text frames are JSON objects; binary frames are envelopes.

Visitor::

    -> {"type":"hello", "resume"?:TOKEN, "last"?:DSEQ, "visitor_id"?:ID,
        "keys"?:{"enc":B64(32),"sig":B64(32)}}      keys required in compliance mode
    <- {"type":"welcome","engagement":ENG,"resume":TOKEN,"mode":MODE,"account":ACCT,
        "vault_key_id":KID|null,"acked":SEQ,"agent":P|null,"key_id":KID|null}
    <- {"type":"queued","engagement":ENG,"dseq":D}
    <- {"type":"assigned","engagement":ENG,"agent":P,"key_id":KID|null,"dseq":D}
    -> {"type":"msg","seq":N,"text":TEXT}                  standard mode only
    -> binary ENVELOPE                                     compliance mode only
    <- {"type":"ack","engagement":ENG,"seq":N}            after the frame is durable
    <- {"type":"msg","engagement":ENG,"from":"agent","agent":P,"seq":N,"text":T,"dseq":D}
    <- binary DSEQ(8 bytes, big-endian) + ENVELOPE        (as envelope.encode_outbox_frame)
    -> {"type":"typing","on":BOOL}     <- {"type":"typing","engagement":ENG,"from":R,"on":B}
    -> {"type":"end"}                  <- {"type":"ended","engagement":ENG,"by":R,"dseq":D}
    -> {"type":"ping"}                 <- {"type":"pong"}

Agent (one socket, many engagements; "engagement" names which)::

    -> {"type":"hello","key_id"?:KID,"capacity"?:N,"last"?:{ENG:DSEQ}}
    <- {"type":"welcome","agent":P,"account":ACCT,"mode":MODE,"vault_key_id":KID|null,
        "engagements":[{"engagement":ENG,"acked":SEQ,"visitor_keys":{...}|null}]}
    <- {"type":"offer","engagement":ENG,"visitor_keys":{...}|null}
    <- {"type":"withdrawn","engagement":ENG}             someone else took it, or it ended
    -> {"type":"accept","engagement":ENG}
    <- {"type":"assigned","engagement":ENG,"visitor_keys":{...}|null,"dseq":D}
    -> {"type":"msg","engagement":ENG,"seq":N,"text":TEXT} standard mode only
    -> binary ENVELOPE (role "agent")                      compliance mode only
    <- {"type":"ack","engagement":ENG,"seq":N}
    -> {"type":"transfer","engagement":ENG,"to":AGENT}   <- {"type":"released",...,"dseq":D}
    -> {"type":"typing","engagement":ENG,"on":BOOL}
    -> {"type":"end","engagement":ENG}

    <- {"type":"superseded"}     a newer socket of the same party took over
    <- {"type":"error","code":CODE,"message":TEXT} then a close with reason CODE

Sequence numbers: each sender numbers its messages 1, 2, 3, ... per engagement (in
compliance mode the envelope header's ``seq`` per sender key). A resuming client drops
every frame up to ``acked`` and resends the rest; a number already used is refused.

In compliance mode no client frame has a field that can hold free text: every value
above is an enum, an integer, a boolean, or an id/key matching a fixed pattern.

Close codes (the reason is the stable code):

    1000  normal                  engagement ended
    1001  going-away              relay shutting down: reconnect and resume
    1011  internal.error          an unexpected fault on the relay (nothing echoed)
    4400  frame.malformed, frame.unknown_type, frame.bad_field, frame.not_binary
    4401  auth.bad_token
    4403  origin.forbidden, auth.forbidden, certificate.revoked (the agent's certificate
          was revoked by the account admin: its live sockets are closed)
    4404  account.not_found, engagement.unknown, resume.unknown, engagement.not_assigned
    4408  session.idle_timeout, hello.timeout
    4409  session.superseded, engagement.taken
    4410  mode.changed            the account's mode or vault key changed: re-key, reconnect
    4413  frame.too_large
    4422  compliance.plaintext_refused, seq.replayed, seq.out_of_order,
          envelope.* (malformed, wrong_account, missing_vault_recipient, ...),
          envelope.replayed (an envelope id already in the outbox, whatever its seq),
          sender.mismatch, transfer.unavailable, agent.at_capacity
    4429  rate.limited, account.busy, rate.engagements_per_address (one address holds
          max_engagements_per_address live engagements already)
    4503  engagement.buffer_full (the other party is away and its resume buffer holds
          resume_buffer_frames / resume_buffer_bytes: resend after it reconnects),
          outbox.full, store.unavailable, outbox.backpressure (the account's vault has not
          collected its outbox: it reached outbox_account_max_bytes or its oldest entry
          is older than outbox_max_age_seconds; new compliance engagements are refused
          until the vault catches up; nothing queued is ever dropped),
          vault.key_expired (the account's vault key statement has expired: no new
          compliance engagement until the controller publishes a new one)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from envelope.limits import AGENT_PATTERN, ENGAGEMENT_PATTERN, KEY_ID_PATTERN

__all__ = ["CLOSE_CODES", "Frame", "ProtocolError", "close_code_for", "parse_text_frame"]

CLOSE_CODES: dict[str, int] = {
    "normal": 1000, "going-away": 1001,
    "frame.malformed": 4400, "frame.unknown_type": 4400, "frame.bad_field": 4400,
    "frame.not_binary": 4400, "auth.bad_token": 4401, "origin.forbidden": 4403,
    "auth.forbidden": 4403, "account.not_found": 4404, "engagement.unknown": 4404,
    "resume.unknown": 4404, "engagement.not_assigned": 4404, "session.idle_timeout": 4408,
    "hello.timeout": 4408, "session.superseded": 4409, "engagement.taken": 4409,
    "mode.changed": 4410, "frame.too_large": 4413, "rate.limited": 4429,
    "account.busy": 4429, "outbox.full": 4503, "outbox.backpressure": 4503,
    "store.unavailable": 4503, "envelope.replayed": 4422, "internal.error": 1011,
    "vault.key_expired": 4503, "certificate.revoked": 4403,
    "engagement.buffer_full": 4503, "rate.engagements_per_address": 4429,
}
_MAX_TEXT = 16_384
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_B64_32 = re.compile(r"[A-Za-z0-9_-]{43}")
_TYPES = {"visitor": {"hello", "msg", "typing", "end", "ping"},
          "agent": {"hello", "msg", "typing", "end", "ping", "accept", "transfer"}}


def close_code_for(code: str) -> int:
    """The websocket close code for a stable error code (envelope.* and the like: 4422)."""
    return CLOSE_CODES.get(code, 4422)


class ProtocolError(Exception):
    """A client frame refused by the parser; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Frame:
    """A parsed client text frame; fields a type does not use are None."""

    type: str
    engagement: str | None = None
    seq: int | None = None
    text: str | None = None
    on: bool | None = None
    to: str | None = None
    resume: str | None = None
    last: int | None = None
    last_by_engagement: dict[str, int] | None = None
    visitor_id: str | None = None
    keys: dict[str, str] | None = None
    key_id: str | None = None
    capacity: int | None = None


def _bad(message: str) -> ProtocolError:
    return ProtocolError("frame.bad_field", message)


def _int(obj: dict[str, Any], name: str, *, lo: int = 0, hi: int = 2**31 - 1) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(f"{name} must be an integer in range")
    return v


def _match(obj: dict[str, Any], name: str, rx: re.Pattern[str]) -> str | None:
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or not rx.fullmatch(v):
        raise _bad(f"{name} out of pattern")
    return v


def parse_text_frame(data: str, *, role: str, compliance: bool) -> Frame:
    """Parse one client text frame for ``role``; raise ProtocolError with a stable code."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("frame.malformed", "frame is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("frame.malformed", "frame must be an object with a type")
    ftype = obj["type"]
    if ftype not in _TYPES[role]:
        raise ProtocolError("frame.unknown_type", "unknown frame type")
    if ftype == "msg" and compliance:
        # Compliance accounts take envelopes only: a text field cannot reach the relay.
        raise ProtocolError("compliance.plaintext_refused",
                            "this account accepts only envelopes (binary frames)")
    if compliance and set(obj) - {"type", "engagement", "seq", "on", "to", "resume", "last",
                                  "visitor_id", "keys", "key_id", "capacity"}:
        raise ProtocolError("compliance.plaintext_refused", "unknown field in frame")
    engagement = _match(obj, "engagement", ENGAGEMENT_PATTERN)
    if role == "agent" and ftype in ("msg", "typing", "end", "accept", "transfer") \
            and engagement is None:
        raise _bad("engagement is required")
    text = obj.get("text")
    if ftype == "msg":
        if not isinstance(text, str) or not 0 < len(text) <= _MAX_TEXT:
            raise _bad("text must be a non-empty string")
        if _int(obj, "seq", lo=1) is None:
            raise _bad("seq is required")
    on = obj.get("on")
    if ftype == "typing" and not isinstance(on, bool):
        raise _bad("on must be a boolean")
    keys = obj.get("keys")
    if keys is not None and (not isinstance(keys, dict) or set(keys) != {"enc", "sig"}
                             or not all(isinstance(v, str) and _B64_32.fullmatch(v)
                                        for v in keys.values())):
        raise _bad("keys must be {enc, sig} as base64url")
    last = obj.get("last")
    last_by: dict[str, int] | None = None
    if isinstance(last, dict):
        if role != "agent" or len(last) > 1000 or not all(
                isinstance(k, str) and ENGAGEMENT_PATTERN.fullmatch(k) and type(v) is int
                and v >= 0 for k, v in last.items()):
            raise _bad("last must map engagement ids to integers")
        last_by, last_int = dict(last), None
    else:
        last_int = _int(obj, "last")
    return Frame(
        type=ftype, engagement=engagement, seq=_int(obj, "seq", lo=1),
        text=text if ftype == "msg" else None, on=on if ftype == "typing" else None,
        to=_match(obj, "to", AGENT_PATTERN), resume=_match(obj, "resume", _TOKEN),
        last=last_int, last_by_engagement=last_by,
        visitor_id=_match(obj, "visitor_id", _VISITOR_ID), keys=keys,
        key_id=_match(obj, "key_id", KEY_ID_PATTERN),
        capacity=_int(obj, "capacity", lo=1, hi=1000))

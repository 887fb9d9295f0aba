"""Plaintext body schemas inside envelopes, per kind (what the SDK seals, what the vault opens).

Bodies are UTF-8 JSON objects. The relay never sees them; clients and the vault
validate them with :func:`decode_body`, which raises MalformedError on anything
unexpected (unknown kind, missing field, wrong type, oversize string).

    kind                fields (all strings unless said)
    message             text
    prechat             name?, email?, phone?, answers? (object of string -> string)
    connection-info     ip?, user_agent?, page_url?, referrer?, visitor_id?
    history-handoff     items: list of {role, seq (int), text, ts (int)}
    end                 final: object of sender key id -> last sequence (int)
    consent             text_version, answer ("granted" | "declined")
    survey              answers: object of string -> string
    transcript-request  email
    offload             messages: list of {role, text, ts (int)}, started (int), mode

Sequence numbers: each sender (one signing key) numbers its own envelopes in an
engagement 1, 2, 3, ...; the ``end`` body names the last number of every stream the
sender saw, so the vault can prove an engagement complete or report its gaps.

>>> decode_body("message", encode_body("message", {"text": "hi"}))
{'text': 'hi'}
"""

from __future__ import annotations

import json
from typing import Any

from .errors import MalformedError
from .limits import KEY_ID_PATTERN, MAX_BODY_BYTES

__all__ = ["SUBJECT_FIELDS", "decode_body", "encode_body"]

_MAX_STR = 16_384
_OPT, _REQ = False, True
_SCHEMAS: dict[str, dict[str, tuple[str, bool]]] = {
    "message": {"text": ("str", _REQ)},
    "prechat": {"name": ("str", _OPT), "email": ("str", _OPT), "phone": ("str", _OPT),
                "answers": ("strmap", _OPT)},
    "connection-info": {"ip": ("str", _OPT), "user_agent": ("str", _OPT),
                        "page_url": ("str", _OPT), "referrer": ("str", _OPT),
                        "visitor_id": ("str", _OPT)},
    "history-handoff": {"items": ("items", _REQ)},
    "end": {"final": ("seqmap", _REQ)},
    "consent": {"text_version": ("str", _REQ), "answer": ("consent", _REQ)},
    "survey": {"answers": ("strmap", _REQ)},
    "transcript-request": {"email": ("str", _REQ)},
    "offload": {"messages": ("offload", _REQ), "started": ("int", _REQ), "mode": ("str", _REQ)},
}
#: Fields that identify a data subject, per kind: the vault puts them in its blind index.
SUBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "prechat": ("email", "phone"),
    "connection-info": ("visitor_id",),
    "transcript-request": ("email",),
}


def _is_str(v: object) -> bool:
    return isinstance(v, str) and len(v) <= _MAX_STR


def _is_int(v: object) -> bool:
    return type(v) is int and 0 <= v < 2**53


def _check(kind: str, value: object) -> bool:
    if kind == "str":
        return _is_str(value)
    if kind == "int":
        return _is_int(value)
    if kind == "consent":
        return value in ("granted", "declined")
    if kind == "strmap":
        return isinstance(value, dict) and len(value) <= 200 and all(
            _is_str(k) and _is_str(v) for k, v in value.items())
    if kind == "seqmap":
        return isinstance(value, dict) and len(value) <= 64 and all(
            isinstance(k, str) and KEY_ID_PATTERN.fullmatch(k) and _is_int(v)
            for k, v in value.items())
    if kind in ("items", "offload"):
        fields = {"role": _is_str, "text": _is_str, "ts": _is_int}
        if kind == "items":
            fields["seq"] = _is_int
        return isinstance(value, list) and all(
            isinstance(i, dict) and set(i) == set(fields)
            and all(check(i[f]) for f, check in fields.items()) for i in value)
    return False


def _validate(kind: str, obj: object) -> dict[str, Any]:
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise MalformedError("unknown body kind")
    if not isinstance(obj, dict):
        raise MalformedError("body must be a JSON object")
    if not set(obj) <= set(schema):
        raise MalformedError("unknown body field")
    for name, (typ, required) in schema.items():
        if name not in obj:
            if required:
                raise MalformedError("missing body field")
        elif not _check(typ, obj[name]):
            raise MalformedError("body field has the wrong type or size")
    return obj


def encode_body(kind: str, obj: dict[str, Any]) -> bytes:
    """Validate and serialise a body for sealing."""
    data = json.dumps(_validate(kind, obj), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_BODY_BYTES:
        raise MalformedError("body too large")
    return data


def decode_body(kind: str, data: bytes) -> dict[str, Any]:
    """Parse and validate an opened body of ``kind``."""
    if len(data) > MAX_BODY_BYTES:
        raise MalformedError("body too large")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedError("body is not JSON") from exc
    return _validate(kind, obj)

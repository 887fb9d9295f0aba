"""Strict base64url and canonical-JSON helpers; they raise only MalformedError."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .errors import MalformedError

__all__ = ["b64d", "b64e", "canonical_json", "load_json_object"]


def b64e(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: object, *, length: int | None = None) -> bytes:
    """Decode unpadded base64url strictly, optionally requiring an exact length."""
    if not isinstance(text, str) or len(text) > 200_000:
        raise MalformedError("expected a base64url string")
    try:
        raw = text.encode("ascii")
        if b"=" in raw or b"+" in raw or b"/" in raw:
            raise MalformedError("expected unpadded base64url")
        out = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise MalformedError("invalid base64url") from exc
    # Reject non-canonical encodings (trailing bits set) so one value has one spelling.
    if b64e(out) != text:
        raise MalformedError("non-canonical base64url")
    if length is not None and len(out) != length:
        raise MalformedError("wrong decoded length")
    return out


#: json.dumps with these arguments builds a new encoder per call (a third of its cost
#: for a header); the encoder keeps no state between calls, so one is shared.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only: one spelling per value."""
    return _CANONICAL.encode(obj).encode("ascii")


def load_json_object(data: bytes, *, limit: int) -> dict[str, Any]:
    """Parse bytes as one JSON object of at most ``limit`` bytes."""
    if len(data) > limit:
        raise MalformedError("JSON too large")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedError("invalid JSON") from exc
    if not isinstance(obj, dict):
        raise MalformedError("expected a JSON object")
    return obj

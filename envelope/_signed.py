"""Signed canonical-JSON bodies ``{"body": b64url, "sig": b64url}`` shared by statements,
receipts and link messages. The verifier checks the exact signed bytes, then parses."""

from __future__ import annotations

from typing import Any

import nacl.exceptions
import nacl.signing

from ._codec import b64d, b64e, canonical_json, load_json_object
from .errors import EnvelopeError
from .keys import IdentityKey

__all__ = ["open_signed", "open_signed_with_bytes", "sign_body"]


def sign_body(identity: IdentityKey, domain: bytes, body: dict[str, Any]) -> dict[str, str]:
    """Canonicalise ``body`` and sign it under a domain-separation prefix."""
    raw = canonical_json(body)
    return {"body": b64e(raw), "sig": b64e(identity.sign(domain + raw))}


def open_signed(
    wire: object, public_key: bytes, domain: bytes, *, limit: int,
    error: type[EnvelopeError],
) -> dict[str, Any]:
    """Verify ``wire`` under ``public_key`` and return the parsed body; raise ``error``."""
    return open_signed_with_bytes(wire, public_key, domain, limit=limit, error=error)[0]


def open_signed_with_bytes(
    wire: object, public_key: bytes, domain: bytes, *, limit: int,
    error: type[EnvelopeError],
) -> tuple[dict[str, Any], bytes, bytes]:
    """As ``open_signed``, also returning the verified body and signature bytes."""
    try:
        if not isinstance(wire, dict) or set(wire) != {"body", "sig"}:
            raise error("signed object must be {body, sig}")
        raw = b64d(wire["body"])
        sig = b64d(wire["sig"], length=64)
        if len(raw) > limit:
            raise error("signed object too large")
        try:
            nacl.signing.VerifyKey(public_key).verify(domain + raw, sig)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise error("signature does not verify") from exc
        return load_json_object(raw, limit=limit), raw, sig
    except error:
        raise
    except EnvelopeError as exc:
        raise error("signed object does not parse") from exc

"""Fuzz the receipt verifier: only EnvelopeError (ReceiptError) may escape.

The one-pass form the relay runs on every ack (verify_receipt_with_hash) is fuzzed, and
checked against the two calls it replaced: the same items, the same hash, the same error.

Half the inputs are signed by the harness, so the fuzzer reaches the body checks that
sit behind the signature; the other half are raw wire objects.
"""

from __future__ import annotations

import json

from envelope import (
    EnvelopeError,
    IdentityKey,
    b64e,
    receipt_hash,
    sign_receipt,
    verify_receipt,
    verify_receipt_with_hash,
)

__all__ = ["seeds", "test_one_input"]

_DOMAIN = b"compliance-relay/v1/receipt\x00"
_IDENT = IdentityKey.from_seed(b"\x04" * 32)


def seeds() -> list[bytes]:
    """A valid receipt body (signed mode) and a valid wire object (raw mode)."""
    wire = sign_receipt(_IDENT, account="clinic",
                        items=[("eng-00000001", "A" * 22, "00" * 32)])
    body = json.dumps({"t": "receipt", "v": 1, "acct": "clinic",
                       "items": [["eng-00000001", "A" * 22, "00" * 32]]}).encode()
    return [b"\x00" + body, b"\x01" + json.dumps(wire).encode()]


def test_one_input(data: bytes) -> None:
    """One input: byte 0 picks signed-body or raw-wire mode."""
    if not data:
        return
    if data[0] & 1:
        try:
            wire: object = json.loads(data[1:].decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            return
    else:
        wire = {"body": b64e(data[1:]), "sig": b64e(_IDENT.sign(_DOMAIN + data[1:]))}
    try:
        items, digest = verify_receipt_with_hash(wire, _IDENT.public_bytes, account="clinic")
    except EnvelopeError as exc:
        assert exc.code.startswith("receipt.")
        try:
            verify_receipt(wire, _IDENT.public_bytes, account="clinic")
        except EnvelopeError as again:
            assert (type(again), again.message) == (type(exc), exc.message)
            return
        raise AssertionError("verify_receipt accepted what the one-pass form refused") from exc
    assert items and all(len(i.envelope_hash) == 64 for i in items)
    assert items == verify_receipt(wire, _IDENT.public_bytes, account="clinic")
    assert isinstance(wire, dict) and digest == receipt_hash(wire)

"""The receipt vectors of v1.json: valid single and batched receipts, and the invalid ones."""

from __future__ import annotations

from typing import Any

from envelope._codec import b64d, b64e
from envelope._signed import sign_body
from envelope.receipts import sign_receipt
from envelope.sealing import envelope_hash
from envelope.statements import sign_vault_key_statement
from envelope.vectors.fixtures import (
    _ACCOUNT,
    _ENG,
    _IDENTITY,
    _RECEIPT_DOMAIN,
    _VAULT,
    _Case,
    _rand,
)

__all__ = ["flip_sig", "receipt_cases"]


def flip_sig(wire: dict[str, str]) -> dict[str, str]:
    """``wire`` with one bit of its signature flipped."""
    sig = bytearray(b64d(wire["sig"], length=64))
    sig[0] ^= 0x01
    return dict(wire, sig=b64e(bytes(sig)))


def receipt_cases() -> tuple[list[_Case], list[_Case]]:
    """The valid and the invalid receipt cases."""
    h = envelope_hash(b"example envelope")
    items = [(_ENG, b64e(_rand(f"receipt/id/{i}", 16)), envelope_hash(bytes([i])))
             for i in range(3)]
    single = sign_receipt(_IDENTITY, account=_ACCOUNT, items=[(_ENG, "A" * 22, h)])
    batch = sign_receipt(_IDENTITY, account=_ACCOUNT, items=items)
    op = {"op": "verify_receipt", "identity": "identity", "account": _ACCOUNT}
    valid = [
        {"name": "receipt-single", "type": "receipt", "input": single, "operation": op,
         "expect": {"items": [[_ENG, "A" * 22, h]]}},
        {"name": "receipt-batched", "type": "receipt", "input": batch, "operation": op,
         "expect": {"items": [list(i) for i in items]}},
    ]

    def custom(body: dict[str, Any]) -> dict[str, str]:
        return sign_body(_IDENTITY, _RECEIPT_DOMAIN, body)

    base = {"t": "receipt", "v": 1, "acct": _ACCOUNT}
    vks = sign_vault_key_statement(_IDENTITY, account=_ACCOUNT, key=_VAULT.public_bytes,
                                   not_before=0, not_after=1)
    bad: list[tuple[str, object, dict[str, Any]]] = [
        ("receipt-flipped-signature", flip_sig(batch), op),
        ("receipt-other-account", batch, dict(op, account="clinic-2")),
        ("receipt-other-identity", batch, dict(op, identity="other-identity")),
        ("receipt-bad-hash", custom(base | {"items": [[_ENG, "A" * 22, "XY" * 32]]}), op),
        ("receipt-empty", custom(base | {"items": []}), op),
        ("receipt-statement-domain", vks, op),
        ("receipt-unknown-version", custom(base | {"v": 2, "items": [[_ENG, "A" * 22, h]]}), op),
    ]
    invalid = [{"name": n, "type": "receipt", "input": w, "operation": o,
                "error": "receipt.invalid"} for n, w, o in bad]
    return valid, invalid

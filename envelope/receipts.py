"""Delivery receipts: the vault's signature that it durably stored envelopes.

A receipt names ``(engagement id, envelope id, envelope hash)`` tuples of one account;
the batched form signs many tuples at once so a busy link pays one signature per
batch. Wire form ``{"body": b64url(canonical JSON), "sig": b64url(sig)}`` with body::

    {"t": "receipt", "v": 1, "acct": ACCOUNT, "items": [[ENG, ENV_ID, HASH_HEX], ...]}

The relay deletes an outbox entry only for a tuple whose hash matches the stored
envelope, under a signature by the paired identity key: a forged receipt (any other
key) or one for another account deletes nothing.

>>> from envelope.keys import IdentityKey
>>> ident = IdentityKey.generate()
>>> r = sign_receipt(ident, account="clinic", items=[("eng-00000001", "A" * 22, "00" * 32)])
>>> verify_receipt(r, ident.public_bytes, account="clinic")[0].envelope_id == "A" * 22
True
>>> items, digest = verify_receipt_with_hash(r, ident.public_bytes, account="clinic")
>>> digest == receipt_hash(r)
True
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from ._codec import b64d
from ._signed import open_signed, open_signed_with_bytes, sign_body
from .errors import EnvelopeError, ReceiptError
from .keys import IdentityKey
from .limits import ACCOUNT_PATTERN, ENGAGEMENT_PATTERN, ENVELOPE_ID_PATTERN, MAX_RECEIPT_ITEMS

__all__ = ["ReceiptItem", "receipt_hash", "sign_receipt", "verify_receipt",
           "verify_receipt_with_hash"]

_DOMAIN = b"compliance-relay/v1/receipt\x00"
_HASH = re.compile(r"[0-9a-f]{64}")
_BODY_LIMIT = 200 * MAX_RECEIPT_ITEMS


class ReceiptItem(NamedTuple):
    """One acknowledged envelope (a named tuple: a receipt makes up to 1,024 of them)."""

    engagement: str
    envelope_id: str
    envelope_hash: str


#: Every item of a receipt checked in one regex pass, built from the field patterns:
#: each item is joined as ``ENG \x00 ID \x00 HASH \n``; verify_receipt also counts the
#: separators, so a field that holds them cannot pass as two items.
_ITEMS = re.compile(f"(?:{ENGAGEMENT_PATTERN.pattern}\x00{ENVELOPE_ID_PATTERN.pattern}"
                    f"\x00{_HASH.pattern}\n)+")


def sign_receipt(
    identity: IdentityKey, *, account: str, items: Iterable[tuple[str, str, str]],
) -> dict[str, str]:
    """Sign a receipt for one or many ``(engagement, envelope_id, envelope_hash)`` tuples."""
    listed = [list(i) for i in items]
    if not listed or len(listed) > MAX_RECEIPT_ITEMS:
        raise ReceiptError("receipt must name 1..MAX_RECEIPT_ITEMS envelopes")
    return sign_body(identity, _DOMAIN, {"t": "receipt", "v": 1, "acct": account,
                                         "items": listed})


def receipt_hash(wire: dict[str, str]) -> str:
    """A stable hash of a receipt, kept by the relay on engagement records."""
    try:
        raw, sig = b64d(wire["body"]), b64d(wire["sig"])
    except (KeyError, TypeError, EnvelopeError) as exc:
        raise ReceiptError("receipt does not parse") from exc
    return _digest(raw, sig)


def _digest(raw: bytes, sig: bytes) -> str:
    """BLAKE2b-256 of the decoded body then signature: the one definition of the hash."""
    return hashlib.blake2b(raw + sig, digest_size=32, person=b"cr-receipt-v1").hexdigest()


def verify_receipt(
    wire: object, identity_public_key: bytes, *, account: str,
) -> list[ReceiptItem]:
    """Verify a (batched) receipt and return its items, or raise ReceiptError."""
    body = open_signed(wire, identity_public_key, _DOMAIN, limit=_BODY_LIMIT,
                       error=ReceiptError)
    return _checked_items(body, account)


def verify_receipt_with_hash(
    wire: object, identity_public_key: bytes, *, account: str,
) -> tuple[list[ReceiptItem], str]:
    """verify_receipt, plus the receipt_hash of the same decoded bytes (the relay's ack path).

    A receipt that fails raises exactly as verify_receipt does and is never hashed.
    """
    body, raw, sig = open_signed_with_bytes(wire, identity_public_key, _DOMAIN,
                                            limit=_BODY_LIMIT, error=ReceiptError)
    return _checked_items(body, account), _digest(raw, sig)



def _checked_items(body: dict[str, Any], account: str) -> list[ReceiptItem]:
    """The items of a verified receipt body, or ReceiptError for any broken rule."""
    if body.get("t") != "receipt" or body.get("v") != 1:
        raise ReceiptError("not a v1 receipt")
    if body.get("acct") != account or not ACCOUNT_PATTERN.fullmatch(account):
        raise ReceiptError("receipt is for another account")
    items = body.get("items")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_RECEIPT_ITEMS:
        raise ReceiptError("bad receipt items")
    fields: list[str] = []
    for item in items:
        if type(item) is not list or len(item) != 3:
            raise ReceiptError("bad receipt item")
        fields += item
    if not all(type(f) is str for f in fields):
        raise ReceiptError("bad receipt item")
    joined = "".join(f"{a}\x00{b}\x00{c}\n" for a, b, c in zip(*[iter(fields)] * 3,
                                                               strict=True))
    # The separators counted too: a field holding "\x00...\n" would otherwise read as
    # two valid items joined (the patterns admit neither character, so the counts are
    # exactly the joins' when every field is clean).
    if joined.count("\n") != len(items) or joined.count("\x00") != 2 * len(items) \
            or not _ITEMS.fullmatch(joined):
        raise ReceiptError("bad receipt item")
    return [ReceiptItem(*item) for item in items]

"""Fixed key material and names of the v1 vectors (generate.py and its case modules).

Every key and random input is derived from a fixed label with BLAKE2b: never used
outside vector generation.
"""

from __future__ import annotations

import hashlib
from typing import Any

from envelope.keys import EncryptionKey, IdentityKey, PartyKeys

__all__: list[str] = []  # private to the vectors package: generate.py and its case modules

_STATEMENT_DOMAIN = b"compliance-relay/v1/statement\x00"
_RECEIPT_DOMAIN = b"compliance-relay/v1/receipt\x00"
_ACCOUNT, _ENG = "clinic-1", "eng-0000000000000001"
_RELAY_ORIGIN = "https://relay.example"
_Case = dict[str, Any]


def _rand(label: str, n: int = 32) -> bytes:
    """Fixed 'randomness' for one labelled use (never used outside vector generation)."""
    return hashlib.blake2b(label.encode(), digest_size=n, person=b"cr-vectors-v1").digest()


def _party(label: str) -> PartyKeys:
    return PartyKeys.from_secrets(_rand(label + "/x25519"), _rand(label + "/ed25519"))


_IDENTITY = IdentityKey.from_seed(_rand("identity"))
_OTHER_IDENTITY = IdentityKey.from_seed(_rand("other-identity"))
_VAULT = EncryptionKey.from_secret(_rand("vault/x25519"))
_PARTIES = {name: _party(name) for name in ("visitor", "agent", "bot", "relay", "stranger")}
_EXTRA = [EncryptionKey.from_secret(_rand(f"extra-{i}/x25519")) for i in range(9)]
_ENC_KEYS: dict[str, EncryptionKey] = {
    "vault": _VAULT, **{n: p.encryption for n, p in _PARTIES.items()},
    **{f"extra-{i}": k for i, k in enumerate(_EXTRA)}}

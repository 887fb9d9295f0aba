"""Encryption at rest (pure): data-key wrapping, row sealing and blind-index tokens.

* Each engagement has its own random 32-byte data key, stored only wrapped by the
  master key in keys.db. Wrapping binds the key to its engagement id (associated
  data), so a wrapped key copied onto another engagement's row does not unwrap.
* Each stored envelope body is sealed with XChaCha20-Poly1305 under the data key with
  ``engagement|envelope id`` as associated data: rows cannot be moved between
  engagements or swapped inside the database without failing to open.
* The blind index is a keyed BLAKE2b of a normalised identifier: without the index
  key (a secret file) a stolen database cannot be searched for a known email
  (dictionary attack on unkeyed hashes).

>>> key = new_data_key()
>>> row = seal_row(key, "eng-00000001", "A" * 22, b"hi")
>>> open_row(key, "eng-00000001", "A" * 22, row)
b'hi'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import nacl.bindings
import nacl.exceptions
import nacl.utils

from .errors import DataKeyDestroyed

__all__ = [
    "blind_token",
    "new_data_key",
    "normalise_identifier",
    "open_row",
    "seal_row",
    "unwrap_data_key",
    "wrap_data_key",
]

_NONCE = 24


def new_data_key() -> bytes:
    """A fresh random per-engagement data key."""
    return nacl.utils.random(32)


def wrap_data_key(master: bytes, engagement: str, data_key: bytes) -> tuple[bytes, bytes]:
    """``(nonce, wrapped)`` of ``data_key`` under the master key, bound to ``engagement``."""
    nonce = nacl.utils.random(_NONCE)
    return nonce, nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        data_key, b"cr-dk-v1|" + engagement.encode(), nonce, master)


def unwrap_data_key(master: bytes, engagement: str, nonce: bytes, wrapped: bytes) -> bytes:
    """Inverse of :func:`wrap_data_key`; DataKeyDestroyed if it does not open."""
    try:
        return bytes(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            wrapped, b"cr-dk-v1|" + engagement.encode(), nonce, master))
    except nacl.exceptions.CryptoError:
        raise DataKeyDestroyed("the engagement's data key does not open") from None


def _row_ad(engagement: str, envelope_id: str) -> bytes:
    return f"cr-row-v1|{engagement}|{envelope_id}".encode()


def seal_row(data_key: bytes, engagement: str, envelope_id: str, plaintext: bytes) -> bytes:
    """Nonce + ciphertext of one stored body."""
    nonce = nacl.utils.random(_NONCE)
    return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, _row_ad(engagement, envelope_id), nonce, data_key)


def open_row(data_key: bytes, engagement: str, envelope_id: str, sealed: bytes) -> bytes:
    """Inverse of :func:`seal_row`; DataKeyDestroyed when the key is not the row's."""
    try:
        return bytes(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[_NONCE:], _row_ad(engagement, envelope_id), sealed[:_NONCE], data_key))
    except (nacl.exceptions.CryptoError, ValueError):
        raise DataKeyDestroyed("the stored row does not open with this key") from None


def normalise_identifier(field: str, value: str) -> str:
    """One spelling per subject: emails case-folded, phones reduced to digits (and a +)."""
    value = unicodedata.normalize("NFKC", value).strip()
    if field == "email":
        return value.casefold()
    if field == "phone":
        digits = re.sub(r"[^0-9]", "", value)
        return ("+" + digits) if value.startswith(("+", "00")) and digits else digits
    return value


def blind_token(index_key: bytes, field: str, value: str) -> bytes:
    """The keyed hash stored in the subject index for one identifier."""
    kind = "email" if field == "email" else "phone" if field == "phone" else "visitor"
    norm = normalise_identifier(kind, value)
    return hashlib.blake2b(f"{kind}\x00{norm}".encode(), key=index_key, digest_size=32,
                           person=b"cr-blind-idx-v1").digest()

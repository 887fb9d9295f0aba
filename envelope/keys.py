"""Keys: controller identity (Ed25519), vault encryption (X25519), agent and visitor keys.

A key id is a 96-bit keyed-hash label of a public key; the identity fingerprint is a
160-bit hash (second-preimage resistance well above 128 bits) spelled in base32 so a
controller can paste it into an HTML attribute and read it aloud.

>>> ident = IdentityKey.generate()
>>> fingerprint(ident.public_bytes).startswith("crfp1-")
True
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import nacl.exceptions
import nacl.public
import nacl.signing

from ._codec import b64d, b64e
from .errors import MalformedError

__all__ = [
    "EncryptionKey",
    "IdentityKey",
    "PartyKeys",
    "fingerprint",
    "key_id",
    "verify_key_from_bytes",
]

_FINGERPRINT_PREFIX = "crfp1-"


def key_id(public_key: bytes) -> str:
    """The 24-hex-character id of a public key (X25519 or Ed25519)."""
    return hashlib.blake2b(public_key, digest_size=12, person=b"cr-key-id-v1").hexdigest()


def fingerprint(identity_public_key: bytes) -> str:
    """Human-checkable fingerprint of an identity key: ``crfp1-`` + 32 base32 chars (160 bits)."""
    digest = hashlib.blake2b(identity_public_key, digest_size=20, person=b"cr-fprint-v1").digest()
    return _FINGERPRINT_PREFIX + base64.b32encode(digest).decode("ascii").lower()


def verify_key_from_bytes(data: bytes) -> nacl.signing.VerifyKey:
    """An Ed25519 verify key from 32 bytes, or MalformedError."""
    if not isinstance(data, bytes) or len(data) != 32:
        raise MalformedError("Ed25519 public key must be 32 bytes")
    return nacl.signing.VerifyKey(data)


@dataclass(frozen=True)
class IdentityKey:
    """The controller's Ed25519 identity key; its fingerprint is the trust anchor."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> IdentityKey:
        """A fresh random identity key."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKey:
        """Load from the 32-byte seed kept in the vault's secret file."""
        if len(seed) != 32:
            raise MalformedError("identity seed must be 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The secret 32-byte seed (write only to a 0600 file)."""
        return bytes(self.signing_key)

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return bytes(self.signing_key.verify_key)

    @property
    def fingerprint(self) -> str:
        """See :func:`fingerprint`."""
        return fingerprint(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature."""
        return self.signing_key.sign(message).signature


@dataclass(frozen=True)
class EncryptionKey:
    """An X25519 key pair used as an envelope recipient (vault, agent or visitor)."""

    private_key: nacl.public.PrivateKey

    @classmethod
    def generate(cls) -> EncryptionKey:
        """A fresh random key pair."""
        return cls(nacl.public.PrivateKey.generate())

    @classmethod
    def from_secret(cls, secret: bytes) -> EncryptionKey:
        """Load from the 32-byte secret."""
        if len(secret) != 32:
            raise MalformedError("X25519 secret must be 32 bytes")
        return cls(nacl.public.PrivateKey(secret))

    @property
    def secret(self) -> bytes:
        """The 32-byte secret (write only to a 0600 file)."""
        return bytes(self.private_key)

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return bytes(self.private_key.public_key)

    @property
    def key_id(self) -> str:
        """See :func:`key_id`."""
        return key_id(self.public_bytes)


@dataclass(frozen=True)
class PartyKeys:
    """A chat party's keys: X25519 to receive, Ed25519 to sign (agent devices, visitors)."""

    encryption: EncryptionKey
    signing: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> PartyKeys:
        """Fresh keys (a visitor makes these once per engagement)."""
        return cls(EncryptionKey.generate(), nacl.signing.SigningKey.generate())

    @classmethod
    def from_secrets(cls, encryption_secret: bytes, signing_seed: bytes) -> PartyKeys:
        """Load from the two 32-byte secrets."""
        if len(signing_seed) != 32:
            raise MalformedError("Ed25519 seed must be 32 bytes")
        return cls(EncryptionKey.from_secret(encryption_secret),
                   nacl.signing.SigningKey(signing_seed))

    @property
    def signing_public_bytes(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return bytes(self.signing.verify_key)

    @property
    def encryption_key_id(self) -> str:
        """The key id under which others address this party."""
        return self.encryption.key_id

    def to_json(self) -> dict[str, str]:
        """Secrets as base64url (for a client's own local storage, never a server)."""
        return {"enc": b64e(self.encryption.secret), "sig": b64e(bytes(self.signing))}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> PartyKeys:
        """Inverse of :meth:`to_json`."""
        try:
            return cls.from_secrets(b64d(obj["enc"], length=32), b64d(obj["sig"], length=32))
        except (KeyError, TypeError, nacl.exceptions.CryptoError) as exc:
            raise MalformedError("invalid party key JSON") from exc

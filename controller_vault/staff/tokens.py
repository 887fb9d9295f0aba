"""Staff tokens: scoped bearer tokens for the controller's staff, stored only as hashes.

A token reads ``crst1.<token id>.<secret>``: the id (64 random bits, not secret) finds
the row, the secret (256 random bits) proves possession. The store keeps the id, a
SHA-256 of the whole token, the actor, the scopes and the times; the plaintext is shown
once, by the CLI that made it, and never written.

    scope      allows
    read       list, search and read transcripts (with a stated purpose)
    export     subject-access exports (with a stated purpose)
    erase      erase an engagement or a data subject
    configure  change retention, redaction, SMTP and alert settings
    audit      read and verify the audit log

Persistence is behind the :class:`TokenStore` protocol; ``token_store.SqliteTokenStore``
is the embedded default. The clock is an argument: ``now`` is UNIX seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .errors import AuthError, ScopeDenied, StaffConfigError

__all__ = [
    "SCOPES",
    "StaffIdentity",
    "StaffTokens",
    "TokenRecord",
    "TokenStore",
    "hash_token",
]

SCOPES = frozenset({"read", "export", "erase", "configure", "audit"})
_PREFIX = "crst1"
_TOKEN = re.compile(r"crst1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_ACTOR = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_HASH_DOMAIN = b"compliance-relay/v1/staff-token\x00"
# Compared against when the id is unknown, so an unknown id and a wrong secret take
# the same path and the same time (no oracle telling which token ids exist).
_DUMMY_HASH = hashlib.sha256(_HASH_DOMAIN + b"no such token").hexdigest()


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 under a domain prefix."""
    # A plain (fast) hash is enough because the secret has 256 bits of entropy: a
    # stolen staff.db cannot be brute-forced back to a token. Slow password hashes
    # (argon2, scrypt) defend low-entropy passwords and would only make every API
    # request slow, which is itself a denial-of-service lever.
    return hashlib.sha256(_HASH_DOMAIN + token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One stored token (no secret in it)."""

    token_id: str
    token_hash: str
    actor: str
    scopes: frozenset[str]
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None


@dataclass(frozen=True)
class StaffIdentity:
    """Who is calling, as proven by a verified token."""

    token_id: str
    actor: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Raise ScopeDenied unless this identity holds ``scope``."""
        if scope not in self.scopes:
            raise ScopeDenied("the token does not grant this operation")


class TokenStore(Protocol):
    """Persistence of token records (the embedded default is SQLite)."""

    async def insert(self, record: TokenRecord) -> None:
        """Store a new token record."""

    async def get(self, token_id: str) -> TokenRecord | None:
        """The record of ``token_id``, or None."""

    async def revoke(self, token_id: str, at: int) -> bool:
        """Mark a token revoked at ``at``; False if it does not exist or was revoked."""

    async def list_tokens(self) -> list[TokenRecord]:
        """Every record, oldest first."""


def _check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(scopes)
    if not chosen or not chosen <= SCOPES:
        raise StaffConfigError("scopes must be a non-empty subset of "
                               + ", ".join(sorted(SCOPES)), code="config.bad_scope")
    return chosen


class StaffTokens:
    """Issue, verify and revoke staff tokens over a :class:`TokenStore`."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    async def issue(self, actor: str, scopes: Iterable[str], *, now: int,
                    ttl_s: int | None = None) -> tuple[str, TokenRecord]:
        """A new token for ``actor``: the plaintext (show once) and its stored record."""
        if not _ACTOR.fullmatch(actor):
            raise StaffConfigError("actor names are 1-64 of A-Z a-z 0-9 . _ @ + -",
                                   code="config.bad_actor")
        chosen = _check_scopes(scopes)
        if ttl_s is not None and ttl_s <= 0:
            raise StaffConfigError("ttl must be positive", code="config.bad_ttl")
        token_id = secrets.token_hex(8)
        token = f"{_PREFIX}.{token_id}.{secrets.token_urlsafe(32)}"
        record = TokenRecord(token_id=token_id, token_hash=hash_token(token), actor=actor,
                             scopes=chosen, created_at=now,
                             expires_at=None if ttl_s is None else now + ttl_s)
        await self.store.insert(record)
        return token, record

    async def verify(self, token: str | None, *, now: int) -> StaffIdentity:
        """The identity behind ``token``; AuthError if it is missing or not valid now."""
        if not token:
            raise AuthError("a staff token is required")
        match = _TOKEN.fullmatch(token)
        record = await self.store.get(match.group(1)) if match else None
        expected = record.token_hash if record is not None else _DUMMY_HASH
        # Constant-time comparison: a byte-by-byte compare would let a timing attacker
        # learn the stored hash prefix; compare_digest takes the same time either way.
        same = hmac.compare_digest(hash_token(token), expected)
        if (record is None or not same or record.revoked_at is not None
                or (record.expires_at is not None and now >= record.expires_at)):
            # One code for unknown, wrong, revoked and expired: a prober learns nothing.
            raise AuthError("the staff token is not valid", code="auth.invalid_token")
        return StaffIdentity(token_id=record.token_id, actor=record.actor,
                             scopes=record.scopes)

    async def revoke(self, token_id: str, *, now: int) -> bool:
        """Revoke a token by id; False if there was no live token with that id."""
        return await self.store.revoke(token_id, now)

"""Signed statements: the vault key statement and the agent key certificate.

Both are canonical JSON bodies signed by the controller identity key with a domain
prefix, carried on the wire as ``{"body": b64url(bytes), "sig": b64url(sig)}`` so the
verifier checks the exact signed bytes and never re-serialises.

Vault key statement body::

    {"t": "vault-key", "v": 1, "acct": ACCOUNT, "kid": KEY_ID, "pk": b64url(32),
     "nbf": unix seconds, "exp": unix seconds}

Agent certificate body::

    {"t": "agent-cert", "v": 1, "acct": ACCOUNT, "agent": AGENT_PSEUDONYM,
     "enc_pk": b64url(32), "sig_pk": b64url(32), "nbf": ..., "exp": ...}

A relay that hands a client its own key cannot produce a signature that verifies
under the identity key the client pinned by fingerprint (key-substitution attack).

>>> from envelope.keys import IdentityKey, EncryptionKey
>>> ident, vk = IdentityKey.generate(), EncryptionKey.generate()
>>> wire = sign_vault_key_statement(ident, account="clinic", key=vk.public_bytes,
...                                 not_before=0, not_after=10)
>>> st = verify_vault_key_statement(wire, ident.public_bytes, account="clinic", now=5)
>>> st.key_id == vk.key_id
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._codec import b64d, b64e
from ._signed import open_signed, sign_body
from .errors import EnvelopeError, StatementError
from .keys import IdentityKey, key_id
from .limits import ACCOUNT_PATTERN, AGENT_PATTERN, MAX_STATEMENT_BYTES

__all__ = [
    "AgentCertificate",
    "VaultKeyStatement",
    "sign_agent_certificate",
    "sign_vault_key_statement",
    "verify_agent_certificate",
    "verify_vault_key_statement",
]

_DOMAIN = b"compliance-relay/v1/statement\x00"
_MAX_TIME = 2**40


@dataclass(frozen=True)
class VaultKeyStatement:
    """A verified vault encryption key for one account."""

    account: str
    key_id: str
    public_key: bytes
    not_before: int
    not_after: int


@dataclass(frozen=True)
class AgentCertificate:
    """A verified agent device: who (pseudonym) and which keys."""

    account: str
    agent: str
    encryption_public_key: bytes
    signing_public_key: bytes
    not_before: int
    not_after: int

    @property
    def encryption_key_id(self) -> str:
        """Key id under which envelopes address this agent."""
        return key_id(self.encryption_public_key)


def _sign(identity: IdentityKey, body: dict[str, Any]) -> dict[str, str]:
    return sign_body(identity, _DOMAIN, body)


def _check_account(account: str) -> None:
    if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account):
        raise StatementError("account id out of pattern")


def sign_vault_key_statement(
    identity: IdentityKey, *, account: str, key: bytes, not_before: int, not_after: int,
) -> dict[str, str]:
    """Sign a statement that ``key`` is the account's vault key for the window given."""
    _check_account(account)
    return _sign(identity, {"t": "vault-key", "v": 1, "acct": account, "kid": key_id(key),
                            "pk": b64e(key), "nbf": not_before, "exp": not_after})


def sign_agent_certificate(
    identity: IdentityKey, *, account: str, agent: str, encryption_key: bytes,
    signing_key: bytes, not_before: int, not_after: int,
) -> dict[str, str]:
    """Certify an agent device's keys under a pseudonym."""
    _check_account(account)
    if not AGENT_PATTERN.fullmatch(agent):
        raise StatementError("agent pseudonym out of pattern")
    return _sign(identity, {"t": "agent-cert", "v": 1, "acct": account, "agent": agent,
                            "enc_pk": b64e(encryption_key), "sig_pk": b64e(signing_key),
                            "nbf": not_before, "exp": not_after})


def _verify(wire: object, identity_public_key: bytes, kind: str, account: str,
            now: int) -> dict[str, Any]:
    body = open_signed(wire, identity_public_key, _DOMAIN, limit=MAX_STATEMENT_BYTES,
                       error=StatementError)
    if body.get("v") != 1:
        raise StatementError("unknown statement version", code="statement.unsupported_version")
    if body.get("t") != kind:
        raise StatementError("wrong statement type")
    if body.get("acct") != account:
        raise StatementError("statement is for another account", code="statement.wrong_account")
    nbf, exp = body.get("nbf"), body.get("exp")
    if type(nbf) is not int or type(exp) is not int or not 0 <= nbf <= exp <= _MAX_TIME:
        raise StatementError("bad validity window")
    if not nbf <= now <= exp:
        raise StatementError("statement outside its validity window", code="statement.expired")
    return body


def verify_vault_key_statement(
    wire: object, identity_public_key: bytes, *, account: str, now: int,
) -> VaultKeyStatement:
    """Verify a vault key statement against the pinned identity key, or raise StatementError."""
    body = _verify(wire, identity_public_key, "vault-key", account, now)
    try:
        pk = b64d(body.get("pk"), length=32)
    except EnvelopeError as exc:
        raise StatementError("bad public key") from exc
    if body.get("kid") != key_id(pk):
        raise StatementError("key id does not match key")
    return VaultKeyStatement(account=account, key_id=key_id(pk), public_key=pk,
                             not_before=body["nbf"], not_after=body["exp"])


def verify_agent_certificate(
    wire: object, identity_public_key: bytes, *, account: str, now: int,
) -> AgentCertificate:
    """Verify an agent certificate against the pinned identity key, or raise StatementError."""
    body = _verify(wire, identity_public_key, "agent-cert", account, now)
    agent = body.get("agent")
    if not isinstance(agent, str) or not AGENT_PATTERN.fullmatch(agent):
        raise StatementError("agent pseudonym out of pattern")
    try:
        enc = b64d(body.get("enc_pk"), length=32)
        sig = b64d(body.get("sig_pk"), length=32)
    except EnvelopeError as exc:
        raise StatementError("bad public key") from exc
    return AgentCertificate(account=account, agent=agent, encryption_public_key=enc,
                            signing_public_key=sig, not_before=body["nbf"],
                            not_after=body["exp"])

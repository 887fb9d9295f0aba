"""Certifying agent devices: the vault signs an agent's public keys under a pseudonym.

Ingest trusts an agent (or bot) envelope only when its signing key was certified here,
so a relay cannot invent an agent and inject text as one (impersonation).
"""

from __future__ import annotations

import json

from envelope import key_id, sign_agent_certificate

from .keyfiles import VaultKeys
from .store import AuditRecord, VaultStore

__all__ = ["certify_agent"]


async def certify_agent(store: VaultStore, keys: VaultKeys, *, agent: str,
                        encryption_key: bytes, signing_key: bytes, now: int,
                        days: int = 365, actor: str = "admin") -> dict[str, str]:
    """Sign and keep a certificate for an agent device; return its wire form."""
    not_after = now + days * 86400
    cert = sign_agent_certificate(keys.identity, account=keys.account, agent=agent,
                                  encryption_key=encryption_key, signing_key=signing_key,
                                  not_before=now - 300, not_after=not_after)
    await store.add_agent_certificate(
        sig_key_id=key_id(signing_key), agent=agent, enc_key_id=key_id(encryption_key),
        not_before=now - 300, not_after=not_after, certificate=json.dumps(cert), now=now,
        audit=AuditRecord(actor, "certify-agent", "administration", agent,
                          {"signing_key_id": key_id(signing_key), "days": days}))
    return cert

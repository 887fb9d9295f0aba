"""Reading an engagement back and erasing it (crypto-shredding).

Erasure order matters: the data key is destroyed first (the point of no return: from
then on no copy of vault.db anywhere can be read), then the rows are deleted, a
tombstone kept and the WALs truncated. A crash between the two steps leaves only
unreadable ciphertext, which the next erasure of the same engagement removes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .atrest import open_row
from .keystore import KeyStore
from .store import AuditRecord, VaultStore

__all__ = ["OpenedRow", "erase_engagements", "read_engagement"]


@dataclass(frozen=True)
class OpenedRow:
    """One stored envelope with its body decrypted (personal data: handle with care)."""

    envelope_id: str
    sender_key_id: str
    role: str
    seq: int
    kind: str
    received_at: int
    body: bytes


async def read_engagement(store: VaultStore, keystore: KeyStore, engagement: str, *,
                          actor: str, purpose: str, now: int) -> list[OpenedRow]:
    """Decrypt an engagement's envelopes; the read is audited. DataKeyDestroyed if erased."""
    rows = await store.envelopes_of(engagement)
    out = []
    if rows:
        key = await keystore.data_key(engagement)
        out = [OpenedRow(r.envelope_id, r.sender_key_id, r.role, r.seq, r.kind, r.received_at,
                         open_row(key, engagement, r.envelope_id, r.ciphertext)) for r in rows]
    await store.append_audit([AuditRecord(actor, "read", purpose, engagement,
                                          {"envelopes": len(out)})], now)
    return out


async def erase_engagements(store: VaultStore, keystore: KeyStore, engagements: Sequence[str],
                            *, actor: str, purpose: str, rule: str, now: int) -> int:
    """Destroy the engagements' data keys, then their rows; return the rows deleted."""
    engs = sorted(set(engagements))
    await keystore.destroy(engs)
    return await store.erase_engagements(
        engs, now, rule, AuditRecord(actor, "erase", purpose, ",".join(engs),
                                     {"engagements": len(engs), "rule": rule}))

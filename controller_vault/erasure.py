"""Reading an engagement back and erasing it (crypto-shredding).

Erasure order matters: the data key is destroyed first (the point of no return: from
then on no copy of vault.db anywhere can be read), then the rows are deleted, a
tombstone kept and the WALs truncated. A crash between the two steps leaves only
unreadable ciphertext, which the next erasure of the same engagement removes: the
blind index rows go with the data rows, so a re-run of a subject erasure still finds
every engagement (erasure is idempotent, never silently half-done).

:func:`erase_and_notify` also signs the erasure notice (engagement ids, time, rule:
the controller's receipt and the processor's evidence) and queues it in vault.db in
the same transaction as the row deletion, for the link to deliver to the relay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envelope import canonical_json, sign_erasure_notice
from envelope.limits import MAX_RECEIPT_ITEMS

from .atrest import open_row
from .keyfiles import VaultKeys
from .keystore import KeyStore
from .store import AuditRecord, VaultStore

__all__ = ["INCOMPLETE_CHECKPOINT", "ErasureOutcome", "OpenedRow", "erase_and_notify",
           "erase_engagements", "read_engagement"]


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


INCOMPLETE_CHECKPOINT = "erasure_incomplete_checkpoint"


async def _flush(store: VaultStore, keystore: KeyStore, engs: Sequence[str], *,
                 actor: str, purpose: str, now: int) -> bool:
    # The erased bytes leave the disk only when both WALs are checkpointed into their
    # files; a reader holding an old snapshot can stop that. Then the erasure is
    # audited as incomplete (never reported as done), and running it again once the
    # reader is gone finishes it (erasure is idempotent).
    keys_ok = await keystore.flush_wal()
    rows_ok = await store.flush_wal()
    if keys_ok and rows_ok:
        return True
    await store.append_audit([AuditRecord(
        actor, INCOMPLETE_CHECKPOINT, purpose, ",".join(engs),
        {"engagements": len(engs), "keys_db": keys_ok, "vault_db": rows_ok})], now)
    return False


async def erase_engagements(store: VaultStore, keystore: KeyStore, engagements: Sequence[str],
                            *, actor: str, purpose: str, rule: str, now: int) -> int:
    """Destroy the engagements' data keys, then their rows; return the rows deleted."""
    engs = sorted(set(engagements))
    await keystore.destroy(engs)
    rows = await store.erase_engagements(
        engs, now, rule, AuditRecord(actor, "erase", purpose, ",".join(engs),
                                     {"engagements": len(engs), "rule": rule}))
    await _flush(store, keystore, engs, actor=actor, purpose=purpose, now=now)
    return rows


@dataclass(frozen=True)
class ErasureOutcome:
    """What an erasure did: the engagements, rows deleted and the signed receipts."""

    engagements: tuple[str, ...]
    rows_deleted: int
    receipts: tuple[dict[str, str], ...]
    #: False when a concurrent reader kept the erased pages in a WAL or the database
    #: file (see database.checkpoint_truncate): run the erasure again to finish it.
    complete: bool = True

    def to_json(self) -> dict[str, object]:
        """The JSON answer of the erasure routes and CLI."""
        out: dict[str, object] = {
            "engagements": list(self.engagements), "rows_deleted": self.rows_deleted,
            "receipts": list(self.receipts), "complete": self.complete}
        if not self.complete:
            out["warning"] = {"code": INCOMPLETE_CHECKPOINT, "message":
                              "data keys and rows are deleted, but a concurrent reader "
                              "kept old pages on disk; run the erasure again"}
        return out


async def erase_and_notify(store: VaultStore, keystore: KeyStore, keys: VaultKeys,
                           engagements: Sequence[str], *, actor: str, purpose: str,
                           rule: str, now: int) -> ErasureOutcome:
    """Crypto-shred ``engagements`` and queue one signed notice per chunk for the relay."""
    engs = sorted(set(engagements))
    if not engs:
        return ErasureOutcome((), 0, ())
    receipts = tuple(
        sign_erasure_notice(keys.identity, account=keys.account,
                            engagements=engs[i:i + MAX_RECEIPT_ITEMS], at=now, rule=rule)
        for i in range(0, len(engs), MAX_RECEIPT_ITEMS))
    await keystore.destroy(engs)
    rows = await store.erase_engagements(
        engs, now, rule, AuditRecord(actor, "erase", purpose, ",".join(engs),
                                     {"engagements": len(engs), "rule": rule}),
        notices=[canonical_json(r).decode() for r in receipts])
    complete = await _flush(store, keystore, engs, actor=actor, purpose=purpose, now=now)
    return ErasureOutcome(tuple(engs), rows, receipts, complete)

"""The vault's encrypted store (vault.db): with its mixins (store_ingest, store_relay,
store_staff) the only code that speaks SQL to it.

One writer connection; every write is one transaction (``store_errors``, or
``write_transaction`` for one done in a single hop: ingest's batch commit, audit
appends) so a locked or full database raises StoreUnavailable with nothing written.
Audit entries of a write are appended in the same transaction, so the log and the data
cannot disagree.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from .audit import AuditEntry
from .database import (
    checkpoint_truncate,
    in_connection,
    open_database,
    store_errors,
    write_transaction,
)
from .store_ingest import (
    CertifiedKey,
    EngagementState,
    IngestQueries,
    NewEnvelope,
    append_audit_rows,
    read_audit_head,
)
from .store_relay import RelayPin, RelayQueries
from .store_staff import StaffQueries

__all__ = [
    "AuditRecord",
    "CertifiedKey",
    "EngagementState",
    "NewEnvelope",
    "RelayPin",
    "StoreStats",
    "StoredEnvelope",
    "VaultStore",
]


@dataclass(frozen=True)
class AuditRecord:
    """An audit entry to append: who did what, why, to which ids (no personal data)."""

    actor: str
    action: str
    purpose: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEnvelope:
    """A stored row as read back (body still sealed under the data key)."""

    envelope_id: str
    engagement: str
    envelope_hash: str
    sender_key_id: str
    role: str
    seq: int
    kind: str
    received_at: int
    ciphertext: bytes


@dataclass(frozen=True)
class StoreStats:
    """Counts for /metrics."""

    envelopes: int
    engagements: int
    incomplete: int
    audit_entries: int
    bytes_on_disk: int


class VaultStore(IngestQueries, StaffQueries, RelayQueries):
    """Named operations on vault.db; nothing else in the vault writes SQL for it."""

    def __init__(self, db: aiosqlite.Connection, path: pathlib.Path, account: str) -> None:
        self._db = db
        self._path = path
        self.account = account

    @classmethod
    async def open(cls, path: str | os.PathLike[str], account: str, *,
                   busy_timeout_ms: int = 2000,
                   max_page_count: int | None = None) -> VaultStore:
        """Open (and create or upgrade) vault.db."""
        db = await open_database(path, "vault", busy_timeout_ms=busy_timeout_ms,
                                 max_page_count=max_page_count)
        return cls(db, pathlib.Path(path), account)

    async def close(self) -> None:
        """Checkpoint and close; the connection is closed even if the checkpoint fails."""
        try:
            await checkpoint_truncate(self._db)
        finally:
            # The checkpoint raises (SQLITE_LOCKED while a statement of this connection
            # is open) or is cancelled (Ctrl-C, a shutdown timeout) while it waits for a
            # reader: an aiosqlite connection left open keeps its non-daemon thread, so
            # a CLI command would print its error and then hang.
            await self._db.close()

    # -- writes ---------------------------------------------------------------

    async def _append_audit(self, records: Sequence[AuditRecord], now: int) -> None:
        # Inside the caller's store_errors transaction: one hop for the whole chain step.
        await in_connection(self._db, lambda c: append_audit_rows(c, records, now))

    async def append_audit(self, records: Sequence[AuditRecord], now: int) -> None:
        """Append audit entries in their own transaction."""
        await write_transaction(self._db, "append audit",
                                lambda c: append_audit_rows(c, records, now))

    async def add_agent_certificate(self, *, sig_key_id: str, agent: str, enc_key_id: str,
                                    not_before: int, not_after: int, certificate: str,
                                    now: int, audit: AuditRecord) -> None:
        """Keep a certificate this vault issued (ingest trusts only these agent keys)."""
        async with store_errors(self._db, "add agent certificate"):
            await self._db.execute(
                "INSERT OR REPLACE INTO agent_certificates (sig_key_id, agent, enc_key_id, "
                "not_before, not_after, certificate, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sig_key_id, agent, enc_key_id, not_before, not_after, certificate, now))
            await self._append_audit([audit], now)

    async def erase_engagements(self, engagements: Sequence[str], now: int, rule: str,
                                audit: AuditRecord, notices: Sequence[str] = ()) -> int:
        """Delete every row of the engagements, keep a tombstone, queue the signed
        notices for the relay (same transaction: none lost); call flush_wal() next."""
        n = 0
        async with store_errors(self._db, "erase engagements"):
            for eng in engagements:
                cur = await self._db.execute("DELETE FROM envelopes WHERE engagement = ?",
                                             (eng,))
                n += cur.rowcount
                await self._db.execute("DELETE FROM subject_index WHERE engagement = ?", (eng,))
                await self._db.execute("DELETE FROM engagement_senders WHERE engagement = ?",
                                       (eng,))
                # Tombstone: a redelivered envelope of an erased engagement is acknowledged
                # but never stored again (no resurrection after erasure).
                await self._db.execute(
                    "INSERT INTO engagements (engagement, account, first_at, last_at, "
                    "erased_at, erase_rule) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(engagement) DO UPDATE SET visitor_key = NULL, "
                    "end_final = NULL, erased_at = ?, erase_rule = ?",
                    (eng, self.account, now, now, now, rule, now, rule))
            await self._db.executemany(
                "INSERT INTO erasure_notices (notice, created_at) VALUES (?, ?)",
                [(n, now) for n in notices])
            await self._append_audit([audit], now)
        return n

    async def flush_wal(self) -> bool:
        """Checkpoint and truncate vault.db's WAL; False if a reader kept old pages alive."""
        return await checkpoint_truncate(self._db)

    async def set_relay_pin(self, public_key: bytes, source: str, now: int,
                            audit: AuditRecord) -> None:
        """Record (or replace) the trusted relay signing key, with its audit entry."""
        async with store_errors(self._db, "record relay key"):
            await self._db.execute(
                "INSERT INTO relay_signing_key (id, public_key, source, recorded_at) "
                "VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "public_key = excluded.public_key, source = excluded.source, "
                "recorded_at = excluded.recorded_at", (public_key, source, now))
            await self._append_audit([audit], now)

    async def add_checkpoint(self, body: str, sig: str, seq: int) -> None:
        """Keep a signed checkpoint of the audit chain head."""
        async with store_errors(self._db, "audit checkpoint"):
            await self._db.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (seq, body, sig) VALUES (?, ?, ?)",
                (seq, body, sig))

    # -- reads for staff, audit and metrics -----------------------------------

    async def audit_head(self) -> tuple[int, str]:
        """(last audit seq, its chain hash); (0, GENESIS) for an empty log."""
        return await in_connection(self._db, read_audit_head)

    async def audit_rows(self) -> list[tuple[AuditEntry, str, str]]:
        """Every audit entry with its stored prev hash and hash, in seq order."""
        async with self._db.execute(
                "SELECT seq, at, actor, action, purpose, target, detail, prev_hash, hash "
                "FROM audit_log ORDER BY seq") as cur:
            return [(AuditEntry(*r[:7]), r[7], r[8]) async for r in cur]

    async def audit_rows_after(self, seq: int) -> list[tuple[AuditEntry, str, str]]:
        """Audit entries after ``seq``, with their stored prev hash and hash, in order."""
        async with self._db.execute(
                "SELECT seq, at, actor, action, purpose, target, detail, prev_hash, hash "
                "FROM audit_log WHERE seq > ? ORDER BY seq", (seq,)) as cur:
            return [(AuditEntry(*r[:7]), r[7], r[8]) async for r in cur]

    async def checkpoints(self) -> list[tuple[str, str]]:
        """Stored signed checkpoints (body, sig)."""
        async with self._db.execute("SELECT body, sig FROM audit_checkpoints ORDER BY seq") as c:
            return [(r[0], r[1]) async for r in c]

    async def envelopes_of(self, engagement: str) -> list[StoredEnvelope]:
        """Stored rows of one engagement in arrival order."""
        async with self._db.execute(
                "SELECT envelope_id, engagement, hash, sender_key_id, role, seq, kind, "
                "received_at, ciphertext FROM envelopes WHERE engagement = ? "
                "ORDER BY received_at, rowid", (engagement,)) as cur:
            return [StoredEnvelope(*r) async for r in cur]

    async def engagements_for_token(self, token: bytes) -> list[str]:
        """Engagements a blind-index token maps to."""
        async with self._db.execute(
                "SELECT engagement FROM subject_index WHERE token = ? ORDER BY engagement",
                (token,)) as cur:
            return [r[0] async for r in cur]

    async def incomplete_engagements(self) -> dict[str, int]:
        """Engagement -> number of missing envelopes, for engagements with gaps."""
        async with self._db.execute(
                "SELECT engagement, missing FROM engagements WHERE complete = 0 "
                "AND erased_at IS NULL ORDER BY engagement") as cur:
            return {r[0]: int(r[1]) async for r in cur}

    async def stats(self) -> StoreStats:
        """Counts and on-disk size for /metrics."""
        async with self._db.execute(
                "SELECT (SELECT count(*) FROM envelopes), "
                "(SELECT count(*) FROM engagements WHERE erased_at IS NULL), "
                "(SELECT count(*) FROM engagements WHERE complete = 0 AND erased_at IS NULL), "
                "(SELECT count(*) FROM audit_log)") as cur:
            row = await cur.fetchone()
        assert row is not None
        size = sum(p.stat().st_size for p in self._path.parent.glob(self._path.name + "*")
                   if p.is_file())
        return StoreStats(int(row[0]), int(row[1]), int(row[2]), int(row[3]), size)

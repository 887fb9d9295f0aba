"""The vault's encrypted store (vault.db): the only module that speaks SQL to it.

One writer connection; every write is one transaction through ``store_errors`` so a
locked or full database raises StoreUnavailable with nothing written. Audit entries of
a write are appended in the same transaction, so the log and the data cannot disagree.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from envelope import canonical_json

from .audit import GENESIS, AuditEntry, entry_hash
from .database import checkpoint_truncate, open_database, store_errors
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
class EngagementState:
    """What ingest needs to know about an engagement already stored."""

    visitor_key: bytes | None
    erased: bool


@dataclass(frozen=True)
class CertifiedKey:
    """An agent signing key this vault certified, with its validity window."""

    agent: str
    not_before: int
    not_after: int


@dataclass(frozen=True)
class NewEnvelope:
    """One verified envelope ready to store (``ciphertext`` is under the data key)."""

    envelope_id: str
    engagement: str
    envelope_hash: str
    sender_key_id: str
    role: str
    seq: int
    kind: str
    vault_key_id: str
    ciphertext: bytes
    visitor_key: bytes | None = None
    end_final: dict[str, int] | None = None
    blind_tokens: tuple[bytes, ...] = ()


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


class VaultStore(StaffQueries, RelayQueries):
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
        """Checkpoint and close."""
        await checkpoint_truncate(self._db)
        await self._db.close()

    # -- reads used by ingest -------------------------------------------------

    async def _select_in(self, sql: str, values: Sequence[Any]) -> list[Any]:
        rows: list[Any] = []
        for i in range(0, len(values), 500):
            chunk = list(values[i:i + 500])
            query = sql.replace("(?*)", "(" + ",".join("?" * len(chunk)) + ")")
            async with self._db.execute(query, chunk) as cur:
                rows.extend(await cur.fetchall())
        return rows

    async def engagement_states(self, engagements: Iterable[str]) -> dict[str, EngagementState]:
        """Pinned visitor key and erasure tombstone of each known engagement."""
        rows = await self._select_in(
            "SELECT engagement, visitor_key, erased_at FROM engagements WHERE engagement IN (?*)",
            sorted(set(engagements)))
        return {r[0]: EngagementState(visitor_key=r[1], erased=r[2] is not None) for r in rows}

    async def known_envelopes(self, envelope_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """envelope id -> (engagement, hash) for ids already stored."""
        rows = await self._select_in(
            "SELECT envelope_id, engagement, hash FROM envelopes WHERE envelope_id IN (?*)",
            sorted(set(envelope_ids)))
        return {r[0]: (r[1], r[2]) for r in rows}

    async def taken_positions(self, positions: Iterable[tuple[str, str, int]]
                              ) -> set[tuple[str, str, int]]:
        """Which of these (engagement, sender key id, seq) positions are already stored."""
        wanted = sorted(set(positions))
        found: set[tuple[str, str, int]] = set()
        for i in range(0, len(wanted), 300):
            chunk = wanted[i:i + 300]
            values = ",".join(["(?, ?, ?)"] * len(chunk))
            params = [x for pos in chunk for x in pos]
            async with self._db.execute(
                    "SELECT engagement, sender_key_id, seq FROM envelopes "  # noqa: S608
                    f"WHERE (engagement, sender_key_id, seq) IN (VALUES {values})",
                    params) as cur:
                found |= {(r[0], r[1], int(r[2])) async for r in cur}
        return found

    async def certified_keys(self) -> dict[str, CertifiedKey]:
        """Signing key id -> certificate window, for every agent key this vault certified."""
        async with self._db.execute(
                "SELECT sig_key_id, agent, not_before, not_after FROM agent_certificates") as c:
            return {r[0]: CertifiedKey(r[1], r[2], r[3]) async for r in c}

    # -- writes ---------------------------------------------------------------

    async def _append_audit(self, records: Sequence[AuditRecord], now: int) -> None:
        # Read the head inside the write transaction (BEGIN IMMEDIATE holds the write
        # lock): a CLI command appending while `serve` runs cannot fork the chain.
        seq, head = await self.audit_head()
        for rec in records:
            seq += 1
            entry = AuditEntry(seq, now, rec.actor, rec.action, rec.purpose, rec.target,
                               canonical_json(rec.detail).decode())
            new_head = entry_hash(head, entry)
            await self._db.execute(
                "INSERT INTO audit_log (seq, at, actor, action, purpose, target, detail, "
                "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, now, entry.actor, entry.action, entry.purpose, entry.target,
                 entry.detail, head, new_head))
            head = new_head

    async def append_audit(self, records: Sequence[AuditRecord], now: int) -> None:
        """Append audit entries in their own transaction."""
        async with store_errors(self._db, "append audit"):
            await self._append_audit(records, now)

    async def commit_batch(self, envelopes: Sequence[NewEnvelope], now: int,
                           audit: Sequence[AuditRecord]) -> dict[str, int]:
        """Store a verified batch atomically; return engagement -> missing count for
        every touched engagement whose end frame is known (0 = complete)."""
        touched = sorted({e.engagement for e in envelopes})
        async with store_errors(self._db, "commit batch"):
            # An erasure by another process may have landed since ingest read the
            # tombstones: never write rows for an erased engagement (no resurrection).
            erased = {r[0] for r in await self._select_in(
                "SELECT engagement FROM engagements WHERE erased_at IS NOT NULL "
                "AND engagement IN (?*)", touched)}
            if erased:
                envelopes = [e for e in envelopes if e.engagement not in erased]
                touched = [e for e in touched if e not in erased]
            # executemany: one round trip to the database thread per statement kind,
            # not per row (the batch is what makes group commit pay off).
            await self._db.executemany(
                "INSERT INTO engagements (engagement, account, first_at, last_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(engagement) DO UPDATE SET last_at = ?",
                [(e, self.account, now, now, now) for e in touched])
            await self._db.executemany(
                "UPDATE engagements SET visitor_key = ? WHERE engagement = ? "
                "AND visitor_key IS NULL",
                [(e.visitor_key, e.engagement) for e in envelopes if e.visitor_key is not None])
            await self._merge_end_finals(envelopes)
            await self._db.executemany(
                "INSERT OR IGNORE INTO engagement_senders (engagement, sender_key_id, role) "
                "VALUES (?, ?, ?)",
                sorted({(e.engagement, e.sender_key_id, e.role) for e in envelopes}))
            await self._db.executemany(
                "INSERT INTO envelopes (envelope_id, engagement, hash, sender_key_id, role, "
                "seq, kind, received_at, vault_key_id, ciphertext) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.envelope_id, e.engagement, e.envelope_hash, e.sender_key_id, e.role, e.seq,
                  e.kind, now, e.vault_key_id, e.ciphertext) for e in envelopes])
            await self._db.executemany(
                "INSERT OR IGNORE INTO subject_index (token, engagement) VALUES (?, ?)",
                [(t, e.engagement) for e in envelopes for t in e.blind_tokens])
            # With the request, in one transaction: a crash before the mail goes out
            # leaves a job the mailer finds on its next start (not a lost request).
            await self._db.executemany(
                "INSERT OR IGNORE INTO mail_jobs (envelope_id, engagement, next_at, "
                "created_at) VALUES (?, ?, ?, ?)",
                [(e.envelope_id, e.engagement, now, now) for e in envelopes
                 if e.kind == "transcript-request"])
            gaps = await self._update_completeness(touched)
            await self._append_audit(audit, now)
        return gaps

    async def _merge_end_finals(self, envelopes: Sequence[NewEnvelope]) -> None:
        # Visitor and agent may both send an end frame: keep the highest last sequence
        # each one names per stream, so neither can hide the other's gap.
        finals: dict[str, dict[str, int]] = {}
        for env in envelopes:
            if env.end_final is not None:
                merged = finals.setdefault(env.engagement, {})
                for skid, last in env.end_final.items():
                    merged[skid] = max(last, merged.get(skid, 0))
        if not finals:
            return
        for eng, stored in await self._select_in(
                "SELECT engagement, end_final FROM engagements WHERE end_final IS NOT NULL "
                "AND engagement IN (?*)", sorted(finals)):
            for skid, last in json.loads(stored).items():
                finals[eng][skid] = max(int(last), finals[eng].get(skid, 0))
        await self._db.executemany(
            "UPDATE engagements SET end_final = ? WHERE engagement = ?",
            [(json.dumps(f, sort_keys=True), eng) for eng, f in finals.items()])

    async def _update_completeness(self, engagements: Sequence[str]) -> dict[str, int]:
        rows = await self._select_in(
            "SELECT engagement, end_final FROM engagements WHERE end_final IS NOT NULL "
            "AND engagement IN (?*)", engagements)
        out: dict[str, int] = {}
        for eng, final_json in rows:
            missing = 0
            for skid, last in json.loads(final_json).items():
                async with self._db.execute(
                        "SELECT count(DISTINCT seq) FROM envelopes WHERE engagement = ? AND "
                        "sender_key_id = ? AND seq BETWEEN 1 AND ?", (eng, skid, last)) as cur:
                    row = await cur.fetchone()
                missing += int(last) - (int(row[0]) if row else 0)
            await self._db.execute(
                "UPDATE engagements SET complete = ?, missing = ? WHERE engagement = ?",
                (1 if missing == 0 else 0, missing, eng))
            out[eng] = missing
        return out

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
        async with self._db.execute(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

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

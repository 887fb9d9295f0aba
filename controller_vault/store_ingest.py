"""vault.db work behind ingest, one thread hop per batch step (part of the store: SQL here).

``IngestQueries`` is mixed into :class:`~controller_vault.store.VaultStore` and uses its
one writer connection. A batch's reads (:meth:`IngestQueries.ingest_view`) and its
commit (:meth:`IngestQueries.commit_batch`) are each one plain function of the
``sqlite3`` connection run in the connection's thread (database.in_connection,
database.write_transaction), not a hop per statement, cursor and fetch.

The reads ask only for what the batch's checks use: certificates of the batch's agent
and bot keys (not every certificate ever issued), and the relay-role facts (party
envelopes held, connection-info held) only for engagements the batch has relay-role
envelopes for, since only those are checked against them.

The audit chain's append (:func:`append_audit_rows`) lives here too, so the batch
commit and every other writer of the log share one implementation of the chain.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosqlite

from envelope import canonical_json

from .audit import GENESIS, AuditEntry, entry_hash
from .database import in_connection, select_in, write_transaction
from .errors import StoreUnavailable
from .store_relay import (
    RelayPin,
    engagements_with_connection_info,
    engagements_with_parties,
    read_relay_pin,
)

if TYPE_CHECKING:
    from .store import AuditRecord

__all__ = ["CertifiedKey", "EngagementState", "IngestQueries", "IngestView", "NewEnvelope",
           "append_audit_rows", "read_audit_head"]


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
class IngestView:
    """What is stored about one batch's envelopes, read in one hop before checking it."""

    states: dict[str, EngagementState]
    known: dict[str, tuple[str, str]]
    taken: set[tuple[str, str, int]]
    certified: dict[str, CertifiedKey]
    relay_pin: RelayPin | None
    with_parties: set[str]
    with_conninfo: set[str]


def read_audit_head(conn: sqlite3.Connection) -> tuple[int, str]:
    """(last audit seq, its chain hash); (0, GENESIS) for an empty log."""
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def append_audit_rows(conn: sqlite3.Connection, records: Sequence[AuditRecord],
                      now: int) -> None:
    """Chain ``records`` onto the log (inside the caller's write transaction)."""
    # The head is read inside the write transaction (BEGIN IMMEDIATE holds the write
    # lock): a CLI command appending while `serve` runs cannot fork the chain.
    seq, head = read_audit_head(conn)
    rows = []
    for rec in records:
        seq += 1
        entry = AuditEntry(seq, now, rec.actor, rec.action, rec.purpose, rec.target,
                           canonical_json(rec.detail).decode())
        new_head = entry_hash(head, entry)
        rows.append((seq, now, entry.actor, entry.action, entry.purpose, entry.target,
                     entry.detail, head, new_head))
        head = new_head
    conn.executemany(
        "INSERT INTO audit_log (seq, at, actor, action, purpose, target, detail, "
        "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _read_engagement_states(conn: sqlite3.Connection, engagements: Iterable[str]
                           ) -> dict[str, EngagementState]:
    """Pinned visitor key and erasure tombstone of each known engagement."""
    return {r[0]: EngagementState(visitor_key=r[1], erased=r[2] is not None)
            for r in select_in(conn, "SELECT engagement, visitor_key, erased_at FROM "
                               "engagements WHERE engagement IN (?*)", sorted(set(engagements)))}


def _read_known_envelopes(conn: sqlite3.Connection, envelope_ids: Iterable[str]
                         ) -> dict[str, tuple[str, str]]:
    """envelope id -> (engagement, hash) for ids already stored."""
    return {r[0]: (r[1], r[2]) for r in select_in(
        conn, "SELECT envelope_id, engagement, hash FROM envelopes WHERE envelope_id IN (?*)",
        sorted(set(envelope_ids)))}


def _read_certified_keys(conn: sqlite3.Connection, key_ids: Iterable[str] | None = None
                        ) -> dict[str, CertifiedKey]:
    """Signing key id -> certificate window, for ``key_ids`` (None: every certified key)."""
    sql = "SELECT sig_key_id, agent, not_before, not_after FROM agent_certificates"
    rows = conn.execute(sql).fetchall() if key_ids is None else select_in(
        conn, sql + " WHERE sig_key_id IN (?*)", sorted(set(key_ids)))
    return {r[0]: CertifiedKey(r[1], r[2], r[3]) for r in rows}


def _taken_positions(conn: sqlite3.Connection, positions: Iterable[tuple[str, str, int]]
                     ) -> set[tuple[str, str, int]]:
    wanted = sorted(set(positions))
    found: set[tuple[str, str, int]] = set()
    for i in range(0, len(wanted), 300):
        chunk = wanted[i:i + 300]
        values = ",".join(["(?, ?, ?)"] * len(chunk))
        # A join from the wanted rows, so each is one SEARCH of the unique index. The
        # form "(engagement, sender_key_id, seq) IN (VALUES ...)" made SQLite scan the
        # whole index per batch: ~28 ms per batch at 200,000 stored envelopes, growing
        # with the vault (test_vault_store_hops checks the plan).
        found |= {(r[0], r[1], int(r[2])) for r in conn.execute(
            f"WITH wanted (e, s, q) AS (VALUES {values}) "  # noqa: S608 (placeholders only)
            "SELECT v.engagement, v.sender_key_id, v.seq FROM wanted "
            "JOIN envelopes v ON v.engagement = wanted.e AND v.sender_key_id = wanted.s "
            "AND v.seq = wanted.q", [x for pos in chunk for x in pos])}
    return found


def _commit_rows(conn: sqlite3.Connection, account: str, envelopes: Sequence[NewEnvelope],
                 now: int, audit: Sequence[AuditRecord]) -> dict[str, int]:
    touched = sorted({e.engagement for e in envelopes})
    # An erasure by another process may have landed since ingest read the tombstones:
    # never write rows for an erased engagement (no resurrection).
    erased = {r[0] for r in select_in(
        conn, "SELECT engagement FROM engagements WHERE erased_at IS NOT NULL "
        "AND engagement IN (?*)", touched)}
    if erased:
        envelopes = [e for e in envelopes if e.engagement not in erased]
        touched = [e for e in touched if e not in erased]
    conn.executemany(
        "INSERT INTO engagements (engagement, account, first_at, last_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(engagement) DO UPDATE SET last_at = ?",
        [(e, account, now, now, now) for e in touched])
    conn.executemany(
        "UPDATE engagements SET visitor_key = ? WHERE engagement = ? AND visitor_key IS NULL",
        [(e.visitor_key, e.engagement) for e in envelopes if e.visitor_key is not None])
    _merge_end_finals(conn, envelopes)
    conn.executemany(
        "INSERT OR IGNORE INTO engagement_senders (engagement, sender_key_id, role) "
        "VALUES (?, ?, ?)", sorted({(e.engagement, e.sender_key_id, e.role) for e in envelopes}))
    conn.executemany(
        "INSERT INTO envelopes (envelope_id, engagement, hash, sender_key_id, role, "
        "seq, kind, received_at, vault_key_id, ciphertext) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(e.envelope_id, e.engagement, e.envelope_hash, e.sender_key_id, e.role, e.seq,
          e.kind, now, e.vault_key_id, e.ciphertext) for e in envelopes])
    conn.executemany(
        "INSERT OR IGNORE INTO subject_index (token, engagement) VALUES (?, ?)",
        [(t, e.engagement) for e in envelopes for t in e.blind_tokens])
    # With the request, in one transaction: a crash before the mail goes out leaves a
    # job the mailer finds on its next start (not a lost request).
    conn.executemany(
        "INSERT OR IGNORE INTO mail_jobs (envelope_id, engagement, next_at, created_at) "
        "VALUES (?, ?, ?, ?)", [(e.envelope_id, e.engagement, now, now) for e in envelopes
                                if e.kind == "transcript-request"])
    gaps = _update_completeness(conn, touched)
    append_audit_rows(conn, audit, now)
    return gaps


def _merge_end_finals(conn: sqlite3.Connection, envelopes: Sequence[NewEnvelope]) -> None:
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
    for eng, stored in select_in(
            conn, "SELECT engagement, end_final FROM engagements WHERE end_final IS NOT NULL "
            "AND engagement IN (?*)", sorted(finals)):
        for skid, last in json.loads(stored).items():
            finals[eng][skid] = max(int(last), finals[eng].get(skid, 0))
    conn.executemany("UPDATE engagements SET end_final = ? WHERE engagement = ?",
                     [(json.dumps(f, sort_keys=True), eng) for eng, f in finals.items()])


def _update_completeness(conn: sqlite3.Connection, engagements: Sequence[str]
                         ) -> dict[str, int]:
    out: dict[str, int] = {}
    for eng, final_json in select_in(
            conn, "SELECT engagement, end_final FROM engagements WHERE end_final IS NOT NULL "
            "AND engagement IN (?*)", engagements):
        missing = 0
        for skid, last in json.loads(final_json).items():
            row = conn.execute(
                "SELECT count(DISTINCT seq) FROM envelopes WHERE engagement = ? AND "
                "sender_key_id = ? AND seq BETWEEN 1 AND ?", (eng, skid, last)).fetchone()
            missing += int(last) - (int(row[0]) if row else 0)
        conn.execute("UPDATE engagements SET complete = ?, missing = ? WHERE engagement = ?",
                     (1 if missing == 0 else 0, missing, eng))
        out[eng] = missing
    return out


class IngestQueries:
    """A batch's reads and its commit (mixed into VaultStore)."""

    _db: aiosqlite.Connection
    account: str

    async def ingest_view(self, *, engagements: Iterable[str], envelope_ids: Iterable[str],
                          positions: Iterable[tuple[str, str, int]],
                          certified_senders: Iterable[str],
                          relay_engagements: Iterable[str]) -> IngestView:
        """Everything ingest checks a batch against, in one hop (StoreUnavailable if the
        database cannot be read: no receipt, the relay redelivers)."""
        def read(conn: sqlite3.Connection) -> IngestView:
            return IngestView(
                states=_read_engagement_states(conn, engagements),
                known=_read_known_envelopes(conn, envelope_ids),
                taken=_taken_positions(conn, positions),
                certified=_read_certified_keys(conn, certified_senders),
                relay_pin=read_relay_pin(conn),
                with_parties=engagements_with_parties(conn, relay_engagements),
                with_conninfo=engagements_with_connection_info(conn, relay_engagements))
        try:
            return await in_connection(self._db, read)
        except sqlite3.Error as exc:
            raise StoreUnavailable("ingest reads: database unavailable "
                                   f"({exc.__class__.__name__})") from None

    async def engagement_states(self, engagements: Iterable[str]) -> dict[str, EngagementState]:
        """Pinned visitor key and erasure tombstone of each known engagement."""
        return await in_connection(self._db, lambda c: _read_engagement_states(c, engagements))

    async def known_envelopes(self, envelope_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """envelope id -> (engagement, hash) for ids already stored."""
        return await in_connection(self._db, lambda c: _read_known_envelopes(c, envelope_ids))

    async def certified_keys(self) -> dict[str, CertifiedKey]:
        """Signing key id -> certificate window, for every agent key this vault certified."""
        return await in_connection(self._db, _read_certified_keys)

    async def commit_batch(self, envelopes: Sequence[NewEnvelope], now: int,
                           audit: Sequence[AuditRecord]) -> dict[str, int]:
        """Store a verified batch atomically in one hop; return engagement -> missing count
        for every touched engagement whose end frame is known (0 = complete)."""
        account = self.account
        return await write_transaction(
            self._db, "commit batch", lambda c: _commit_rows(c, account, envelopes, now, audit))

"""The staff side's queries on vault.db (part of the store: SQL here).

``StaffQueries`` is mixed into :class:`~controller_vault.store.VaultStore` and uses its
one writer connection. Reads return ids, times and counts only; personal data stays
sealed in ``envelopes.ciphertext`` and is opened by the caller with the data key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from .database import store_errors

if TYPE_CHECKING:
    from .store import AuditRecord

__all__ = ["EngagementSummary", "MailJob", "PendingNotice", "RetainedRow", "StaffQueries"]

_MAX_LIST = 1000


@dataclass(frozen=True)
class EngagementSummary:
    """One engagement as staff lists it (no personal data)."""

    engagement: str
    account: str
    first_at: int
    last_at: int
    complete: bool | None          # None: no end frame yet
    missing: int
    erased_at: int | None
    agents: tuple[str, ...]

    @property
    def incomplete(self) -> bool:
        """True unless the end frame arrived and every envelope it names is stored."""
        return self.complete is not True

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the list routes."""
        return {"engagement_id": self.engagement, "started_at": self.first_at,
                "last_activity_at": self.last_at, "complete": self.complete is True,
                "incomplete": self.incomplete, "missing": self.missing,
                "agents": list(self.agents)}


@dataclass(frozen=True)
class RetainedRow:
    """What retention needs of one live engagement: its last activity and stored kinds."""

    engagement: str
    account: str
    last_at: int
    kinds: frozenset[str]


@dataclass(frozen=True)
class PendingNotice:
    """A signed erasure notice not yet recorded by the relay."""

    notice_id: int
    notice: dict[str, str]


@dataclass(frozen=True)
class MailJob:
    """A transcript email still to send: ids, the request's sender, attempts so far."""

    envelope_id: str
    engagement: str
    attempts: int
    sender_key_id: str
    role: str


class StaffQueries:
    """Named staff operations on vault.db (mixed into VaultStore)."""

    _db: aiosqlite.Connection
    account: str
    _append_audit: Callable[[Sequence[AuditRecord], int], Awaitable[None]]

    async def _agents_of(self, engagements: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, set[str]] = {}
        for i in range(0, len(engagements), 500):
            chunk = list(engagements[i:i + 500])
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                    "SELECT s.engagement, c.agent FROM engagement_senders s "  # noqa: S608 (placeholders only)
                    "JOIN agent_certificates c ON c.sig_key_id = s.sender_key_id "
                    f"WHERE s.engagement IN ({marks})", chunk) as cur:
                async for eng, agent in cur:
                    out.setdefault(eng, set()).add(agent)
        return {e: tuple(sorted(a)) for e, a in out.items()}

    async def _summaries(self, where: str, params: Sequence[Any],
                         limit: int) -> list[EngagementSummary]:
        async with self._db.execute(
                "SELECT engagement, account, first_at, last_at, complete, missing, erased_at "  # noqa: S608 (fixed clauses)
                f"FROM engagements WHERE {where} ORDER BY first_at, engagement LIMIT ?",
                (*params, min(limit, _MAX_LIST))) as cur:
            rows = list(await cur.fetchall())
        agents = await self._agents_of([r[0] for r in rows])
        return [EngagementSummary(r[0], r[1], int(r[2]), int(r[3]),
                                  None if r[4] is None else bool(r[4]), int(r[5]),
                                  None if r[6] is None else int(r[6]), agents.get(r[0], ()))
                for r in rows]

    async def list_engagements(self, *, since: int | None = None, until: int | None = None,
                               agent: str | None = None, token: bytes | None = None,
                               limit: int = 200, after: tuple[int, str] | None = None
                               ) -> list[EngagementSummary]:
        """Live (not erased) engagements started in [since, until], by agent or subject,
        in (start, id) order; ``after`` = the last (start, id) of the previous page."""
        clauses: list[str] = ["erased_at IS NULL"]
        params: list[Any] = []
        if after is not None:
            clauses.append("(first_at, engagement) > (?, ?)")
            params.extend(after)
        if since is not None:
            clauses.append("first_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("first_at <= ?")
            params.append(until)
        if agent is not None:
            clauses.append("engagement IN (SELECT s.engagement FROM engagement_senders s "
                           "JOIN agent_certificates c ON c.sig_key_id = s.sender_key_id "
                           "WHERE c.agent = ?)")
            params.append(agent)
        if token is not None:
            clauses.append("engagement IN (SELECT engagement FROM subject_index "
                           "WHERE token = ?)")
            params.append(token)
        return await self._summaries(" AND ".join(clauses), params, limit)

    async def engagement_summary(self, engagement: str) -> EngagementSummary | None:
        """One engagement (erased ones included, with ``erased_at`` set), or None."""
        found = await self._summaries("engagement = ?", [engagement], 1)
        return found[0] if found else None

    async def agent_names(self) -> dict[str, str]:
        """Signing key id -> agent pseudonym, for every agent this vault certified."""
        async with self._db.execute("SELECT sig_key_id, agent FROM agent_certificates") as c:
            return {r[0]: r[1] async for r in c}

    async def retained_engagements(self) -> list[RetainedRow]:
        """Every live engagement with its last activity and the envelope kinds it holds."""
        async with self._db.execute(
                "SELECT e.engagement, e.account, e.last_at, group_concat(DISTINCT v.kind) "
                "FROM engagements e JOIN envelopes v ON v.engagement = e.engagement "
                "WHERE e.erased_at IS NULL GROUP BY e.engagement ORDER BY e.engagement") as c:
            return [RetainedRow(r[0], r[1], int(r[2]), frozenset(str(r[3]).split(",")))
                    async for r in c]

    async def delete_kinds(self, engagement: str, kinds: Sequence[str], now: int,
                           audit: Any) -> int:
        """Delete one engagement's envelopes of ``kinds`` (partial retention); audited."""
        marks = ",".join("?" * len(kinds))
        async with store_errors(self._db, "delete expired records"):
            cur = await self._db.execute(
                f"DELETE FROM envelopes WHERE engagement = ? AND kind IN ({marks})",  # noqa: S608 (placeholders only)
                (engagement, *kinds))
            n = int(cur.rowcount)
            await self._append_audit([audit], now)
        # Closed at once: an open cursor on the checkpoint would keep the statement
        # running and fail the next one-hop write's COMMIT (database.write_transaction).
        async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)"):
            pass
        return n

    async def pending_notices(self, limit: int = 100) -> list[PendingNotice]:
        """Signed erasure notices the relay has not recorded yet, oldest first."""
        async with self._db.execute(
                "SELECT id, notice FROM erasure_notices WHERE recorded_at IS NULL "
                "ORDER BY id LIMIT ?", (limit,)) as cur:
            return [PendingNotice(int(r[0]), json.loads(r[1])) async for r in cur]

    async def mark_notice_recorded(self, notice_id: int, now: int) -> None:
        """The relay answered erasure-recorded for this notice."""
        async with store_errors(self._db, "mark erasure notice"):
            await self._db.execute(
                "UPDATE erasure_notices SET recorded_at = ? WHERE id = ? "
                "AND recorded_at IS NULL", (now, notice_id))

    async def notice_counts(self) -> tuple[int, int]:
        """(pending, recorded) erasure notices."""
        async with self._db.execute(
                "SELECT count(*) - count(recorded_at), count(recorded_at) "
                "FROM erasure_notices") as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # transcript email jobs (schema v4) ---------------------------------------------

    async def due_mail_jobs(self, now: int, limit: int = 16) -> list[MailJob]:
        """Jobs whose next attempt is due, oldest first, with their request's sender."""
        async with self._db.execute(
                "SELECT j.envelope_id, j.engagement, j.attempts, e.sender_key_id, e.role "
                "FROM mail_jobs j JOIN envelopes e ON e.envelope_id = j.envelope_id "
                "WHERE j.next_at <= ? ORDER BY j.next_at, j.envelope_id LIMIT ?",
                (now, limit)) as cur:
            return [MailJob(str(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]))
                    async for r in cur]

    async def next_mail_at(self) -> int | None:
        """When the next job is due (None: no job)."""
        async with self._db.execute("SELECT min(next_at) FROM mail_jobs") as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def lease_mail_job(self, envelope_id: str, now: int, until: int) -> bool:
        """Hold a job due at ``now`` while it is sent (not due before ``until``); False:
        it is gone, or not due (leased by another sender, or waiting for its retry)."""
        # The due check and the update are one statement: of two senders that both read
        # the job as due (a second serve, a task racing the worker), only one leases it,
        # so the visitor is not mailed twice by a stale read.
        async with store_errors(self._db, "lease mail job"):
            cur = await self._db.execute(
                "UPDATE mail_jobs SET next_at = ? WHERE envelope_id = ? AND next_at <= ?",
                (until, envelope_id, now))
            return bool(cur.rowcount)

    async def finish_mail_job(self, envelope_id: str, audit: AuditRecord, now: int) -> None:
        """Sent, refused or given up: drop the job and audit the outcome, atomically."""
        async with store_errors(self._db, "finish mail job"):
            await self._db.execute("DELETE FROM mail_jobs WHERE envelope_id = ?",
                                   (envelope_id,))
            await self._append_audit([audit], now)

    async def retry_mail_job(self, envelope_id: str, next_at: int, audit: AuditRecord,
                             now: int) -> None:
        """A send failed: count the attempt, schedule the next one, audit it."""
        async with store_errors(self._db, "retry mail job"):
            await self._db.execute(
                "UPDATE mail_jobs SET attempts = attempts + 1, next_at = ? "
                "WHERE envelope_id = ?", (next_at, envelope_id))
            await self._append_audit([audit], now)

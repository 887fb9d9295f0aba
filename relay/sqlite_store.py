"""The embedded store: one SQLite file (WAL), one writer connection, one reader.

Writes go through a group-commit queue (relay/group_commit.py): the writer takes every
pending write (up to ``max_batch``), runs the whole batch in one hop to its own thread,
each write inside its own SAVEPOINT in one transaction, commits once, then resolves the
callers. A caller is told "done" only after the commit, which is what lets the relay
acknowledge a frame only once it is durable. Writes are therefore plain functions of a
``sqlite3.Connection`` that run in the writer thread. Reads use a second connection
(aiosqlite), so they never see a batch before it commits.

``secure_delete`` is on so deleted ciphertext and transcripts do not linger in free
pages of the file.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from .group_commit import GroupCommitter, OutboxAppend, OutboxHook, Write, uncount_outbox
from .sqlite_link_store import LinkStoreMixin
from .sqlite_schema import SCHEMA_VERSION, migrate, refuse_newer
from .store import (
    Account,
    AgentCertificateRow,
    DataKeyRow,
    DuplicateEnvelope,
    EngagementRecord,
    ModeChange,
    OutboxEntry,
    OutboxStats,
    TokenRecord,
    TranscriptRow,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

_ENG_FIELDS = ("engagement", "account", "mode", "started_at", "ended_at", "queue_wait_s",
               "first_response_s", "visitor_messages", "agent_messages", "visitor_bytes",
               "agent_bytes", "agent", "transfers", "outcome", "receipts")
# The hub owns these columns; receipts, rejections and erasures belong to the vault
# link and live in their own tables, so a record rewrite never resets them.
_HUB_FIELDS = tuple(f for f in _ENG_FIELDS if f != "receipts")


class SqliteStore(LinkStoreMixin):
    """:class:`relay.store.RelayStore` on one SQLite file."""

    def __init__(self, path: str | pathlib.Path, *, max_batch: int = 256) -> None:
        self.path = pathlib.Path(path)
        self.max_batch = max_batch
        self._reader: aiosqlite.Connection | None = None
        self._committer: GroupCommitter | None = None
        #: Called after each commit with the outbox entries it committed (their seqs
        #: set), in commit order: the app hands them to the live vault links.
        self.on_outbox_committed: OutboxHook | None = None

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        # Opened in the writer thread and only ever used there (check_same_thread off
        # only so close() may be handed the object; it runs in that thread too).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        return conn

    async def open(self) -> None:
        """Open both connections, apply schema upgrades, start the writer.

        A file of a newer schema raises :class:`relay.errors.SchemaNewer`, unchanged.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_newer(self.path)
        self._committer = GroupCommitter(self._connect_writer, self.max_batch,
                                         lambda entries: self._outbox_committed(entries))
        await self._committer.open()
        self.path.chmod(0o600)
        try:
            await self._committer.run_alone(migrate)
        except BaseException:
            await self._committer.close()
            raise
        await self._committer.run_alone(_recount_outbox)
        self._reader = await self._connect()
        self._committer.start()

    async def close(self) -> None:
        """Commit everything queued, then close (graceful shutdown flushes the outbox)."""
        if self._committer is not None:
            await self._committer.close()
        if self._reader is not None:
            await self._reader.close()
        self._reader = None

    def _outbox_committed(self, entries: list[OutboxEntry]) -> None:
        if self.on_outbox_committed is not None:
            self.on_outbox_committed(entries)

    @property
    def batches_committed(self) -> int:
        """Transactions committed by the group-commit writer."""
        return self._committer.batches_committed if self._committer else 0

    async def _write(self, op: Write) -> Any:
        assert self._committer is not None, "store not open"
        return await self._committer.submit(op)

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        assert self._reader is not None, "store not open"
        # Execute and fetch in ONE hop to the reader thread, so the statement is finished
        # (and its read transaction closed) before any other task's read runs. With two
        # hops, a concurrent task's read landed between them and shared the first read's
        # WAL snapshot: a token committed a moment earlier was refused as unknown
        # (auth.bad_token under load; tests/relay/test_relay_read_snapshot.py).
        return list(await self._reader.execute_fetchall(sql, args))

    # accounts -----------------------------------------------------------------

    async def create_account(self, account: Account) -> bool:
        """Insert; False when the id exists."""
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO accounts (account, mode, origins, retention_days,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (account.account, account.mode, json.dumps(list(account.origins)),
                 account.retention_days, account.created_at))
            return cur.rowcount == 1
        return bool(await self._write(op))

    @staticmethod
    def _account(row: Any) -> Account:
        return Account(account=row[0], mode=row[1], origins=tuple(json.loads(row[2])),
                       retention_days=row[3], identity_key=row[4],
                       key_statement=json.loads(row[5]) if row[5] else None,
                       vault_key_id=row[6], vault_key=row[7], created_at=row[8])

    _ACCOUNT_COLS = ("account, mode, origins, retention_days, identity_key, key_statement,"
                     " vault_key_id, vault_key, created_at")

    async def get_account(self, account: str) -> Account | None:
        """One account or None."""
        rows = await self._fetch(f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE account=?",
                                 (account,))
        return self._account(rows[0]) if rows else None

    async def list_accounts(self) -> list[Account]:
        """Every account."""
        rows = await self._fetch(f"SELECT {self._ACCOUNT_COLS} FROM accounts ORDER BY account")
        return [self._account(r) for r in rows]

    async def set_vault(self, account: str, identity_key: bytes, statement: dict[str, str],
                        vault_key_id: str, vault_key: bytes) -> None:
        """Store a verified pairing."""
        await self._write(_exec(
            "UPDATE accounts SET identity_key=?, key_statement=?, vault_key_id=?, vault_key=?"
            " WHERE account=?",
            (identity_key, json.dumps(statement), vault_key_id, vault_key, account)))

    async def set_mode(self, account: str, mode: str, actor: str, at: int) -> None:
        """Change the mode and record the change, in one transaction."""
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE accounts SET mode=? WHERE account=?", (mode, account))
            conn.execute("INSERT INTO mode_changes (account, mode, actor, at)"
                               " VALUES (?, ?, ?, ?)", (account, mode, actor, at))
        await self._write(op)

    async def mode_changes(self, account: str) -> list[ModeChange]:
        """The recorded toggles, oldest first."""
        rows = await self._fetch("SELECT account, mode, actor, at FROM mode_changes"
                                 " WHERE account=? ORDER BY id", (account,))
        return [ModeChange(*r) for r in rows]

    # tokens and certificates ------------------------------------------------------

    async def add_token(self, token_hash: str, record: TokenRecord, at: int) -> None:
        """Store a hashed token."""
        await self._write(_exec(
            "INSERT INTO tokens (token_hash, kind, account, agent, created_at)"
            " VALUES (?, ?, ?, ?, ?)", (token_hash, record.kind, record.account, record.agent,
                                        at)))

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """Look a hashed token up (the hash is the key: no timing on the token itself)."""
        rows = await self._fetch("SELECT kind, account, agent FROM tokens WHERE token_hash=?",
                                 (token_hash,))
        return TokenRecord(*rows[0]) if rows else None

    async def add_agent_certificate(self, row: AgentCertificateRow, at: int) -> None:
        """Store (or replace) a verified agent certificate."""
        await self._write(_exec(
            "INSERT OR REPLACE INTO agent_certificates (account, key_id, agent, certificate,"
            " created_at) VALUES (?, ?, ?, ?, ?)",
            (row.account, row.key_id, row.agent, json.dumps(row.certificate), at)))

    async def delete_agent_certificate(self, account: str, key_id: str) -> bool:
        """Remove one agent certificate; False when there was none."""
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM agent_certificates WHERE account=? AND"
                                     " key_id=?", (account, key_id))
            return cur.rowcount == 1
        return bool(await self._write(op))

    async def agent_certificates(self, account: str) -> list[AgentCertificateRow]:
        """The account's agent certificates."""
        rows = await self._fetch("SELECT account, key_id, agent, certificate FROM"
                                 " agent_certificates WHERE account=? ORDER BY created_at,"
                                 " key_id", (account,))
        return [AgentCertificateRow(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def agent_certificate(self, account: str, key_id: str) -> AgentCertificateRow | None:
        """One certificate by its key id (a primary-key lookup), or None."""
        # Each agent connect used to read (and JSON-parse) every certificate of the
        # account: quadratic set-up time as an account grew to thousands of agents.
        rows = await self._fetch("SELECT account, key_id, agent, certificate FROM"
                                 " agent_certificates WHERE account=? AND key_id=?",
                                 (account, key_id))
        return AgentCertificateRow(rows[0][0], rows[0][1], rows[0][2],
                                   json.loads(rows[0][3])) if rows else None

    # engagements ----------------------------------------------------------------

    async def upsert_engagements(self, records: Sequence[EngagementRecord]) -> None:
        """Write engagement records (group-committed)."""
        cols = ", ".join(_HUB_FIELDS)
        marks = ", ".join("?" for _ in _HUB_FIELDS)
        sets = ", ".join(f"{f}=excluded.{f}" for f in _HUB_FIELDS if f != "engagement")
        rows = [tuple(getattr(r, f) for f in _HUB_FIELDS) for r in records]
        await self._write(_exec_many(
            f"INSERT INTO engagements ({cols}) VALUES ({marks})"
            f" ON CONFLICT(engagement) DO UPDATE SET {sets}", rows))

    async def list_engagements(self, account: str, limit: int = 1000) -> list[EngagementRecord]:
        """The account's records, newest first, with the link's receipts and erasures."""
        cols = ", ".join(f"e.{f}" for f in _ENG_FIELDS if f != "receipts")
        rows = await self._fetch(
            f"SELECT {cols},"
            " (SELECT coalesce(sum(r.envelopes), 0) FROM engagement_receipts r"
            "  WHERE r.account=e.account AND r.engagement=e.engagement),"
            " (SELECT count(*) FROM engagement_rejections j"
            "  WHERE j.account=e.account AND j.engagement=e.engagement),"
            " x.erased_at, x.rule,"
            " (SELECT group_concat(r.receipt_hash, ',') FROM engagement_receipts r"
            "  WHERE r.account=e.account AND r.engagement=e.engagement)"
            " FROM engagements e LEFT JOIN engagement_erasures x"
            "  ON x.account=e.account AND x.engagement=e.engagement"
            " WHERE e.account=? ORDER BY e.started_at DESC, e.engagement LIMIT ?",
            (account, limit))
        names = [f for f in _ENG_FIELDS if f != "receipts"]
        out = []
        for r in rows:
            base = dict(zip(names, r[:len(names)], strict=True))
            receipts, rejected, erased_at, rule, hashes = r[len(names):]
            out.append(EngagementRecord(
                **base, receipts=int(receipts), rejected=int(rejected), erased_at=erased_at,
                erasure_rule=rule,
                receipt_hashes=tuple(sorted(hashes.split(","))) if hashes else ()))
        return out

    async def add_receipts(self, account: str, engagement: str, count: int) -> None:
        """Count receipted envelopes on an engagement record (without a receipt hash)."""
        await self._write(_exec(
            "INSERT INTO engagement_receipts (account, engagement, receipt_hash, envelopes, at)"
            " VALUES (?, ?, '', ?, 0) ON CONFLICT(account, engagement, receipt_hash)"
            " DO UPDATE SET envelopes = envelopes + excluded.envelopes",
            (account, engagement, count)))

    # outbox -------------------------------------------------------------------

    async def append_outbox(self, entries: Sequence[OutboxEntry]) -> list[int]:
        """Append envelopes; return their outbox sequences once committed."""
        try:
            result: list[int] = await self._write(OutboxAppend(entries))
        except sqlite3.IntegrityError as exc:
            # outbox_by_envelope is unique per account: the same envelope sent twice is
            # a replay, refused as such (the group committer retries a failed merged
            # append one by one, so only this write failed).
            raise DuplicateEnvelope("envelope id already in the outbox") from exc
        return result

    async def read_outbox(self, account: str, after_seq: int, limit: int) -> list[OutboxEntry]:
        """The backlog in order, entries with ``seq > after_seq``."""
        rows = await self._fetch(
            "SELECT account, seq, envelope_id, engagement, envelope_hash, data, created_at"
            " FROM outbox WHERE account=? AND seq>? ORDER BY seq LIMIT ?",
            (account, after_seq, limit))
        return [OutboxEntry(*r) for r in rows]

    async def delete_outbox(self, account: str, envelope_id: str, envelope_hash: str) -> bool:
        """Delete one acknowledged entry; False when nothing matched."""
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("DELETE FROM outbox WHERE account=? AND envelope_id=?"
                               " AND envelope_hash=? RETURNING length(data)",
                               (account, envelope_id, envelope_hash)).fetchone()
            if row is None:
                return False
            uncount_outbox(conn, account, 1, int(row[0]))
            return True
        return bool(await self._write(op))

    async def outbox_stats(self, account: str | None = None) -> OutboxStats:
        """Backlog of one account or of all.

        Constant work per account, whatever the backlog: the totals are the counters every
        outbox insert and delete moves (schema 004), and the oldest entry is the first by
        sequence (the one waiting longest), found through the primary key.
        """
        where, args = ("WHERE c.account=?", (account,)) if account else ("", ())
        rows = await self._fetch(
            "SELECT coalesce(sum(c.entries), 0), coalesce(sum(c.bytes), 0),"
            " min((SELECT o.created_at FROM outbox o WHERE o.account=c.account"
            " ORDER BY o.seq LIMIT 1)) FROM outbox_counters c " + where, args)
        return OutboxStats(int(rows[0][0]), int(rows[0][1]), rows[0][2])

    # standard-mode transcripts -------------------------------------------------------

    async def add_data_key(self, row: DataKeyRow, at: int) -> None:
        """Store a new active data key; older ones become inactive."""
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE data_keys SET active=0 WHERE account=?", (row.account,))
            conn.execute("INSERT INTO data_keys (account, key_id, wrapped, created_at,"
                               " active) VALUES (?, ?, ?, ?, 1)",
                               (row.account, row.key_id, row.wrapped, at))
        await self._write(op)

    async def data_keys(self, account: str) -> list[DataKeyRow]:
        """Every data key of an account, active first."""
        rows = await self._fetch("SELECT account, key_id, wrapped, active FROM data_keys"
                                 " WHERE account=? ORDER BY active DESC, created_at DESC",
                                 (account,))
        return [DataKeyRow(r[0], r[1], r[2], bool(r[3])) for r in rows]

    async def replace_wrapped_keys(self, rows: Sequence[DataKeyRow]) -> None:
        """Rewrite wrapped data keys (master key rotation), all in one transaction."""
        args = [(r.wrapped, r.account, r.key_id) for r in rows]
        await self._write(_exec_many(
            "UPDATE data_keys SET wrapped=? WHERE account=? AND key_id=?", args))

    async def append_transcript(self, rows: Sequence[TranscriptRow]) -> None:
        """Append encrypted transcript items (group-committed)."""
        args = [(r.account, r.engagement, r.key_id, r.sealed, r.created_at) for r in rows]
        await self._write(_exec_many(
            "INSERT INTO transcripts (account, engagement, key_id, sealed, created_at)"
            " VALUES (?, ?, ?, ?, ?)", args))

    async def read_transcript(self, account: str, engagement: str) -> list[TranscriptRow]:
        """An engagement's items in order."""
        rows = await self._fetch("SELECT account, engagement, key_id, sealed, created_at"
                                 " FROM transcripts WHERE account=? AND engagement=?"
                                 " ORDER BY id", (account, engagement))
        return [TranscriptRow(*r) for r in rows]

    async def delete_transcripts(self, account: str, *, engagement: str | None = None,
                                 before: int | None = None) -> int:
        """Delete by engagement and/or age; return rows deleted."""
        sql = "DELETE FROM transcripts WHERE account=?"
        args: list[Any] = [account]
        if engagement is not None:
            sql, args = sql + " AND engagement=?", [*args, engagement]
        if before is not None:
            sql, args = sql + " AND created_at<?", [*args, before]

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(sql, args)
            return cur.rowcount
        return int(await self._write(op))

    async def checkpoint(self, *, attempts: int = 5, pause: float = 0.05) -> bool:
        """Fold the WAL into the main file and truncate it; False if it did not complete.

        After a purge the -wal file still holds page images of the deleted rows. A
        reader holding a snapshot blocks TRUNCATE (the result's ``busy`` column is 1),
        so the result is checked and retried a bounded number of times; the caller
        keeps its work marked pending on False instead of trusting a skipped checkpoint.
        It runs on its own short-lived connection with a short busy timeout: never
        inside a group-commit transaction, and never holding the write lock for long.
        """
        await self._write(lambda c: None)  # FIFO: everything queued before is committed
        async with aiosqlite.connect(self.path, isolation_level=None) as conn:
            await conn.execute("PRAGMA busy_timeout=50")
            for attempt in range(attempts):
                async with conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                    row = await cur.fetchone()
                # (busy, log frames, checkpointed frames): complete when not busy and
                # every frame of the log was copied back.
                if row is not None and int(row[0]) == 0 and int(row[1]) == int(row[2]):
                    return True
                if attempt + 1 < attempts:
                    await asyncio.sleep(pause * (attempt + 1))
        return False


# secure_delete: deleted ciphertext and transcripts do not linger in free pages.
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA secure_delete=ON",
            "PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=5000")


def _exec(sql: str, args: Sequence[Any] = ()) -> Write:
    """A write of one statement (its cursor closed in the writer thread, never returned)."""
    return lambda c: c.execute(sql, args).close()


def _exec_many(sql: str, rows: Sequence[Sequence[Any]]) -> Write:
    """A write of one statement over many rows."""
    return lambda c: c.executemany(sql, rows).close()


def _recount_outbox(conn: sqlite3.Connection) -> None:
    """Outbox totals recounted at every start (one scan): a relay older than schema 004
    run on this file meanwhile (a downgrade) moved rows without moving the totals."""
    conn.execute("UPDATE outbox_counters SET entries = (SELECT count(*) FROM outbox o"
                 " WHERE o.account = outbox_counters.account), bytes = (SELECT"
                 " coalesce(sum(length(o.data)), 0) FROM outbox o"
                 " WHERE o.account = outbox_counters.account)")

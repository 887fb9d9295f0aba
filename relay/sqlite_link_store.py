"""The SQLite store's vault-link and offload operations (a mixin of SqliteStore).

Receipts (each chunk of up to 64 items), rejections, erasure notices and the
compliance-toggle offload each run as one write in the store's group-commit queue, so a
crash leaves either all of such a write or none of it: an outbox entry is never deleted
without its receipt hash being kept, and a transcript is never purged before its last
offload envelope is receipted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .group_commit import OutboxAppend, Write, uncount_outbox
from .store import OutboxEntry, ReceiptOutcome

__all__ = ["LinkStoreMixin"]

_RECEIPT_CHUNK = 64  # items per write (one DELETE of 4 parameters each): see apply_receipt


class LinkStoreMixin:
    """Vault-link and offload operations on top of the store's writer and reader."""

    _write: Callable[[Write], Awaitable[Any]]
    _fetch: Callable[..., Awaitable[list[Any]]]

    # vault link: receipts, rejections, erasures ---------------------------------------

    async def apply_receipt(self, account: str, receipt_hash: str,
                            items: Sequence[tuple[str, str, str]], at: int) -> ReceiptOutcome:
        """Delete entries matching ``(engagement, envelope_id, hash)``; keep the receipt hash.

        An item naming another account's envelope, another engagement, or bytes other
        than those stored (hash) matches no row and deletes nothing; a replayed receipt
        finds its rows already gone. Each chunk of ``_RECEIPT_CHUNK`` items is one write
        of its own (its deletes, the receipt hash counted on each engagement it touched,
        any offload purge it completes): a whole 256-item receipt in one transaction held
        the single writer for ~3 ms (10 us per deleted row, secure_delete included),
        and every chat message queued behind it waited that long for its ack. A crash
        between chunks leaves the rest in the outbox: sent again, stored once (the vault
        is idempotent by envelope id), receipted again.
        """
        deleted: list[tuple[int, int]] = []
        offloaded: list[str] = []
        for at_item in range(0, len(items), _RECEIPT_CHUNK):
            part: ReceiptOutcome = await self._write(_receipt_chunk(
                account, receipt_hash, items[at_item:at_item + _RECEIPT_CHUNK], at))
            deleted += part.deleted
            offloaded += part.offloaded
        return ReceiptOutcome(tuple(deleted), tuple(offloaded))

    async def reject_outbox(self, account: str, seq: int, code: str, at: int) -> str | None:
        """Drop a refused entry (ciphertext gone, never retried) and count it."""
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("DELETE FROM outbox WHERE account=? AND seq=?"
                               " RETURNING engagement, envelope_id, length(data)",
                               (account, seq)).fetchone()
            if row is None:
                return None
            uncount_outbox(conn, account, 1, int(row[2]))
            engagement, envelope_id = str(row[0]), str(row[1])
            conn.execute("INSERT INTO engagement_rejections (account, engagement, code,"
                               " at) VALUES (?, ?, ?, ?)", (account, engagement, code, at))
            cur2 = conn.execute("DELETE FROM offload_envelopes WHERE account=? AND"
                                      " envelope_id=?", (account, envelope_id))
            if cur2.rowcount:
                conn.execute("UPDATE offload SET state='rejected' WHERE account=? AND"
                                   " engagement=?", (account, engagement))
            return engagement
        result: str | None = await self._write(op)
        return result

    async def record_erasure(self, account: str, notice_hash: str, engagements: Sequence[str],
                             rule: str, at: int) -> int:
        """Record a verified erasure notice on engagement records; return how many."""
        rows = [(account, e, rule, at, notice_hash) for e in engagements]

        def op(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO engagement_erasures (account, engagement, rule, erased_at,"
                " notice_hash) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
            return len(rows)
        return int(await self._write(op))

    # compliance toggle: offload -----------------------------------------------------

    async def plan_offload(self, account: str, at: int) -> int:
        """Mark every stored transcript of ``account`` for offload; return how many."""
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT OR IGNORE INTO offload (account, engagement, state, planned_at)"
                " SELECT DISTINCT account, engagement, 'pending', ? FROM transcripts"
                " WHERE account=?", (at, account))
            return cur.rowcount
        return int(await self._write(op))

    async def pending_offloads(self, limit: int) -> list[tuple[str, str]]:
        """``(account, engagement)`` pairs still to seal, oldest plan first."""
        rows = await self._fetch("SELECT account, engagement FROM offload WHERE"
                                 " state='pending' ORDER BY planned_at, engagement LIMIT ?",
                                 (limit,))
        return [(str(r[0]), str(r[1])) for r in rows]

    async def queue_offload(self, account: str, engagement: str,
                            entries: Sequence[OutboxEntry]) -> None:
        """Append offload envelopes and mark the engagement queued, in one transaction."""
        def mark_queued(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO offload_envelopes (account, engagement, envelope_id)"
                " VALUES (?, ?, ?)", [(account, engagement, e.envelope_id) for e in entries])
            conn.execute("UPDATE offload SET state='queued' WHERE account=? AND"
                               " engagement=?", (account, engagement))
        # An OutboxAppend, so the committed envelopes reach the live link like any other.
        await self._write(OutboxAppend(entries, then=mark_queued))

    async def offload_progress(self, account: str | None) -> dict[str, int]:
        """Offload rows of ``account`` (or of all accounts) by state."""
        where, args = ("WHERE account=?", (account,)) if account else ("", ())
        rows = await self._fetch(f"SELECT state, count(*) FROM offload {where} GROUP BY state",
                                 args)
        out = {"pending": 0, "queued": 0, "done": 0, "rejected": 0}
        out.update({str(r[0]): int(r[1]) for r in rows})
        rows = await self._fetch(f"SELECT count(*) FROM offload {where}"
                                 f" {'AND' if where else 'WHERE'} checkpoint_pending=1", args)
        out["checkpoint_pending"] = int(rows[0][0])  # among "done": not a separate state
        return out

    async def checkpoint_pending(self) -> list[tuple[str, str]]:
        """Purged ``(account, engagement)`` pairs whose WAL checkpoint has not completed."""
        rows = await self._fetch("SELECT account, engagement FROM offload WHERE"
                                 " checkpoint_pending=1 ORDER BY account, engagement")
        return [(str(r[0]), str(r[1])) for r in rows]

    async def clear_checkpoint_pending(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Mark these purges checkpointed (only those read before the checkpoint ran)."""
        rows = list(pairs)
        await self._write(lambda c: c.executemany(
            "UPDATE offload SET checkpoint_pending=0 WHERE account=? AND engagement=?",
            rows).close())


def _receipt_chunk(account: str, receipt_hash: str, chunk: Sequence[tuple[str, str, str]],
                   at: int) -> Write:
    """One write: delete a chunk's matching entries, count the receipt, finish offloads."""
    def op(conn: sqlite3.Connection) -> ReceiptOutcome:
        # One DELETE for the chunk, not two statements per item. The row-value IN matches
        # each item on all three of (id, hash, engagement); the plain IN on envelope_id
        # lets SQLite use the unique index.
        ids = ", ".join("?" for _ in chunk)
        rows_sql = ", ".join("(?, ?, ?)" for _ in chunk)
        args: list[Any] = [account, *(i[1] for i in chunk)]
        for engagement, envelope_id, envelope_hash in chunk:
            args += (envelope_id, envelope_hash, engagement)
        rows = conn.execute(
            f"DELETE FROM outbox WHERE account=? AND envelope_id IN ({ids})"
            f" AND (envelope_id, envelope_hash, engagement) IN (VALUES {rows_sql})"
            " RETURNING seq, created_at, engagement, envelope_id, length(data)",
            args).fetchall()
        uncount_outbox(conn, account, len(rows), sum(int(r[4]) for r in rows))
        gone = sorted((int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows)
        per_engagement: dict[str, int] = {}
        for _, _, engagement, _ in gone:
            per_engagement[engagement] = per_engagement.get(engagement, 0) + 1
        touched: set[str] = set()
        if gone:
            marks = ", ".join("?" for _ in gone)
            offloaded_rows = conn.execute(
                f"DELETE FROM offload_envelopes WHERE account=? AND envelope_id IN"
                f" ({marks}) RETURNING engagement", [account, *(g[3] for g in gone)]).fetchall()
            touched.update(str(r[0]) for r in offloaded_rows)
        if per_engagement:
            # Added up: the receipt's other chunks may count the same engagement.
            conn.executemany(
                "INSERT INTO engagement_receipts (account, engagement, receipt_hash,"
                " envelopes, at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " envelopes = envelopes + excluded.envelopes",
                [(account, engagement, receipt_hash, n, at)
                 for engagement, n in per_engagement.items()])
        offloaded = []
        for engagement in sorted(touched):
            if conn.execute("SELECT 1 FROM offload_envelopes WHERE account=? AND"
                            " engagement=? LIMIT 1", (account, engagement)).fetchone():
                continue
            # Every offload envelope of the transcript is in the vault: purge it here.
            conn.execute("DELETE FROM transcripts WHERE account=? AND engagement=?",
                         (account, engagement))
            # Purged, checkpoint pending until the WAL is folded (Offloader.purged).
            conn.execute("UPDATE offload SET state='done', checkpoint_pending=1"
                         " WHERE account=? AND engagement=?", (account, engagement))
            offloaded.append(engagement)
        return ReceiptOutcome(tuple((g[0], g[1]) for g in gone), tuple(offloaded))
    return op

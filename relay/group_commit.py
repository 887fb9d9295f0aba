"""Group commit: one writer task turns many queued writes into one SQLite transaction.

The writer takes every pending write (up to ``max_batch``), runs each inside its own
SAVEPOINT in one transaction, commits once, then resolves the callers. A caller is told
"done" only after the commit, which is what lets the relay acknowledge a frame only once
it is durable. Consecutive outbox appends are merged into one statement per account and
one ``executemany`` (see :meth:`GroupCommitter._append_merged`).

After each commit, and before any caller is resumed, the outbox entries the batch
committed are handed to ``on_outbox_committed`` with their sequences, in commit order
(which per account is sequence order): the live vault link sends them from memory
instead of reading them back (relay/vault_link.py). Every outbox insert is an
:class:`OutboxAppend` for that reason, the offload's too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosqlite

from .store import OutboxEntry

__all__ = ["GroupCommitter", "OutboxAppend", "OutboxHook", "Write", "insert_outbox"]

Write = Callable[[aiosqlite.Connection], Awaitable[Any]]
OutboxHook = Callable[[list[OutboxEntry]], None]


class GroupCommitter:
    """The single writer of one SQLite connection."""

    def __init__(self, conn: aiosqlite.Connection, max_batch: int,
                 on_outbox_committed: OutboxHook | None = None) -> None:
        self.conn, self.max_batch = conn, max_batch
        self.on_outbox_committed = on_outbox_committed
        self.queue: asyncio.Queue[tuple[Write, asyncio.Future[Any]]] = asyncio.Queue()
        self.batches_committed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.get_running_loop().create_task(self._write_loop())

    async def submit(self, op: Write) -> Any:
        """Queue one write; return its result once its transaction has committed."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((op, fut))
        return await fut

    async def stop(self) -> None:
        """Commit everything queued, then stop the writer."""
        if self._task is not None:
            await self.queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _write_loop(self) -> None:
        conn = self.conn
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            committed: list[OutboxEntry] = []
            try:
                await conn.execute("BEGIN IMMEDIATE")
                i = 0
                while i < len(batch):
                    run = _append_run(batch, i)
                    if len(run) > 1:
                        merged = await self._append_merged(conn, run, i)
                        results += merged
                        for (op, _), (_, value, error) in zip(run, merged, strict=True):
                            if error is None:
                                committed += _with_seqs(op, value)
                    else:
                        op, fut = batch[i]
                        value, error = await _in_savepoint(conn, f"w{i}", op)
                        results.append((fut, value, error))
                        if error is None and isinstance(op, OutboxAppend):
                            committed += _with_seqs(op, value)
                    i += max(1, len(run))
                await conn.execute("COMMIT")
                self.batches_committed += 1
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                results = [(fut, None, exc) for _, fut in batch]
                committed = []
            if committed and self.on_outbox_committed is not None:
                # Before any caller resumes: the hook sees commits in commit order.
                with contextlib.suppress(Exception):
                    self.on_outbox_committed(committed)
            for fut, value, error in results:
                if not fut.done():
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(value)
            for _ in batch:
                self.queue.task_done()

    async def _append_merged(self, conn: aiosqlite.Connection,
                             run: list[tuple[Write, asyncio.Future[Any]]], at: int
                             ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Consecutive outbox appends as one statement per account plus one insert.

        Under load nearly every queued write is an outbox append; one aiosqlite call
        per row (a thread round trip each) was the relay's bottleneck. If the merged
        write fails (a duplicate envelope id), each append runs alone, so only the bad
        one fails, as before.
        """
        appends = [op for op, _ in run if isinstance(op, OutboxAppend)]
        assert len(appends) == len(run)

        async def merged(c: aiosqlite.Connection) -> list[list[int]]:
            entries = [e for op in appends for e in op.entries]
            wanted: dict[str, int] = {}
            for e in entries:
                wanted[e.account] = wanted.get(e.account, 0) + 1
            next_seq: dict[str, int] = {}
            for account, n in wanted.items():
                async with c.execute(
                        "INSERT INTO outbox_counters (account, next_seq) VALUES (?, ?)"
                        " ON CONFLICT(account) DO UPDATE SET next_seq = next_seq + ?"
                        " RETURNING next_seq - ?", (account, n + 1, n, n)) as cur:
                    row = await cur.fetchone()
                assert row is not None
                next_seq[account] = int(row[0])
            rows, seqs = [], []
            for op in appends:
                mine = []
                for e in op.entries:
                    seq = next_seq[e.account]
                    next_seq[e.account] = seq + 1
                    rows.append((e.account, seq, e.envelope_id, e.engagement, e.envelope_hash,
                                 e.data, e.created_at))
                    mine.append(seq)
                seqs.append(mine)
            await c.executemany(
                "INSERT INTO outbox (account, seq, envelope_id, engagement, envelope_hash,"
                " data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return seqs

        value, error = await _in_savepoint(conn, f"m{at}", merged)
        if error is None:
            return [(fut, seqs, None) for (_, fut), seqs in zip(run, value, strict=True)]
        out = []
        for j, (op, fut) in enumerate(run):
            one, one_error = await _in_savepoint(conn, f"w{at + j}", op)
            out.append((fut, one, one_error))
        return out


async def insert_outbox(conn: aiosqlite.Connection, entries: Sequence[OutboxEntry]) -> list[int]:
    """Insert outbox rows with fresh per-account sequences (inside a write)."""
    seqs = []
    for e in entries:
        async with conn.execute(
                "INSERT INTO outbox_counters (account, next_seq) VALUES (?, 2)"
                " ON CONFLICT(account) DO UPDATE SET next_seq = next_seq + 1"
                " RETURNING next_seq - 1", (e.account,)) as cur:
            row = await cur.fetchone()
        assert row is not None
        seq = int(row[0])
        await conn.execute(
            "INSERT INTO outbox (account, seq, envelope_id, engagement, envelope_hash,"
            " data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.account, seq, e.envelope_id, e.engagement, e.envelope_hash, e.data,
             e.created_at))
        seqs.append(seq)
    return seqs


class OutboxAppend:
    """A queued outbox append: the writer merges consecutive ones into one statement.

    ``then`` runs more writes in the same savepoint (the offload marks its transcript
    queued with its envelopes); an append with ``then`` is never merged.
    """

    def __init__(self, entries: Sequence[OutboxEntry], then: Write | None = None) -> None:
        self.entries = list(entries)
        self.then = then

    async def __call__(self, conn: aiosqlite.Connection) -> list[int]:
        seqs = await insert_outbox(conn, self.entries)
        if self.then is not None:
            await self.then(conn)
        return seqs


def _with_seqs(op: Write, seqs: list[int]) -> list[OutboxEntry]:
    assert isinstance(op, OutboxAppend)
    return [OutboxEntry(e.account, seq, e.envelope_id, e.engagement, e.envelope_hash, e.data,
                        e.created_at) for e, seq in zip(op.entries, seqs, strict=True)]


def _append_run(batch: Sequence[tuple[Write, Any]], start: int) -> list[tuple[Write, Any]]:
    """The consecutive mergeable outbox appends of ``batch`` from ``start`` (maybe none)."""
    end = start
    while end < len(batch) and isinstance(op := batch[end][0], OutboxAppend) \
            and op.then is None:
        end += 1
    return list(batch[start:end])


async def _in_savepoint(conn: aiosqlite.Connection, name: str, op: Write
                        ) -> tuple[Any, BaseException | None]:
    """Run one write inside its own SAVEPOINT: a failing write is rolled back alone."""
    await conn.execute(f"SAVEPOINT {name}")
    try:
        value = await op(conn)
    except Exception as exc:
        await conn.execute(f"ROLLBACK TO {name}")
        await conn.execute(f"RELEASE {name}")
        return None, exc
    await conn.execute(f"RELEASE {name}")
    return value, None

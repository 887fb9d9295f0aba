"""Group commit: one writer thread turns many queued writes into one SQLite transaction.

The writer task takes every pending write (up to ``max_batch``) and hands the whole
batch to a dedicated thread that owns a plain ``sqlite3`` connection: there it runs each
write inside its own SAVEPOINT in one transaction and commits once. Then, back on the
event loop, it resolves the callers. A caller is told "done" only after the commit,
which is what lets the relay acknowledge a frame only once it is durable. Consecutive
outbox appends are merged into one statement per account and one ``executemany`` (see
:func:`_append_merged`).

One thread hop per batch, not per statement: with aiosqlite every statement (BEGIN,
SAVEPOINT, the counters, the insert, RELEASE, COMMIT) was its own hop (a queue put, a
thread wake, a future, a ``call_soon_threadsafe``), and those hops were a large share
of the event loop's time per message. Writes are therefore plain functions of a
``sqlite3.Connection``, run inside the writer thread; they must not touch the loop.

After each commit, and before any caller is resumed, the outbox entries the batch
committed are handed to ``on_outbox_committed`` with their sequences, in commit order
(which per account is sequence order): the live vault link sends them from memory
instead of reading them back (relay/vault_link.py). Every outbox insert is an
:class:`OutboxAppend` for that reason, the offload's too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .logs import LOGGER_NAME, log_event
from .store import OutboxEntry

__all__ = ["GroupCommitter", "OutboxAppend", "OutboxHook", "Write", "insert_outbox",
           "uncount_outbox"]

Write = Callable[[sqlite3.Connection], Any]
OutboxHook = Callable[[list[OutboxEntry]], None]
T = TypeVar("T")
_Outcome = tuple[Any, BaseException | None]


class GroupCommitter:
    """The single writer of one SQLite file: a thread owning its connection, and a task."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], max_batch: int,
                 on_outbox_committed: OutboxHook | None = None) -> None:
        self.max_batch = max_batch
        self.on_outbox_committed = on_outbox_committed
        self.batches_committed = 0
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        # One thread: the connection is only ever used from it, one batch at a time.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-writer")
        self._pending: collections.deque[tuple[Write, asyncio.Future[Any]]] = \
            collections.deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the connection in the writer thread."""
        self._conn = await self._in_thread(lambda: self._connect())

    async def run_alone(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the writer thread outside any batch (schema upgrades at open)."""
        conn = self._conn
        assert conn is not None, "writer not open"
        return await self._in_thread(lambda: fn(conn))

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.get_running_loop().create_task(self._write_loop())

    async def submit(self, op: Write) -> Any:
        """Queue one write; return its result once its transaction has committed."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        """Commit everything queued, stop the writer, close the connection."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await self._task
            finally:
                self._task = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._in_thread(conn.close)
        self._thread.shutdown(wait=False)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _write_loop(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
            ops = [op for op, _ in batch]
            try:
                ok, results, committed = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._run_batch, ops)
            except Exception as exc:  # the thread itself failed (closed connection...)
                ok, results, committed = False, [(None, exc)] * len(batch), []
            if ok:
                self.batches_committed += 1
            if committed and self.on_outbox_committed is not None:
                # Before any caller resumes: the hook sees commits in commit order. Its
                # failure costs only speed (the link's backstop reads the outbox), so it
                # must not fail the writes; it is logged (class name only) to be seen.
                try:
                    self.on_outbox_committed(committed)
                except Exception as exc:
                    log_event(logging.getLogger(LOGGER_NAME), logging.ERROR,
                              "link.handoff_failed", error=type(exc).__name__)
            for (_, fut), (value, error) in zip(batch, results, strict=True):
                if not fut.done():
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(value)

    def _run_batch(self, ops: list[Write]) -> tuple[bool, list[_Outcome], list[OutboxEntry]]:
        """One transaction, each write in its own savepoint (in the writer thread)."""
        conn = self._conn
        assert conn is not None, "writer not open"
        results: list[_Outcome] = []
        committed: list[OutboxEntry] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            i = 0
            while i < len(ops):
                run = _append_run(ops, i)
                if len(run) > 1:
                    merged = _append_merged(conn, run, i)
                    results += merged
                    for append, (value, error) in zip(run, merged, strict=True):
                        if error is None:
                            committed += _with_seqs(append, value)
                else:
                    op = ops[i]
                    value, error = _in_savepoint(conn, f"w{i}", op)
                    results.append((value, error))
                    if error is None and isinstance(op, OutboxAppend):
                        committed += _with_seqs(op, value)
                i += max(1, len(run))
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            return False, [(None, exc)] * len(ops), []
        return True, results, committed


def _append_merged(conn: sqlite3.Connection, run: list[OutboxAppend], at: int
                   ) -> list[_Outcome]:
    """Consecutive outbox appends as one statement per account plus one insert.

    Under load nearly every queued write is an outbox append; one statement per row was
    the relay's bottleneck. If the merged write fails (a duplicate envelope id), each
    append runs alone, so only the bad one fails, as before.
    """
    def merged(c: sqlite3.Connection) -> list[list[int]]:
        wanted: dict[str, list[int]] = {}  # account -> [entries, bytes]
        for op in run:
            for e in op.entries:
                w = wanted.setdefault(e.account, [0, 0])
                w[0] += 1
                w[1] += len(e.data)
        next_seq: dict[str, int] = {}
        for account, (n, size) in wanted.items():
            next_seq[account] = _take_seqs(c, account, n, size)
        rows, seqs = [], []
        for op in run:
            mine = []
            for e in op.entries:
                seq = next_seq[e.account]
                next_seq[e.account] = seq + 1
                rows.append((e.account, seq, e.envelope_id, e.engagement, e.envelope_hash,
                             e.data, e.created_at))
                mine.append(seq)
            seqs.append(mine)
        c.executemany(
            "INSERT INTO outbox (account, seq, envelope_id, engagement, envelope_hash,"
            " data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return seqs

    value, error = _in_savepoint(conn, f"m{at}", merged)
    if error is None:
        return [(seqs, None) for seqs in value]
    return [_in_savepoint(conn, f"w{at + j}", op) for j, op in enumerate(run)]


def insert_outbox(conn: sqlite3.Connection, entries: Sequence[OutboxEntry]) -> list[int]:
    """Insert outbox rows with fresh per-account sequences (inside a write)."""
    seqs = []
    for e in entries:
        seq = _take_seqs(conn, e.account, 1, len(e.data))
        conn.execute(
            "INSERT INTO outbox (account, seq, envelope_id, engagement, envelope_hash,"
            " data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.account, seq, e.envelope_id, e.engagement, e.envelope_hash, e.data,
             e.created_at))
        seqs.append(seq)
    return seqs


def _take_seqs(conn: sqlite3.Connection, account: str, n: int, size: int) -> int:
    """Reserve ``n`` outbox sequences of ``account`` and count ``size`` bytes more waiting;
    the first reserved sequence (schema 004: the totals move with every insert)."""
    row = conn.execute(
        "INSERT INTO outbox_counters (account, next_seq, entries, bytes) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(account) DO UPDATE SET next_seq = next_seq + excluded.entries,"
        " entries = entries + excluded.entries, bytes = bytes + excluded.bytes"
        " RETURNING next_seq - ?", (account, n + 1, n, size, n)).fetchone()
    assert row is not None
    return int(row[0])


def uncount_outbox(conn: sqlite3.Connection, account: str, entries: int, size: int) -> None:
    """Count deleted outbox rows out of the account's totals (in the deleting write)."""
    if entries:
        conn.execute("UPDATE outbox_counters SET entries = entries - ?, bytes = bytes - ?"
                     " WHERE account=?", (entries, size, account))


class OutboxAppend:
    """A queued outbox append: the writer merges consecutive ones into one statement.

    ``then`` runs more writes in the same savepoint (the offload marks its transcript
    queued with its envelopes); an append with ``then`` is never merged.
    """

    def __init__(self, entries: Sequence[OutboxEntry], then: Write | None = None) -> None:
        self.entries = list(entries)
        self.then = then

    def __call__(self, conn: sqlite3.Connection) -> list[int]:
        seqs = insert_outbox(conn, self.entries)
        if self.then is not None:
            self.then(conn)
        return seqs


def _with_seqs(op: Write, seqs: list[int]) -> list[OutboxEntry]:
    assert isinstance(op, OutboxAppend)
    return [e._replace(seq=seq) for e, seq in zip(op.entries, seqs, strict=True)]


def _append_run(ops: Sequence[Write], start: int) -> list[OutboxAppend]:
    """The consecutive mergeable outbox appends of ``ops`` from ``start`` (maybe none)."""
    run: list[OutboxAppend] = []
    for i in range(start, len(ops)):
        op = ops[i]
        if not isinstance(op, OutboxAppend) or op.then is not None:
            break
        run.append(op)
    return run


def _in_savepoint(conn: sqlite3.Connection, name: str, op: Write) -> _Outcome:
    """Run one write inside its own SAVEPOINT: a failing write is rolled back alone."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        value = op(conn)
    except Exception as exc:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        return None, exc
    conn.execute(f"RELEASE {name}")
    return value, None

"""Opening the vault's SQLite files: pragmas, versioned schema files, error mapping.

Every database is opened with WAL (readers never block the writer), synchronous=FULL
(a commit survives power loss before a receipt is signed) and secure_delete=ON
(deleted rows are overwritten, not left in free pages for a forensic reader).

Work on a hot path (ingest's reads and batch commit, the key store, audit appends) is a
plain function of the ``sqlite3`` connection run in the connection's own thread in one
hop (:func:`in_connection`, :func:`write_transaction`): aiosqlite makes every statement,
cursor close and fetch of 64 rows its own hop (a queue put, a thread wake, a future, a
``call_soon_threadsafe``), ~50 of them per ingest batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import pathlib
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

from .errors import SchemaNewer, StoreUnavailable

__all__ = ["checkpoint_truncate", "in_connection", "open_database", "select_in",
           "store_errors", "write_transaction"]

T = TypeVar("T")


def _schema_files(prefix: str) -> list[tuple[int, str]]:
    found = []
    for res in importlib.resources.files("controller_vault.schema").iterdir():
        name = res.name
        if name.startswith(prefix + "-") and name.endswith(".sql"):
            found.append((int(name[len(prefix) + 1:-4]), res.read_text()))
    return sorted(found)


async def open_database(path: str | os.PathLike[str], schema: str, *,
                        busy_timeout_ms: int = 2000,
                        max_page_count: int | None = None) -> aiosqlite.Connection:
    """Open ``path``, set the pragmas and apply schema files ``<schema>-NNN.sql`` not yet run.

    A file of a newer schema raises :class:`SchemaNewer` and is left as it was.
    """
    files = _schema_files(schema)
    newest = max((n for n, _ in files), default=0)
    try:
        _refuse_newer(pathlib.Path(path), newest)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # created 0600, never wider
        os.close(fd)
        db = await aiosqlite.connect(pathlib.Path(path), isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open database {path}: {exc.__class__.__name__}") from None
    try:
        await _prepare(db, pathlib.Path(path).name, files, newest,
                       busy_timeout_ms=busy_timeout_ms, max_page_count=max_page_count)
    except BaseException as exc:
        # Closed on every failure (a corrupt file, a lock past the timeout, SchemaNewer,
        # a cancel): an open aiosqlite connection's thread keeps the process alive, so
        # a CLI command would print its error and then hang.
        with contextlib.suppress(sqlite3.Error):
            await db.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreUnavailable(
                f"cannot open database {path}: {exc.__class__.__name__}") from None
        raise
    return db


async def _prepare(db: aiosqlite.Connection, name: str, files: list[tuple[int, str]],
                   newest: int, *, busy_timeout_ms: int, max_page_count: int | None) -> None:
    """Set the pragmas on a new connection and apply the schema files it lacks."""
    await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("PRAGMA secure_delete = ON")
    await db.execute("PRAGMA foreign_keys = ON")
    if max_page_count is not None:
        # A size quota: writes beyond it fail like a full disk (SQLITE_FULL).
        await db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > newest:  # made newer after _refuse_newer read it: still refused
        raise SchemaNewer(name, version, newest)
    for number, sql in files:
        if number > version:
            await db.execute("BEGIN IMMEDIATE")
            # Read the version again under the write lock: another process opening
            # the same file (serve and a CLI command) may have applied it meanwhile.
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            if row and int(row[0]) >= number:
                await db.execute("COMMIT")
                continue
            for statement in _split_sql(sql):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")


def _refuse_newer(path: pathlib.Path, newest: int) -> None:
    """Raise :class:`SchemaNewer` if the file at ``path`` has a schema above ``newest``.

    Read before anything opens the file for writing: this code would write rows without
    the columns a newer schema keeps, and even the pragmas, a recovery or the checkpoint
    at close change the file's bytes, which the operator needs intact to go back to the
    newer vault. ``immutable=1`` reads the main file with no lock and no -wal or -shm
    created; when a -wal exists (a vault stopped before its last checkpoint) it may hold
    the newest pages, so a read-only connection reads through it and never checkpoints.
    A file a newer vault upgrades between this read and the open (two at once) is still
    refused after the open, but the pragmas and the close may have folded its -wal into
    the file by then: unchanged content, not unchanged bytes.
    """
    if not path.exists():
        return
    wal = path.with_name(path.name + "-wal")
    uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    conn = sqlite3.connect(uri, uri=True)
    try:
        row = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    if row is not None and int(row[0]) > newest:
        raise SchemaNewer(path.name, int(row[0]), newest)


def _split_sql(sql: str) -> list[str]:
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def checkpoint_truncate(db: aiosqlite.Connection, *, attempts: int = 4,
                              pause_s: float = 0.05) -> bool:
    """Copy the WAL into the database and truncate it; False if a reader kept it busy."""
    # Until the checkpoint completes, the database file still holds the pages an
    # erasure overwrote (a wrapped data key, a row) and the WAL holds frames of them:
    # a reader holding an old snapshot (a backup, a CLI command) blocks the copy. So the
    # result (busy, log, checkpointed) is checked, never assumed: "erased" must not be
    # claimed while the old bytes are still on disk. Each attempt waits up to the
    # connection's busy_timeout for readers; the retries are bounded.
    for attempt in range(max(1, attempts)):
        async with db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            row = await cur.fetchone()
        if row is not None and int(row[0]) == 0 and int(row[1]) <= 0:
            return True
        if attempt + 1 < attempts:
            await asyncio.sleep(pause_s * (2 ** attempt))
    return False


#: One lock per writer connection. Tasks of one process (ingest, staff API, mailer,
#: retention) share the connection: without it a second BEGIN inside the first task's
#: transaction fails ("within a transaction", or "table is locked") and its write, an
#: audit entry say, is lost or a healthy store answers 503.
_WRITE_LOCKS: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def store_errors(db: aiosqlite.Connection, what: str) -> AsyncIterator[None]:
    """One write transaction: commit, or roll back and raise StoreUnavailable (no partial write)."""
    lock = _WRITE_LOCKS.setdefault(db, asyncio.Lock())
    async with lock:
        try:
            await db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{what}: database unavailable ({_reason(exc)})") from None
        try:
            yield
            await db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(
                    f"{what}: database unavailable ({_reason(exc)})") from None
            raise


async def in_connection(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(conn)`` in the connection's own thread: one hop for a whole unit of work.

    ``fn`` runs between whatever statements were queued before and after it, so inside
    a :func:`store_errors` transaction it is part of that transaction. It must not
    touch the event loop.
    """
    # aiosqlite has no public call for this; ``_execute`` is what its own methods
    # (backup, iterdump) use to run a function in its thread with its connection.
    hop: Callable[..., Awaitable[T]] = db._execute
    return await hop(fn, db._conn)


async def write_transaction(db: aiosqlite.Connection, what: str,
                            fn: Callable[[sqlite3.Connection], T]) -> T:
    """:func:`store_errors` in one hop: BEGIN IMMEDIATE, ``fn(conn)``, COMMIT, all in the
    connection's thread; on any failure rolled back, sqlite errors as StoreUnavailable."""
    def transaction(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result

    # The same lock as store_errors: one transaction at a time on the shared connection.
    # If the caller is cancelled mid-hop the function still finishes (commit or roll
    # back) in the thread before anything queued after it runs.
    async with _WRITE_LOCKS.setdefault(db, asyncio.Lock()):
        try:
            # aiosqlite's thread holds the previous call's result (its cursor) until
            # its next call: a cursor left open on an unfinished write statement (a
            # PRAGMA wal_checkpoint whose row was not read) makes COMMIT fail with "SQL
            # statements in progress". A call that returns nothing releases it first.
            await in_connection(db, _nothing)
            return await in_connection(db, transaction)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{what}: database unavailable ({_reason(exc)})") from None


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any],
              chunk: int = 500) -> list[Any]:
    """Rows of ``sql`` whose ``(?*)`` becomes one placeholder per value, in chunks (in the
    connection's thread; values are always bound, never spliced)."""
    rows: list[Any] = []
    for i in range(0, len(values), chunk):
        part = list(values[i:i + chunk])
        query = sql.replace("(?*)", "(" + ",".join("?" * len(part)) + ")")
        rows += conn.execute(query, part).fetchall()
    return rows


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:
        return "full"
    return exc.__class__.__name__

"""Opening the vault's SQLite files: pragmas, versioned schema files, error mapping.

Every database is opened with WAL (readers never block the writer), synchronous=FULL
(a commit survives power loss before a receipt is signed) and secure_delete=ON
(deleted rows are overwritten, not left in free pages for a forensic reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import pathlib
import sqlite3
import weakref
from collections.abc import AsyncIterator

import aiosqlite

from .errors import StoreUnavailable

__all__ = ["checkpoint_truncate", "open_database", "store_errors"]


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
    """Open ``path``, set the pragmas and apply schema files ``<schema>-NNN.sql`` not yet run."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # created 0600, never wider
        os.close(fd)
        db = await aiosqlite.connect(pathlib.Path(path), isolation_level=None)
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
        for number, sql in _schema_files(schema):
            if number > version:
                await db.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(sql):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                await db.execute("COMMIT")
        return db
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open database {path}: {exc.__class__.__name__}") from None


def _split_sql(sql: str) -> list[str]:
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def checkpoint_truncate(db: aiosqlite.Connection) -> None:
    """Copy the WAL into the database and truncate it (erased pages leave the WAL)."""
    await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# One write transaction at a time per connection. aiosqlite orders statements, not
# transactions: two coroutines (two staff requests, or a request and the link's ingest)
# interleaving BEGIN ... COMMIT on one connection failed with "table is locked", so a
# healthy store answered 503 and an ingest batch could go unacknowledged.
_WRITERS: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def store_errors(db: aiosqlite.Connection, what: str) -> AsyncIterator[None]:
    """One write transaction: commit, or roll back and raise StoreUnavailable (no partial write)."""
    lock = _WRITERS.setdefault(db, asyncio.Lock())
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


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:
        return "full"
    return exc.__class__.__name__

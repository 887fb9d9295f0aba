"""SQLite persistence of staff tokens in ``staff.db`` (one writer connection, WAL).

Kept in its own file beside the vault's store: token rows are not personal data
about data subjects, and a token database can be rotated or wiped without touching
transcripts. Schema: ``staff_schema.sql`` (``PRAGMA user_version`` is the version).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
from importlib import resources

import aiosqlite

from .errors import StaffConfigError, TokenStoreUnavailable
from .tokens import TokenRecord

__all__ = ["SCHEMA_VERSION", "STAFF_DB_NAME", "SqliteTokenStore"]

SCHEMA_VERSION = 1
STAFF_DB_NAME = "staff.db"
_COLUMNS = "token_id, token_hash, actor, scopes, created_at, expires_at, revoked_at"


def _record(row: aiosqlite.Row | tuple[object, ...]) -> TokenRecord:
    token_id, token_hash, actor, scopes, created, expires, revoked = tuple(row)
    return TokenRecord(token_id=str(token_id), token_hash=str(token_hash), actor=str(actor),
                       scopes=frozenset(str(scopes).split(",")), created_at=int(str(created)),
                       expires_at=None if expires is None else int(str(expires)),
                       revoked_at=None if revoked is None else int(str(revoked)))


def _refuse_newer(path: pathlib.Path) -> None:
    """Refuse a staff.db of a newer version before anything opens it for writing.

    Even the WAL pragma, a recovery or the checkpoint at close change the file, which
    the operator needs intact to go back to the newer vault. ``immutable=1`` reads with
    no lock and no -wal or -shm created; with a -wal (a vault killed before its last
    checkpoint) a read-only connection reads through it and never checkpoints.
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
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise _newer(int(row[0]))


def _unavailable(path: pathlib.Path, exc: sqlite3.Error) -> TokenStoreUnavailable:
    # The class name only, as for vault.db (database.open_database): one line for the
    # CLI and the service's log instead of a traceback.
    return TokenStoreUnavailable(f"cannot open database {path}: {exc.__class__.__name__}")


def _reason(exc: sqlite3.Error) -> str:
    # "locked" tells the operator to try again; otherwise the class name only.
    text = str(exc).lower()
    return "locked" if "locked" in text or "busy" in text else exc.__class__.__name__


def _newer(found: int) -> StaffConfigError:
    return StaffConfigError(f"staff.db is from a newer version (schema {found}, this vault "
                            f"knows {SCHEMA_VERSION}): run the newer vault",
                            code="config.staff_db_version")


class SqliteTokenStore:
    """The :class:`~controller_vault.staff.tokens.TokenStore` on an aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _write(self, sql: str, params: tuple[object, ...]) -> int:
        """Run one write and commit it; the rows changed. TokenStoreUnavailable on a
        sqlite error (staff.db locked past the busy timeout, full), nothing written."""
        try:
            cur = await self._conn.execute(sql, params)
            await self._conn.commit()
        except sqlite3.Error as exc:
            # Rolled back: the module's implicit BEGIN stays open after a failed
            # statement or COMMIT, and a write that failed (a token never shown) must
            # not be committed later by this connection's next write. One line for
            # the CLI instead of a traceback.
            with contextlib.suppress(sqlite3.Error):
                await self._conn.rollback()
            raise TokenStoreUnavailable(
                f"cannot write {STAFF_DB_NAME}: {_reason(exc)}") from None
        return int(cur.rowcount)

    @classmethod
    async def open(cls, state_dir: str | os.PathLike[str]) -> SqliteTokenStore:
        """Open (creating if needed) ``staff.db`` in ``state_dir``, mode 0600."""
        path = pathlib.Path(state_dir) / STAFF_DB_NAME
        try:
            _refuse_newer(path)  # first: nothing may write to a newer staff.db
            # Create the file 0600 before SQLite does, so token hashes are never
            # world-readable.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = await aiosqlite.connect(path)
        except sqlite3.Error as exc:  # not a database at all (garbage bytes)
            raise _unavailable(path, exc) from None
        try:
            # The version again on this connection, before the WAL pragma: a newer vault
            # may have upgraded the file since _refuse_newer read it.
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise _newer(version)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=2000")
            if version < SCHEMA_VERSION:
                schema = resources.files(__package__).joinpath("staff_schema.sql").read_text()
                await conn.executescript(schema)
                await conn.commit()
        except BaseException as exc:
            # Closed on every failure: an open aiosqlite connection's thread keeps the
            # process alive, so a CLI command would print its error and then hang.
            with contextlib.suppress(sqlite3.Error):
                await conn.close()
            if isinstance(exc, sqlite3.Error):  # corrupt behind a valid header, or locked
                raise _unavailable(path, exc) from None
            raise
        return cls(conn)

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()

    async def insert(self, record: TokenRecord) -> None:
        """Store a new token record."""
        await self._write(
            f"INSERT INTO staff_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 -- constant column list
            (record.token_id, record.token_hash, record.actor, ",".join(sorted(record.scopes)),
             record.created_at, record.expires_at, record.revoked_at))

    async def get(self, token_id: str) -> TokenRecord | None:
        """The record of ``token_id``, or None."""
        async with self._conn.execute(
                f"SELECT {_COLUMNS} FROM staff_tokens WHERE token_id = ?",  # noqa: S608 -- constant column list
                (token_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _record(row)

    async def revoke(self, token_id: str, at: int) -> bool:
        """Mark a live token revoked; False if unknown or already revoked."""
        return await self._write(
            "UPDATE staff_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (at, token_id)) == 1

    async def list_tokens(self) -> list[TokenRecord]:
        """Every record, oldest first."""
        async with self._conn.execute(
                f"SELECT {_COLUMNS} FROM staff_tokens ORDER BY created_at, token_id"  # noqa: S608 -- constant column list
        ) as cur:
            rows = await cur.fetchall()
        return [_record(r) for r in rows]

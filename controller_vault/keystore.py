"""The key store: per-engagement data keys in their own SQLite file (keys.db).

Keeping data keys apart from the data is what makes crypto-shredding work: copies of
vault.db (backups, replicas, a stolen disk image) stay unreadable once the key row
here is destroyed, even if the master key leaks later.
"""

from __future__ import annotations

import os
import sqlite3

import aiosqlite

from .atrest import new_data_key, unwrap_data_key, wrap_data_key
from .database import (
    checkpoint_truncate,
    in_connection,
    open_database,
    select_in,
    store_errors,
    write_transaction,
)
from .errors import DataKeyDestroyed

__all__ = ["KeyStore"]


class KeyStore:
    """Data keys wrapped by the master key; one writer connection."""

    def __init__(self, db: aiosqlite.Connection, master_key: bytes) -> None:
        self._db = db
        self._master = master_key

    @classmethod
    async def open(cls, path: str | os.PathLike[str], master_key: bytes, *,
                   busy_timeout_ms: int = 2000) -> KeyStore:
        """Open (and create) keys.db."""
        return cls(await open_database(path, "keys", busy_timeout_ms=busy_timeout_ms),
                   master_key)

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    async def ensure_keys(self, engagements: list[str], now: int) -> dict[str, bytes]:
        """Data keys for ``engagements``, creating (durably) those that do not exist."""
        # No in-memory cache: an erasure by another process (staff CLI) must take
        # effect at once, and one indexed read per batch is cheap (one hop, below).
        found = await self._load(engagements)
        new = {e: new_data_key() for e in engagements if e not in found}
        if new:
            master = self._master

            def create(conn: sqlite3.Connection) -> None:
                conn.executemany(
                    "INSERT INTO data_keys (engagement, nonce, wrapped, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(eng, *wrap_data_key(master, eng, key), now) for eng, key in new.items()])
            await write_transaction(self._db, "create data keys", create)
            found.update(new)
        return found

    async def _load(self, engagements: list[str]) -> dict[str, bytes]:
        rows = await in_connection(self._db, lambda c: select_in(
            c, "SELECT engagement, nonce, wrapped FROM data_keys WHERE engagement IN (?*)",
            engagements))
        return {eng: unwrap_data_key(self._master, eng, nonce, wrapped)
                for eng, nonce, wrapped in rows}

    async def data_key(self, engagement: str) -> bytes:
        """The engagement's data key, or DataKeyDestroyed if it was erased (or never made)."""
        found = await self._load([engagement])
        if engagement not in found:
            raise DataKeyDestroyed("no data key for this engagement (erased)")
        return found[engagement]

    async def destroy(self, engagements: list[str]) -> int:
        """Delete the keys (secure_delete overwrites them); call flush_wal() next."""
        async with store_errors(self._db, "destroy data keys"):
            n = 0
            for eng in engagements:
                cur = await self._db.execute("DELETE FROM data_keys WHERE engagement = ?",
                                             (eng,))
                n += cur.rowcount
        return n

    async def flush_wal(self) -> bool:
        """Checkpoint and truncate keys.db's WAL; False if a reader kept old pages alive."""
        return await checkpoint_truncate(self._db)

    async def count(self) -> int:
        """Number of live data keys."""
        async with self._db.execute("SELECT count(*) FROM data_keys") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

"""vault.db queries behind the relay-role rules of ingest (part of the store: SQL here).

The pinned relay signing key, and which engagements already hold party (visitor, agent,
bot) envelopes or a connection-info envelope. The reads are plain functions of the
``sqlite3`` connection, run in its thread: ingest calls them inside its one read hop
(store_ingest.py). ``RelayQueries`` is mixed into :class:`~controller_vault.store.VaultStore`
for the pin's own readers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import aiosqlite

from .database import in_connection, select_in

__all__ = ["RelayPin", "RelayQueries", "engagements_with_connection_info",
           "engagements_with_parties", "read_relay_pin"]


@dataclass(frozen=True)
class RelayPin:
    """The relay signing key the vault trusts; ``source`` is 'pair' or 'tofu'."""

    public_key: bytes
    source: str
    recorded_at: int


def read_relay_pin(conn: sqlite3.Connection) -> RelayPin | None:
    """The pinned relay signing key, or None before pairing and the first relay frame."""
    row = conn.execute("SELECT public_key, source, recorded_at FROM relay_signing_key "
                       "WHERE id = 1").fetchone()
    return RelayPin(bytes(row[0]), str(row[1]), int(row[2])) if row else None


def engagements_with_parties(conn: sqlite3.Connection, engagements: Iterable[str]) -> set[str]:
    """Of ``engagements``, those holding an envelope from a visitor, agent or bot."""
    return {str(r[0]) for r in select_in(
        conn, "SELECT DISTINCT engagement FROM engagement_senders WHERE role IN "
        "('visitor', 'agent', 'bot') AND engagement IN (?*)", sorted(set(engagements)))}


def engagements_with_connection_info(conn: sqlite3.Connection,
                                     engagements: Iterable[str]) -> set[str]:
    """Of ``engagements``, those that already hold their connection-info envelope."""
    # Reads every stored row of each engagement (no index on kind): ingest asks only
    # for the engagements of the batch's relay-role envelopes, which are rare.
    return {str(r[0]) for r in select_in(
        conn, "SELECT DISTINCT engagement FROM envelopes WHERE kind = 'connection-info' "
        "AND engagement IN (?*)", sorted(set(engagements)))}


class RelayQueries:
    """The relay pin's read for VaultStore's callers (VaultStore writes it)."""

    _db: aiosqlite.Connection

    async def relay_pin(self) -> RelayPin | None:
        """The pinned relay signing key, or None before pairing and the first relay frame."""
        return await in_connection(self._db, read_relay_pin)

"""vault.db queries behind the relay-role rules of ingest (part of the store: SQL here).

``RelayQueries`` is mixed into :class:`~controller_vault.store.VaultStore` and uses its
one writer connection: the pinned relay signing key, and which engagements already
hold party (visitor, agent, bot) envelopes or a connection-info envelope.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aiosqlite

__all__ = ["RelayPin", "RelayQueries"]


@dataclass(frozen=True)
class RelayPin:
    """The relay signing key the vault trusts; ``source`` is 'pair' or 'tofu'."""

    public_key: bytes
    source: str
    recorded_at: int


class RelayQueries:
    """Named reads for the relay pin and relay-role envelope rules (VaultStore writes it)."""

    _db: aiosqlite.Connection

    async def _ids_in(self, sql: str, values: Iterable[str]) -> set[str]:
        wanted = sorted(set(values))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            query = sql.replace("(?*)", "(" + ",".join("?" * len(chunk)) + ")")
            async with self._db.execute(query, chunk) as cur:
                found |= {str(r[0]) async for r in cur}
        return found

    async def relay_pin(self) -> RelayPin | None:
        """The pinned relay signing key, or None before pairing and the first relay frame."""
        async with self._db.execute(
                "SELECT public_key, source, recorded_at FROM relay_signing_key "
                "WHERE id = 1") as cur:
            row = await cur.fetchone()
        return RelayPin(bytes(row[0]), str(row[1]), int(row[2])) if row else None

    async def engagements_with_parties(self, engagements: Iterable[str]) -> set[str]:
        """Engagements holding an envelope from a visitor, agent or bot."""
        return await self._ids_in(
            "SELECT DISTINCT engagement FROM engagement_senders WHERE role IN "
            "('visitor', 'agent', 'bot') AND engagement IN (?*)", engagements)

    async def engagements_with_connection_info(self, engagements: Iterable[str]) -> set[str]:
        """Engagements that already hold their connection-info envelope."""
        return await self._ids_in(
            "SELECT DISTINCT engagement FROM envelopes WHERE kind = 'connection-info' "
            "AND engagement IN (?*)", engagements)

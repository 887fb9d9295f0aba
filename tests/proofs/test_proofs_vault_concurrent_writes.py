"""Finding of the invariant 1 suite: concurrent vault writes on the one store connection.

Two staff requests (or a request and the link's ingest) that write at the same moment
each ran ``BEGIN IMMEDIATE`` on the same connection; the second failed with "cannot
start a transaction within a transaction" and the staff request got a 503
(vault.store_unavailable) although nothing was wrong with the database.
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from controller_vault.keyfiles import init_vault
from controller_vault.store import AuditRecord
from tests.vault.conftest import open_vault

NOW = 1_800_000_000


@pytest.mark.timeout(30)
async def test_concurrent_audit_appends_all_commit(tmp_path: pathlib.Path) -> None:
    keys = init_vault(tmp_path / "vault", "clinic", now=NOW)
    vault = await open_vault(tmp_path / "vault", keys)
    try:
        await asyncio.gather(*(vault.store.append_audit(
            [AuditRecord("staff-a", "read", "concurrency proof", f"e{i}")], NOW)
            for i in range(40)))
        stats = await vault.store.stats()
        assert stats.audit_entries >= 40
    finally:
        await vault.store.close()
        await vault.keystore.close()

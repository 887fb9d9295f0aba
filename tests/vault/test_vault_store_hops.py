"""One thread hop per batch step: ingest's reads and commit, and their transaction rules."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from controller_vault.database import in_connection, store_errors, write_transaction
from controller_vault.errors import StoreUnavailable
from envelope import PartyKeys

NOW = 1_800_000_000


def _count_hops(monkeypatch: pytest.MonkeyPatch, db: Any) -> list[int]:
    """Count the calls into the connection's thread (aiosqlite's own hop, still run)."""
    hops = [0]
    real = db._execute

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops[0] += 1
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(db, "_execute", counted)
    return hops


async def test_a_batch_is_three_hops_into_vault_db_whatever_its_size(vault, conversation,
                                                                   monkeypatch):
    agent = PartyKeys.generate()
    await vault.certify(agent)
    hops = _count_hops(monkeypatch, vault.store._db)
    for size in (1, 40):
        frames = []
        for n in range(size):
            conv = conversation(f"eng-{size:04d}{n:04d}")
            frames += [conv.env(PartyKeys.generate(), "message", {"text": f"v{n}"}),
                       conv.env(agent, "message", {"text": f"a{n}"}, role="agent")]
        hops[0] = 0
        result = await vault.ingest(frames, NOW)
        assert result.stored == 2 * size and result.receipt is not None
        # The batch's reads, then its commit (audit entry included) after the hop that
        # releases aiosqlite's last cursor: per batch, not per envelope, statement or
        # fetched row (it was ~50 hops for a batch, more with every certified agent
        # read each time).
        assert hops[0] == 3


async def test_write_transaction_commits_or_leaves_nothing(vault):
    db = vault.store._db

    def insert(conn: sqlite3.Connection, fail: BaseException | None = None) -> int:
        conn.execute("INSERT INTO erasure_notices (notice, created_at) VALUES ('{}', 1)")
        if fail is not None:
            raise fail
        return 7

    assert await write_transaction(db, "test", insert) == 7
    with pytest.raises(ValueError, match="boom"):
        await write_transaction(db, "test", lambda c: insert(c, ValueError("boom")))
    with pytest.raises(StoreUnavailable) as err:
        await write_transaction(db, "test", lambda c: insert(c, sqlite3.OperationalError(
            "database is locked")))
    assert err.value.code == "vault.store_unavailable" and "locked" in err.value.message
    assert await vault.store.notice_counts() == (1, 0)  # only the committed one


async def test_a_write_after_an_unread_checkpoint_cursor_still_commits(vault, conversation):
    # aiosqlite keeps the last call's cursor alive in its thread; an unread PRAGMA
    # wal_checkpoint is a statement still running, which fails a COMMIT in the same hop.
    await vault.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conv = conversation("eng-00000001")
    result = await vault.ingest([conv.env(PartyKeys.generate(), "message", {"text": "hi"})],
                                NOW)
    assert result.stored == 1 and await vault.envelope_count() == 1
    await vault.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    await vault.store.append_audit([], NOW)


async def test_in_connection_is_part_of_the_enclosing_transaction(vault):
    db = vault.store._db
    with pytest.raises(RuntimeError):
        async with store_errors(db, "test"):
            await in_connection(db, lambda c: c.execute(
                "INSERT INTO erasure_notices (notice, created_at) VALUES ('{}', 1)"))
            raise RuntimeError("after the hop")
    assert await vault.store.notice_counts() == (0, 0)  # rolled back with the transaction


async def test_ingest_reads_ask_only_for_what_the_batch_checks(vault):
    agents = [PartyKeys.generate() for _ in range(3)]
    for i, agent in enumerate(agents):
        await vault.certify(agent, name=f"agent-{i}")
    from envelope import key_id

    ids = [key_id(a.signing_public_bytes) for a in agents]
    view = await vault.store.ingest_view(engagements=[], envelope_ids=[], positions=[],
                                         certified_senders=[ids[1], "0" * 24],
                                         relay_engagements=[])
    assert set(view.certified) == {ids[1]} and view.certified[ids[1]].agent == "agent-1"
    assert set(await vault.store.certified_keys()) == set(ids)


async def test_every_ingest_read_searches_an_index_never_scans_a_table(vault):
    # A scan costs the vault's whole size per batch (28 ms at 200,000 envelopes for the
    # taken-positions read as it was): each read must find its rows by index.
    statements: list[str] = []
    db = vault.store._db
    await in_connection(db, lambda c: c.set_trace_callback(statements.append))
    try:
        await vault.store.ingest_view(
            engagements=["eng-00000001", "eng-00000002"], envelope_ids=["A" * 22, "B" * 22],
            positions=[("eng-00000001", "0" * 24, 1), ("eng-00000002", "1" * 24, 2)],
            certified_senders=["0" * 24], relay_engagements=["eng-00000001"])
    finally:
        await in_connection(db, lambda c: c.set_trace_callback(None))
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) == 7
    for sql in reads:
        plan = await in_connection(db, lambda c, q=sql: c.execute(
            "EXPLAIN QUERY PLAN " + q).fetchall())
        details = [str(row[3]) for row in plan]
        # Scanning the batch's own list of wanted values is fine; scanning a table is not.
        scans = [d for d in details if d.startswith("SCAN") and "CONSTANT ROWS" not in d
                 and d != "SCAN wanted"]
        assert scans == [], (sql, details)

"""Merged outbox appends in the group-commit writer, on real SQLite files: order, several
accounts in one batch, and a duplicate envelope id that fails alone."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from envelope import envelope_hash
from relay.sqlite_store import SqliteStore
from relay.store import DuplicateEnvelope, OutboxEntry

pytestmark = pytest.mark.timeout(60)


def _entry(account: str, i: int, envelope_id: str | None = None) -> OutboxEntry:
    data = f"{account}-envelope-{i}".encode()
    return OutboxEntry(account, 0, envelope_id or f"{account[0]}{i:021d}", "eng-00000001",
                       envelope_hash(data), data, i)


async def test_merged_appends_number_each_account_in_queue_order(tmp_path: pathlib.Path
                                                                ) -> None:
    store = SqliteStore(tmp_path / "r.sqlite3", max_batch=256)
    await store.open()
    try:
        await store.append_outbox([_entry("clinic", 0)])  # the counter row exists for one
        calls = [store.append_outbox([_entry("clinic" if i % 3 else "dental", i + 1)])
                 for i in range(300)]
        seqs = await asyncio.gather(*calls)
        clinic = [s[0] for i, s in enumerate(seqs) if i % 3]
        dental = [s[0] for i, s in enumerate(seqs) if not i % 3]
        assert clinic == list(range(2, 2 + len(clinic)))  # queue order, no gaps
        assert dental == list(range(1, 1 + len(dental)))
        assert store.batches_committed < 100
        rows = await store.read_outbox("clinic", 0, 1000)
        assert [r.seq for r in rows] == list(range(1, 1 + len(clinic) + 1))
    finally:
        await store.close()


async def test_a_duplicate_in_a_merged_batch_fails_alone(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "r.sqlite3")
    await store.open()
    try:
        await store.append_outbox([_entry("clinic", 1, "D" * 22)])
        calls = [store.append_outbox([_entry("clinic", i)]) for i in range(2, 40)]
        calls.insert(10, store.append_outbox([_entry("clinic", 99, "D" * 22)]))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1 and isinstance(failed[0], DuplicateEnvelope)
        stored = await store.read_outbox("clinic", 0, 100)
        assert len(stored) == 1 + 38
        assert len({r.envelope_id for r in stored}) == len(stored)
    finally:
        await store.close()


async def test_a_failing_link_hand_off_never_fails_the_write_and_is_logged(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(entries: object) -> None:
        raise RuntimeError("hand-off bug")

    store = SqliteStore(tmp_path / "r.sqlite3")
    store.on_outbox_committed = broken
    await store.open()
    try:
        with caplog.at_level("ERROR", logger="relay"):
            assert await store.append_outbox([_entry("clinic", 1)]) == [1]
        assert [e.seq for e in await store.read_outbox("clinic", 0, 10)] == [1]
        assert any(r.getMessage() == "link.handoff_failed" for r in caplog.records)
        assert "hand-off bug" not in caplog.text  # the class name only
    finally:
        await store.close()

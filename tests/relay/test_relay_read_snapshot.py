"""Read-after-write on the relay's store: a token committed a moment ago is always found.

Seen under load (1,000 agents provisioned at once): an agent token issued a moment
earlier was refused as unknown (``auth.bad_token``). Cause: every read shared one
reader connection and took two thread hops (execute, then fetchall); when reads of
concurrent tasks interleaved, a statement executed but not yet fetched kept the reader's
read transaction open, so the next task's read saw that older WAL snapshot. Real SQLite
file, real concurrency, no mocks.
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from relay.sqlite_store import SqliteStore
from relay.store import Account, AgentCertificateRow, TokenRecord

pytestmark = pytest.mark.timeout(60)


async def _background_reads(store: SqliteStore, stop: asyncio.Event) -> int:
    n = 0
    while not stop.is_set():
        await asyncio.gather(store.get_account("clinic"), store.agent_certificates("clinic"),
                             store.outbox_stats("clinic"), store.find_token("nothing"))
        n += 1
    return n


async def _cancelled_reads(store: SqliteStore, stop: asyncio.Event) -> int:
    n = 0
    while not stop.is_set():
        task = asyncio.ensure_future(store.agent_certificates("clinic"))
        await asyncio.sleep(0.0005)  # bounded: a cancelled read still runs in the thread
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        n += 1
    return n


async def test_token_found_right_after_it_is_committed(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "r.sqlite3")
    await store.open()
    try:
        await store.create_account(Account("clinic", "standard", ("https://c.example",), 30,
                                           0))
        for i in range(50):  # some rows, so reads take a little time in the thread
            await store.add_agent_certificate(AgentCertificateRow(
                "clinic", f"k{i:04d}", f"a{i:04d}", {"x": "y" * 200}), at=i)
        stop = asyncio.Event()
        readers = [asyncio.ensure_future(_background_reads(store, stop)) for _ in range(8)]
        readers += [asyncio.ensure_future(_cancelled_reads(store, stop)) for _ in range(2)]
        missing = []

        async def issue_and_use(i: int) -> None:
            await store.add_token(f"hash-{i}", TokenRecord("agent", "clinic", f"a{i}"), at=i)
            if await store.find_token(f"hash-{i}") is None:
                missing.append(i)

        for round_ in range(20):
            await asyncio.gather(*(issue_and_use(round_ * 25 + j) for j in range(25)))
        stop.set()
        counts = await asyncio.gather(*readers)
        assert min(counts) > 0  # the concurrent reads really ran
        assert missing == [], f"{len(missing)} of 500 fresh tokens not found"
    finally:
        await store.close()

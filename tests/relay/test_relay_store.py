"""The store on real SQLite files: outbox order and deletes, group commit, restart
durability, at-rest encryption with rotation, retention sweeping with an injected clock."""

from __future__ import annotations

import asyncio
import pathlib

import aiohttp
import pytest

from envelope import envelope_hash
from relay.atrest import AtRestError, TranscriptCipher, rewrap_data_keys
from relay.client import AgentClient, VisitorClient
from relay.sqlite_store import SqliteStore
from relay.store import Account, DuplicateEnvelope, OutboxEntry
from relay.sweeper import sweep_once

from .conftest import ORIGIN, FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)


def _entry(i: int) -> OutboxEntry:
    data = f"envelope-{i}".encode()
    return OutboxEntry("clinic", 0, f"{i:022d}", "eng-00000001", envelope_hash(data), data, i)


async def test_outbox_order_delete_and_restart(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "r.sqlite3")
    await store.open()
    seqs = await store.append_outbox([_entry(i) for i in range(1, 6)])
    assert seqs == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.read_outbox("clinic", 2, 10)] == [3, 4, 5]
    e3 = (await store.read_outbox("clinic", 2, 1))[0]
    assert not await store.delete_outbox("clinic", e3.envelope_id, "00" * 32)  # wrong hash
    assert await store.delete_outbox("clinic", e3.envelope_id, e3.envelope_hash)
    for e in await store.read_outbox("clinic", 0, 10):
        await store.delete_outbox("clinic", e.envelope_id, e.envelope_hash)
    await store.close()
    store = SqliteStore(tmp_path / "r.sqlite3")
    await store.open()
    assert await store.append_outbox([_entry(9)]) == [6]  # never reused after deletes
    stats = await store.outbox_stats("clinic")
    assert stats.entries == 1 and stats.oldest_created_at == 9
    await store.close()


async def test_outbox_totals_match_a_recount_after_every_kind_of_write(
        tmp_path: pathlib.Path) -> None:
    """Schema 004's counters against the rows: merged and single appends, a duplicate,
    receipts (some naming nothing), a reject and a plain delete, on two accounts."""
    import random
    import sqlite3

    rng = random.Random(4)
    path = tmp_path / "r.sqlite3"
    store = SqliteStore(path, max_batch=16)
    await store.open()

    def entry(account: str, i: int) -> OutboxEntry:
        data = f"{account}-{i}".encode() * rng.randint(1, 40)
        return OutboxEntry(account, 0, f"{account[0]}{i:021d}", "eng-00000001",
                           envelope_hash(data), data, 1000 + i)

    async def check() -> None:
        db = sqlite3.connect(path)
        try:
            for account in ("clinic", "bank"):
                n, size, oldest = db.execute(
                    "SELECT count(*), coalesce(sum(length(data)), 0), (SELECT created_at"
                    " FROM outbox WHERE account=? ORDER BY seq LIMIT 1) FROM outbox"
                    " WHERE account=?", (account, account)).fetchone()
                stats = await store.outbox_stats(account)
                assert (stats.entries, stats.total_bytes, stats.oldest_created_at) == \
                    (n, size, oldest)
            total = await store.outbox_stats()
            assert (total.entries, total.total_bytes) == db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM outbox").fetchone()
        finally:
            db.close()

    i = 0
    for _ in range(6):
        batch = [entry(rng.choice(("clinic", "bank")), i + k) for k in range(30)]
        i += 30
        await asyncio.gather(*(store.append_outbox([e]) for e in batch))  # merged
        with pytest.raises(DuplicateEnvelope):
            await store.append_outbox([batch[0]])  # refused: counts nothing
        await check()
        for account in ("clinic", "bank"):
            rows = await store.read_outbox(account, 0, 100)
            picked = rng.sample(rows, len(rows) // 2)
            items = [(e.engagement, e.envelope_id, e.envelope_hash) for e in picked]
            items.append(("eng-00000001", "x" * 22, "00" * 32))  # matches nothing
            await store.apply_receipt(account, f"rh-{i}-{account}", items, 2000)
            left = await store.read_outbox(account, 0, 100)
            if left:
                await store.reject_outbox(account, left[0].seq, "vault.bad_body", 2000)
            if len(left) > 1:
                await store.delete_outbox(account, left[1].envelope_id, left[1].envelope_hash)
        await check()
    await store.close()


async def test_outbox_totals_are_recounted_at_open(tmp_path: pathlib.Path) -> None:
    """A relay older than schema 004 run on the file (a downgrade) moves rows without
    moving the totals: the next start counts them again."""
    import sqlite3

    path = tmp_path / "r.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.append_outbox([_entry(i) for i in range(1, 6)])
    await store.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM outbox WHERE seq <= 2")  # as an old relay's receipts would
    db.commit()
    db.close()
    store = SqliteStore(path)
    await store.open()
    stats = await store.outbox_stats("clinic")
    assert (stats.entries, stats.total_bytes, stats.oldest_created_at) == \
        (3, sum(len(_entry(i).data) for i in (3, 4, 5)), 3)
    await store.close()


async def test_a_large_receipt_is_applied_in_chunks_and_counted_whole(
        tmp_path: pathlib.Path) -> None:
    """A receipt over more items than one write takes: every match deleted, each
    engagement credited with all its envelopes under the one receipt hash."""
    import sqlite3

    path = tmp_path / "r.sqlite3"
    store = SqliteStore(path)
    await store.open()
    entries = []
    for i in range(150):
        data = f"envelope-{i}".encode()
        entries.append(OutboxEntry("clinic", 0, f"{i:022d}", f"eng-{i % 2:08d}",
                                   envelope_hash(data), data, i))
    await store.append_outbox(entries)
    items = [(e.engagement, e.envelope_id, e.envelope_hash) for e in entries]
    outcome = await store.apply_receipt("clinic", "rh-big", items, 500)
    assert sorted(seq for seq, _ in outcome.deleted) == list(range(1, 151))
    assert (await store.outbox_stats("clinic")).entries == 0
    again = await store.apply_receipt("clinic", "rh-big", items, 501)  # replayed
    assert again.deleted == ()
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT engagement, envelopes FROM engagement_receipts WHERE"
                      " receipt_hash='rh-big' ORDER BY engagement").fetchall() == \
        [("eng-00000000", 75), ("eng-00000001", 75)]
    db.close()


async def test_group_commit_batches_concurrent_writes(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "r.sqlite3", max_batch=64)
    await store.open()
    before = store.batches_committed
    seqs = await asyncio.gather(*(store.append_outbox([_entry(i)]) for i in range(200)))
    assert sorted(s[0] for s in seqs) == list(range(1, 201))
    assert store.batches_committed - before < 50  # many writes per transaction
    await store.close()


async def test_at_rest_rotation_and_rewrap(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "r.sqlite3")
    await store.open()
    await store.create_account(Account("shop", "standard", (), 30, 0))
    old, new = b"\x01" * 32, b"\x02" * 32
    cipher = TranscriptCipher(store, old)
    await store.append_transcript(await cipher.seal_items("shop", "eng-00000001",
                                                          [{"text": "one"}], 0))
    await cipher.rotate_data_key("shop", 1)
    await store.append_transcript(await cipher.seal_items("shop", "eng-00000001",
                                                          [{"text": "two"}], 2))
    rows = await store.read_transcript("shop", "eng-00000001")
    assert len({r.key_id for r in rows}) == 2
    assert [i["text"] for i in await cipher.read("shop", "eng-00000001")] == ["one", "two"]
    assert await rewrap_data_keys(store, ["shop"], old, new) == 2
    with pytest.raises(AtRestError):
        await cipher.read("shop", "eng-00000001")
    assert [i["text"] for i in await TranscriptCipher(store, new).read(
        "shop", "eng-00000001")] == ["one", "two"]
    await store.close()


async def test_acked_frames_survive_graceful_shutdown(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    server = await start_relay(tmp_path / "state", clock)
    async with aiohttp.ClientSession() as session:
        relay = Relay(server, session, tmp_path / "state", clock)
        await relay.account("clinic", compliance=True)
        ident, _ = relay.vaults["clinic"]
        visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN,
                                pinned_fingerprint=ident.fingerprint)
        await visitor.connect()
        for i in range(20):
            await visitor.send(f"m{i}")
        acks = [await visitor.next_event(types=("ack",)) for _ in range(20)]
        assert [a["seq"] for a in acks] == list(range(1, 21))
        await server.close()  # sockets get going-away; the commit queue drains
        closed = await visitor.next_event(types=("closed",))
        assert closed["code"] == 1001
        await visitor.close()
    store = SqliteStore(tmp_path / "state" / "relay.sqlite3")
    await store.open()
    assert (await store.outbox_stats("clinic")).entries == 21  # connection-info + 20
    await store.close()


async def test_retention_sweeper_with_injected_clock(relay: Relay) -> None:
    admin = await relay.account("shop", retention_days=7)
    agent = AgentClient(relay.url, await relay.agent_token("shop", admin, "ann"), "shop")
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    await agent.connect()
    eng = (await visitor.connect())["engagement"]
    await visitor.send("keep me a week")
    await visitor.next_event(types=("ack",))
    await visitor.close()
    await agent.close()
    path = f"/v1/accounts/shop/engagements/{eng}/transcript"
    st = relay.state
    assert await sweep_once(st, now=relay.clock() + 6 * 86400) == 0
    assert len((await relay.call("GET", path, admin))[1]["items"]) == 1
    assert await sweep_once(st, now=relay.clock() + 8 * 86400) == 1
    assert (await relay.call("GET", path, admin))[1]["items"] == []
    _, metrics = await relay.call("GET", "/metrics", token=None)
    assert "relay_sweeper_runs_total 2.0" in metrics
    assert "relay_transcripts_swept_total 1.0" in metrics


async def test_delete_on_demand(relay: Relay) -> None:
    admin = await relay.account("shop")
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    eng = (await visitor.connect())["engagement"]
    await visitor.send("delete me")
    await visitor.next_event(types=("ack",))
    await visitor.close()
    path = f"/v1/accounts/shop/engagements/{eng}/transcript"
    assert (await relay.call("DELETE", path, admin))[1] == {"deleted": 1}
    assert (await relay.call("GET", path, admin))[1]["items"] == []

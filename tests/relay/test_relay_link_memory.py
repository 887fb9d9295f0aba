"""The vault link's sender on a real SQLite file: entries committed while the link lives
are sent from memory (not read back), the backlog from before it and anything after a
queue overflow from the outbox; every entry goes out exactly once, in seq order, in one
frame each or (to a vault that named outbox-batch) in batched frames within their bounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from envelope import decode_outbox_batch, decode_outbox_frame, envelope_hash
from envelope.limits import MAX_BATCH_FRAME_BYTES
from relay import vault_link
from relay.links import LinkRegistry
from relay.metrics import RelayMetrics
from relay.sqlite_store import SqliteStore
from relay.store import OutboxEntry
from relay.vault_link import VaultLinkSession

pytestmark = pytest.mark.timeout(60)


class _Socket:
    """The link's websocket as the sender sees it: records the frames sent (decoded as
    the session was told to send them)."""

    def __init__(self, batch: bool = False) -> None:
        self.closed = False
        self.batch = batch
        self.seqs: list[int] = []
        self.frame_sizes: list[int] = []

    async def send_bytes(self, data: bytes) -> None:
        self.frame_sizes.append(len(data))
        if self.batch:
            self.seqs += [seq for seq, _ in decode_outbox_batch(data)]
        else:
            self.seqs.append(decode_outbox_frame(data)[0])
        await asyncio.sleep(0)


def _entry(i: int, size: int = 0) -> OutboxEntry:
    data = f"envelope-{i}".encode() * 8 + b"x" * size
    return OutboxEntry("clinic", 0, f"e{i:021d}", "eng-00000001", envelope_hash(data), data, i)


@contextlib.asynccontextmanager
async def _streaming(tmp_path: pathlib.Path, ws: Any, *, window: int, backlog: int = 0,
                     identity_key: bytes = b"k" * 32
                     ) -> AsyncIterator[tuple[SqliteStore, VaultLinkSession]]:
    """A real SQLite outbox (``backlog`` entries already in it) and a link sender
    streaming it to ``ws``; stopped as the endpoint's finally does."""
    store = SqliteStore(tmp_path / "r.sqlite3")
    links = LinkRegistry()
    store.on_outbox_committed = links.offer
    await store.open()
    st: Any = SimpleNamespace(store=store, links=links, metrics=RelayMetrics.create(),
                              config=SimpleNamespace(link_window=window), offload=None,
                              logger=logging.getLogger("test"), clock=lambda: 0.0)
    try:
        await store.append_outbox([_entry(i) for i in range(backlog)])
        session = VaultLinkSession(st, ws, "clinic", identity_key, batch=ws.batch)
        links.claim("clinic", session)
        sender = asyncio.create_task(session.stream())
        try:
            yield store, session
        finally:
            ws.closed = True  # the sender's loop ends too
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    finally:
        await store.close()


async def _until(check: Any, tries: int) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)


async def _run(tmp_path: pathlib.Path, *, before: int, during: int, window: int,
               seed: int, batch: bool = False, size: int = 0
               ) -> tuple[_Socket, VaultLinkSession]:
    """``before`` entries committed before the link, ``during`` while it streams."""
    rng = random.Random(seed)
    ws = _Socket(batch)
    async with _streaming(tmp_path, ws, window=window, backlog=before) as (store, session):
        links = session.st.links

        async def vault() -> None:
            # Receipts free the window in random-sized batches, as the vault's would.
            while len(ws.seqs) < before + during:
                await asyncio.sleep(rng.choice((0, 0, 0.001)))
                for seq in sorted(session.in_flight)[:rng.randint(1, window)]:
                    del session.in_flight[seq]
                links.wake("clinic")
        collector = asyncio.create_task(vault())
        if before:
            # Let the sender catch up with the backlog first (a short store read). The
            # one-hop group commit appends faster than this simulated vault receipts, so
            # a producer started at once keeps the store read ahead of the link until the
            # very end, and nothing would be "committed while the link is caught up".
            async def caught_up() -> None:
                while session.from_store:
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(caught_up(), 30)
        n = before
        while n < before + during:
            k = rng.randint(1, 20)
            await asyncio.gather(*(store.append_outbox([_entry(i, size)])
                                   for i in range(n, min(n + k, before + during))))
            n += k
            await asyncio.sleep(rng.choice((0, 0.001)))
        await asyncio.wait_for(collector, 30)
    return ws, session


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_live_entries_come_from_memory_exactly_once_in_order(tmp_path: pathlib.Path,
                                                                   seed: int,
                                                                   batch: bool) -> None:
    ws, session = await _run(tmp_path, before=40, during=600, window=16, seed=seed,
                             batch=batch)
    assert ws.seqs == list(range(1, 641))
    assert session.sent_from_memory > 300  # the backlog came from the store, the rest not
    sample = session.st.metrics.registry.get_sample_value
    assert sample("relay_vault_link_frames_sent_total") == 640  # entries, however framed
    if batch:
        # One frame per pass: fewer frames than entries, and each one counted.
        assert len(ws.frame_sizes) < 640
        assert sample("relay_vault_link_batches_sent_total") == len(ws.frame_sizes)
    else:
        assert len(ws.frame_sizes) == 640
        assert sample("relay_vault_link_batches_sent_total") == 0


async def test_batched_frames_stay_within_the_byte_bound(tmp_path: pathlib.Path) -> None:
    # 60 KiB entries, a window of 64: a pass takes up to ~3.8 MiB, so it must be split.
    ws, session = await _run(tmp_path, before=100, during=60, window=64, seed=5, batch=True,
                             size=60 * 1024)
    assert ws.seqs == list(range(1, 161))
    assert max(ws.frame_sizes) <= MAX_BATCH_FRAME_BYTES
    # Frames carry several entries (how full depends on how far receipts freed the
    # window when the sender looked: "within 61 KiB of the bound" failed 1 run in ~10).
    assert max(ws.frame_sizes) > 4 * 60 * 1024
    assert len(ws.frame_sizes) < 160
    assert session.st.metrics.registry.get_sample_value(
        "relay_vault_link_batches_sent_total") == len(ws.frame_sizes)


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batched"])
async def test_overflow_falls_back_to_the_outbox_without_loss_or_repeats(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, batch: bool) -> None:
    monkeypatch.setattr(vault_link, "_QUEUE_MAX_ENTRIES", 5)
    ws, session = await _run(tmp_path, before=0, during=800, window=4, seed=7, batch=batch)
    assert ws.seqs == list(range(1, 801))
    assert session.overflows > 0


async def test_the_relay_wide_queue_budget_also_falls_back_and_is_accounted(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Many slow vaults at once must not add up: past the registry's budget the link
    # being offered to reads the outbox instead, with nothing lost or repeated.
    monkeypatch.setattr(LinkRegistry, "QUEUED_BYTES_MAX", 2_000)
    ws, session = await _run(tmp_path, before=0, during=400, window=4, seed=11)
    assert ws.seqs == list(range(1, 401))
    assert session.overflows > 0
    assert session.st.links.queued_bytes == session.queue_bytes  # the books balance
    session._drop_queue()
    assert session.st.links.queued_bytes == 0


class _ControlSocket(_Socket):
    def __init__(self) -> None:
        super().__init__()
        self.control: list[Any] = []

    async def send_json(self, doc: Any) -> None:
        self.control.append(doc)


async def test_a_receipt_for_an_entry_already_deleted_still_frees_its_window_slot(
        tmp_path: pathlib.Path) -> None:
    from envelope import IdentityKey, sign_receipt

    identity = IdentityKey.generate()
    ws = _ControlSocket()
    async with _streaming(tmp_path, ws, window=2, backlog=2,
                          identity_key=identity.public_bytes) as (store, session):
        entries = [_entry(i) for i in range(2)]
        await _until(lambda: len(ws.seqs) == 2, 100)
        assert sorted(session.in_flight) == [1, 2]
        items = [(e.engagement, e.envelope_id, e.envelope_hash) for e in entries]
        # An earlier link's receipt already deleted entry 1; this link sent it again.
        await store.apply_receipt("clinic", "earlier-receipt", items[:1], 0)
        await session.on_ack({"type": "ack", "receipt": sign_receipt(
            identity, account="clinic", items=items)})
        assert session.in_flight == {} and session.in_flight_ids == {}
        assert ws.control[-1]["deleted"] == 1  # only entry 2 was still there


async def test_an_entry_that_missed_the_hand_off_is_sent_after_a_quiet_second(
        tmp_path: pathlib.Path) -> None:
    ws = _Socket()
    async with _streaming(tmp_path, ws, window=8) as (store, session):
        await store.append_outbox([_entry(0)])
        await _until(lambda: ws.seqs == [1] and not session.from_store, 300)
        assert ws.seqs == [1] and not session.from_store  # memory mode
        store.on_outbox_committed = None  # as if the hook had failed for this commit
        await store.append_outbox([_entry(1)])
        await _until(lambda: ws.seqs == [1, 2], 500)
        assert ws.seqs == [1, 2]  # found by the backstop, sent once

"""The vault's side of the vault link against a minimal relay peer on 127.0.0.1 that
speaks envelope/link.py with envelope's own functions. By default the peer is a relay
from before link features: it ignores the vault's ``features`` and sends one frame per
entry; it can also confirm ``outbox-batch`` and send chosen (bad) binary frames."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import struct

import nacl.utils
import pytest
from aiohttp import ClientSession, WSMsgType, web

from controller_vault.config import VaultConfig
from controller_vault.link_client import VaultLink, backoff_delay, relay_origin
from controller_vault.metrics import VaultMetrics
from envelope import (
    PartyKeys,
    b64e,
    encode_outbox_batches,
    encode_outbox_frame,
    envelope_hash,
    parse_envelope,
    verify_link_auth,
    verify_receipt,
)
from envelope.limits import MAX_BATCH_FRAME_BYTES

pytestmark = pytest.mark.timeout(30)


@dataclasses.dataclass
class RelayPeer:
    """Outbox + link endpoint, as the relay will run it (simplified: one account)."""

    identity_pk: bytes
    outbox: dict[int, bytes]
    origin_override: str | None = None
    drop_after: int | None = None  # close the first session after sending this many
    sessions: int = 0
    auth_ok: int = 0
    acked: list[str] = dataclasses.field(default_factory=list)
    origin: str = ""
    all_acked: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    ready_extra: dict = dataclasses.field(default_factory=dict)  # e.g. {"features": [...]}
    binary: list[bytes] | None = None  # sent instead of one outbox frame per entry
    binary_by_session: list[list[bytes]] | None = None  # session n sends item n (the last)
    auth_frames: list[dict] = dataclasses.field(default_factory=list)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sessions += 1
        nonce = nacl.utils.random(32)
        await ws.send_json({"type": "challenge", "v": 1, "nonce": b64e(nonce),
                            "origin": self.origin_override or self.origin})
        msg = await ws.receive(timeout=5)
        if msg.type != WSMsgType.TEXT:
            return ws
        self.auth_frames.append(msg.json())
        try:
            verify_link_auth(msg.json(), self.identity_pk, account="clinic", nonce=nonce,
                             origin=self.origin)
        except Exception:
            await ws.close(code=4401, message=b"link.auth_failed")
            return ws
        self.auth_ok += 1
        await ws.send_json({"type": "ready", "backlog": len(self.outbox), "window": 64}
                           | self.ready_extra)
        binary = self.binary
        if self.binary_by_session:
            binary = self.binary_by_session[min(self.sessions, len(self.binary_by_session)) - 1]
        for frame in binary or []:
            await ws.send_bytes(frame)
        for n, (seq, env) in enumerate([] if binary else sorted(self.outbox.items())):
            if self.drop_after is not None and self.sessions == 1 and n == self.drop_after:
                await ws.close(code=1001, message=b"going-away")
                return ws
            await ws.send_bytes(encode_outbox_frame(seq, env))
        async for msg in ws:
            doc = msg.json()
            if doc.get("type") == "ack":
                items = verify_receipt(doc["receipt"], self.identity_pk, account="clinic")
                deleted = 0
                for item in items:
                    for seq, env in list(self.outbox.items()):
                        if envelope_hash(env) == item.envelope_hash:
                            del self.outbox[seq]
                            deleted += 1
                    self.acked.append(item.envelope_hash)
                await ws.send_json({"type": "acked", "deleted": deleted})
                if not self.outbox:
                    self.all_acked.set()
        return ws


@pytest.fixture
async def peer_server(vault):
    servers = []

    async def start(peer: RelayPeer) -> str:
        app = web.Application()
        app.router.add_get("/v1/vault/link", peer.handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        servers.append(runner)
        peer.origin = f"http://127.0.0.1:{port}"
        return peer.origin

    yield start
    for runner in servers:
        await runner.cleanup()


def _outbox(vault, n: int, engagement: str = "eng-00000001") -> dict[int, bytes]:
    from envelope import encode_body, seal

    visitor = PartyKeys.generate()
    return {i + 1: seal(encode_body("message", {"text": f"m{i}"}), sender=visitor,
                        role="visitor", account="clinic", engagement=engagement,
                        sequence=i + 1, kind="message",
                        recipients=[vault.keys.current_key.public_bytes])
            for i in range(n)}


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _until_reconnected(peer, tries: int = 200) -> None:
    """Wait (bounded: tries x 20 ms) until the link has dialed the peer twice."""
    for _ in range(tries):
        if peer.sessions >= 2:
            return
        await asyncio.sleep(0.02)


def _link(vault, url: str, metrics: VaultMetrics | None = None) -> VaultLink:
    cfg = VaultConfig(account="clinic", state_dir=str(vault.state), relay_url=url,
                      batch_max=16, batch_wait_ms=10, backoff_initial_s=0.05,
                      backoff_max_s=0.2)
    return VaultLink(cfg, vault.keys, vault.ingestor, metrics or VaultMetrics(),
                     rng=random.Random(1))


async def _until_acked(vault, peer, url: str, metrics: VaultMetrics | None = None,
                       timeout: float = 10) -> VaultLink:
    """Run a link to ``peer`` until it has every entry acknowledged (bounded), then stop."""
    link = _link(vault, url, metrics)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(peer.all_acked.wait(), timeout)
    finally:
        await _stop(task)
    return link


async def test_link_ingests_the_outbox_and_acknowledges_after_commit(vault, peer_server):
    outbox = _outbox(vault, 50)
    peer = RelayPeer(vault.keys.identity.public_bytes, dict(outbox))
    metrics = VaultMetrics()
    await _until_acked(vault, peer, await peer_server(peer), metrics)
    assert peer.auth_ok == 1 and not peer.outbox
    assert sorted(peer.acked) == sorted(envelope_hash(e) for e in outbox.values())
    assert await vault.envelope_count() == 50
    text = __import__("prometheus_client").generate_latest(metrics.registry).decode()
    assert 'vault_link_state{state="ready"} 1.0' in text
    assert "vault_receipts_sent_total" in text


async def test_link_reconnects_and_redelivery_is_stored_once(vault, peer_server):
    outbox = _outbox(vault, 40)
    peer = RelayPeer(vault.keys.identity.public_bytes, dict(outbox), drop_after=25)
    await _until_acked(vault, peer, await peer_server(peer))
    assert peer.sessions >= 2
    assert await vault.envelope_count() == 40
    ids = {parse_envelope(e).header.envelope_id for e in outbox.values()}
    assert set(await vault.store.known_envelopes(ids)) == ids


async def test_link_refuses_a_challenge_for_another_origin(vault, peer_server):
    peer = RelayPeer(vault.keys.identity.public_bytes, _outbox(vault, 3),
                     origin_override="https://evil-relay.example")
    link = _link(vault, await peer_server(peer))
    task = asyncio.create_task(link.run())
    try:
        await _until_reconnected(peer, 100)
    finally:
        await _stop(task)
    assert peer.sessions >= 2 and peer.auth_ok == 0
    assert link.last_close_code == "link.wrong_origin"
    assert await vault.envelope_count() == 0


def test_backoff_is_jittered_and_capped():
    rng = random.Random(7)
    delays = [backoff_delay(a, 0.5, 60, rng) for a in range(12)]
    assert all(0 <= d <= 60 for d in delays)
    assert max(delays[:3]) <= 2.0 and len(set(delays)) == len(delays)


def test_relay_origin_normalises_default_ports():
    assert relay_origin("https://Relay.Example:443/base/") == "https://relay.example"
    assert relay_origin("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


async def test_locked_store_means_no_ack_then_redelivery_after_reconnect(vault, peer_server):
    import sqlite3

    outbox = _outbox(vault, 20)
    peer = RelayPeer(vault.keys.identity.public_bytes, dict(outbox))
    await vault.store._db.execute("PRAGMA busy_timeout = 50")
    await vault.keystore._db.execute("PRAGMA busy_timeout = 50")
    lock = sqlite3.connect(vault.state / "keys.db", timeout=0.1)
    lock.execute("BEGIN EXCLUSIVE")
    link = _link(vault, await peer_server(peer))
    task = asyncio.create_task(link.run())
    try:
        await _until_reconnected(peer)
        assert peer.sessions >= 2 and peer.acked == []
        assert await vault.envelope_count() == 0
        lock.rollback()
        await asyncio.wait_for(peer.all_acked.wait(), 10)
    finally:
        lock.close()
        await _stop(task)
    assert await vault.envelope_count() == 20
    assert len(set(peer.acked)) == 20


async def test_a_relay_from_before_features_gets_the_old_link(vault, peer_server):
    # The peer ignores "features" and its ready names none: one frame per entry, read
    # as such, and the auth frame differs from an old vault's by that field alone.
    outbox = _outbox(vault, 30)
    peer = RelayPeer(vault.keys.identity.public_bytes, dict(outbox))
    link = await _until_acked(vault, peer, await peer_server(peer))
    assert not link.batched and await vault.envelope_count() == 30
    assert peer.auth_frames[0]["features"] == ["outbox-batch"]
    assert set(peer.auth_frames[0]) == {"type", "account", "identity_key", "sig", "features"}


async def test_each_bad_batched_frame_closes_the_link_then_the_good_one_is_stored(
        vault, peer_server):
    outbox = _outbox(vault, 7)
    items = sorted(outbox.items())
    good = encode_outbox_batches(items)[0]
    reordered = b"\xb1\x00\x02" + b"".join(
        struct.pack(">QI", seq, len(env)) + env for seq, env in (items[1], items[0]))
    bad = [b"\xb1\x00", good + b"\x00",  # truncated; trailing byte
           encode_outbox_frame(*items[0]),  # a single frame where batches were agreed
           reordered]
    # A bad batch names entries the vault can neither store nor reject: it closes the
    # link (else the relay's window would wait for them forever) and the relay, here
    # the next session, sends again.
    peer = RelayPeer(vault.keys.identity.public_bytes, dict(outbox),
                     ready_extra={"features": ["outbox-batch"]},
                     binary_by_session=[*([b] for b in bad), [good]])
    metrics = VaultMetrics()
    # batch_max 16 > 7
    link = await _until_acked(vault, peer, await peer_server(peer), metrics, timeout=20)
    assert link.batched and await vault.envelope_count() == 7
    assert peer.sessions == len(bad) + 1
    assert metrics.registry.get_sample_value(
        "vault_rejected_envelopes_total", {"reason": "link.bad_frame"}) == len(bad)


@pytest.mark.parametrize("ready_extra", [
    {"features": ["outbox-batch"]},      # named by the relay, never offered by this vault
    {"features": "outbox-batch"},        # not a list
])
async def test_a_ready_frame_with_features_not_offered_closes_the_link(
        vault, peer_server, ready_extra):
    peer = RelayPeer(vault.keys.identity.public_bytes, _outbox(vault, 3),
                     ready_extra=ready_extra)
    cfg = VaultConfig(account="clinic", state_dir=str(vault.state), relay_url=await peer_server(
        peer), batch_max=16, batch_wait_ms=10, backoff_initial_s=0.05, backoff_max_s=0.2,
        link_batch_frames=False)
    link = VaultLink(cfg, vault.keys, vault.ingestor, VaultMetrics(), rng=random.Random(1))
    task = asyncio.create_task(link.run())
    try:
        await _until_reconnected(peer)
    finally:
        await _stop(task)
    assert peer.sessions >= 2 and link.last_close_code == "link.bad_frame"
    assert "features" not in peer.auth_frames[0]  # this vault offered nothing
    assert await vault.envelope_count() == 0


async def test_a_batched_frame_of_exactly_the_size_bound_is_read(vault, peer_server):
    from envelope import encode_body, seal

    visitor = PartyKeys.generate()
    outbox: dict[int, bytes] = {}
    used = 3 + 12  # the frame's head, and the filler entry's
    while MAX_BATCH_FRAME_BYTES - used > 40_000:
        seq = len(outbox) + 1
        outbox[seq] = seal(encode_body("message", {"text": "x" * 16_000}), sender=visitor,
                           role="visitor", account="clinic", engagement="eng-00000001",
                           sequence=seq, kind="message",
                           recipients=[vault.keys.current_key.public_bytes])
        used += 12 + len(outbox[seq])
    items = sorted(outbox.items())
    # Opaque bytes fill the frame to the byte: the vault refuses them as an envelope
    # (a reject, as for any bad entry), not the frame.
    filler = (len(items) + 1, b"\x01" * (MAX_BATCH_FRAME_BYTES - used))
    frames = encode_outbox_batches([*items, filler])
    assert [len(f) for f in frames] == [MAX_BATCH_FRAME_BYTES]
    peer = RelayPeer(vault.keys.identity.public_bytes, dict(outbox),
                     ready_extra={"features": ["outbox-batch"]}, binary=frames)
    metrics = VaultMetrics()
    await _until_acked(vault, peer, await peer_server(peer), metrics)
    assert peer.sessions == 1 and await vault.envelope_count() == len(items)
    assert metrics.registry.get_sample_value(
        "vault_rejected_envelopes_total", {"reason": "link.bad_frame"}) is None


async def test_a_batch_closes_after_batch_wait_ms_of_quiet_not_of_its_first_frame(vault):
    # Frames 30 ms apart for 0.36 s keep one batch open past its first 200 ms window (the
    # deadline moves on with the frames); a 0.6 s pause closes it; batch_max caps one.
    gaps = [0.03] * 12 + [0.6, 0.0, 0.0] + [0.6] + [0.0] * 19

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for seq, gap in enumerate(gaps, start=1):
            await asyncio.sleep(gap)
            await ws.send_bytes(encode_outbox_frame(seq, b"envelope"))
        await asyncio.sleep(5)
        return ws

    app = web.Application()
    app.router.add_get("/", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = VaultConfig(account="clinic", state_dir=str(vault.state), batch_max=16,
                      batch_wait_ms=200)
    link = VaultLink(cfg, vault.keys, vault.ingestor, VaultMetrics())
    try:
        async with ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            batches = [[seq for seq, _ in await link._collect(ws)] for _ in range(4)]
    finally:
        await runner.cleanup()
    assert batches == [list(range(1, 13)), [13, 14, 15], list(range(16, 32)),
                       list(range(32, 36))]

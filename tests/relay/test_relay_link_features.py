"""Link feature negotiation on the relay's side, over a real socket to the real app: a
vault that names ``outbox-batch`` gets batched frames and a ready that says so; one that
names nothing (every vault before features) gets the ready and the frames it always had;
unknown features are ignored, malformed ones close the link, and ``link_batch_frames =
false`` makes the relay behave as one from before features."""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from envelope import b64d, decode_outbox_batch, decode_outbox_frame, link_auth_response
from relay.store import OutboxEntry

from .conftest import FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)
N = 40


async def _paired_with_backlog(relay: Relay) -> None:
    admin = await relay.account("clinic")
    await relay.pair_and_toggle("clinic", admin)
    now = int(time.time())
    await relay.state.store.append_outbox([
        OutboxEntry("clinic", 0, f"e{i:021d}", "eng-00000001", f"{i:064x}",
                    f"envelope-{i}".encode() * 20, now) for i in range(N)])


async def _dial(relay: Relay, features: Any) -> tuple[aiohttp.ClientWebSocketResponse,
                                                      dict[str, Any]]:
    ws = await relay.session.ws_connect(relay.url.replace("http", "ws", 1) + "/v1/vault/link")
    challenge = await ws.receive_json(timeout=5)
    frame = link_auth_response(relay.vaults["clinic"][0], account="clinic",
                               nonce=b64d(challenge["nonce"], length=32),
                               origin=challenge["origin"])
    if features is not None:
        frame["features"] = features
    await ws.send_json(frame)
    msg = await ws.receive(timeout=5)
    return ws, (msg.json() if msg.type == aiohttp.WSMsgType.TEXT else {"type": "closed"})


async def _binary(ws: aiohttp.ClientWebSocketResponse) -> list[bytes]:
    """Binary frames until ``N`` entries could have arrived (or a quiet second)."""
    out: list[bytes] = []
    while True:
        try:
            msg = await ws.receive(timeout=1.0)
        except TimeoutError:
            return out
        if msg.type != aiohttp.WSMsgType.BINARY:
            return out
        out.append(bytes(msg.data))


@pytest.fixture
async def relay_without_batches(tmp_path: pathlib.Path) -> AsyncIterator[Relay]:
    clock = FakeClock()
    server = await start_relay(tmp_path / "state", clock, link_batch_frames=False)
    try:
        async with aiohttp.ClientSession() as session:
            yield Relay(server, session, tmp_path / "state", clock)
    finally:
        await server.close()


async def test_a_vault_naming_outbox_batch_gets_batches(relay: Relay) -> None:
    await _paired_with_backlog(relay)
    ws, ready = await _dial(relay, ["outbox-batch"])
    assert ready["type"] == "ready" and ready["features"] == ["outbox-batch"]
    frames = await _binary(ws)
    entries = [entry for f in frames for entry in decode_outbox_batch(f)]
    assert [seq for seq, _ in entries] == list(range(1, N + 1))
    assert entries[5][1] == b"envelope-5" * 20
    assert len(frames) == 1  # the whole backlog fits the window and one frame
    sample = relay.state.metrics.registry.get_sample_value
    assert sample("relay_vault_link_frames_sent_total") == N
    assert sample("relay_vault_link_batches_sent_total") == 1
    await ws.close()


@pytest.mark.parametrize("features", [None, [], ["zstd-9"]],
                         ids=["absent", "empty", "unknown-only"])
async def test_a_vault_naming_nothing_known_gets_the_old_link(relay: Relay,
                                                              features: Any) -> None:
    await _paired_with_backlog(relay)
    ws, ready = await _dial(relay, features)
    assert set(ready) == {"type", "backlog", "window"}  # the ready frame as it always was
    frames = await _binary(ws)
    assert [decode_outbox_frame(f)[0] for f in frames] == list(range(1, N + 1))
    assert relay.state.metrics.registry.get_sample_value(
        "relay_vault_link_batches_sent_total") == 0
    await ws.close()


@pytest.mark.parametrize("features", ["outbox-batch", [1], ["Outbox Batch"],
                                      [f"f{i}" for i in range(9)]])
async def test_malformed_features_close_the_link(relay: Relay, features: Any) -> None:
    await _paired_with_backlog(relay)
    ws, error = await _dial(relay, features)
    assert error == {"type": "error", "code": "link.bad_frame",
                     "message": "unparseable or unknown frame"}
    assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE,
                                                  aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 4400
    assert (await relay.state.store.outbox_stats("clinic")).entries == N  # nothing sent


async def test_a_relay_with_batches_off_ignores_the_feature(relay_without_batches: Relay
                                                            ) -> None:
    relay = relay_without_batches
    await _paired_with_backlog(relay)
    ws, ready = await _dial(relay, ["outbox-batch"])
    assert set(ready) == {"type", "backlog", "window"}
    frames = await _binary(ws)
    assert [decode_outbox_frame(f)[0] for f in frames] == list(range(1, N + 1))
    await ws.close()

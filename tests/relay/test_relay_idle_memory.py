"""What keeps an idle chat socket small, checked as behaviour on a live relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib

import aiohttp
import pytest

from relay.client import VisitorClient

from .conftest import ORIGIN, FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)


async def test_chat_sockets_refuse_permessage_deflate(relay: Relay) -> None:
    # A browser offers permessage-deflate; accepting it would cost a zlib context per
    # socket (and open a compression oracle), so the handshake answers without it.
    await relay.account("shop")
    async with relay.session.ws_connect(f"{relay.url}/v1/chat/visitor/shop", compress=15,
                                        headers={"Origin": ORIGIN}) as ws:
        assert ws.compress == 0
        await ws.send_json({"type": "hello"})
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "welcome"


async def test_sockets_of_one_account_share_its_account_until_it_changes(relay: Relay) -> None:
    admin = await relay.account("shop")
    hub, store = relay.state.hub, relay.state.store
    assert hub is not None
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    await visitor.connect()  # its handler holds the account for the socket's life
    fresh = await store.get_account("shop")
    assert fresh is not None
    shared = hub.shared_account(fresh)
    assert shared is not fresh and shared == fresh
    # A changed account is never served stale: the first read after the change is kept.
    await relay.pair_and_toggle("shop", admin)
    changed = await store.get_account("shop")
    assert changed is not None and changed.mode == "compliance"
    assert hub.shared_account(changed) is changed
    await visitor.close()


async def test_pings_keep_a_socket_alive_and_silence_closes_it(tmp_path: pathlib.Path) -> None:
    # The idle timeout is one sweep over all sockets (no timer per socket); it must
    # still count websocket pings as life, answer them, and close a silent socket.
    clock = FakeClock()
    server = await start_relay(tmp_path / "state", clock, idle_timeout_seconds=1.5)
    try:
        async with aiohttp.ClientSession() as session:
            relay = Relay(server, session, tmp_path / "state", clock)
            await relay.account("shop")
            async with session.ws_connect(f"{relay.url}/v1/chat/visitor/shop", autoping=False,
                                          headers={"Origin": ORIGIN}) as ws:
                await ws.send_json({"type": "hello"})
                assert (await ws.receive_json(timeout=10))["type"] == "welcome"
                for _ in range(8):  # 4 s of pings only: more than twice the idle timeout
                    await ws.ping(b"alive")
                    while (msg := await ws.receive(timeout=10)).type != aiohttp.WSMsgType.PONG:
                        assert msg.type == aiohttp.WSMsgType.TEXT, msg  # "queued" and the like
                    assert msg.data == b"alive"
                    await asyncio.sleep(0.5)
                frames = []
                while (msg := await ws.receive(timeout=20)).type == aiohttp.WSMsgType.TEXT:
                    frames.append(json.loads(msg.data))
                assert {"type": "error", "code": "session.idle_timeout",
                        "message": "no frame in time"} in frames
                assert ws.close_code == 4408
    finally:
        await server.close()


async def test_heartbeat_keeps_answering_peers_and_closes_silent_ones(
        tmp_path: pathlib.Path) -> None:
    # The heartbeat is the same sweep: quiet sockets get a ping; a peer that answers
    # stays (however long it says nothing else), one that does not is closed.
    clock = FakeClock()
    server = await start_relay(tmp_path / "state", clock, heartbeat_seconds=1.0,
                               idle_timeout_seconds=3600)
    try:
        async with aiohttp.ClientSession() as session:
            relay = Relay(server, session, tmp_path / "state", clock)
            await relay.account("shop")
            url = f"{relay.url}/v1/chat/visitor/shop"
            async with session.ws_connect(url, autoping=True, headers={"Origin": ORIGIN}) \
                    as answers, session.ws_connect(url, autoping=False,
                                                   headers={"Origin": ORIGIN}) as mute:
                for ws in (answers, mute):
                    await ws.send_json({"type": "hello"})
                    assert (await ws.receive_json(timeout=10))["type"] == "welcome"
                # A browser answers pings at once; an aiohttp client only while it reads.
                reader = asyncio.create_task(_read_until_closed(answers))
                pings = 0
                while (msg := await mute.receive(timeout=20)).type in (
                        aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.PING):
                    pings += msg.type == aiohttp.WSMsgType.PING
                assert pings >= 1 and mute.close_code == 4408
                await asyncio.sleep(2.5)  # more heartbeats for the answering peer
                assert not reader.done()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await answers.send_json({"type": "ping"})
                while (await answers.receive_json(timeout=10))["type"] != "pong":
                    pass
                assert not answers.closed
    finally:
        await server.close()


async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
    while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
        pass


async def test_chat_routes_outside_error_middleware_still_answer_plain_http(relay: Relay) -> None:
    # error_middleware does not wrap the chat sockets (its frame would live as long as
    # each socket): a request that is not an upgrade still gets a plain 400, and the
    # JSON API around them keeps its JSON errors.
    await relay.account("shop")
    status, _ = await relay.call("GET", "/v1/chat/visitor/shop", token=None)
    assert status == 400
    status, body = await relay.call("GET", "/v1/no/such/route")
    assert status == 404 and body == {"error": {"code": "not_found",
                                                "message": "no such route"}}

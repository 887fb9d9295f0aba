"""Invariant 7 under load: oversized bodies and frames, a slow client sending a byte a
second, and a flood of connections against a real ``relay serve`` subprocess on
127.0.0.1, with the relay's memory (VmRSS) bounded and a normal conversation served
during and after the abuse."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import aiohttp
import pytest

from relay.client import AgentClient, VisitorClient
from tests.support.procs import OperatorRelay

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]
OPERATOR = "operator-token-for-abuse-proofs-0123"
ORIGIN = "https://shop.example"
FLOOD = 500
IDLE_TIMEOUT = 3.0


def _rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _conversation(url: str, agent_token: str) -> None:
    agent = AgentClient(url, agent_token, "shop")
    visitor = VisitorClient(url, "shop", origin=ORIGIN)
    try:
        await agent.connect()
        eng = (await visitor.connect())["engagement"]
        # Engagements of the abusive sockets may still be queued (resume grace): take ours.
        while (await agent.next_event(types=("offer",)))["engagement"] != eng:
            pass
        await agent.accept(eng)
        await visitor.next_event(types=("assigned",))
        await visitor.send("hello under load")
        assert (await agent.next_event(types=("msg",)))["text"] == "hello under load"
        await agent.send(eng, "served")
        assert (await visitor.next_event(types=("msg",)))["text"] == "served"
    finally:
        await visitor.close()
        await agent.close()


async def test_relay_survives_oversize_slow_clients_and_a_flood(tmp_path: pathlib.Path,
                                                               proof_line: Any) -> None:
    relay = OperatorRelay.start_process(tmp_path, OPERATOR, env={
        "RELAY_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT),
        "RELAY_CONNECTIONS_PER_IP_PER_MINUTE": "100000"})
    assert relay.service is not None and relay.service.proc is not None
    pid, url, port = relay.service.proc.pid, relay.url, relay.port
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    try:
        async with aiohttp.ClientSession() as http:
            admin = await relay.create_account("shop", origins=[ORIGIN])
            async with http.post(f"{url}/v1/accounts/shop/agent-tokens", json={"agent": "ann"},
                                 headers={"Authorization": f"Bearer {admin}"}) as resp:
                agent_token = (await resp.json())["token"]
            await _conversation(url, agent_token)
            rss_before = _rss_kb(pid)

            # Oversized HTTP body: refused with a stable code, never buffered whole.
            async with http.post(f"{url}/v1/accounts", headers=auth,
                                 data=b"x" * (8 * 1024 * 1024)) as resp:
                oversized_http = resp.status
                assert resp.status == 413
            # Oversized websocket frame: closed with frame.too_large (4413) or the
            # transport's own limit, and the relay keeps serving.
            ws = await http.ws_connect(f"{url.replace('http', 'ws')}/v1/chat/visitor/shop",
                                       headers={"Origin": ORIGIN}, max_msg_size=0)
            await ws.send_json({"type": "hello"})
            await ws.receive(timeout=5)
            try:
                await ws.send_bytes(b"\x00" * (4 * 1024 * 1024))
                msg = await ws.receive(timeout=10)
                while msg.type == aiohttp.WSMsgType.TEXT:
                    msg = await ws.receive(timeout=10)
                oversized_ws = str(ws.close_code)
                assert ws.close_code in (4413, 1009), (msg, ws.close_code)
            except ConnectionError:
                oversized_ws = "dropped"  # the relay cut the socket before reading it all
            await ws.close()

            # Slow client: a websocket frame sent one byte a second is closed by the idle
            # timeout (the relay never waits on it for longer).
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            writer.write((f"GET /v1/chat/visitor/shop HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Origin: {ORIGIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          ).encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"101" in head.split(b"\r\n")[0]
            started = time.monotonic()
            closed_after = None
            frame = b"\x81\x85" + b"\x00" * 4 + b"hello"  # masked text frame, byte by byte
            for i in range(30):
                try:
                    writer.write(frame[i % len(frame):i % len(frame) + 1])
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                    if data == b"" or b"idle_timeout" in data or b"hello.timeout" in data:
                        closed_after = time.monotonic() - started
                        break
                except (TimeoutError, ConnectionError):
                    continue
            writer.close()
            assert closed_after is not None and closed_after < IDLE_TIMEOUT + 12, closed_after

            # Flood: FLOOD idle TCP connections plus half-sent requests; a normal
            # conversation still completes while they are open.
            flood = []
            for i in range(FLOOD):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                if i % 2:
                    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
                flood.append(w)
            await asyncio.wait_for(_conversation(url, agent_token), 30)
            rss_during = _rss_kb(pid)
            for w in flood:
                w.close()
            await asyncio.sleep(1.0)
            await asyncio.wait_for(_conversation(url, agent_token), 30)
            rss_after = _rss_kb(pid)
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
    finally:
        await relay.close()
    growth = rss_during - rss_before
    # 500 connections may cost a few KB each; anything near the oversized payloads
    # (8 MB, 4 MB) would mean a body was buffered whole.
    assert growth < 64 * 1024, (rss_before, rss_during, rss_after)
    proof_line(f"abuse: oversized_http={oversized_http} oversized_ws_close={oversized_ws} "
               f"slow_client_closed_after_s={closed_after:.1f} flood={FLOOD} "
               f"rss_kb_before={rss_before} during={rss_during} after={rss_after} "
               "conversation_during=ok after=ok")

"""A hostile relay for the proof suites: speaks the relay's client and link protocols
(relay/protocol.py, envelope/link.py) on 127.0.0.1, but serves whatever keys the test
chooses and delivers scripted, tampered frames. It records everything clients send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from envelope import b64e, encode_outbox_frame

__all__ = ["HostileRelay", "flip_byte", "swap_sealed_keys"]


def flip_byte(data: bytes, offset: int) -> bytes:
    """``data`` with one bit flipped at ``offset`` (negative: from the end)."""
    b = bytearray(data)
    b[offset] ^= 0x01
    return bytes(b)


def swap_sealed_keys(data: bytes) -> bytes:
    """Swap the first two sealed content keys (a recipient swap that keeps every length)."""
    header_len = int.from_bytes(data[1:3], "big")
    start = 3 + header_len
    a, b = data[start:start + 80], data[start + 80:start + 160]
    return data[:start] + b + a + data[start + 160:]


@dataclass
class HostileRelay:
    """Test-controlled relay; ``outgoing`` queues frames (str or bytes) for the client."""

    account: str
    keys_doc: dict[str, Any]
    welcome: dict[str, Any]
    outgoing: asyncio.Queue[str | bytes] = field(default_factory=asyncio.Queue)
    received: list[str | bytes] = field(default_factory=list)
    link_messages: list[dict[str, Any]] = field(default_factory=list)
    hello: dict[str, Any] = field(default_factory=dict)
    dseq: int = 0
    server: TestServer | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def deliver(self, envelope: bytes) -> None:
        """Queue an envelope under the next delivery number (as the real relay frames it)."""
        self.dseq += 1
        self.outgoing.put_nowait(encode_outbox_frame(self.dseq, envelope))

    def send_json(self, frame: dict[str, Any]) -> None:
        """Queue a text frame."""
        self.outgoing.put_nowait(json.dumps(frame))

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.keys_doc)

    async def _pump(self, ws: web.WebSocketResponse) -> None:
        while True:
            item = await self.outgoing.get()
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)

    async def _chat(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive(timeout=10)
        self.hello = json.loads(first.data)
        await ws.send_json(self.welcome)
        self.connected.set()
        pump = asyncio.create_task(self._pump(ws))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self.received.append(msg.data)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return ws

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        """The vault link, relay side: challenge, accept any auth, then push frames."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        origin = f"{request.scheme}://{request.host}"
        await ws.send_json({"type": "challenge", "v": 1, "nonce": b64e(b"n" * 32),
                            "origin": origin})
        self.link_messages.append(json.loads((await ws.receive(timeout=10)).data))
        await ws.send_json({"type": "ready", "backlog": 0, "window": 64})
        self.connected.set()
        pump = asyncio.create_task(self._pump(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.link_messages.append(json.loads(msg.data))
                    await ws.send_json({"type": "acked", "deleted": 0})
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return ws

    async def start(self) -> HostileRelay:
        """Serve on 127.0.0.1."""
        app = web.Application()
        app.router.add_get("/v1/accounts/{account}/keys", self._keys)
        app.router.add_get("/v1/chat/visitor/{account}", self._chat)
        app.router.add_get("/v1/chat/agent", self._chat)
        app.router.add_get("/v1/vault/link", self._link)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            await self.server.close()

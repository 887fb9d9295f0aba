"""The baseline forwarders' client sides for the load generator (bare websocket, socket.io).

Each side calls ``on_message(bytes)`` for every forwarded message and sets ``ready``
once the forwarder says both sides of its pair are connected.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["BareSide", "SocketIOSide"]


class BareSide:
    """One side of a pair on the bare forwarder (``/ws?pair=&role=``)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, pair: str, role: str,
                 on_message: Callable[[bytes], None]) -> None:
        self._url = f"{url.rstrip('/')}/ws?pair={pair}&role={role}"
        self._session, self._on_message = session, on_message
        self.ready = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the websocket and start reading."""
        self._ws = await self._session.ws_connect(self._url, max_msg_size=1 << 20,
                                                  autoping=True)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self._on_message(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT and msg.data == "ready":
                self.ready.set()

    async def send(self, data: bytes) -> None:
        """Send one message."""
        assert self._ws is not None
        await self._ws.send_bytes(data)

    async def close(self) -> None:
        """Close and wait for the reader."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader


class SocketIOSide:
    """One side of a pair on the python-socketio forwarder."""

    def __init__(self, url: str, pair: str, role: str,
                 on_message: Callable[[bytes], None]) -> None:
        import socketio

        self._url, self._auth = url, {"pair": pair, "role": role}
        self.ready = asyncio.Event()
        self._client = socketio.AsyncClient(reconnection=False)
        self._client.on("ready", self._on_ready)
        # Text, not bytes: python-socketio sends bytes as a separate binary attachment
        # packet, and concurrent emits to one client interleave placeholder and attachment
        # (seen at 1,000 pairs: the client fails to decode). One text packet per message
        # is what a team would settle on, so the baseline is not penalised by that bug.
        self._client.on("m", lambda text: on_message(base64.b64decode(text)))

    async def _on_ready(self, *args: Any) -> None:
        self.ready.set()

    async def connect(self) -> None:
        """Connect over the websocket transport."""
        await self._client.connect(self._url, auth=self._auth, transports=["websocket"],
                                   wait_timeout=10)

    async def send(self, data: bytes) -> None:
        """Emit one message."""
        await self._client.emit("m", base64.b64encode(data).decode("ascii"))

    async def close(self) -> None:
        """Disconnect."""
        await self._client.disconnect()

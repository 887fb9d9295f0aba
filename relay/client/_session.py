"""The socket under both SDK clients: hello/welcome, a reader task, acks and resend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import aiohttp

from envelope import (
    BindingError,
    EnvelopeError,
    b64d,
    decode_outbox_frame,
    fingerprint,
    verify_agent_certificate,
    verify_vault_key_statement,
)
from envelope.statements import AgentCertificate

__all__ = ["ChatClientError", "PublicKeys", "SenderSequences", "Session", "fetch_keys"]


class ChatClientError(Exception):
    """The relay refused us, or what it served does not verify; ``code`` is stable."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class SenderSequences:
    """The last envelope sequence number seen on each sender's stream in an engagement.

    The relay numbers deliveries itself (``dseq``), so only the sender-signed header
    ``seq`` can expose a hostile relay that replays an envelope under a fresh delivery
    number or delivers a later one first (replay and reordering attacks).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def check(self, engagement: str, sender_key_id: str, seq: int) -> int:
        """Record ``seq``; return how many positions were skipped; BindingError if not new."""
        key = (engagement, sender_key_id)
        last = self._last.get(key)
        if last is not None and seq <= last:
            raise BindingError("envelope replayed or out of order",
                               code="envelope.wrong_sequence")
        self._last[key] = seq
        return 0 if last is None else seq - last - 1


class PublicKeys:
    """An account's vault key and agent certificates, verified under a pinned identity."""

    def __init__(self, account: str, data: dict[str, Any], pinned: str | None, now: int,
                 *, allow_standard: bool = False) -> None:
        self.account, self.mode = account, data.get("mode", "standard")
        self.vault_key: bytes | None = None
        self.vault_key_id: str | None = None
        self.certificates: list[AgentCertificate] = []
        if pinned is not None and not allow_standard and (
                self.mode != "compliance" or data.get("identity_key") is None):
            # A client that pins the controller's fingerprint speaks compliance mode only:
            # otherwise a hostile relay could claim "standard" and receive plaintext
            # (downgrade attack). ``allow_standard`` is the controller's explicit opt-in
            # for an account still migrating to compliance mode: such a client chats in
            # standard mode and verifies the pinned keys when it is told to re-key.
            raise ChatClientError("keys.downgrade_refused",
                                  "a pinned client sends envelopes only")
        if data.get("identity_key") is None or (pinned is None and self.mode != "compliance"):
            return  # a standard-mode client without a pin has nothing to verify
        try:
            identity = b64d(data["identity_key"], length=32)
        except EnvelopeError as exc:
            raise ChatClientError("keys.invalid", "bad identity key") from exc
        # The fingerprint comes from the controller's own embed snippet, never from the
        # relay: a relay that substitutes its own identity key is caught here.
        if pinned is None or fingerprint(identity) != pinned:
            raise ChatClientError("keys.fingerprint_mismatch", "identity key is not pinned")
        try:
            st = verify_vault_key_statement(data["key_statement"], identity, account=account,
                                            now=now)
        except EnvelopeError as exc:
            raise ChatClientError("keys.invalid",
                                  f"key statement does not verify ({exc.code})") from exc
        self.vault_key, self.vault_key_id = st.public_key, st.key_id
        for wire in data.get("agent_certificates", []):
            with contextlib.suppress(EnvelopeError):  # a bad certificate is simply not used
                self.certificates.append(verify_agent_certificate(
                    wire, identity, account=account, now=now))

    def agent(self, agent: str, key_id: str | None) -> AgentCertificate:
        """The verified certificate of ``agent`` with encryption key ``key_id``."""
        for cert in self.certificates:
            if cert.agent == agent and cert.encryption_key_id == key_id:
                return cert
        raise ChatClientError("keys.unknown_agent", "no verified certificate for the agent")


async def fetch_keys(http: aiohttp.ClientSession, base_url: str, account: str,
                     pinned: str | None, now: int, *, allow_standard: bool = False
                     ) -> PublicKeys:
    """GET the account's public keys and verify them."""
    async with http.get(f"{base_url}/v1/accounts/{account}/keys") as resp:
        if resp.status != 200:
            raise ChatClientError("account.not_found", f"status {resp.status}")
        return PublicKeys(account, await resp.json(), pinned, now,
                          allow_standard=allow_standard)


class Session:
    """One websocket with hello/welcome, a reader task and an event queue."""

    def __init__(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        self.http, self.url, self.headers = http, url, headers
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.welcome: dict[str, Any] = {}
        self.closed: dict[str, Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.on_binary: Any = None
        self.on_text: Any = None

    async def next_event(self, timeout: float = 10.0, *, types: tuple[str, ...] = ()
                         ) -> dict[str, Any]:
        """The next event (skipping those whose type is not in ``types`` when given)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if not types or event.get("type") in types:
                return event

    async def open(self, hello: dict[str, Any]) -> dict[str, Any]:
        """Connect, send hello, wait for welcome, start reading."""
        self.closed = None
        self.ws = await self.http.ws_connect(self.url, headers=self.headers, heartbeat=10.0,
                                             max_msg_size=1 << 20)
        await self.ws.send_json(hello)
        msg = await self.ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ChatClientError("relay.closed", f"close code {self.ws.close_code}")
        frame: dict[str, Any] = json.loads(msg.data)
        if frame.get("type") == "error":
            raise ChatClientError(frame.get("code", "error"), frame.get("message", ""))
        self.welcome = frame
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return frame

    async def _read(self) -> None:
        assert self.ws is not None
        ws = self.ws
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                dseq, envelope = decode_outbox_frame(bytes(msg.data))
                await self.on_binary(dseq, envelope)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame.get("type") == "error":
                    self.closed = frame
                await self.on_text(frame)
        self.events.put_nowait({"type": "closed", "code": ws.close_code,
                                "error": (self.closed or {}).get("code")})

    async def send_json(self, frame: dict[str, Any]) -> None:
        """Send a text frame (errors surface as a closed event)."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json(frame)

    async def send_bytes(self, data: bytes) -> None:
        """Send an envelope."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(data)

    async def close(self, *, abrupt: bool = False) -> None:
        """Close the socket (``abrupt``: drop the TCP connection without a close frame)."""
        if self.ws is not None:
            sock = self.ws.get_extra_info("socket")
            if abrupt and sock is not None:
                # No close frame: the relay sees the TCP connection vanish.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 5)
            self._reader.cancel()

"""The vault's side of the vault link: dial the relay, prove the identity, ingest the
outbox, acknowledge with batched receipts. Protocol v1 as spoken here (see
envelope/link.py for the relay's side)::

    vault dials  GET {relay}/v1/vault/link  (websocket; outbound only)
    <- {"type":"challenge","v":1,"nonce":B64(32),"origin":RELAY_ORIGIN}
           answered only if RELAY_ORIGIN is the origin we dialed: a challenge relayed
           from another relay (man in the middle) is never signed
    -> {"type":"auth","account","identity_key","sig"}      envelope.link_auth_response
    <- {"type":"ready","backlog":N,"window":W}
    <- binary outbox frames (8-byte outbox seq + envelope)  batched up to batch_max or
                                                            batch_wait_ms of quiet
    -> {"type":"ack","receipt":{"body","sig"}}              only AFTER the batch commit
    <- {"type":"acked","deleted":N,"backlog":M}             M sets vault_link_backlog
    -> {"type":"reject","seq":N,"code":CODE}                for each frame ingest refused
    <- {"type":"rejected","seq":N,"dropped":0|1}            (tampered, forged: never
                                                            stored, so never receipted;
                                                            without this it would sit in
                                                            the relay's window forever)
    -> {"type":"erasure","notice":{"body","sig"}}          queued erasure notices, sent
    <- {"type":"erasure-recorded","engagements":N}          by the NoticePump while ready
    <- {"type":"error","code","message"} / close(code, reason=code)

    on any close or error: reconnect after a jittered exponential backoff (full
    jitter: uniform(0, min(max, initial * 2**attempt))), reset once ready. If the
    commit fails (StoreUnavailable) the link closes without acknowledging, so the
    relay redelivers the same frames on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from envelope import EnvelopeError, b64d, decode_outbox_frame, link_auth_response

from .config import VaultConfig
from .errors import StoreUnavailable
from .ingest import Ingestor
from .keyfiles import VaultKeys
from .metrics import VaultMetrics
from .pairing import relay_ssl
from .staff_services import NoticePump

__all__ = ["VaultLink", "backoff_delay", "relay_origin"]

log = logging.getLogger("controller_vault.link")


def relay_origin(relay_url: str) -> str:
    """The origin (scheme://host[:port]) of a relay URL, as the relay states it."""
    parts = urlsplit(relay_url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    port = parts.port
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: spreads reconnects of many vaults after an outage."""
    return rng.uniform(0, min(maximum, initial * (2 ** min(attempt, 30))))


class _Closed(Exception):
    """The session ended; the reason is a stable code."""


class VaultLink:
    """Keeps one vault link open for the life of the service."""

    def __init__(self, config: VaultConfig, keys: VaultKeys, ingestor: Ingestor,
                 metrics: VaultMetrics, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, notices: NoticePump | None = None,
                 on_auth_failed: Callable[[], None] | None = None) -> None:
        self._config = config
        self._notices = notices
        self._on_auth_failed = on_auth_failed
        self._keys = keys
        self._ingestor = ingestor
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self.state = "disabled"
        self.sessions = 0
        self.last_close_code = ""

    def _set_state(self, state: str) -> None:
        self.state = state
        self._metrics.set_link_state(state)

    async def run(self) -> None:
        """Connect, serve, back off, forever (until cancelled)."""
        attempt = 0
        ws_url = self._config.relay_url.rstrip("/").replace("http", "ws", 1) + "/v1/vault/link"
        ssl_ctx = relay_ssl(self._config.relay_ca_file, self._config.relay_cert_sha256)
        async with aiohttp.ClientSession() as session:
            while True:
                if self.sessions:
                    self._metrics.link_reconnects.inc()
                self.sessions += 1
                self._set_state("connecting")
                try:
                    async with session.ws_connect(ws_url, heartbeat=30, ssl=ssl_ctx,
                                                  max_msg_size=1 << 17) as ws:
                        if await self._serve(ws):
                            attempt = 0
                except (aiohttp.ClientError, OSError, TimeoutError, _Closed) as exc:
                    self.last_close_code = str(exc) if isinstance(exc, _Closed) else \
                        exc.__class__.__name__
                    log.warning("vault link closed: %s", self.last_close_code)
                    if self._on_auth_failed is not None and self.last_close_code in (
                            "link.auth_failed", "closed:4401"):
                        self._on_auth_failed()
                self._set_state("backoff")
                delay = backoff_delay(attempt, self._config.backoff_initial_s,
                                      self._config.backoff_max_s, self._rng)
                attempt += 1
                await asyncio.sleep(delay)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        self._set_state("authenticating")
        challenge = await self._json(ws, timeout=30)
        expected = relay_origin(self._config.relay_url)
        if challenge.get("type") != "challenge" or challenge.get("origin") != expected:
            await ws.close(code=4401, message=b"link.auth_failed")
            raise _Closed("link.wrong_origin")
        try:
            nonce = b64d(challenge.get("nonce"), length=32)
        except EnvelopeError:
            raise _Closed("link.bad_frame") from None
        await ws.send_json(link_auth_response(self._keys.identity, account=self._keys.account,
                                              nonce=nonce, origin=expected))
        ready = await self._json(ws, timeout=30)
        if ready.get("type") != "ready":
            raise _Closed(str(ready.get("code", "link.bad_frame"))[:64])
        self._set_state("ready")
        if isinstance(ready.get("backlog"), int):
            self._metrics.link_backlog.set(ready["backlog"])
        pump = (asyncio.create_task(self._notices.run(ws.send_json))
                if self._notices is not None else None)
        try:
            while True:
                frames = await self._collect(ws)
                if frames:
                    await self._ingest_and_ack(ws, frames)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump

    async def _json(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:
        msg = await ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise _Closed(self._close_reason(ws, msg))
        try:
            doc = json.loads(msg.data)
        except ValueError:
            raise _Closed("link.bad_frame") from None
        if not isinstance(doc, dict):
            raise _Closed("link.bad_frame")
        return doc

    @staticmethod
    def _close_reason(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> str:
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.CLOSED):
            return f"closed:{ws.close_code}"
        return "link.bad_frame"

    async def _collect(self, ws: aiohttp.ClientWebSocketResponse) -> list[tuple[int, bytes]]:
        """Block for the first frame, then gather until batch_max or batch_wait_ms of quiet."""
        frames: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        quiet, most = self._config.batch_wait_ms / 1000, self._config.batch_max
        closing = None if self._take(msg := await ws.receive(), frames) else msg
        last = loop.time()
        while closing is None and len(frames) < most:
            # One deadline per quiet window, not a timeout per receive(): that was a timer
            # set and cancelled for every frame (~3 us each). When the deadline fires and
            # a frame came within the window, a new one starts from that frame. Only the
            # receive() awaits inside it, so only a receive is ever cut short (the frame
            # it waited for stays queued in aiohttp's reader).
            try:
                async with asyncio.timeout_at(last + quiet):
                    while len(frames) < most:
                        msg = await ws.receive()
                        last = loop.time()
                        if not self._take(msg, frames):
                            closing = msg
                            break
            except TimeoutError:
                if loop.time() - last >= quiet:
                    break
        if closing is not None:
            if frames:  # commit what arrived; the relay redelivers if no ack lands
                await self._ingest_and_ack(ws, frames)
            raise _Closed(self._close_reason(ws, closing))
        return frames

    def _take(self, msg: aiohttp.WSMessage, frames: list[tuple[int, bytes]]) -> bool:
        """Queue an outbox frame or act on a control frame; False for a close or an error."""
        if msg.type == aiohttp.WSMsgType.BINARY:
            try:
                frames.append(decode_outbox_frame(msg.data))
            except EnvelopeError:
                self._metrics.rejected.labels(reason="link.bad_frame").inc()
            return True
        if msg.type == aiohttp.WSMsgType.TEXT:
            self._control(msg.data)
            return True
        return False

    def _control(self, text: str) -> None:
        try:
            doc = json.loads(text)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("type") == "acked" \
                and type(doc.get("backlog")) is int:
            self._metrics.link_backlog.set(doc["backlog"])
        if isinstance(doc, dict) and doc.get("type") == "erasure-recorded" \
                and self._notices is not None:
            self._notices.recorded()
        if isinstance(doc, dict) and doc.get("type") == "error":
            log.warning("relay error frame: %s", str(doc.get("code"))[:64])

    async def _ingest_and_ack(self, ws: aiohttp.ClientWebSocketResponse,
                              frames: list[tuple[int, bytes]]) -> None:
        started = time.monotonic()
        try:
            result = await self._ingestor.ingest([f[1] for f in frames], int(self._clock()))
        except StoreUnavailable as exc:
            # No receipt: close so the relay redelivers these frames after we reconnect.
            log.error("store unavailable, not acknowledging: %s", exc.code)
            await ws.close(code=1011, message=b"vault.store_unavailable")
            raise _Closed("vault.store_unavailable") from None
        self._metrics.ingested.inc(result.stored)
        self._metrics.duplicates.inc(result.duplicates)
        if result.receipt is not None and not ws.closed:
            await ws.send_json({"type": "ack", "receipt": result.receipt})
            self._metrics.receipts.inc()
        for index, code in result.rejected_indexes:
            # Refused frames get no receipt; naming them lets the relay drop them
            # instead of holding them in its window for ever.
            if not ws.closed:
                await ws.send_json({"type": "reject", "seq": frames[index][0], "code": code})
        self._metrics.delivery_latency.observe(time.monotonic() - started)

"""The vault's side of the vault link: dial the relay, prove the identity, ingest the
outbox, acknowledge with batched receipts. Protocol v1 as spoken here (see
envelope/link.py for the relay's side)::

    vault dials  GET {relay}/v1/vault/link  (websocket; outbound only)
    <- {"type":"challenge","v":1,"nonce":B64(32),"origin":RELAY_ORIGIN}
           answered only if RELAY_ORIGIN is the origin we dialed: a challenge relayed
           from another relay (man in the middle) is never signed
    -> {"type":"auth","account","identity_key","sig",      envelope.link_auth_response
        "features":["outbox-batch"]}                        (unless link_batch_frames
                                                            is false: then no features)
    <- {"type":"ready","backlog":N,"window":W,              "features" names what the
        "features":["outbox-batch"]}                        relay uses; absent from
                                                            relays before it (and from
                                                            one that turned it off)
    <- binary outbox frames (8-byte outbox seq + envelope), or OUTBOX BATCH frames
           (many entries each) once ready named outbox-batch: every binary frame is
           then one, decoded strictly; entries are committed up to batch_max at a
           time (the rest of a frame waits for the next commit) or after
           batch_wait_ms of quiet. A frame that does not decode is counted
           (vault_rejected{reason="link.bad_frame"}) and dropped whole.
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

from envelope import (
    EnvelopeError,
    b64d,
    decode_outbox_batch,
    decode_outbox_frame,
    link_auth_response,
    link_features,
)
from envelope.limits import MAX_BATCH_FRAME_BYTES
from envelope.link import BATCH_FEATURE

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
        self.batched = False  # this session's relay sends OUTBOX BATCH frames
        # Entries of a batched frame past batch_max, for the next commit (this session).
        self._pending: list[tuple[int, bytes]] = []

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
                    # A batched frame is at most MAX_BATCH_FRAME_BYTES (a single
                    # outbox frame is smaller): larger messages are refused unread. +1:
                    # aiohttp refuses a message of exactly max_msg_size, and a relay's
                    # full frame refused would be redelivered and refused for ever.
                    async with session.ws_connect(ws_url, heartbeat=30, ssl=ssl_ctx,
                                                  max_msg_size=MAX_BATCH_FRAME_BYTES + 1
                                                  ) as ws:
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
        offered = (BATCH_FEATURE,) if self._config.link_batch_frames else ()
        await ws.send_json(link_auth_response(self._keys.identity, account=self._keys.account,
                                              nonce=nonce, origin=expected, features=offered))
        ready = await self._json(ws, timeout=30)
        if ready.get("type") != "ready":
            raise _Closed(str(ready.get("code", "link.bad_frame"))[:64])
        try:
            used = link_features(ready)
        except EnvelopeError:
            raise _Closed("link.bad_frame") from None
        if not used <= set(offered):
            # A relay may only use what this vault named: anything else is a relay we
            # cannot read correctly, so stop rather than count every frame as bad.
            raise _Closed("link.bad_frame")
        self.batched, self._pending = BATCH_FEATURE in used, []
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
        limit = self._config.batch_max
        frames, self._pending = self._pending[:limit], self._pending[limit:]
        # Block for the first frame, then gather a batch.
        wait: float | None = self._config.batch_wait_ms / 1000 if frames else None
        while len(frames) < limit:
            try:
                msg = await ws.receive(timeout=wait)
            except TimeoutError:
                break
            wait = self._config.batch_wait_ms / 1000
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    entries = decode_outbox_batch(msg.data) if self.batched else [
                        decode_outbox_frame(msg.data)]
                except EnvelopeError:
                    self._metrics.rejected.labels(reason="link.bad_frame").inc()
                    if not self.batched:
                        continue  # one entry lost: the relay's window loses one slot
                    # A batch names up to a whole window of entries the vault can neither
                    # store nor reject: carrying on would stall the link (the relay waits
                    # for receipts that never come). Commit what arrived, then close: the
                    # relay sends everything unacknowledged again on the next link.
                    while frames:
                        await self._ingest_and_ack(ws, frames)
                        frames, self._pending = self._pending[:limit], self._pending[limit:]
                    await ws.close(code=4400, message=b"link.bad_frame")
                    raise _Closed("link.bad_frame") from None
                room = limit - len(frames)
                frames += entries[:room]
                self._pending += entries[room:]
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self._control(msg.data)
            else:
                # Commit what arrived; the relay redelivers if no ack lands.
                while frames:
                    await self._ingest_and_ack(ws, frames)
                    frames, self._pending = self._pending[:limit], self._pending[limit:]
                raise _Closed(self._close_reason(ws, msg))
        return frames

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

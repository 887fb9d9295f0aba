"""The hub: live sockets, the router, and the glue between them (sending deliveries,
persisting engagement records, closing sockets on shutdown or account changes)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import secrets
import weakref
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from envelope import encode_outbox_frame

from .abuse import ConnectionRateLimiter
from .logs import log_event
from .protocol import close_code_for
from .records import round_down
from .routing import Delivery, Router
from .state import RelayState
from .store import Account, EngagementRecord

__all__ = ["ChatHub", "Conn", "refuse"]


class Conn:
    """One registered chat socket (one per socket, hence slots)."""

    __slots__ = ("account", "busy", "closing", "heard", "id", "lock", "pinged", "role", "ws")

    def __init__(self, conn_id: str, ws: web.WebSocketResponse, role: str, account: str,
                 now: float) -> None:
        self.id, self.ws, self.role, self.account = conn_id, ws, role, account
        self.lock = asyncio.Lock()
        self.heard = now  # loop time of the last frame of any kind (pings included)
        self.pinged = 0.0  # loop time of the last heartbeat ping; unanswered if > heard
        self.busy = True  # the handler is not waiting for a frame (set by chat._receive)
        self.closing = False


class ChatHub:
    """Live sockets, the router, and the glue between them."""

    def __init__(self, st: RelayState) -> None:
        self.st = st
        cfg = st.config
        self.router = Router(buffer_frames=cfg.resume_buffer_frames,
                             resume_grace=cfg.resume_grace_seconds,
                             queue_timeout=cfg.queue_timeout_seconds,
                             buffer_bytes=cfg.resume_buffer_bytes,
                             max_per_client=cfg.max_engagements_per_address)
        self.conns: dict[str, Conn] = {}
        # One Account object per account for every socket that holds it (see shared_account).
        self._accounts: weakref.WeakValueDictionary[str, Account] = \
            weakref.WeakValueDictionary()
        self.rate = ConnectionRateLimiter(cfg.connections_per_ip_per_minute)
        self._ids = itertools.count(1)
        self.outbox_bytes = 0
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._tag_key = secrets.token_bytes(32)

    async def prepare_socket(self, request: web.Request) -> web.WebSocketResponse:
        """The chat websocket for ``request``, answered (101) and built to stay small idle."""
        # aiohttp's own limit is a hard backstop; the configured limit is checked per
        # frame so an oversized frame gets our error frame and code.
        # compress=False: permessage-deflate (which every browser offers) would give each
        # socket a zlib context at its first frame, 262 KiB for the compressor alone, ten
        # times the rest of an idle socket; envelopes are ciphertext and do not compress.
        # It also stops compression-oracle attacks (CRIME-style): a party whose text
        # shares a deflate context with the other party's could learn it from lengths.
        # No aiohttp heartbeat (a timer, its context and a callback per socket, and a
        # callback scheduled per received chunk): sweep() pings quiet sockets and closes
        # dead ones, all sockets at once. autoping=False: pings and pongs reach
        # chat._receive, which answers pings and counts both as signs of life.
        ws = web.WebSocketResponse(max_msg_size=self.st.config.max_frame_bytes * 4,
                                   compress=False, autoping=False)
        try:
            await ws.prepare(request)
        except web.HTTPException:
            raise  # not a websocket upgrade: aiohttp answers the 400 itself
        except Exception as exc:
            # The peer left during the handshake. The chat handlers answer their own
            # errors (error_middleware does not wrap them): a stable answer here, and
            # only the type logged, never aiohttp's "Error handling request" line.
            log_event(self.st.logger, logging.INFO, "chat.handshake_failed",
                      exc_type=type(exc).__name__)
            raise web.HTTPBadRequest() from None
        return ws

    def client_tag(self, address: str) -> str:
        """An opaque per-process tag of a client address, for the router's per-address cap.

        Keyed and never stored: the router holds no address, and the tag means nothing
        after a restart.
        """
        return hmac.new(self._tag_key, address.encode(), hashlib.blake2b).hexdigest()[:32]

    def shared_account(self, acct: Account) -> Account:
        """``acct``, or an equal Account already held by live sockets of the same account.

        Each chat socket reads its account at connect and keeps it for its life; without
        this every idle socket held its own copy (the key statement, origins and ids:
        about 1 KiB). Equal values only, so a changed account is never served stale: the
        first socket after a change brings the new value and later sockets share that.
        """
        held = self._accounts.get(acct.account)
        if held is not None and held == acct:
            return held
        self._accounts[acct.account] = acct
        return acct

    def new_conn(self, ws: web.WebSocketResponse, role: str, account: str) -> Conn:
        """Register a socket."""
        conn = Conn(f"c{next(self._ids)}", ws, role, account,
                    asyncio.get_running_loop().time())
        self.conns[conn.id] = conn
        self.st.metrics.connections.labels(role).inc()
        self.st.metrics.connections_total.labels(role).inc()
        return conn

    def drop_conn(self, conn: Conn) -> None:
        """Forget a socket."""
        if self.conns.pop(conn.id, None) is not None:
            self.st.metrics.connections.labels(conn.role).dec()

    async def deliver(self, deliveries: list[Delivery]) -> None:
        """Send what the router decided; a dead socket is skipped (resume replays)."""
        for d in deliveries:
            conn = self.conns.get(d.conn)
            if conn is None or conn.ws.closed:
                continue
            if d.payload == {"type": "superseded"}:
                asyncio.get_running_loop().create_task(
                    refuse(self.st, conn.ws, "session.superseded", "a newer socket took over"))
                continue
            try:
                async with conn.lock:
                    if isinstance(d.payload, bytes):
                        await conn.ws.send_bytes(encode_outbox_frame(d.dseq or 0, d.payload))
                    else:
                        frame = dict(d.payload)
                        if d.dseq is not None:
                            frame["dseq"] = d.dseq
                        await conn.ws.send_json(frame)
            except (ConnectionError, RuntimeError):
                continue

    async def persist_records(self) -> None:
        """Write changed engagement records (rounded, non-personal)."""
        g = self.st.config.record_granularity_seconds
        records = []
        for e in self.router.take_dirty():
            wait = None if e.accepted_at is None else int(e.accepted_at - e.started_at)
            first = None if e.first_response_at is None or e.accepted_at is None else \
                int(e.first_response_at - e.accepted_at)
            records.append(EngagementRecord(
                engagement=e.id, account=e.account, mode=e.mode,
                started_at=round_down(e.started_at, g),
                ended_at=None if e.ended_at is None else round_down(e.ended_at, g),
                queue_wait_s=wait, first_response_s=first, agent=e.agent,
                outcome=e.outcome, visitor_messages=e.visitor_messages,
                agent_messages=e.agent_messages, visitor_bytes=e.visitor_bytes,
                agent_bytes=e.agent_bytes, transfers=e.transfers))
            if e.ended_at is not None:
                self.st.metrics.engagements_total.labels(e.outcome).inc()
        if records:
            await self.st.store.upsert_engagements(records)
        self.st.metrics.engagements_active.set(len(self.router.engagements))

    def account_changed(self, account: str) -> None:
        """Mode or vault key changed: end live engagements and tell clients to re-key."""
        now = self.st.clock()
        for eng in [e for e in self.router.engagements.values() if e.account == account]:
            self.router.end(eng=eng, role="relay", now=now)
        for conn in [c for c in self.conns.values() if c.account == account]:
            asyncio.get_running_loop().create_task(
                refuse(self.st, conn.ws, "mode.changed", "account changed: reconnect"))

    def revoke_agent_key(self, account: str, key_id: str) -> int:
        """Close the live sockets of the agent seats using ``key_id``; return how many."""
        conns = [s.conn for s in self.router.seats.values()
                 if s.account == account and s.key_id == key_id and s.conn]
        for conn_id in conns:
            conn = self.conns.get(conn_id) if conn_id else None
            if conn is not None:
                asyncio.get_running_loop().create_task(refuse(
                    self.st, conn.ws, "certificate.revoked", "agent certificate revoked"))
        return len(conns)

    def sweep(self, now: float) -> tuple[int, int]:
        """Heartbeat and idle timeout of every chat socket (``now``: loop time).

        One pass per tick over all sockets instead of timers per socket (aiohttp's
        heartbeat and a receive timeout): an idle visitor then costs no timer handle,
        context or timeout object. A socket quiet for ``heartbeat_seconds`` gets a ping;
        one that has not answered it within half that, or that sent nothing at all for
        ``idle_timeout_seconds``, is closed with session.idle_timeout. Stops dead peers
        (half-open TCP) and silent clients from holding sockets and engagements' memory.
        A socket whose handler is busy with a frame is skipped: its pong may be waiting
        unread behind that frame. Returns (pinged, closed).
        """
        cfg = self.st.config
        idle, beat = cfg.idle_timeout_seconds, cfg.heartbeat_seconds
        pings, closes = [], []
        for conn in self.conns.values():
            if conn.busy or conn.closing:
                continue
            if now - conn.heard > idle or (conn.pinged > conn.heard
                                           and now - conn.pinged > beat / 2):
                closes.append(conn)
            elif conn.pinged <= conn.heard and now - conn.heard >= beat:
                pings.append(conn)
        for conn in pings:
            conn.pinged = now
            self._spawn(_ping(conn.ws))
        for conn in closes:
            conn.closing = True
            self._spawn(refuse(self.st, conn.ws, "session.idle_timeout", "no frame in time",
                               role=conn.role, account=conn.account))
        return len(pings), len(closes)

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def tick(self) -> None:
        """Run the router's time rules and persist records."""
        self.sweep(asyncio.get_running_loop().time())
        await self.deliver(self.router.tick(self.st.clock()))
        await self.persist_records()
        self.outbox_bytes = (await self.st.store.outbox_stats()).total_bytes

    async def close_all(self) -> None:
        """Graceful shutdown: every socket closed with going-away (clients resume later)."""
        self.closing = True

        async def close(conn: Conn) -> None:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"going-away")
        # Concurrently: each close may wait for the client's echo, one slow client at a
        # time would add up to an unbounded shutdown.
        await asyncio.gather(*(close(c) for c in list(self.conns.values())))
        await self.persist_records()


async def _ping(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(Exception):  # a dead peer is the sweep's to close
        await ws.ping()


async def refuse(st: RelayState, ws: web.WebSocketResponse, code: str, message: str,
                  **ids: Any) -> None:
    """Count a refusal, send the error frame, close with the code as reason."""
    st.metrics.frames_refused.labels(code).inc()
    log_event(st.logger, logging.INFO, "chat.refused", code=code, **ids)
    with contextlib.suppress(Exception):
        if not ws.closed:
            await ws.send_json({"type": "error", "code": code, "message": message})
            await ws.close(code=close_code_for(code), message=code.encode())

"""Chat websocket handlers: the only I/O around the pure :mod:`relay.routing` rules.

A frame is acknowledged to its sender only after it is durable (standard mode: the
encrypted transcript item committed; compliance mode: the envelope committed to the
outbox), then forwarded. Every refusal is an error frame, a metric, and a close with
the stable code as reason; other connections are untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from envelope import (
    EnvelopeError,
    b64d,
    check_shape,
    encode_body,
    envelope_hash,
    key_id,
    seal,
    verify_agent_certificate,
)

from .admin import ANSWERS_ITS_ERRORS, hash_token
from .hub import ChatHub, Conn, refuse
from .logs import log_event
from .protocol import ProtocolError, parse_text_frame
from .routing import Engagement, Router, RoutingError
from .state import STATE, RelayState
from .store import Account, DuplicateEnvelope, OutboxEntry

__all__ = ["agent_socket", "new_engagement_id", "visitor_socket"]

_HELLO_TIMEOUT = 10.0


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def new_engagement_id() -> str:
    """16 base64url characters (96 random bits) never starting with ``-`` or ``_``: staff
    type these ids into command lines, where a leading ``-`` reads as an option."""
    while True:
        engagement = secrets.token_urlsafe(12)
        if engagement[0].isalnum():
            return engagement


def _client_address(st: RelayState, request: web.Request) -> str:
    peer = request.remote or ""
    if peer in st.config.trusted_proxies:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return peer


async def _prepare(request: web.Request) -> tuple[RelayState, ChatHub, web.WebSocketResponse]:
    st = request.app[STATE]
    if st.hub is None:
        raise web.HTTPServiceUnavailable()
    return st, st.hub, await st.hub.prepare_socket(request)


async def _receive(st: RelayState, ws: web.WebSocketResponse, timeout: float | None = None,
                   conn: Conn | None = None) -> Any:
    """The next data frame (None once closing); pings answered, every frame noted in ``conn``.

    Registered sockets wait without a timeout: a receive timeout is a timer and a
    context manager per socket, so their heartbeat and idle timeout are one sweep over
    all sockets (ChatHub.sweep) reading ``conn.heard`` and ``conn.busy``. Only the
    hello has its own timeout.
    """
    while True:
        if conn is not None:
            conn.busy = False
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            raise _Refused("session.idle_timeout", "no frame in time") from None
        if conn is not None:
            conn.heard, conn.busy = asyncio.get_running_loop().time(), True
        if msg.type == WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type != WSMsgType.PONG:
            break
    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
        if len(msg.data) > st.config.max_frame_bytes:
            raise _Refused("frame.too_large", "frame exceeds the size limit")
        return msg
    if msg.type == WSMsgType.ERROR:
        raise _Refused("frame.too_large", "frame refused by the transport")
    return None


async def _hello(st: RelayState, ws: web.WebSocketResponse, role: str, compliance: bool) -> Any:
    try:
        msg = await _receive(st, ws, _HELLO_TIMEOUT)
    except _Refused as exc:
        raise _Refused("hello.timeout" if exc.code == "session.idle_timeout" else exc.code,
                       exc.message) from None
    if msg is None:
        return None
    if msg.type != WSMsgType.TEXT:
        raise _Refused("frame.malformed", "the first frame must be hello")
    frame = parse_text_frame(msg.data, role=role, compliance=compliance)
    if frame.type != "hello":
        raise _Refused("frame.malformed", "the first frame must be hello")
    return frame


async def _seal_connection_info(st: RelayState, acct: Account, eng: Engagement,
                                request: web.Request, visitor_id: str | None) -> None:
    """Seal the visitor's address and user agent to the vault; keep neither on disk."""
    assert acct.vault_key is not None
    body: dict[str, Any] = {"ip": _client_address(st, request),
                            "user_agent": request.headers.get("User-Agent", "")[:1024]}
    if visitor_id:
        body["visitor_id"] = visitor_id
    seq = eng.last_seq.get("relay", 0) + 1
    data = seal(encode_body("connection-info", body), sender=st.keyring.relay_keys,
                role="relay", account=acct.account, engagement=eng.id, sequence=seq,
                kind="connection-info", recipients=[acct.vault_key])
    header = check_shape(data, account=acct.account, vault_key_id=acct.vault_key_id or "")
    await st.store.append_outbox([OutboxEntry(acct.account, 0, header.envelope_id, eng.id,
                                              envelope_hash(data), data, int(st.clock()))])
    assert st.hub is not None
    st.hub.outbox_bytes += len(data)
    st.links.wake(acct.account)
    eng.last_seq["relay"] = seq


async def _check_backpressure(st: RelayState, account: str) -> None:
    """Refuse a NEW compliance engagement while the account's outbox is at its bound.

    Live engagements go on (their envelopes were promised delivery); queued entries
    are never dropped: the bound only stops the backlog from growing further.
    """
    stats = await st.store.outbox_stats(account)
    bound = None
    if stats.total_bytes >= st.config.outbox_account_max_bytes:
        bound = "bytes"
    elif stats.oldest_created_at is not None and \
            st.clock() - stats.oldest_created_at > st.config.outbox_max_age_seconds:
        bound = "age"
    if bound is not None:
        st.metrics.outbox_refusals.labels(bound).inc()
        raise _Refused("outbox.backpressure",
                       "the account's vault has not collected its outbox; try later")


def _check_vault_key(acct: Account, now: float) -> None:
    """Refuse a NEW compliance engagement once the vault key statement has expired.

    Stops new personal data being sealed to a key its controller declared retired
    (the statement's window is what clients and the vault trust); live engagements go on.
    """
    statement = acct.key_statement or {}
    try:
        expires = int(json.loads(b64d(statement["body"]))["exp"])
    except (KeyError, TypeError, ValueError, EnvelopeError):
        expires = 0  # unreadable: treated as expired (it was verified when paired)
    if now > expires:
        raise _Refused("vault.key_expired", "the account's vault key has expired")


async def _durable(st: RelayState, hub: ChatHub, acct: Account, eng: Engagement, role: str,
                   agent: str | None, seq: int, payload: dict[str, Any] | bytes,
                   header: Any = None) -> None:
    """Make one message durable (outbox or encrypted transcript) before it is acked."""
    now = int(st.clock())
    if isinstance(payload, bytes):
        if hub.outbox_bytes + len(payload) > st.config.outbox_max_bytes:
            raise _Refused("outbox.full", "the account's outbox is full; try later")
        # The header _envelope_for already checked (same bytes): parsed once per frame.
        header = header or check_shape(payload, account=acct.account,
                                       vault_key_id=acct.vault_key_id or "")
        try:
            await st.store.append_outbox([OutboxEntry(acct.account, 0, header.envelope_id,
                                                      eng.id, envelope_hash(payload), payload,
                                                      now)])
        except DuplicateEnvelope:
            # A fresh sequence number on a stored envelope id: a replay (or splice) of an
            # envelope the vault already has coming; refused before it is forwarded.
            raise _Refused("envelope.replayed", "envelope id already used") from None
        hub.outbox_bytes += len(payload)
        st.links.wake(acct.account)
    else:
        item = {"role": role, "agent": agent, "seq": seq, "text": payload["text"], "ts": now}
        rows = await st.cipher.seal_items(acct.account, eng.id, [item], now)
        await st.store.append_transcript(rows)


async def _message(st: RelayState, hub: ChatHub, conn_ws: web.WebSocketResponse, acct: Account,
                   eng: Engagement, role: str, agent: str | None, stream: str, seq: int,
                   payload: dict[str, Any] | bytes, header: Any = None) -> None:
    started = time.perf_counter()
    Router.check_seq(eng, stream, seq)
    size = len(payload) if isinstance(payload, bytes) else len(str(payload.get("text", "")))
    hub.router.check_room(eng, role, size)  # before it is durable: a refusal stores nothing
    await _durable(st, hub, acct, eng, role, agent, seq, payload, header)
    deliveries = hub.router.message(eng=eng, role=role, stream=stream, seq=seq,
                                    payload=payload, size=size, now=st.clock())
    # Formatted, not json.dumps'd: both values match fixed patterns (no escaping needed).
    await conn_ws.send_str(f'{{"type": "ack", "engagement": "{eng.id}", "seq": {seq}}}')
    await hub.deliver(deliveries)
    st.metrics.relayed(acct.mode, role).inc()
    st.metrics.routing_latency.observe(time.perf_counter() - started)


def _envelope_for(acct: Account, data: bytes, role: str, sender_kid: str | None) -> Any:
    header = check_shape(data, account=acct.account, vault_key_id=acct.vault_key_id or "")
    # The sender key must be the one this party announced (visitor) or was certified
    # for (agent): a party cannot inject frames under another party's stream.
    if header.role != role or (sender_kid is not None and header.sender_key_id != sender_kid):
        raise _Refused("sender.mismatch", "envelope sender is not this party")
    return header


async def visitor_socket(request: web.Request) -> web.WebSocketResponse:
    """``GET /v1/chat/visitor/{account}``: one visitor, one engagement."""
    st, hub, ws = await _prepare(request)
    ids: dict[str, Any] = {"role": "visitor"}
    conn = None
    eng: Engagement | None = None
    try:
        acct = await st.store.get_account(request.match_info["account"])
        if hub.closing:
            raise _Refused("going-away", "relay shutting down")
        if not hub.rate.allow(_client_address(st, request), st.clock()):
            raise _Refused("rate.limited", "too many connections from this address")
        if acct is None:
            raise _Refused("account.not_found", "no such account")
        acct = hub.shared_account(acct)
        ids["account"] = acct.account
        origin = request.headers.get("Origin", "")
        if origin not in acct.origins and origin not in st.config.extra_origins:
            # Stops another site's page from opening chats as this account's widget.
            raise _Refused("origin.forbidden", "origin not allowed for this account")
        compliance = acct.mode == "compliance"
        hello = await _hello(st, ws, "visitor", compliance)
        if hello is None:
            return ws
        conn = hub.new_conn(ws, "visitor", acct.account)
        if hello.resume:
            eng, replay = hub.router.resume_visitor(
                account=acct.account, resume_token=hello.resume, conn=conn.id,
                last=hello.last or 0, now=st.clock())
        else:
            if compliance and hello.keys is None:
                raise _Refused("frame.bad_field", "compliance mode needs visitor keys")
            if hub.router.live_count(acct.account) >= st.config.max_engagements_per_account:
                raise _Refused("account.busy", "too many live engagements")
            if compliance:
                _check_vault_key(acct, st.clock())
                await _check_backpressure(st, acct.account)
            replay = hub.router.open_engagement(
                account=acct.account, mode=acct.mode, engagement=new_engagement_id(),
                conn=conn.id, resume_token=secrets.token_urlsafe(24),
                visitor_keys=hello.keys, now=st.clock(),
                client=hub.client_tag(_client_address(st, request)))
            eng = hub.router.visitor_engagement(conn.id)
        ids["engagement"] = eng.id
        visitor_kid = key_id(b64d(eng.visitor_keys["sig"])) if eng.visitor_keys else None
        if compliance and not hello.resume:
            # Once per engagement: the vault refuses a second connection-info
            # (vault.connection_info_repeated), so a resume must not seal another.
            await _seal_connection_info(st, acct, eng, request, hello.visitor_id)
        await ws.send_json({"type": "welcome", "engagement": eng.id,
                            "resume": eng.resume_token, "mode": acct.mode,
                            "account": acct.account, "vault_key_id": acct.vault_key_id,
                            "acked": Router.acked(eng, "visitor"), "agent": eng.agent,
                            "key_id": eng.agent_key_id})
        await hub.deliver(replay)
        # This frame lives as long as the socket: what only the handshake needed goes now.
        del hello, replay
        await hub.persist_records()
        while True:
            msg = await _receive(st, ws, conn=conn)
            if msg is None:
                break
            eng = hub.router.visitor_engagement(conn.id)
            if msg.type == WSMsgType.BINARY:
                if not compliance:
                    raise _Refused("frame.not_binary", "standard mode takes text frames")
                header = _envelope_for(acct, msg.data, "visitor", visitor_kid)
                hub.router.engagement_for(header.engagement, acct.account)
                if header.engagement != eng.id:
                    raise _Refused("envelope.wrong_engagement", "envelope for another engagement")
                await _message(st, hub, ws, acct, eng, "visitor", None, "visitor",
                               header.sequence, bytes(msg.data), header)
                continue
            frame = parse_text_frame(msg.data, role="visitor", compliance=compliance)
            if frame.type == "msg":
                assert frame.seq is not None
                await _message(st, hub, ws, acct, eng, "visitor", None, "visitor", frame.seq,
                               {"type": "msg", "engagement": eng.id, "from": "visitor",
                                "seq": frame.seq, "text": frame.text})
            elif frame.type == "typing":
                await hub.deliver(hub.router.typing(eng=eng, role="visitor",
                                                    on=bool(frame.on)))
            elif frame.type == "end":
                await hub.deliver(hub.router.end(eng=eng, role="visitor", now=st.clock()))
                await hub.persist_records()
                await ws.close(code=1000, message=b"normal")
                break
            elif frame.type == "ping":
                await ws.send_json({"type": "pong"})
    except (_Refused, ProtocolError, RoutingError, EnvelopeError) as exc:
        await refuse(st, ws, exc.code, _message_of(exc), **ids)
    except Exception as exc:
        await _internal_error(st, ws, exc, ids)
    finally:
        if conn is not None:
            hub.router.visitor_left(conn.id, st.clock())
            hub.drop_conn(conn)
    return ws


async def _internal_error(st: RelayState, ws: web.WebSocketResponse, exc: Exception,
                          ids: dict[str, Any]) -> None:
    # Anything unexpected still ends in a stable close: no 1006, no aiohttp traceback
    # naming the peer address, and nothing of the input (the exception text may quote
    # it) in the log line or the error frame: only the exception's type.
    log_event(st.logger, logging.ERROR, "chat.internal_error", exc_type=type(exc).__name__,
              **ids)
    await refuse(st, ws, "internal.error", "internal error", **ids)


def _message_of(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc.args[0] if exc.args else "refused")


async def _agent_identity(st: RelayState, request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    record = await st.store.find_token(hash_token(token)) if token else None
    if record is None:
        raise _Refused("auth.bad_token", "unknown agent token")
    if record.kind != "agent" or record.agent is None:
        raise _Refused("auth.forbidden", "not an agent token")
    return record.account, record.agent


async def agent_socket(request: web.Request) -> web.WebSocketResponse:
    """``GET /v1/chat/agent``: one agent device, many engagements."""
    st, hub, ws = await _prepare(request)
    ids: dict[str, Any] = {"role": "agent"}
    conn = None
    try:
        account, agent = await _agent_identity(st, request)
        acct = await st.store.get_account(account)
        if acct is None:
            raise _Refused("account.not_found", "no such account")
        acct = hub.shared_account(acct)
        ids.update(account=account, agent=agent)
        compliance = acct.mode == "compliance"
        hello = await _hello(st, ws, "agent", compliance)
        if hello is None:
            return ws
        agent_kid = None
        if compliance:
            row = await st.store.agent_certificate(account, hello.key_id) \
                if hello.key_id else None
            # The certificate must be this agent's: another agent's key would let one
            # pseudonym speak under another's certified identity.
            if row is None or row.agent != agent or acct.identity_key is None:
                raise _Refused("auth.forbidden", "no certificate for this agent key")
            cert = verify_agent_certificate(row.certificate, acct.identity_key,
                                            account=account, now=int(st.clock()))
            agent_kid = key_id(cert.signing_public_key)
        conn = hub.new_conn(ws, "agent", account)
        attached, replay = hub.router.agent_online(
            account=account, agent=agent, key_id=hello.key_id, capacity=hello.capacity or 5,
            conn=conn.id, last=hello.last_by_engagement or {}, now=st.clock())
        await ws.send_json({"type": "welcome", "agent": agent, "account": account,
                            "mode": acct.mode, "vault_key_id": acct.vault_key_id,
                            "engagements": attached})
        await hub.deliver(replay)
        stream = f"agent:{agent}"
        while True:
            msg = await _receive(st, ws, conn=conn)
            if msg is None:
                break
            if msg.type == WSMsgType.BINARY:
                if not compliance:
                    raise _Refused("frame.not_binary", "standard mode takes text frames")
                header = _envelope_for(acct, msg.data, "agent", agent_kid)
                eng = hub.router.agent_engagement(conn.id, header.engagement)[1]
                await _message(st, hub, ws, acct, eng, "agent", agent, stream, header.sequence,
                               bytes(msg.data), header)
                continue
            frame = parse_text_frame(msg.data, role="agent", compliance=compliance)
            ids["engagement"] = frame.engagement
            if frame.type == "ping":
                await ws.send_json({"type": "pong"})
            elif frame.type == "accept":
                assert frame.engagement is not None
                await hub.deliver(hub.router.accept(conn.id, frame.engagement, st.clock()))
                await hub.persist_records()
            elif frame.type == "transfer":
                if frame.to is None:
                    raise _Refused("frame.bad_field", "transfer needs a target agent")
                assert frame.engagement is not None
                await hub.deliver(hub.router.transfer(conn.id, frame.engagement, frame.to,
                                                      st.clock()))
                await hub.persist_records()
            else:
                assert frame.engagement is not None
                eng = hub.router.agent_engagement(conn.id, frame.engagement)[1]
                if frame.type == "msg":
                    assert frame.seq is not None
                    await _message(st, hub, ws, acct, eng, "agent", agent, stream, frame.seq,
                                   {"type": "msg", "engagement": eng.id, "from": "agent",
                                    "agent": agent, "seq": frame.seq, "text": frame.text})
                elif frame.type == "typing":
                    await hub.deliver(hub.router.typing(eng=eng, role="agent",
                                                        on=bool(frame.on)))
                elif frame.type == "end":
                    await hub.deliver(hub.router.end(eng=eng, role="agent", now=st.clock()))
                    await hub.persist_records()
    except (_Refused, ProtocolError, RoutingError, EnvelopeError) as exc:
        await refuse(st, ws, exc.code, _message_of(exc), **ids)
    except Exception as exc:
        await _internal_error(st, ws, exc, ids)
    finally:
        if conn is not None:
            hub.router.agent_left(conn.id, st.clock())
            hub.drop_conn(conn)
    return ws


# Both answer every failure in band (error frame, close code), so error_middleware does
# not wrap them (see relay.admin.error_middleware).
for _handler in (visitor_socket, agent_socket):
    setattr(_handler, ANSWERS_ITS_ERRORS, True)

"""``GET /v1/vault/link``: the relay's side of the vault link (protocol: envelope/link.py).

The vault dials in, answers a challenge bound to this relay's ``public_origin`` with
its identity key (relay/link_handshake.py), and then receives its account's outbox in
order, at most ``link_window`` frames unacknowledged. What each check stops:

    check                                         attack it stops
    nonce fresh per connection, origin signed     replaying an old auth; a challenge
                                                  relayed from another relay (MITM)
    identity key == the account's paired key      a stranger's vault draining an outbox
    auth within link_auth_timeout_seconds         idle half-open sockets holding slots
    account fixed at auth; every read, delete     a link for account A touching B's
      and receipt check scoped to it              outbox (tenant isolation)
    receipt signed by the PAIRED key, for this    forged receipts deleting undelivered
      account, matched on (engagement, id, hash)  envelopes (silent data loss)
    a deleted row cannot be deleted again         replayed receipts
    one link per account (newer supersedes)       two consumers racing on one outbox

A refused receipt deletes nothing and closes the link (``link.bad_receipt``); the
vault reconnects and everything unacknowledged is delivered again.

Framing: what the sender takes in one pass (up to the window's room) goes out as one
OUTBOX BATCH frame, or a few when it passes MAX_BATCH_FRAME_BYTES / MAX_BATCH_ENTRIES,
to a vault whose auth frame named ``outbox-batch`` while ``link_batch_frames`` is on
(ready then names the feature); any other vault, older ones included, gets one outbox
frame per entry as before. One lock acquisition and one socket write per frame either
way; the window, ``in_flight``, ``in_flight_ids`` and ``last_sent`` count entries.

Where the sender takes entries from (the outbox row is always written first, for
durability; what differs is whether it is read back):

    store    on (re)connect, and after the memory queue overflowed or showed a gap:
             read the outbox in seq order after the last sent seq, until a read comes
             back short (the link has caught up with what was committed before it)
    memory   the entries the store handed over at commit (LinkRegistry.offer, commit
             order = seq order per account), queued since the link was claimed

A link is claimed before its first read, so every entry is either committed before a
read (the read returns it) or offered after the claim (the queue has it), or both. The
sender sends only ``seq > last_sent``, strictly increasing (never twice, never out of
order on one link); in memory mode a seq that is not ``last_sent + 1`` is a gap, and
the sender goes back to the store rather than skip an entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiohttp import WSMsgType, web

from envelope import (
    EnvelopeError,
    canonical_json,
    encode_outbox_batches,
    encode_outbox_frame,
    verify_erasure_notice,
    verify_receipt_with_hash,
)
from envelope.limits import MAX_ENVELOPE_BYTES
from envelope.link import BATCH_FEATURE, REJECT_CODE_PATTERN

from .link_handshake import LINK_CLOSE_MESSAGES, LinkClosed, authenticate_vault, close_link
from .logs import log_event
from .state import STATE, RelayState
from .store import OutboxEntry

__all__ = ["KNOWN_REJECT_CODES", "VaultLinkSession", "vault_link_socket"]

#: Reject codes counted under their own metric label; any other code is "other"
#: (a label set the vault could grow at will would be unbounded).
KNOWN_REJECT_CODES = frozenset({
    "envelope.undecryptable", "envelope.malformed", "envelope.wrong_account",
    "envelope.limit_exceeded", "vault.not_recipient", "vault.bad_body",
    "vault.role_not_allowed", "vault.visitor_key_mismatch", "vault.agent_not_certified",
    "vault.envelope_id_conflict", "vault.sequence_reused", "vault.bad_frame"})
_CONTROL_MAX = 512 * 1024  # a full receipt of MAX_RECEIPT_ITEMS items fits well inside
# The memory queue of a link whose vault falls behind: past either bound it is dropped
# and the sender reads the outbox instead (the rows are there), so a slow vault costs
# reads again, never relay memory beyond this.
_QUEUE_MAX_ENTRIES = 8192
_QUEUE_MAX_BYTES = 16 * 1024 * 1024


class VaultLinkSession:
    """One authenticated link: streams the outbox, applies receipts and rejects."""

    def __init__(self, st: RelayState, ws: web.WebSocketResponse, account: str,
                 identity_key: bytes, *, batch: bool = False) -> None:
        self.st, self.ws, self.account, self.identity_key = st, ws, account, identity_key
        self.batch = batch  # the vault named outbox-batch: send OUTBOX BATCH frames
        self.window = max(1, st.config.link_window)
        # seq -> monotonic send time: the frames the vault still owes a receipt for.
        self.in_flight: dict[int, float] = {}
        # envelope id -> seq of what is in flight: a verified receipt naming an id frees
        # its slot even when it deleted nothing (the entry was receipted through an
        # earlier link, and this one sent it again from memory): else the window shrinks.
        self.in_flight_ids: dict[str, int] = {}
        self.last_sent = 0
        self.lock = asyncio.Lock()
        # Committed entries handed over by the store, in seq order (see the module doc).
        self.queue: deque[OutboxEntry] = deque()
        self.queue_bytes = 0
        self.offered_seq = 0  # highest seq offered so far
        self.from_store = True  # until a store read comes back short
        self.contiguous = False  # True once memory mode sent one: the next is last+1
        self.sent_from_memory = 0
        self.overflows = 0

    def offer(self, entries: Sequence[OutboxEntry]) -> None:
        """Queue just-committed entries (called by the store's commit, in seq order)."""
        links = self.st.links
        for e in entries:
            if len(self.queue) >= _QUEUE_MAX_ENTRIES or \
                    self.queue_bytes + len(e.data) > _QUEUE_MAX_BYTES or \
                    links.queued_bytes + len(e.data) > links.QUEUED_BYTES_MAX:
                # Overflow: drop the queue and read the outbox until caught up. Entries
                # offered from here on are queued again: a read after this point
                # returns everything committed before it.
                self._drop_queue()
                self.from_store = True
                self.overflows += 1
            self.queue.append(e)
            self._count(len(e.data))
            self.offered_seq = e.seq

    def _count(self, n: int) -> None:
        self.queue_bytes += n
        self.st.links.queued_bytes += n

    def _pop(self) -> OutboxEntry:
        e = self.queue.popleft()
        self._count(-len(e.data))
        return e

    def _drop_queue(self) -> None:
        self._count(-self.queue_bytes)
        self.queue.clear()

    def _from_memory(self, room: int) -> list[OutboxEntry]:
        """Up to ``room`` queued entries to send next; on a gap, switch to the store."""
        out: list[OutboxEntry] = []
        last = self.last_sent
        while self.queue and len(out) < room:
            e = self.queue[0]
            if e.seq <= last:  # already sent from a store read
                self._pop()
                continue
            if self.contiguous and e.seq != last + 1:
                self.from_store = True  # an entry not handed over: never skip it
                break
            out.append(self._pop())
            last = e.seq
            self.contiguous = True
        return out

    def _caught_up(self, mark: int) -> None:
        """A store read came back short: switch to memory mode.

        Entries offered before the read began (seq <= ``mark``) were committed before
        it, so the read returned every one that still exists; the rest were deleted
        (receipted, expired) and must not be sent.
        """
        through = max(self.last_sent, mark)
        while self.queue and self.queue[0].seq <= through:
            self._pop()
        self.from_store = False
        self.contiguous = False

    async def close(self, code: str, message: str) -> None:
        """Send the error frame and close with the stable code as reason."""
        await close_link(self.ws, code, message)

    async def stream(self) -> None:
        """Send outbox entries in order while the window has room; sleep until woken."""
        try:
            await self._stream()
        except (ConnectionError, RuntimeError):
            return
        except Exception:
            # A store error must not leave a silent link: close it, the vault reconnects
            # and everything unacknowledged is sent again.
            log_event(self.st.logger, logging.ERROR, "link.sender_failed", account=self.account)
            await self.close("going-away", "relay error; reconnect")

    async def _stream(self) -> None:
        wake = self.st.links.event(self.account)
        while not self.ws.closed:
            wake.clear()
            room = self.window - len(self.in_flight)
            if room > 0:
                caught_up = False
                if self.from_store:
                    mark, overflows = self.offered_seq, self.overflows
                    entries = await self.st.store.read_outbox(self.account, self.last_sent,
                                                              room)
                    # Short read: caught up, unless the queue overflowed meanwhile (it
                    # dropped entries committed after the read's snapshot: read again).
                    caught_up = len(entries) < room and overflows == self.overflows
                else:
                    entries = self._from_memory(room)
                    self.sent_from_memory += len(entries)
                fresh: list[OutboxEntry] = []
                sent_at = time.monotonic()
                for entry in entries:
                    if entry.seq <= self.last_sent:
                        continue  # never twice, never backwards on one link
                    self.in_flight[entry.seq] = sent_at
                    self.in_flight_ids[entry.envelope_id] = entry.seq
                    self.last_sent = entry.seq
                    fresh.append(entry)
                await self._send_entries(fresh)
                if caught_up:
                    self._caught_up(mark)
                if entries or caught_up or (self.from_store and self.queue):
                    continue
            # Woken by a new entry (chat, offload) or a receipt freeing the window; the
            # timeout is a backstop only.
            try:
                async with asyncio.timeout(1.0):  # wait_for (3.11) can eat a cancel
                    await wake.wait()
            except TimeoutError:
                # A quiet second in memory mode: make sure no committed entry missed the
                # hand-off (a failed hook would otherwise hold it until the next commit
                # of the account shows the gap). Reading from the store is always safe.
                if not self.from_store and not self.queue and await self.st.store.read_outbox(
                        self.account, self.last_sent, 1):
                    self.from_store = True

    async def _send_entries(self, entries: list[OutboxEntry]) -> None:
        """Entries already counted in flight, in batches or one frame each (module doc)."""
        if self.batch:
            frames = encode_outbox_batches([(e.seq, e.data) for e in entries])
            self.st.metrics.link_batches_sent.inc(len(frames))
        else:
            frames = [encode_outbox_frame(e.seq, e.data) for e in entries]
        for frame in frames:
            async with self.lock:
                await self.ws.send_bytes(frame)
        self.st.metrics.link_frames_sent.inc(len(entries))

    async def _send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_json(frame)

    async def on_ack(self, frame: dict[str, Any]) -> None:
        """Verify a batched receipt under the paired key; delete only what matches."""
        st = self.st
        try:
            # One decode of the body serves the signature check and the hash: a 256-item
            # receipt is ~30 KiB of base64url on every ack.
            items, digest = verify_receipt_with_hash(frame.get("receipt"), self.identity_key,
                                                     account=self.account)
        except EnvelopeError:
            st.metrics.link_receipts.labels("invalid").inc()
            raise LinkClosed("link.bad_receipt") from None
        now = st.clock()
        outcome = await st.store.apply_receipt(
            self.account, digest, [(i.engagement, i.envelope_id, i.envelope_hash) for i in items],
            int(now))
        mono = time.monotonic()
        for seq, created_at in outcome.deleted:
            sent = self.in_flight.pop(seq, None)
            if sent is not None:
                st.metrics.link_ack_latency.observe(mono - sent)
            st.metrics.link_delivery_latency.observe(max(0.0, now - created_at))
        for item in items:
            sent_seq = self.in_flight_ids.pop(item.envelope_id, None)
            if sent_seq is not None:
                self.in_flight.pop(sent_seq, None)
        st.metrics.link_receipts.labels("applied" if outcome.deleted else "matched_nothing").inc()
        st.metrics.link_deleted.inc(len(outcome.deleted))
        if outcome.offloaded and st.offload is not None:
            await st.offload.purged(self.account, outcome.offloaded)
        backlog = (await st.store.outbox_stats(self.account)).entries
        await self._send({"type": "acked", "deleted": len(outcome.deleted), "backlog": backlog})
        st.links.wake(self.account)

    async def on_reject(self, frame: dict[str, Any]) -> None:
        """The vault refused an entry it was sent: drop it for good and count it."""
        seq, code = frame.get("seq"), frame.get("code")
        if type(seq) is not int or not isinstance(code, str) \
                or not REJECT_CODE_PATTERN.fullmatch(code):
            raise LinkClosed("link.bad_receipt")
        dropped = None
        # Only a frame sent on this link and not yet receipted can be refused: the vault
        # cannot name entries it never saw.
        if self.in_flight.pop(seq, None) is not None:
            for envelope_id in [i for i, s in self.in_flight_ids.items() if s == seq]:
                del self.in_flight_ids[envelope_id]
            dropped = await self.st.store.reject_outbox(self.account, seq, code,
                                                        int(self.st.clock()))
        if dropped is not None:
            self.st.metrics.link_rejected.labels(
                code if code in KNOWN_REJECT_CODES else "other").inc()
            log_event(self.st.logger, logging.WARNING, "link.entry_rejected",
                      account=self.account, engagement=dropped, code=code)
            if self.st.offload is not None:
                await self.st.offload.refresh_metrics()
        await self._send({"type": "rejected", "seq": seq, "dropped": int(dropped is not None)})
        self.st.links.wake(self.account)

    async def on_erasure(self, frame: dict[str, Any]) -> None:
        """Record a verified erasure notice on the engagement records."""
        wire = frame.get("notice")
        try:
            notice = verify_erasure_notice(wire, self.identity_key, account=self.account)
        except EnvelopeError:
            raise LinkClosed("link.bad_receipt") from None
        digest = hashlib.blake2b(canonical_json(wire), digest_size=32,
                                 person=b"cr-erasure-v1").hexdigest()
        n = await self.st.store.record_erasure(self.account, digest, notice.engagements,
                                               notice.rule, notice.at)
        await self._send({"type": "erasure-recorded", "engagements": n})

    async def serve(self) -> None:
        """Read control frames until the socket closes."""
        handlers = {"ack": self.on_ack, "reject": self.on_reject, "erasure": self.on_erasure}
        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type != WSMsgType.TEXT or len(msg.data) > _CONTROL_MAX:
                raise LinkClosed("link.bad_frame")
            try:
                frame = json.loads(msg.data)
            except (ValueError, RecursionError):
                raise LinkClosed("link.bad_frame") from None
            if not isinstance(frame, dict):
                raise LinkClosed("link.bad_frame")
            kind = frame.get("type")
            if kind == "ping":
                await self._send({"type": "pong"})
            elif isinstance(kind, str) and kind in handlers:
                await handlers[kind](frame)
            else:
                raise LinkClosed("link.bad_frame")


async def vault_link_socket(request: web.Request) -> web.WebSocketResponse:
    """``GET /v1/vault/link``: authenticate a vault, then run its session."""
    st = request.app[STATE]
    ws = web.WebSocketResponse(max_msg_size=max(_CONTROL_MAX, MAX_ENVELOPE_BYTES) + 64,
                               heartbeat=st.config.heartbeat_seconds)
    await ws.prepare(request)
    session: VaultLinkSession | None = None
    sender: asyncio.Task[None] | None = None
    outcome = "closed"
    st.metrics.vault_links.labels("authenticating").inc()
    try:
        if st.hub is None or st.hub.closing:
            raise LinkClosed("going-away")
        account, identity_key, features = await authenticate_vault(st, ws)
        session = VaultLinkSession(st, ws, account, identity_key,
                                   batch=BATCH_FEATURE in features)
        previous = st.links.claim(account, session)
        if previous is not None:
            await previous.close("link.superseded", LINK_CLOSE_MESSAGES["link.superseded"])
        st.metrics.vault_links.labels("authenticating").dec()
        st.metrics.vault_links.labels("ready").inc()
        backlog = (await st.store.outbox_stats(account)).entries
        ready: dict[str, Any] = {"type": "ready", "backlog": backlog, "window": session.window}
        if features:  # else absent: the ready frame older vaults have always had
            ready["features"] = sorted(features)
        await ws.send_json(ready)
        log_event(st.logger, logging.INFO, "link.ready", account=account, backlog=backlog,
                  batch=session.batch)
        sender = asyncio.create_task(session.stream())
        await session.serve()
    except LinkClosed as exc:
        outcome = exc.code
        await close_link(ws, exc.code, LINK_CLOSE_MESSAGES.get(exc.code, "refused"))
    except (ConnectionError, RuntimeError):
        outcome = "connection_lost"
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        if session is not None:
            session._drop_queue()  # its bytes leave the relay-wide queue budget
            st.links.release(session.account, session)
            st.metrics.vault_links.labels("ready").dec()
            log_event(st.logger, logging.INFO, "link.closed", account=session.account,
                      outcome=outcome)
        else:
            st.metrics.vault_links.labels("authenticating").dec()
        st.metrics.link_sessions.labels(outcome if outcome in LINK_CLOSE_MESSAGES or outcome in (
            "closed", "connection_lost") else "other").inc()
    return ws

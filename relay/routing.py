"""Routing rules, sans-I/O: events in, deliveries out. No asyncio, no sockets, no clock.

The websocket handlers in :mod:`relay.chat` call one method per event with ``now``
and send the :class:`Delivery` values it returns. Tests drive this module directly.

Each party of an engagement (the visitor; the agent seat) has a delivery log: every
frame that matters for the conversation gets the next delivery sequence ``dseq`` and
is kept (bounded), so a party that reconnects with ``last`` gets every frame after it,
in order. Ephemeral frames (typing, acks, offers) carry no ``dseq``.

Engagement states::

    queued --accept--> active --end--> ended(completed)
      |                  |--transfer--> active (new agent)
      |--visitor gone past grace--> ended(abandoned)
      '--not accepted in queue_timeout--> ended(missed)
"""

from __future__ import annotations

from typing import Any

from .resume_buffer import PartyLog as _PartyLog
from .routing_model import AgentSeat, Delivery, Engagement, RoutingError

__all__ = ["AgentSeat", "Delivery", "Engagement", "Router", "RoutingError"]


class Router:
    """All engagements and agent seats of the relay, and the rules between them."""

    def __init__(self, *, buffer_frames: int = 5000, resume_grace: float = 120.0,
                 queue_timeout: float = 600.0, buffer_bytes: int = 2 * 1024 * 1024,
                 max_per_client: int = 5) -> None:
        self.buffer_frames = buffer_frames
        self.buffer_bytes = buffer_bytes
        self.max_per_client = max_per_client
        self.resume_grace = resume_grace
        self.queue_timeout = queue_timeout
        self.engagements: dict[str, Engagement] = {}
        self.seats: dict[tuple[str, str], AgentSeat] = {}
        self._by_token: dict[str, str] = {}
        self._conn_seat: dict[str, tuple[str, str]] = {}
        self._conn_visitor: dict[str, str] = {}
        self.dirty: set[str] = set()
        self.closed: list[Engagement] = []
        # Per-account indexes: a connect scanned every engagement and seat (quadratic).
        self._live: dict[str, int] = {}
        self._per_client: dict[str, int] = {}  # live engagements per client tag
        self._queued: dict[str, dict[str, Engagement]] = {}
        self._free: dict[str, dict[str, AgentSeat]] = {}
        self._seat_order: dict[tuple[str, str], int] = {}

    # helpers ----------------------------------------------------------------

    def _log(self) -> _PartyLog:
        return _PartyLog(self.buffer_frames, self.buffer_bytes)

    def _to_visitor(self, eng: Engagement, payload: dict[str, Any] | bytes,
                    size: int = 0) -> list[Delivery]:
        dseq = eng.visitor_log.add(payload, size)
        return [Delivery(eng.visitor_conn, payload, dseq)] if eng.visitor_conn else []

    def _to_agent(self, eng: Engagement, payload: dict[str, Any] | bytes,
                  size: int = 0) -> list[Delivery]:
        dseq = eng.agent_log.add(payload, size)
        seat = self.seats.get((eng.account, eng.agent)) if eng.agent else None
        if eng.state == "active" and seat is not None and seat.conn:
            return [Delivery(seat.conn, payload, dseq)]
        return []

    def engagement_for(self, eng_id: str, account: str) -> Engagement:
        """A live engagement of ``account`` or RoutingError."""
        eng = self.engagements.get(eng_id)
        if eng is None or eng.account != account or eng.state == "ended":
            raise RoutingError("engagement.unknown", "no such live engagement")
        return eng

    def _seat_of(self, conn: str) -> AgentSeat:
        key = self._conn_seat.get(conn)
        if key is None:
            raise RoutingError("session.unknown", "connection has no agent seat")
        return self.seats[key]

    def agent_engagement(self, conn: str, eng_id: str) -> tuple[AgentSeat, Engagement]:
        """The seat of ``conn`` and an engagement assigned to it, or RoutingError."""
        seat = self._seat_of(conn)
        eng = self.engagement_for(eng_id, seat.account)
        if eng.agent != seat.agent or eng.state != "active":
            raise RoutingError("engagement.not_assigned", "engagement is not yours")
        return seat, eng

    def visitor_engagement(self, conn: str) -> Engagement:
        """The engagement of a visitor connection."""
        eng_id = self._conn_visitor.get(conn)
        if eng_id is None or eng_id not in self.engagements:
            raise RoutingError("engagement.unknown", "no live engagement")
        return self.engagements[eng_id]

    def live_count(self, account: str) -> int:
        """Live engagements of ``account`` (for the per-account limit)."""
        return self._live.get(account, 0)

    def _touch(self, seat: AgentSeat) -> None:
        """Keep the free-seat index in step after the seat's conn or load changed."""
        free = self._free.setdefault(seat.account, {})
        free.update({seat.agent: seat}) if seat.free > 0 else free.pop(seat.agent, None)

    def _set_queued(self, eng: Engagement, queued: bool) -> None:
        q = self._queued.setdefault(eng.account, {})
        q.update({eng.id: eng}) if queued else q.pop(eng.id, None)

    def _offer(self, eng: Engagement) -> list[Delivery]:
        out = []
        order = self._seat_order
        offered = eng.offered or ()
        seats = sorted((s for s in self._free.get(eng.account, {}).values()
                        if s.free > 0 and s.conn not in offered),
                       key=lambda s: (-s.free, order[(s.account, s.agent)]))
        for seat in seats:
            assert seat.conn is not None
            if eng.offered is None:
                eng.offered = set()
            eng.offered.add(seat.conn)
            out.append(Delivery(seat.conn, {"type": "offer", "engagement": eng.id,
                                            "visitor_keys": eng.visitor_keys}))
        return out

    def _close(self, eng: Engagement, outcome: str, now: float) -> list[Delivery]:
        eng.state, eng.outcome, eng.ended_at = "ended", outcome, now
        seat = self.seats.get((eng.account, eng.agent)) if eng.agent else None
        if seat is not None:
            seat.engagements.discard(eng.id)
            self._touch(seat)
        if self.engagements.pop(eng.id, None) is not None:
            self._live[eng.account] -= 1
            if eng.client is not None:
                left = self._per_client[eng.client] - 1
                if left:
                    self._per_client[eng.client] = left
                else:
                    del self._per_client[eng.client]  # no entry per address ever seen
        self._set_queued(eng, False)
        self._by_token.pop(eng.resume_token, None)
        if eng.visitor_conn:
            self._conn_visitor.pop(eng.visitor_conn, None)
        self.dirty.add(eng.id)
        self.closed.append(eng)
        out = [Delivery(c, {"type": "withdrawn", "engagement": eng.id})
               for c in eng.offered or ()]
        return out + (self._offer_queued(seat) if seat else [])

    def _offer_queued(self, seat: AgentSeat) -> list[Delivery]:
        out: list[Delivery] = []
        for eng in list(self._queued.get(seat.account, {}).values()):
            if eng.state == "queued" and seat.free > 0:
                out += self._offer(eng)
        return out

    # visitor events ------------------------------------------------------------

    def open_engagement(self, *, account: str, mode: str, engagement: str, conn: str,
                        resume_token: str, visitor_keys: dict[str, str] | None,
                        now: float, client: str | None = None) -> list[Delivery]:
        """A visitor starts an engagement: it is queued and offered to free agents.

        ``client`` is an opaque tag of the visitor's address (never the address): one
        address may hold at most ``max_per_client`` live engagements, so it cannot pin
        the relay's memory with many queued engagements and their resume buffers.
        """
        # Counted, not scanned: a scan of every live engagement per connect made opening
        # N engagements cost N^2/2 steps (10,000 live: ~0.5 ms of the loop per connect).
        if client is not None and self._per_client.get(client, 0) >= self.max_per_client:
            raise RoutingError("rate.engagements_per_address",
                               "too many live engagements from this address")
        eng = Engagement(id=engagement, account=account, mode=mode, started_at=now,
                         resume_token=resume_token, visitor_conn=conn,
                         visitor_keys=visitor_keys, visitor_log=self._log(),
                         agent_log=self._log(), client=client)
        self.engagements[engagement] = eng
        self._live[account] = self._live.get(account, 0) + 1
        if client is not None:
            self._per_client[client] = self._per_client.get(client, 0) + 1
        self._set_queued(eng, True)
        self._by_token[resume_token] = engagement
        self._conn_visitor[conn] = engagement
        self.dirty.add(engagement)
        return self._to_visitor(eng, {"type": "queued", "engagement": engagement}) + \
            self._offer(eng)

    def resume_visitor(self, *, account: str, resume_token: str, conn: str, last: int,
                       now: float) -> tuple[Engagement, list[Delivery]]:
        """A visitor reconnects: replay every delivery after ``last``."""
        eng_id = self._by_token.get(resume_token)
        # Checked before anything changes: a token presented on another account's socket
        # must not detach the real visitor (cross-tenant hijack).
        if eng_id is None or eng_id not in self.engagements or \
                self.engagements[eng_id].account != account:
            raise RoutingError("resume.unknown", "nothing to resume")
        eng = self.engagements[eng_id]
        out: list[Delivery] = []
        if eng.visitor_conn and eng.visitor_conn != conn:
            self._conn_visitor.pop(eng.visitor_conn, None)
            out.append(Delivery(eng.visitor_conn, {"type": "superseded"}))
        eng.visitor_conn, eng.visitor_gone_at = conn, None
        self._conn_visitor[conn] = eng_id
        out += [Delivery(conn, p, d) for d, p in eng.visitor_log.after(last)]
        return eng, out

    def visitor_left(self, conn: str, now: float) -> list[Delivery]:
        """The visitor's socket closed; it may resume within the grace period."""
        eng_id = self._conn_visitor.pop(conn, None)
        eng = self.engagements.get(eng_id) if eng_id else None
        if eng is None or eng.visitor_conn != conn:
            return []
        eng.visitor_conn, eng.visitor_gone_at = None, now
        return []

    # agent events ---------------------------------------------------------------

    def agent_online(self, *, account: str, agent: str, key_id: str | None, capacity: int,
                     conn: str, last: dict[str, int], now: float
                     ) -> tuple[list[dict[str, Any]], list[Delivery]]:
        """An agent connects (or reconnects): re-attach its engagements, replay, offer."""
        seat = self.seats.get((account, agent))
        out: list[Delivery] = []
        if seat is None:
            seat = self.seats[(account, agent)] = AgentSeat(account, agent, conn, key_id,
                                                            capacity)
            self._seat_order[(account, agent)] = len(self._seat_order)
        else:
            if seat.conn and seat.conn != conn:
                self._conn_seat.pop(seat.conn, None)
                out.append(Delivery(seat.conn, {"type": "superseded"}))
            seat.conn, seat.key_id, seat.capacity, seat.gone_at = conn, key_id, capacity, None
        self._touch(seat)
        self._conn_seat[conn] = (account, agent)
        attached = []
        for eng_id in sorted(seat.engagements):
            eng = self.engagements[eng_id]
            attached.append({"engagement": eng_id, "acked": self.acked(eng, f"agent:{agent}"),
                             "visitor_keys": eng.visitor_keys})
            out += [Delivery(conn, p, d) for d, p in eng.agent_log.after(last.get(eng_id, 0))]
        return attached, out + self._offer_queued(seat)

    def agent_left(self, conn: str, now: float) -> list[Delivery]:
        """The agent's socket closed; its engagements wait for it within the grace period."""
        key = self._conn_seat.pop(conn, None)
        if key is None:
            return []
        seat = self.seats[key]
        if seat.conn == conn:
            seat.conn, seat.gone_at = None, now
        self._touch(seat)
        # Only queued engagements carry offers (accept clears them, close drops them).
        for eng in self._queued.get(seat.account, {}).values():
            if eng.offered:
                eng.offered.discard(conn)
        return []

    def accept(self, conn: str, eng_id: str, now: float) -> list[Delivery]:
        """An agent accepts an offered engagement; the first to accept wins."""
        seat = self._seat_of(conn)
        eng = self.engagement_for(eng_id, seat.account)
        if eng.state != "queued":
            raise RoutingError("engagement.taken", "engagement already taken")
        if seat.free <= 0:
            raise RoutingError("agent.at_capacity", "agent at capacity")
        eng.state, eng.outcome, eng.agent, eng.agent_key_id = "active", "active", seat.agent, \
            seat.key_id
        eng.accepted_at = now
        seat.engagements.add(eng.id)
        self._touch(seat)
        self._set_queued(eng, False)
        self.dirty.add(eng.id)
        out = [Delivery(c, {"type": "withdrawn", "engagement": eng.id})
               for c in eng.offered or () if c != conn]
        eng.offered = None
        out += self._to_visitor(eng, {"type": "assigned", "engagement": eng.id,
                                      "agent": seat.agent, "key_id": seat.key_id})
        # The agent gets "assigned" then everything the visitor sent while queued.
        dseq = eng.agent_log.add({"type": "assigned", "engagement": eng.id,
                                  "visitor_keys": eng.visitor_keys})
        pending = [(d, p) for d, p in eng.agent_log.after(0) if d != dseq]
        out.append(Delivery(conn, {"type": "assigned", "engagement": eng.id,
                                   "visitor_keys": eng.visitor_keys}, dseq))
        out += [Delivery(conn, p, d) for d, p in pending]
        return out

    def transfer(self, conn: str, eng_id: str, to_agent: str, now: float) -> list[Delivery]:
        """Move an engagement to another online agent of the account."""
        seat, eng = self.agent_engagement(conn, eng_id)
        target = self.seats.get((seat.account, to_agent))
        if target is None or not target.conn or target.agent == seat.agent:
            raise RoutingError("transfer.unavailable", "target agent is not online")
        if target.free <= 0:
            raise RoutingError("agent.at_capacity", "target agent at capacity")
        seat.engagements.discard(eng.id)
        out = [Delivery(conn, {"type": "released", "engagement": eng.id})]
        if eng.mode == "compliance":
            # The old agent's ciphertext is useless to the new one; the visitor re-seals
            # its history to the new agent (history handoff) on "assigned".
            eng.agent_log = self._log()
        eng.agent, eng.agent_key_id = target.agent, target.key_id
        eng.transfers += 1
        target.engagements.add(eng.id)
        self._touch(seat)
        self._touch(target)
        self.dirty.add(eng.id)
        out += self._to_visitor(eng, {"type": "assigned", "engagement": eng.id,
                                      "agent": target.agent, "key_id": target.key_id})
        assert target.conn is not None
        dseq = eng.agent_log.add({"type": "assigned", "engagement": eng.id,
                                  "visitor_keys": eng.visitor_keys, "transfer": True})
        out.append(Delivery(target.conn, {"type": "assigned", "engagement": eng.id,
                                          "visitor_keys": eng.visitor_keys,
                                          "transfer": True}, dseq))
        out += [Delivery(target.conn, p, d) for d, p in eng.agent_log.after(0) if d != dseq]
        return out + self._offer_queued(seat)

    # both sides ------------------------------------------------------------------

    @staticmethod
    def acked(eng: Engagement, stream: str) -> int:
        """Last sequence accepted from ``stream`` (what a resuming sender may drop)."""
        return eng.last_seq.get(stream, 0)

    @staticmethod
    def check_seq(eng: Engagement, stream: str, seq: int) -> None:
        """Refuse a replayed or skipped sequence number (each stream counts 1, 2, 3, ...)."""
        last = eng.last_seq.get(stream, 0)
        if seq <= last:
            raise RoutingError("seq.replayed", "sequence number already used")
        if seq != last + 1:
            raise RoutingError("seq.out_of_order", "sequence number skips ahead")

    def check_room(self, eng: Engagement, role: str, size: int) -> None:
        """Refuse a message the other party's resume buffer cannot hold while it is away.

        Stops memory exhaustion: frames for a party that is not connected (an engagement
        still queued, an agent or visitor gone within the grace period) accumulate
        until it comes back; past ``buffer_frames`` or ``buffer_bytes`` they are refused
        (engagement.buffer_full), never silently dropped. Frames for a connected party
        are sent at once and only the oldest of those leave the buffer.
        """
        if role == "visitor":
            log, seat = eng.agent_log, self.seats.get((eng.account, eng.agent or ""))
            present = eng.state == "active" and seat is not None and bool(seat.conn)
        else:
            log, present = eng.visitor_log, eng.visitor_conn is not None
        if not present and not log.has_room(size):
            raise RoutingError("engagement.buffer_full",
                               "the other party's buffer is full; wait for it to reconnect")

    def message(self, *, eng: Engagement, role: str, stream: str, seq: int,
                payload: dict[str, Any] | bytes, size: int, now: float) -> list[Delivery]:
        """A durable message from ``role``: record the sequence, count it, forward it."""
        self.check_seq(eng, stream, seq)
        self.check_room(eng, role, size)
        eng.last_seq[stream] = seq
        if role == "visitor":
            eng.visitor_messages += 1
            eng.visitor_bytes += size
        else:
            eng.agent_messages += 1
            eng.agent_bytes += size
        if role != "visitor" and eng.first_response_at is None:
            eng.first_response_at = now
        self.dirty.add(eng.id)
        return self._to_agent(eng, payload, size) if role == "visitor" else \
            self._to_visitor(eng, payload, size)

    def typing(self, *, eng: Engagement, role: str, on: bool) -> list[Delivery]:
        """Typing indicator to the other side (not buffered, not counted)."""
        frame = {"type": "typing", "engagement": eng.id, "from": role, "on": bool(on)}
        if role == "visitor":
            seat = self.seats.get((eng.account, eng.agent)) if eng.agent else None
            return [Delivery(seat.conn, frame)] if seat and seat.conn and \
                eng.state == "active" else []
        return [Delivery(eng.visitor_conn, frame)] if eng.visitor_conn else []

    def end(self, *, eng: Engagement, role: str, now: float) -> list[Delivery]:
        """Either side ends the engagement."""
        frame = {"type": "ended", "engagement": eng.id, "by": role}
        out = self._to_visitor(eng, frame) + self._to_agent(eng, frame)
        outcome = "completed" if eng.state == "active" else "abandoned"
        return out + self._close(eng, outcome, now)

    def tick(self, now: float) -> list[Delivery]:
        """Time passes: gone visitors are abandoned, unanswered queues are missed."""
        out: list[Delivery] = []
        for eng in list(self.engagements.values()):
            if eng.visitor_gone_at is not None and now - eng.visitor_gone_at > self.resume_grace:
                out += self.end(eng=eng, role="visitor", now=now)
            elif eng.state == "queued" and now - eng.started_at > self.queue_timeout:
                frame = {"type": "ended", "engagement": eng.id, "by": "relay"}
                out += self._to_visitor(eng, frame) + self._close(eng, "missed", now)
        for seat in self.seats.values():
            if seat.conn is None and seat.gone_at is not None and \
                    now - seat.gone_at > self.resume_grace:
                seat.gone_at = None
                for eng_id in sorted(seat.engagements):
                    eng = self.engagements[eng_id]
                    # The agent vanished: put the engagement back in the queue.
                    eng.state, eng.agent, eng.agent_key_id = "queued", None, None
                    self._set_queued(eng, True)
                    eng.agent_log = self._log()
                    out += self._to_visitor(eng, {"type": "queued", "engagement": eng.id})
                    out += self._offer(eng)
                seat.engagements.clear()
                self._touch(seat)
        return out

    def take_dirty(self) -> list[Engagement]:
        """Engagements whose record changed since the last call (live and just closed)."""
        closed = {e.id: e for e in self.closed}
        out = [self.engagements.get(i) or closed[i] for i in sorted(self.dirty)
               if i in self.engagements or i in closed]
        self.dirty.clear()
        self.closed.clear()
        return out

"""The routing rules without an event loop: plain calls with ``now``, plain asserts."""

from __future__ import annotations

import collections

import pytest

from relay.routing import Delivery, Router, RoutingError


def _types(out: list[Delivery], conn: str) -> list[str]:
    return [d.payload["type"] for d in out if d.conn == conn and isinstance(d.payload, dict)]


def _router() -> Router:
    return Router(buffer_frames=100, resume_grace=30, queue_timeout=60)


def test_offer_by_capacity_first_accept_wins_and_others_withdrawn() -> None:
    r = _router()
    r.agent_online(account="a", agent="ann", key_id=None, capacity=1, conn="A", last={}, now=0)
    r.agent_online(account="a", agent="bob", key_id=None, capacity=3, conn="B", last={}, now=0)
    r.agent_online(account="x", agent="eve", key_id=None, capacity=9, conn="E", last={}, now=0)
    out = r.open_engagement(account="a", mode="standard", engagement="eng-00000001",
                            conn="V", resume_token="t" * 20, visitor_keys=None, now=1)
    offers = [d.conn for d in out if isinstance(d.payload, dict)
              and d.payload["type"] == "offer"]
    assert offers == ["B", "A"]  # most free capacity first; never another account's agent
    out = r.accept("A", "eng-00000001", now=4)
    assert _types(out, "B") == ["withdrawn"] and _types(out, "V") == ["assigned"]
    with pytest.raises(RoutingError) as exc:
        r.accept("B", "eng-00000001", now=5)
    assert exc.value.code == "engagement.taken"
    # Ann is at capacity: the next engagement is offered to Bob only.
    out = r.open_engagement(account="a", mode="standard", engagement="eng-00000002",
                            conn="V2", resume_token="u" * 20, visitor_keys=None, now=6)
    assert [d.conn for d in out if d.conn != "V2"] == ["B"]


def test_messages_sequence_resume_replay() -> None:
    r = _router()
    r.agent_online(account="a", agent="ann", key_id=None, capacity=2, conn="A", last={}, now=0)
    r.open_engagement(account="a", mode="standard", engagement="eng-00000001", conn="V",
                      resume_token="t" * 20, visitor_keys=None, now=0)
    eng = r.visitor_engagement("V")
    early = r.message(eng=eng, role="visitor", stream="visitor", seq=1,
                      payload={"type": "msg", "text": "early"}, size=5, now=1)
    assert early == []  # queued: buffered for whoever accepts
    out = r.accept("A", eng.id, now=10)
    assert _types(out, "A") == ["assigned", "msg"]
    with pytest.raises(RoutingError) as exc:
        Router.check_seq(eng, "visitor", 1)
    assert exc.value.code == "seq.replayed"
    with pytest.raises(RoutingError) as exc:
        Router.check_seq(eng, "visitor", 3)
    assert exc.value.code == "seq.out_of_order"
    r.visitor_left("V", now=11)
    for i in range(1, 4):
        r.message(eng=eng, role="agent", stream="agent:ann", seq=i,
                  payload={"type": "msg", "text": f"a{i}"}, size=2, now=12)
    last_seen = 2  # queued(1) and assigned(2) reached the visitor before the drop
    _, replay = r.resume_visitor(account="a", resume_token="t" * 20, conn="V2",
                                 last=last_seen, now=20)
    assert [d.payload["text"] for d in replay if isinstance(d.payload, dict)] == \
        ["a1", "a2", "a3"]
    assert [d.dseq for d in replay] == [3, 4, 5]
    with pytest.raises(RoutingError):
        r.resume_visitor(account="other", resume_token="t" * 20, conn="X", last=0, now=20)
    assert r.visitor_engagement("V2") is eng  # the failed attempt changed nothing
    assert eng.counts["agent_messages"] == 3 and eng.first_response_at == 12


def test_transfer_end_and_outcomes() -> None:
    r = _router()
    for name, conn in (("ann", "A"), ("bob", "B")):
        r.agent_online(account="a", agent=name, key_id=None, capacity=2, conn=conn, last={},
                       now=0)
    r.open_engagement(account="a", mode="compliance", engagement="eng-00000001", conn="V",
                      resume_token="t" * 20, visitor_keys=None, now=0)
    r.accept("A", "eng-00000001", now=1)
    out = r.transfer("A", "eng-00000001", "bob", now=2)
    assert _types(out, "A") == ["released"] and _types(out, "B") == ["assigned"]
    assert _types(out, "V") == ["assigned"]
    with pytest.raises(RoutingError):
        r.transfer("A", "eng-00000001", "bob", now=3)  # no longer Ann's
    eng = r.visitor_engagement("V")
    r.end(eng=eng, role="agent", now=5)
    # Abandoned: the visitor left while queued and did not come back in the grace period.
    r.open_engagement(account="a", mode="standard", engagement="eng-00000002", conn="V2",
                      resume_token="u" * 20, visitor_keys=None, now=10)
    r.visitor_left("V2", now=11)
    r.tick(now=30)
    assert "eng-00000002" in r.engagements
    r.tick(now=42)
    # Missed: queued past the queue timeout (no agent of this account online).
    r.open_engagement(account="b", mode="standard", engagement="eng-00000003", conn="V3",
                      resume_token="w" * 20, visitor_keys=None, now=100)
    out = r.tick(now=161)
    assert _types(out, "V3") == ["ended"]
    outcomes = {e.id: e.outcome for e in r.take_dirty()}
    assert outcomes == {"eng-00000001": "completed", "eng-00000002": "abandoned",
                        "eng-00000003": "missed"}
    assert r.engagements == {}


def test_resume_buffer_refuses_frames_for_an_absent_party_past_its_byte_cap() -> None:
    r = Router(buffer_frames=100, resume_grace=30, queue_timeout=60, buffer_bytes=1000)
    r.open_engagement(account="a", mode="compliance", engagement="eng-00000001", conn="V",
                      resume_token="t" * 20, visitor_keys=None, now=0)
    eng = r.engagements["eng-00000001"]
    # Queued: no agent reads these yet, so they accumulate up to the cap ...
    for seq in (1, 2, 3):
        r.message(eng=eng, role="visitor", stream="visitor", seq=seq, payload=b"x" * 300,
                  size=300, now=1)
    with pytest.raises(RoutingError) as exc:
        r.check_room(eng, "visitor", 300)
    assert exc.value.code == "engagement.buffer_full"
    with pytest.raises(RoutingError):  # ... and message() itself refuses, changing nothing
        r.message(eng=eng, role="visitor", stream="visitor", seq=4, payload=b"x" * 300,
                  size=300, now=1)
    assert eng.last_seq["visitor"] == 3 and eng.agent_log.size == 900
    # The agent accepts and gets all three, nothing lost; now present, it is never refused
    # and the buffer keeps its byte bound by letting the oldest delivered frames go.
    r.agent_online(account="a", agent="ann", key_id=None, capacity=1, conn="A", last={}, now=2)
    out = r.accept("A", "eng-00000001", now=2)
    assert sum(1 for d in out if d.conn == "A" and d.payload == b"x" * 300) == 3
    for seq in range(4, 20):
        r.message(eng=eng, role="visitor", stream="visitor", seq=seq, payload=b"y" * 300,
                  size=300, now=3)
    assert eng.agent_log.size <= 1000
    # The agent drops: the visitor may fill the buffer again, then is refused.
    r.agent_left("A", now=4)
    r.message(eng=eng, role="visitor", stream="visitor", seq=20, payload=b"z" * 100,
              size=100, now=4)
    with pytest.raises(RoutingError):
        r.check_room(eng, "visitor", 300)


def test_frame_cap_also_refuses_for_an_absent_party() -> None:
    r = Router(buffer_frames=3, resume_grace=30, queue_timeout=60)
    r.open_engagement(account="a", mode="standard", engagement="eng-00000001", conn="V",
                      resume_token="t" * 20, visitor_keys=None, now=0)
    eng = r.engagements["eng-00000001"]
    for seq in (1, 2, 3):
        r.message(eng=eng, role="visitor", stream="visitor", seq=seq, payload={"t": "m"},
                  size=1, now=1)
    with pytest.raises(RoutingError) as exc:
        r.check_room(eng, "visitor", 1)
    assert exc.value.code == "engagement.buffer_full"


def test_live_engagements_per_address_are_capped() -> None:
    r = Router(max_per_client=2)

    def open_one(n: int, client: str) -> None:
        r.open_engagement(account="a", mode="standard", engagement=f"eng-0000000{n}",
                          conn=f"V{n}", resume_token=f"{n}" * 20, visitor_keys=None, now=0,
                          client=client)

    open_one(1, "tag-x")
    open_one(2, "tag-x")
    with pytest.raises(RoutingError) as exc:
        open_one(3, "tag-x")
    assert exc.value.code == "rate.engagements_per_address"
    open_one(4, "tag-y")  # another address is unaffected
    r.end(eng=r.engagements["eng-00000001"], role="visitor", now=1)
    open_one(5, "tag-x")  # an ended engagement frees its slot


def test_the_per_address_count_follows_every_close_and_forgets_gone_addresses() -> None:
    r = Router(max_per_client=3, resume_grace=10, queue_timeout=1_000)
    for n in range(12):  # four addresses, three each: all at their cap
        r.open_engagement(account="a", mode="standard", engagement=f"eng-{n:08d}",
                          conn=f"V{n}", resume_token=f"t{n:019d}", visitor_keys=None, now=0,
                          client=f"tag-{n % 4}")
    for n in range(12):
        with pytest.raises(RoutingError):
            r.open_engagement(account="a", mode="standard", engagement=f"eng-x{n:07d}",
                              conn=f"X{n}", resume_token=f"x{n:019d}", visitor_keys=None,
                              now=0, client=f"tag-{n % 4}")
    # Closed every way a live engagement ends: by a party, and abandoned by the sweep.
    r.end(eng=r.engagements["eng-00000000"], role="visitor", now=1)
    r.end(eng=r.engagements["eng-00000005"], role="agent", now=1)
    for n in (2, 6, 10):
        r.visitor_left(f"V{n}", 1)
    r.tick(100)  # past the resume grace: abandoned
    live = collections.Counter(e.client for e in r.engagements.values())
    assert dict(live) == {"tag-0": 2, "tag-1": 2, "tag-3": 3}  # tag-2's three left
    assert r._per_client == {k: v for k, v in live.items() if v}
    for eng in list(r.engagements.values()):
        r.end(eng=eng, role="visitor", now=200)
    assert r._per_client == {}  # no entry kept per address once its engagements ended

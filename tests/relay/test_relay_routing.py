"""The routing rules without an event loop: plain calls with ``now``, plain asserts."""

from __future__ import annotations

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

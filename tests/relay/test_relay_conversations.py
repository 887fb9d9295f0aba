"""Conversations between SDK clients over real sockets: both modes, transfer, resume."""

from __future__ import annotations

import pytest

from envelope import PartyKeys, open_envelope, sign_agent_certificate
from relay.client import AgentClient, VisitorClient

from .conftest import ORIGIN, Relay

pytestmark = pytest.mark.timeout(60)


async def certified_agent(relay: Relay, account: str, admin: str, agent: str,
                          ) -> tuple[str, PartyKeys]:
    """An agent token plus device keys certified by the test's stand-in vault identity."""
    ident, _ = relay.vaults[account]
    keys, now = PartyKeys.generate(), int(relay.clock())
    cert = sign_agent_certificate(ident, account=account, agent=agent,
                                  encryption_key=keys.encryption.public_bytes,
                                  signing_key=keys.signing_public_bytes, not_before=now - 60,
                                  not_after=now + 86400)
    status, _ = await relay.call("POST", f"/v1/accounts/{account}/agent-certificates", admin,
                                 json={"certificate": cert})
    assert status == 201
    return await relay.agent_token(account, admin, agent), keys


async def test_standard_conversation(relay: Relay) -> None:
    admin = await relay.account("shop")
    agent = AgentClient(relay.url, await relay.agent_token("shop", admin, "ann"), "shop")
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    try:
        await agent.connect()
        welcome = await visitor.connect()
        assert welcome["mode"] == "standard"
        eng = welcome["engagement"]
        assert (await agent.next_event(types=("offer",)))["engagement"] == eng
        await visitor.send("hello, I have a question")
        await agent.accept(eng)
        assigned = await visitor.next_event(types=("assigned",))
        assert assigned["agent"] == "ann"
        got = await agent.next_event(types=("msg",))
        assert got["text"] == "hello, I have a question" and got["from"] == "visitor"
        await agent.typing(eng)
        assert (await visitor.next_event(types=("typing",)))["on"] is True
        await agent.send(eng, "happy to help")
        assert (await visitor.next_event(types=("msg",)))["text"] == "happy to help"
        await visitor.end()
        assert (await agent.next_event(types=("ended",)))["by"] == "visitor"
    finally:
        await visitor.close()
        await agent.close()
    await relay.state.hub.persist_records()  # type: ignore[union-attr]
    _, records = await relay.call("GET", "/v1/accounts/shop/engagements", admin)
    (rec,) = records["engagements"]
    assert rec["outcome"] == "completed" and rec["visitor_messages"] == 1
    assert rec["agent_messages"] == 1 and rec["agent"] == "ann"
    assert rec["started_at"] % 60 == 0
    _, transcript = await relay.call("GET", f"/v1/accounts/shop/engagements/{eng}/transcript",
                                     admin)
    assert [i["text"] for i in transcript["items"]] == ["hello, I have a question",
                                                       "happy to help"]
    _, metrics = await relay.call("GET", "/metrics", token=None)
    for family in ('relay_connections_opened_total{role="visitor"}',
                   'relay_connections_open{role="agent"}', "relay_engagements_active",
                   'relay_frames_relayed_total{direction="from_visitor",mode="standard"}',
                   'relay_engagements_total{outcome="completed"}',
                   "relay_routing_latency_seconds_bucket", "relay_outbox_backlog",
                   "relay_outbox_oldest_age_seconds", "relay_sweeper_runs_total"):
        assert family in metrics, family
    assert eng not in metrics
    # At rest the transcript is ciphertext.
    for path in relay.state_dir.rglob("*"):
        if path.is_file():
            assert b"happy to help" not in path.read_bytes(), path


async def test_compliance_conversation_with_transfer(relay: Relay) -> None:
    admin = await relay.account("clinic", compliance=True)
    ident, vault_key = relay.vaults["clinic"]
    tok1, keys1 = await certified_agent(relay, "clinic", admin, "ann")
    tok2, keys2 = await certified_agent(relay, "clinic", admin, "bob")
    pin = ident.fingerprint
    ann = AgentClient(relay.url, tok1, "clinic", keys=keys1, pinned_fingerprint=pin)
    bob = AgentClient(relay.url, tok2, "clinic", keys=keys2, pinned_fingerprint=pin)
    visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN, pinned_fingerprint=pin)
    try:
        await ann.connect()
        welcome = await visitor.connect()
        eng = welcome["engagement"]
        assert welcome["mode"] == "compliance" and welcome["vault_key_id"] == vault_key.key_id
        await visitor.send_prechat(name="Ada", email="ada@example.org")
        await ann.accept((await ann.next_event(types=("offer",)))["engagement"])
        await visitor.next_event(types=("assigned",))
        await visitor.send("my knee hurts")
        got = await ann.next_event(types=("msg",))
        assert got["text"] == "my knee hurts" and got["kind"] == "message"
        await ann.send(eng, "let me get a specialist")
        assert (await visitor.next_event(types=("msg",)))["text"] == "let me get a specialist"
        await bob.connect()
        await ann.transfer(eng, "bob")
        assert (await ann.next_event(types=("released",)))["engagement"] == eng
        assert (await visitor.next_event(types=("assigned",)))["agent"] == "bob"
        history = await bob.next_event(types=("history",))
        assert [i["text"] for i in history["items"]] == ["my knee hurts",
                                                         "let me get a specialist"]
        await bob.send(eng, "specialist here")
        assert (await visitor.next_event(types=("msg",)))["text"] == "specialist here"
        await visitor.send("thanks")
        assert (await bob.next_event(types=("msg",)))["text"] == "thanks"
    finally:
        await visitor.close()
        await ann.close()
        await bob.close()
    # The vault can open everything in the outbox, in order; the relay sealed the
    # connection info itself.
    entries = await relay.state.store.read_outbox("clinic", 0, 100)
    kinds = [open_envelope(e.data, vault_key).header.kind for e in entries]
    assert kinds[0] == "connection-info" and kinds.count("message") == 4
    assert "prechat" in kinds and "history-handoff" in kinds
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)


async def test_resume_after_drop_loses_and_doubles_nothing(relay: Relay) -> None:
    admin = await relay.account("shop")
    agent = AgentClient(relay.url, await relay.agent_token("shop", admin, "ann"), "shop")
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    try:
        await agent.connect()
        eng = (await visitor.connect())["engagement"]
        await agent.accept((await agent.next_event(types=("offer",)))["engagement"])
        await visitor.next_event(types=("assigned",))
        await visitor.send("one")
        await visitor.next_event(types=("ack",))
        await visitor.drop()
        # While the visitor is away the agent writes; the visitor writes offline too.
        for text in ("a1", "a2", "a3"):
            await agent.send(eng, text)
        await visitor.send("two (unsent while offline)")
        welcome = await visitor.resume()
        assert welcome["engagement"] == eng and welcome["acked"] == 1
        texts = [(await visitor.next_event(types=("msg",)))["text"] for _ in range(3)]
        assert texts == ["a1", "a2", "a3"]
        seen = [(await agent.next_event(types=("msg",)))["text"] for _ in range(2)]
        assert seen == ["one", "two (unsent while offline)"]
        # The agent drops and resumes too; the visitor's message in between arrives once.
        await agent.drop()
        await visitor.send("three")
        await visitor.next_event(types=("ack",))
        await agent.connect()
        assert (await agent.next_event(types=("msg",)))["text"] == "three"
        await visitor.send("four")
        assert (await agent.next_event(types=("msg",)))["text"] == "four"
    finally:
        await visitor.close()
        await agent.close()
    _, transcript = await relay.call("GET", f"/v1/accounts/shop/engagements/{eng}/transcript",
                                     admin)
    texts = [i["text"] for i in transcript["items"]]
    assert sorted(texts) == sorted({*texts}) and len(texts) == 7

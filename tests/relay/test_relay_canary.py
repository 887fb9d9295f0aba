"""Invariant 1: after 50 compliance-mode engagements with a unique canary in every
personal field, no canary is in any file under the state dir, in /metrics, or in the
admin API's answers; the vault (stand-in key here) can read every one of them."""

from __future__ import annotations

import asyncio
import pathlib
import secrets

import aiohttp
import pytest

from envelope import decode_body, open_envelope
from relay.client import AgentClient, VisitorClient

from .conftest import ORIGIN, FakeClock, Relay, start_relay
from .test_relay_conversations import certified_agent

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


async def _engagement(relay: Relay, agent: AgentClient, pin: str, i: int,
                      canaries: list[str]) -> None:
    tag = secrets.token_hex(6)
    c = {k: f"CANARY{k}{i}x{tag}" for k in ("name", "email", "phone", "msg", "reply",
                                            "answer", "ua", "vid")}
    ip = f"198.51.{i}.{200 + i % 50}"
    canaries += [*c.values(), ip]
    visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN, pinned_fingerprint=pin,
                            visitor_id=c["vid"], user_agent=c["ua"],
                            headers={"X-Forwarded-For": ip})
    try:
        eng = (await visitor.connect())["engagement"]
        await visitor.send_prechat(name=c["name"], email=c["email"], phone=c["phone"],
                                   answers={"reason": c["answer"]})
        await agent.accept(eng)
        await visitor.next_event(types=("assigned",))
        await visitor.send(c["msg"])
        await visitor.next_event(types=("ack",))
        await agent.send(eng, c["reply"])
        assert (await visitor.next_event(types=("msg",)))["text"] == c["reply"]
        await visitor.end()
        await visitor.next_event(types=("ended",))
    finally:
        await visitor.close()


async def test_no_canary_anywhere_after_50_engagements(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    state_dir = tmp_path / "state"
    server = await start_relay(state_dir, clock, trusted_proxies=("127.0.0.1",),
                               log_level="DEBUG")
    canaries: list[str] = []
    async with aiohttp.ClientSession() as session:
        relay = Relay(server, session, state_dir, clock)
        admin = await relay.account("clinic", compliance=True)
        ident, vault_key = relay.vaults["clinic"]
        token, keys = await certified_agent(relay, "clinic", admin, "ann")
        agent = AgentClient(relay.url, token, "clinic", keys=keys,
                            pinned_fingerprint=ident.fingerprint, capacity=1000)
        await agent.connect()
        try:
            for batch in range(5):
                await asyncio.gather(*(_engagement(relay, agent, ident.fingerprint,
                                                   batch * 10 + j, canaries)
                                       for j in range(10)))
        finally:
            await agent.close()
        await relay.state.hub.persist_records()  # type: ignore[union-attr]
        _, metrics = await relay.call("GET", "/metrics", token=None)
        api = [str(await relay.call("GET", p, admin)) for p in (
            "/v1/accounts/clinic/engagements", "/v1/accounts/clinic/engagements?format=csv",
            "/v1/accounts/clinic/outbox", "/v1/accounts/clinic/record-of-processing")]
        api.append(str(await relay.call("GET", "/v1/accounts/clinic/keys", None)))
        entries = await relay.state.store.read_outbox("clinic", 0, 10_000)
        _, records = await relay.call("GET", "/v1/accounts/clinic/engagements", admin)
    await server.close()  # graceful: everything flushed to the files scanned below

    assert len(canaries) == 50 * 9
    assert len(records["engagements"]) == 50
    assert {r["outcome"] for r in records["engagements"]} == {"completed"}
    # The vault can read every canary: the test really carried them through the relay.
    opened = []
    for e in entries:
        env = open_envelope(e.data, vault_key)
        opened.append(str(decode_body(env.header.kind, env.body)))
    vault_text = "\n".join(opened)
    assert all(c in vault_text for c in canaries)
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any(p.name == "relay.log" for p in files)
    assert any(p.name.startswith("relay.sqlite3") for p in files)
    blobs = {str(p): p.read_bytes() for p in files}
    for canary in canaries:
        needle = canary.encode()
        for name, blob in blobs.items():
            assert needle not in blob, (canary, name)
        assert canary not in metrics
        assert all(canary not in text for text in api)

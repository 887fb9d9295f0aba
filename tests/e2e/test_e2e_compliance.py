"""A relay and a vault as real processes: pairing, a compliance conversation that ends up
whole in the vault and nowhere readable at the relay, and the compliance toggle that
moves stored standard-mode transcripts to the vault and purges them (surviving a relay
SIGKILL in between)."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.canary import new_canary, scan_tree
from tests.support.stack import Stack, converse, wait_until

pytestmark = [pytest.mark.timeout(150)]


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _vault_has(stack: Stack, engagement: str, texts: list[str],
               seen: dict[str, object] | None = None) -> bool:
    try:
        doc = stack.vault_transcript(engagement)
    except RuntimeError as exc:
        if seen is not None:
            seen["last"] = str(exc)[-300:]
        return False
    got = [m["text"] for m in doc["messages"]]
    if seen is not None:
        seen["last"] = {"messages": got, "complete": doc.get("complete")}
    return all(any(t in m for m in got) for t in texts) and len(got) == len(set(got))


def _await_vault(stack: Stack, engagement: str, texts: list[str], what: str) -> None:
    """Wait for the vault to hold ``texts``; on timeout, say what each side last saw."""
    seen: dict[str, object] = {}
    try:
        wait_until(lambda: _vault_has(stack, engagement, texts, seen), timeout=30, what=what)
    except TimeoutError as exc:
        _, offload = stack.call("GET", f"/v1/accounts/{stack.account}/offload",
                                token=stack.admin_token)
        events = [line[:200] for line in (stack.relay_state / "relay.log").read_text()
                  .splitlines() if '"http.access"' not in line]
        vault = [line[:200] for line in (stack.root / "vault.out").read_text().splitlines()
                 if "WARNING" in line or "ERROR" in line or "warning" in line]
        counts = {name: stack.metric(name, service) for name, service in (
            ("relay_vault_link_frames_sent_total", "relay"), ("relay_outbox_backlog", "relay"),
            ("relay_vault_link_receipts_total", "relay"),
            ("relay_vault_link_rejected_total", "relay"),
            ("vault_ingested_envelopes_total", "vault"),
            ("vault_rejected_envelopes_total", "vault"),
            ("vault_receipts_sent_total", "vault"), ("vault_link_reconnects_total", "vault"))}
        raise AssertionError(f"{exc}; vault last showed {seen.get('last')!r}; relay offload"
                             f" {offload!r}; counts {counts!r}; relay events {events[-30:]!r};"
                             f" vault warnings {vault[-15:]!r}") from None


def _transcript_rows(stack: Stack) -> int:
    # Read-only look at the relay's own file (WAL-safe), as a breached host would.
    db = sqlite3.connect(f"file:{stack.relay_state / 'relay.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM transcripts").fetchone()[0])
    finally:
        db.close()


def test_pairing_then_compliance_conversation_lands_only_in_the_vault(stack: Stack) -> None:
    stack.start_relay()
    stack.create_account()
    stack.init_vault()
    stack.start_vault()
    stack.pair()
    status, acct = stack.call("GET", f"/v1/accounts/{stack.account}", token=stack.admin_token)
    assert status == 200 and acct["paired"] is True and acct["vault_key_id"]
    token, keys = stack.certify_agent("ann")
    stack.set_mode("compliance")
    wait_until(lambda: stack.metric("relay_vault_links", "relay") >= 1, timeout=20,
               what="vault link ready")
    canaries = {k: new_canary(k) for k in ("name", "email", "ua", "vid", "v1", "a1", "v2")}
    script = [("visitor", f"hello {canaries['v1']}"), ("agent", f"hi {canaries['a1']}"),
              ("visitor", f"bye {canaries['v2']}")]
    eng = asyncio.run(converse(
        stack, ("ann", token, keys), script,
        prechat={"name": canaries["name"], "email": f"{canaries['email']}@example.org"},
        user_agent=canaries["ua"], visitor_id=canaries["vid"]))
    _await_vault(stack, eng, [t for _, t in script], "conversation in the vault")
    wait_until(lambda: stack.outbox_entries() == 0, timeout=20, what="outbox drained")
    doc = stack.vault_transcript(eng)
    assert [m["text"] for m in doc["messages"]] == [t for _, t in script]
    # Receipts are on the relay's record; nothing personal anywhere in its files.
    _, recs = stack.call("GET", f"/v1/accounts/{stack.account}/engagements",
                         token=stack.admin_token)
    record = next(r for r in recs["engagements"] if r["engagement"] == eng)
    assert record["receipts"] >= 5 and record["receipt_hashes"]
    assert scan_tree(stack.relay_state, canaries.values()) == []
    assert [h for h in scan_tree(stack.root, canaries.values())
            if "vault-state" not in h.where and "vault.out" not in h.where] == []
    assert stack.metric("vault_link_state", "vault") >= 1
    assert stack.metric("relay_vault_delivery_latency_seconds_count") >= 5


def test_toggle_on_moves_stored_transcripts_to_the_vault_and_purges_them(stack: Stack) -> None:
    stack.start_relay()
    stack.create_account()
    stack.init_vault()
    canaries = [new_canary(f"std{i}") for i in range(4)]
    status, body = stack.call("POST", f"/v1/accounts/{stack.account}/agent-tokens",
                              {"agent": "ann"}, token=stack.admin_token)
    token = body["token"]
    engs = [asyncio.run(converse(stack, ("ann", token, None),
                                 [("visitor", f"standard {canaries[2 * i]}"),
                                  ("agent", f"reply {canaries[2 * i + 1]}")]))
            for i in range(2)]
    assert _transcript_rows(stack) == 4
    # Pair, then toggle ON while the vault is still down: the offload is planned and
    # sealed into the outbox ...
    stack.pair()
    reply = stack.set_mode("compliance")
    assert reply["offload"]["total"] == 2
    wait_until(lambda: stack.call("GET", f"/v1/accounts/{stack.account}/offload",
                                  token=stack.admin_token)[1]["queued"] == 2,
               timeout=20, what="offload sealed")
    # ... and survives a relay crash.
    assert stack.relay is not None
    stack.relay.kill()
    stack.start_relay()
    stack.start_vault()
    cli = subprocess.run(
        [sys.executable, "-m", "relay", "account", "--url", stack.relay_url, "mode",
         stack.account, "compliance", "--wait", "60"],
        env={"RELAY_OPERATOR_TOKEN_FILE": str(stack.root / "operator_token"),
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=90, check=False)
    assert cli.returncode == 0, cli.stderr
    assert "offload [" in cli.stderr and "2/2 transcripts" in cli.stderr
    for i, eng in enumerate(engs):
        wait_until(lambda e=eng, i=i: _vault_has(stack, e, canaries[2 * i:2 * i + 2]),
                   timeout=30, what="offloaded transcript in the vault")
    assert _transcript_rows(stack) == 0
    assert scan_tree(stack.relay_state, canaries) == []
    assert stack.metric("relay_offload_engagements", "relay") == 2
    # OFF needs confirmation, is recorded, and the vault keeps what it has.
    status, body = stack.call("PUT", f"/v1/accounts/{stack.account}/mode",
                              {"mode": "standard"}, token=stack.admin_token)
    assert status == 409 and body["error"]["code"] == "mode.confirm_required"
    stack.set_mode("standard", confirm=True)
    _, changes = stack.call("GET", f"/v1/accounts/{stack.account}/mode-changes",
                            token=stack.admin_token)
    assert [c["mode"] for c in changes["changes"]] == ["compliance", "standard"]
    assert set(engs) <= set(stack.vault_engagements())


def test_vault_rejects_a_tampered_envelope_and_the_relay_drops_it(stack: Stack) -> None:
    from envelope import encode_body, seal
    from relay.client import VisitorClient
    from tests.support.stack import ORIGIN

    stack.start_relay()
    stack.create_account()
    stack.init_vault()
    stack.start_vault()
    stack.pair()
    stack.set_mode("compliance")

    async def chat() -> str:
        visitor = VisitorClient(stack.relay_url, stack.account, origin=ORIGIN,
                                pinned_fingerprint=stack.fingerprint)
        try:
            eng = str((await visitor.connect())["engagement"])
            assert visitor.keys is not None and visitor.keys.vault_key is not None
            visitor.seq += 1
            data = bytearray(seal(encode_body("message", {"text": "tampered"}),
                                  sender=visitor.party, role="visitor",
                                  account=stack.account, engagement=eng,
                                  sequence=visitor.seq, kind="message",
                                  recipients=[visitor.keys.vault_key]))
            data[-80] ^= 0x01  # one ciphertext bit: the shape still passes at the relay
            assert visitor.session is not None
            await visitor.session.send_bytes(bytes(data))
            await visitor.next_event(types=("ack",))
            await visitor.send("genuine after the tampered one")
            await visitor.next_event(types=("ack",))
            return eng
        finally:
            await visitor.close()

    eng = asyncio.run(chat())
    _await_vault(stack, eng, ["genuine after the tampered one"], "genuine message in the vault")
    # The refused frame did not stall the link: it was rejected, dropped and counted.
    wait_until(lambda: stack.outbox_entries() == 0, timeout=20, what="outbox drained")
    _, recs = stack.call("GET", f"/v1/accounts/{stack.account}/engagements",
                         token=stack.admin_token)
    assert next(r for r in recs["engagements"] if r["engagement"] == eng)["rejected"] == 1
    assert stack.metric("relay_vault_link_rejected_total") == 1
    assert "tampered" not in [m["text"] for m in stack.vault_transcript(eng)["messages"]]


def test_live_standard_chat_rekeys_and_continues_as_envelopes(stack: Stack) -> None:
    from relay.client import AgentClient, VisitorClient
    from tests.support.stack import ORIGIN

    stack.start_relay()
    stack.create_account()
    stack.init_vault()
    stack.start_vault()
    stack.pair()
    token, keys = stack.certify_agent("ann")
    secret = new_canary("live")

    async def chat() -> tuple[str, str]:
        # Both devices were configured by the controller for an account migrating to
        # compliance mode (allow_standard): without it a pinned client refuses standard.
        agent = AgentClient(stack.relay_url, token, stack.account, keys=keys,
                            pinned_fingerprint=stack.fingerprint, allow_standard=True)
        visitor = VisitorClient(stack.relay_url, stack.account, origin=ORIGIN,
                                pinned_fingerprint=stack.fingerprint, allow_standard=True)
        try:
            await agent.connect()
            old = str((await visitor.connect())["engagement"])
            assert not visitor.compliance
            await agent.accept((await agent.next_event(types=("offer",)))["engagement"])
            await visitor.next_event(types=("assigned",))
            await visitor.send("before the toggle")
            await agent.next_event(types=("msg",))
            stack.set_mode("compliance")
            # Both sides are told to re-key (mode.changed) and come back as envelopes.
            closed = await visitor.next_event(types=("closed",))
            assert closed["error"] == "mode.changed"
            await agent.next_event(types=("closed",))
            await agent.connect()
            welcome = await visitor.reconnect()
            assert welcome["mode"] == "compliance" and visitor.compliance
            new = str(welcome["engagement"])
            await agent.accept((await agent.next_event(types=("offer",)))["engagement"])
            await visitor.next_event(types=("assigned",))
            await visitor.send(f"after the toggle {secret}")
            got = await agent.next_event(types=("msg",))
            assert got["kind"] == "message" and secret in got["text"]
            await agent.send(new, "sealed reply")
            assert (await visitor.next_event(types=("msg",)))["text"] == "sealed reply"
            return old, new
        finally:
            await visitor.close()
            await agent.close()

    old, new = asyncio.run(chat())
    _await_vault(stack, new, [secret, "sealed reply"], "continued chat in the vault")
    _await_vault(stack, old, ["before the toggle"], "standard part offloaded")
    assert _transcript_rows(stack) == 0
    assert scan_tree(stack.relay_state, [secret]) == []

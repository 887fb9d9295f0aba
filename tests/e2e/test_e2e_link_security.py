"""The relay's vault-link endpoint against a real relay process: tenant isolation, forged,
foreign and replayed receipts, rejects, supersession and backpressure. The "vault" here
is this test speaking envelope/link.py with envelope's own functions, so it can also
misbehave on purpose."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from envelope import (
    EncryptionKey,
    IdentityKey,
    b64d,
    b64e,
    decode_outbox_frame,
    envelope_hash,
    link_auth_response,
    parse_envelope,
    sign_erasure_notice,
    sign_receipt,
    sign_vault_key_statement,
)
from relay.client import ChatClientError, VisitorClient
from tests.support.stack import ORIGIN, Stack

pytestmark = [pytest.mark.timeout(120)]


class Vault:
    """A vault identity the test controls, paired with one account."""

    def __init__(self, stack: Stack, account: str) -> None:
        self.stack, self.account = stack, account
        self.identity, self.key = IdentityKey.generate(), EncryptionKey.generate()
        status, body = stack.call("POST", "/v1/accounts", {"account": account,
                                                           "origins": [ORIGIN]})
        assert status == 201, body
        status, body = stack.call("POST", f"/v1/accounts/{account}/admin-tokens")
        self.admin = body["token"]
        now = int(time.time())
        statement = sign_vault_key_statement(self.identity, account=account,
                                             key=self.key.public_bytes,
                                             not_before=now - 60, not_after=now + 86400)
        status, body = stack.call("PUT", f"/v1/accounts/{account}/vault", {
            "identity_key": b64e(self.identity.public_bytes), "key_statement": statement},
            token=self.admin)
        assert status == 200, body
        status, body = stack.call("PUT", f"/v1/accounts/{account}/mode",
                                  {"mode": "compliance"}, token=self.admin)
        assert status == 200, body

    def outbox(self) -> int:
        status, body = self.stack.call("GET", f"/v1/accounts/{self.account}/outbox",
                                       token=self.admin)
        assert status == 200
        return int(body["entries"])

    def records(self) -> list[dict[str, Any]]:
        status, body = self.stack.call("GET", f"/v1/accounts/{self.account}/engagements",
                                       token=self.admin)
        assert status == 200
        return list(body["engagements"])


async def open_link(http: aiohttp.ClientSession, stack: Stack, account: str,
                    identity: IdentityKey, *, origin: str | None = None
                    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Dial, answer the challenge, return the socket and the ready (or error) frame."""
    ws = await http.ws_connect(stack.relay_url.replace("http", "ws") + "/v1/vault/link")
    challenge = await ws.receive_json(timeout=5)
    assert challenge["origin"] == stack.relay_url
    await ws.send_json(link_auth_response(identity, account=account,
                                          nonce=b64d(challenge["nonce"], length=32),
                                          origin=origin or challenge["origin"]))
    msg = await ws.receive(timeout=5)
    return ws, (msg.json() if msg.type == aiohttp.WSMsgType.TEXT else {"type": "closed"})


async def frames(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[tuple[int, bytes]]:
    """The next ``n`` outbox frames."""
    out = []
    while len(out) < n:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        out.append(decode_outbox_frame(bytes(msg.data)))
    return out


async def control(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next text frame, skipping binary ones."""
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return dict(msg.json())
        if msg.type != aiohttp.WSMsgType.BINARY:
            return {"type": "closed", "code": ws.close_code}


def items_of(account_frames: list[tuple[int, bytes]]) -> list[tuple[str, str, str]]:
    out = []
    for _, env in account_frames:
        h = parse_envelope(env).header
        out.append((h.engagement, h.envelope_id, envelope_hash(env)))
    return out


async def visitors(stack: Stack, account: str, n: int) -> list[str]:
    """Open ``n`` compliance engagements (each queues a sealed connection-info)."""
    engs = []
    for _ in range(n):
        v = VisitorClient(stack.relay_url, account, origin=ORIGIN,
                          pinned_fingerprint=_FINGERPRINTS[account])
        try:
            engs.append((await v.connect())["engagement"])
        finally:
            await v.close()
    return engs


_FINGERPRINTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def relay_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(pathlib.Path(tmp_path_factory.mktemp("linksec")),
                  relay_env={"RELAY_OUTBOX_ACCOUNT_MAX_BYTES": "6000",
                             "RELAY_LINK_WINDOW": "4", "RELAY_LINK_AUTH_TIMEOUT_SECONDS": "1"})
    stack.start_relay()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def paired(stack: Stack, account: str) -> Vault:
    vault = Vault(stack, account)
    _FINGERPRINTS[account] = vault.identity.fingerprint
    return vault


async def test_link_for_one_account_never_reaches_another(relay_stack: Stack,
                                                          http: aiohttp.ClientSession) -> None:
    a, b = paired(relay_stack, "acct-a"), paired(relay_stack, "acct-b")
    await visitors(relay_stack, "acct-a", 1)
    await visitors(relay_stack, "acct-b", 2)
    assert (a.outbox(), b.outbox()) == (1, 2)
    # A's identity claiming B's account, or a stranger's identity: refused, no frames.
    ws, ready = await open_link(http, relay_stack, "acct-b", a.identity)
    assert ready["type"] == "error" and ready["code"] == "link.auth_failed"
    await ws.receive(timeout=5)
    assert ws.close_code == 4401
    ws, ready = await open_link(http, relay_stack, "acct-a", IdentityKey.generate())
    assert ready["code"] == "link.auth_failed"
    # A challenge answered for another origin (a relayed challenge) is refused too.
    ws, ready = await open_link(http, relay_stack, "acct-a", a.identity,
                                origin="https://evil.example")
    assert ready["code"] == "link.auth_failed"
    # A's own link sees exactly A's entry.
    ws, ready = await open_link(http, relay_stack, "acct-a", a.identity)
    assert ready["type"] == "ready" and ready["backlog"] == 1
    got = await frames(ws, 1)
    assert all(parse_envelope(env).header.account == "acct-a" for _, env in got)
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.5)  # and nothing else: B's two never come
    # A receipt from A naming B's envelopes (with their true hashes) deletes nothing.
    ws_b, _ = await open_link(http, relay_stack, "acct-b", b.identity)
    b_items = items_of(await frames(ws_b, 2))
    await ws_b.close()
    await ws.send_json({"type": "ack", "receipt": sign_receipt(a.identity, account="acct-a",
                                                               items=b_items)})
    assert (await control(ws))["deleted"] == 0
    assert b.outbox() == 2
    await ws.close()


async def test_forged_foreign_and_replayed_receipts_delete_nothing(
        relay_stack: Stack, http: aiohttp.ClientSession) -> None:
    c = paired(relay_stack, "acct-c")
    await visitors(relay_stack, "acct-c", 3)
    ws, _ = await open_link(http, relay_stack, "acct-c", c.identity)
    items = items_of(await frames(ws, 3))
    # Forged: signed by a key that is not the paired identity.
    await ws.send_json({"type": "ack", "receipt": sign_receipt(
        IdentityKey.generate(), account="acct-c", items=items)})
    closed = await control(ws)
    assert closed["code"] == "link.bad_receipt" and c.outbox() == 3
    # Foreign: signed by the paired key but for another account.
    ws, _ = await open_link(http, relay_stack, "acct-c", c.identity)
    await frames(ws, 3)
    await ws.send_json({"type": "ack", "receipt": sign_receipt(
        c.identity, account="acct-a", items=items)})
    assert (await control(ws))["code"] == "link.bad_receipt" and c.outbox() == 3
    # Tampered hash: nothing matches.
    ws, _ = await open_link(http, relay_stack, "acct-c", c.identity)
    await frames(ws, 3)
    wrong = [(e, i, "00" * 32) for e, i, _ in items]
    await ws.send_json({"type": "ack", "receipt": sign_receipt(c.identity, account="acct-c",
                                                               items=wrong)})
    assert (await control(ws))["deleted"] == 0 and c.outbox() == 3
    # The genuine receipt deletes exactly the named entries ...
    receipt = sign_receipt(c.identity, account="acct-c", items=items[:2])
    await ws.send_json({"type": "ack", "receipt": receipt})
    acked = await control(ws)
    assert acked == {"type": "acked", "deleted": 2, "backlog": 1} and c.outbox() == 1
    # ... and replaying it deletes nothing more.
    await ws.send_json({"type": "ack", "receipt": receipt})
    assert (await control(ws))["deleted"] == 0 and c.outbox() == 1
    records = {r["engagement"]: r for r in c.records()}
    assert sum(r["receipts"] for r in records.values()) == 2
    assert all(len(records[e]["receipt_hashes"]) == 1 for e, _, _ in items[:2])
    # A reject drops the last entry for good and is counted on its record.
    await ws.close()
    ws, _ready = await open_link(http, relay_stack, "acct-c", c.identity)
    [(last_seq, env)] = await frames(ws, 1)
    await ws.send_json({"type": "reject", "seq": last_seq, "code": "envelope.undecryptable"})
    assert (await control(ws)) == {"type": "rejected", "seq": last_seq, "dropped": 1}
    assert c.outbox() == 0
    eng = parse_envelope(env).header.engagement
    assert {r["engagement"]: r for r in c.records()}[eng]["rejected"] == 1
    # An erasure notice signed by the paired key is recorded on the record.
    await ws.send_json({"type": "erasure", "notice": sign_erasure_notice(
        c.identity, account="acct-c", engagements=[eng], at=int(time.time()), rule="request")})
    assert (await control(ws)) == {"type": "erasure-recorded", "engagements": 1}
    assert {r["engagement"]: r for r in c.records()}[eng]["erasure_rule"] == "request"
    await ws.close()
    assert relay_stack.metric("relay_vault_link_rejected_total") >= 1


async def test_newer_link_supersedes_and_silent_link_times_out(
        relay_stack: Stack, http: aiohttp.ClientSession) -> None:
    d = paired(relay_stack, "acct-d")
    first, _ = await open_link(http, relay_stack, "acct-d", d.identity)
    second, ready = await open_link(http, relay_stack, "acct-d", d.identity)
    assert ready["type"] == "ready"
    assert (await control(first))["code"] == "link.superseded"
    await first.receive(timeout=5)
    assert first.closed  # (4409; aiohttp may report 1006 when the close races a read)
    await second.close()
    ws = await http.ws_connect(relay_stack.relay_url.replace("http", "ws") + "/v1/vault/link")
    await ws.receive_json(timeout=5)
    assert (await control(ws))["code"] == "link.auth_timeout"


async def test_backpressure_refuses_new_engagements_and_keeps_the_outbox(
        relay_stack: Stack, http: aiohttp.ClientSession) -> None:
    e = paired(relay_stack, "acct-e")
    refused = None
    for _ in range(30):
        try:
            await visitors(relay_stack, "acct-e", 1)
        except ChatClientError as exc:
            refused = exc.code
            break
    assert refused == "outbox.backpressure"
    queued = e.outbox()
    assert queued >= 2 and relay_stack.metric("relay_outbox_backpressure_refusals_total") >= 1
    # Nothing was dropped; once the vault collects, new engagements are welcome again.
    ws, ready = await open_link(http, relay_stack, "acct-e", e.identity)
    assert ready["backlog"] == queued
    window = ready["window"]
    while e.outbox():
        got = await frames(ws, min(window, e.outbox()))
        await ws.send_json({"type": "ack", "receipt": sign_receipt(
            e.identity, account="acct-e", items=items_of(got))})
        assert (await control(ws))["type"] == "acked"
    await ws.close()
    assert len(await visitors(relay_stack, "acct-e", 1)) == 1

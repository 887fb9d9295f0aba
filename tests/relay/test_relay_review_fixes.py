"""Findings of the relay security review, each shown against a real relay on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from envelope import PartyKeys, b64d, b64e, encode_body, parse_envelope, seal

from .conftest import ORIGIN, FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)

CANARY_XFF = "198.51.100.77"


async def _visitor(relay: Relay, account: str, keys: PartyKeys | None = None,
                   headers: dict[str, str] | None = None
                   ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await relay.session.ws_connect(f"{relay.url}/v1/chat/visitor/{account}",
                                        headers={"Origin": ORIGIN, **(headers or {})})
    hello: dict[str, Any] = {"type": "hello"}
    if keys is not None:
        hello["keys"] = {"enc": b64e(keys.encryption.public_bytes),
                         "sig": b64e(keys.signing_public_bytes)}
    await ws.send_json(hello)
    return ws, json.loads((await ws.receive(timeout=5)).data)


async def _refusal(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
    code = ""
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame = json.loads(msg.data)
            if frame["type"] == "error":
                code = frame["code"]
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                          aiohttp.WSMsgType.CLOSING):
            return code, ws.close_code


def _refused_count(relay: Relay, code: str) -> float:
    value = relay.state.metrics.registry.get_sample_value(
        "relay_frames_refused_total", {"reason": code})
    return value or 0.0


def _logs(relay: Relay, caplog: pytest.LogCaptureFixture) -> str:
    return caplog.text + (relay.state_dir / "relay.log").read_text()


async def test_duplicate_envelope_id_is_refused_as_replayed(
        relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await relay.account("clinic", compliance=True)
    _, vault_key = relay.vaults["clinic"]
    keys = PartyKeys.generate()
    ws, welcome = await _visitor(relay, "clinic", keys,
                                 headers={"X-Forwarded-For": CANARY_XFF})
    eng = welcome["engagement"]

    def envelope(seq: int) -> bytes:
        return seal(encode_body("message", {"text": "x"}), sender=keys, role="visitor",
                    account="clinic", engagement=eng, sequence=seq, kind="message",
                    recipients=[vault_key.public_bytes], envelope_id="A" * 22)

    await ws.send_bytes(envelope(1))
    while json.loads((await ws.receive(timeout=5)).data)["type"] != "ack":
        pass
    before = _refused_count(relay, "envelope.replayed")
    await ws.send_bytes(envelope(2))  # seq 2 reusing seq 1's envelope id
    assert await _refusal(ws) == ("envelope.replayed", 4422)
    assert _refused_count(relay, "envelope.replayed") == before + 1
    stats = await relay.state.store.outbox_stats("clinic")
    assert stats.entries == 2  # connection-info + the first message, nothing doubled
    text = _logs(relay, caplog)
    assert "127.0.0.1" not in text and CANARY_XFF not in text
    assert "IntegrityError" not in text and "Error handling request" not in text
    # The relay keeps serving.
    ws2, welcome2 = await _visitor(relay, "clinic", PartyKeys.generate())
    assert welcome2["type"] == "welcome"
    await ws2.close()


@pytest.fixture
async def faulty_relay(tmp_path: pathlib.Path) -> AsyncIterator[Relay]:
    """A relay whose outermost middleware fails on /boom and whose store read fails on
    demand: forced handler errors on both the HTTP and websocket paths."""
    clock = FakeClock()

    @web.middleware
    async def boom(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/boom":
            # The exception text quotes the request, as a careless library might.
            raise RuntimeError(f"bad {request.remote} {request.headers.get('X-Forwarded-For')}")
        response: web.StreamResponse = await handler(request)
        return response

    server = await start_relay(tmp_path / "state", clock,
                               _prestart=lambda app: app.middlewares.insert(0, boom))
    try:
        async with aiohttp.ClientSession() as session:
            yield Relay(server, session, tmp_path / "state", clock)
    finally:
        await server.close()


async def test_handler_errors_close_stably_and_log_no_address(
        faulty_relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    relay = faulty_relay
    caplog.set_level(logging.DEBUG)
    await relay.account("clinic")
    # aiohttp's own "Error handling request from <peer>" line, with a traceback.
    async with relay.session.get(relay.url + "/boom",
                                 headers={"X-Forwarded-For": CANARY_XFF}) as resp:
        assert resp.status == 500
    assert any(r.name == "aiohttp.server" for r in caplog.records)
    # An unexpected fault inside the visitor socket: the store's reader is gone.
    reader = relay.state.store._reader
    relay.state.store._reader = None
    try:
        ws = await relay.session.ws_connect(f"{relay.url}/v1/chat/visitor/clinic",
                                            headers={"Origin": ORIGIN,
                                                     "X-Forwarded-For": CANARY_XFF})
        assert await _refusal(ws) == ("internal.error", 1011)
    finally:
        relay.state.store._reader = reader
    assert _refused_count(relay, "internal.error") == 1
    text = _logs(relay, caplog)
    assert "127.0.0.1" not in text and CANARY_XFF not in text, text
    assert "chat.internal_error" in text


async def test_transcripts_are_not_served_in_compliance_mode(relay: Relay) -> None:
    from relay.client import AgentClient, VisitorClient

    admin = await relay.account("clinic")
    agent = AgentClient(relay.url, await relay.agent_token("clinic", admin, "ann"), "clinic")
    visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN)
    try:
        await agent.connect()
        eng = (await visitor.connect())["engagement"]
        await agent.accept(eng)
        await visitor.next_event(types=("assigned",))
        await visitor.send("stored before the toggle")
        await agent.next_event(types=("msg",))
    finally:
        await visitor.close()
        await agent.close()
    path = f"/v1/accounts/clinic/engagements/{eng}/transcript"
    status, body = await relay.call("GET", path, admin)
    assert status == 200 and body["items"][0]["text"] == "stored before the toggle"
    await relay.pair_and_toggle("clinic", admin)
    for method, route in (("GET", path), ("DELETE", path),
                          ("DELETE", "/v1/accounts/clinic/transcripts"),
                          ("POST", "/v1/accounts/clinic/data-keys/rotate")):
        for token in (admin, None):
            status, body = await relay.call(method, route, *(() if token is None else (token,)))
            assert (status, body["error"]["code"]) == (409, "mode.compliance"), (route, body)
            assert "stored before" not in str(body)


async def test_keys_publish_the_relay_signing_key(relay: Relay) -> None:
    await relay.account("clinic", compliance=True)
    status, keys = await relay.call("GET", "/v1/accounts/clinic/keys", token=None)
    assert status == 200
    published = b64d(keys["relay_signing_key"], length=32)
    # It is the key that signs what the relay seals: the connection-info envelope.
    ws, welcome = await _visitor(relay, "clinic", PartyKeys.generate())
    assert welcome["type"] == "welcome"
    await ws.close()
    [entry] = await relay.state.store.read_outbox("clinic", 0, 10)
    header = parse_envelope(entry.data).header
    assert (header.kind, header.role) == ("connection-info", "relay")
    assert header.sender_public_key == published
    _, doc = await relay.call("GET", "/v1/openapi.json", token=None)
    schema = doc["paths"]["/v1/accounts/{account}/keys"]["get"]["responses"]["200"]
    assert "relay_signing_key" in schema["content"]["application/json"]["schema"]["properties"]


async def test_no_new_compliance_engagement_after_the_vault_key_expired(relay: Relay) -> None:
    admin = await relay.account("clinic")
    await relay.pair_and_toggle("clinic", admin, valid_for=3600)
    ws, welcome = await _visitor(relay, "clinic", PartyKeys.generate())
    assert welcome["type"] == "welcome"
    await ws.close()
    relay.clock.offset = 7200.0  # the injected clock: the statement is now past "exp"
    ws, first = await _visitor(relay, "clinic", PartyKeys.generate())
    assert first["code"] == "vault.key_expired"
    assert (await _refusal(ws))[1] == 4503
    assert _refused_count(relay, "vault.key_expired") == 1


async def test_revoking_an_agent_certificate_closes_its_sockets(relay: Relay) -> None:
    from envelope import key_id, sign_agent_certificate

    admin = await relay.account("clinic", compliance=True)
    ident, _ = relay.vaults["clinic"]
    device, now = PartyKeys.generate(), int(relay.clock())
    cert = sign_agent_certificate(ident, account="clinic", agent="ann",
                                  encryption_key=device.encryption.public_bytes,
                                  signing_key=device.signing_public_bytes,
                                  not_before=now - 60, not_after=now + 86400)
    status, body = await relay.call("POST", "/v1/accounts/clinic/agent-certificates", admin,
                                    json={"certificate": cert})
    assert status == 201
    kid = body["key_id"]
    assert kid == key_id(device.encryption.public_bytes)
    token = await relay.agent_token("clinic", admin, "ann")

    async def agent_ws() -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        ws = await relay.session.ws_connect(f"{relay.url}/v1/chat/agent",
                                            headers={"Authorization": f"Bearer {token}"})
        await ws.send_json({"type": "hello", "key_id": kid})
        return ws, json.loads((await ws.receive(timeout=5)).data)

    ws, welcome = await agent_ws()
    assert welcome["type"] == "welcome"
    status, body = await relay.call("DELETE", f"/v1/accounts/clinic/agent-certificates/{kid}",
                                    admin)
    assert (status, body["revoked"], body["sockets_closed"]) == (200, True, 1)
    assert await _refusal(ws) == ("certificate.revoked", 4403)
    ws, first = await agent_ws()  # the device cannot come back
    assert first["code"] == "auth.forbidden"
    await ws.close()
    _, keys = await relay.call("GET", "/v1/accounts/clinic/keys", token=None)
    assert keys["agent_certificates"] == []
    status, body = await relay.call("DELETE", f"/v1/accounts/clinic/agent-certificates/{kid}",
                                    admin)
    assert (status, body["revoked"]) == (200, False)
    status, body = await relay.call("DELETE", "/v1/accounts/clinic/agent-certificates/nope",
                                    admin)
    assert (status, body["error"]["code"]) == (400, "request.bad_field")


async def test_caps_over_real_sockets(tmp_path: pathlib.Path) -> None:
    server = await start_relay(tmp_path / "state", FakeClock(), max_engagements_per_address=2,
                               resume_buffer_bytes=64 * 1024)
    try:
        async with aiohttp.ClientSession() as session:
            relay = Relay(server, session, tmp_path / "state", FakeClock())
            await relay.account("shop")
            held = [await _visitor(relay, "shop") for _ in range(2)]
            assert all(w["type"] == "welcome" for _, w in held)
            ws, first = await _visitor(relay, "shop")
            assert first["code"] == "rate.engagements_per_address"
            assert (await _refusal(ws))[1] == 4429
            # A queued visitor (no agent yet) fills the resume buffer, then is refused.
            vws, welcome = held[0]
            code, seq = "", 0
            while not code:
                seq += 1
                await vws.send_json({"type": "msg", "seq": seq, "text": "q" * 16_000})
                while True:
                    frame = json.loads((await vws.receive(timeout=5)).data)
                    if frame["type"] in ("ack", "error"):
                        code = frame.get("code", "")
                        break
            assert code == "engagement.buffer_full" and seq == 5  # 4 x 16 KB fit in 64 KB
            assert _refused_count(relay, "engagement.buffer_full") == 1
            stored = await relay.state.cipher.read("shop", welcome["engagement"])
            assert len(stored) == 4  # the refused frame was not made durable either
            for w, _ in held:
                await w.close()
    finally:
        await server.close()

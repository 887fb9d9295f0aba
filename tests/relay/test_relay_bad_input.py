"""Every bad input of the issue: refused with a stable code (error frame, then a close
with that reason), counted in a metric, and harmless to other connections and data."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from envelope import EncryptionKey, PartyKeys, b64e, encode_body, seal
from relay.client import AgentClient, VisitorClient

from .conftest import ORIGIN, Relay

pytestmark = pytest.mark.timeout(60)


async def _visitor_ws(relay: Relay, account: str, *, origin: str = ORIGIN,
                      keys: PartyKeys | None = None) -> tuple[aiohttp.ClientWebSocketResponse,
                                                              dict[str, Any]]:
    ws = await relay.session.ws_connect(f"{relay.url}/v1/chat/visitor/{account}",
                                        headers={"Origin": origin}, max_msg_size=1 << 22)
    hello: dict[str, Any] = {"type": "hello"}
    if keys is not None:
        hello["keys"] = {"enc": b64e(keys.encryption.public_bytes),
                         "sig": b64e(keys.signing_public_bytes)}
    await ws.send_json(hello)
    msg = await ws.receive(timeout=5)
    return ws, json.loads(msg.data)


async def _refused(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
    """Read until the error frame and the close; return (code, close code)."""
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


async def _until(ws: aiohttp.ClientWebSocketResponse, ftype: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads((await ws.receive(timeout=5)).data)
        if frame["type"] == ftype:
            return frame


def _envelope(keys: PartyKeys, *, account: str, engagement: str, seq: int,
              recipients: list[bytes], text: str = "x") -> bytes:
    return seal(encode_body("message", {"text": text}), sender=keys, role="visitor",
                account=account, engagement=engagement, sequence=seq, kind="message",
                recipients=recipients)


async def test_every_bad_input_is_refused_counted_and_harmless(relay: Relay) -> None:
    shop_admin = await relay.account("shop")
    await relay.account("clinic", compliance=True)
    _, vault_key = relay.vaults["clinic"]
    # A healthy conversation runs alongside all the bad input.
    agent = AgentClient(relay.url, await relay.agent_token("shop", shop_admin, "ann"), "shop")
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    await agent.connect()
    eng = (await visitor.connect())["engagement"]
    await agent.accept(eng)
    await visitor.next_event(types=("assigned",))
    await visitor.send("before")
    assert (await agent.next_event(types=("msg",)))["text"] == "before"
    outbox_before = await relay.state.store.outbox_stats("clinic")

    cases: list[tuple[str, int]] = []

    async def standard_text(data: str) -> None:
        ws, welcome = await _visitor_ws(relay, "shop")
        assert welcome["type"] == "welcome"
        await ws.send_str(data)
        cases.append(await _refused(ws))  # type: ignore[arg-type]

    await standard_text("{not json")
    await standard_text(json.dumps({"type": "launch-missiles"}))
    await standard_text(json.dumps({"type": "msg", "seq": 1, "text": "x" * 200_000}))
    ws, welcome = await _visitor_ws(relay, "shop")
    await ws.send_json({"type": "msg", "seq": 1, "text": "first"})
    await _until(ws, "ack")
    await ws.send_json({"type": "msg", "seq": 1, "text": "again"})
    cases.append(await _refused(ws))  # type: ignore[arg-type]

    async def compliance_input(send: Any) -> None:
        keys = PartyKeys.generate()
        ws, welcome = await _visitor_ws(relay, "clinic", keys=keys)
        assert welcome["type"] == "welcome", welcome
        await send(ws, keys, welcome["engagement"])
        cases.append(await _refused(ws))  # type: ignore[arg-type]

    async def plaintext(ws: Any, keys: PartyKeys, eng_id: str) -> None:
        await ws.send_json({"type": "msg", "seq": 1, "text": "my diagnosis"})

    async def no_vault(ws: Any, keys: PartyKeys, eng_id: str) -> None:
        await ws.send_bytes(_envelope(keys, account="clinic", engagement=eng_id, seq=1,
                                      recipients=[EncryptionKey.generate().public_bytes]))

    async def wrong_account(ws: Any, keys: PartyKeys, eng_id: str) -> None:
        await ws.send_bytes(_envelope(keys, account="shop", engagement=eng_id, seq=1,
                                      recipients=[vault_key.public_bytes]))

    async def replay(ws: Any, keys: PartyKeys, eng_id: str) -> None:
        data = _envelope(keys, account="clinic", engagement=eng_id, seq=1,
                         recipients=[vault_key.public_bytes])
        await ws.send_bytes(data)
        await _until(ws, "ack")
        await ws.send_bytes(data)

    async def garbage(ws: Any, keys: PartyKeys, eng_id: str) -> None:
        await ws.send_bytes(b"\x01\x00\x05hello world")

    for send in (plaintext, no_vault, wrong_account, replay, garbage):
        await compliance_input(send)

    ws, welcome = await _visitor_ws(relay, "shop", origin="https://evil.example")
    assert welcome == {"type": "error", "code": "origin.forbidden",
                       "message": welcome["message"]}
    cases.append(("origin.forbidden", (await _refused(ws))[1] or 0))
    bad = await relay.session.ws_connect(f"{relay.url}/v1/chat/agent",
                                         headers={"Authorization": "Bearer nope"})
    cases.append(await _refused(bad))  # type: ignore[arg-type]
    admin_as_agent = await relay.session.ws_connect(
        f"{relay.url}/v1/chat/agent", headers={"Authorization": f"Bearer {shop_admin}"})
    cases.append(await _refused(admin_as_agent))  # type: ignore[arg-type]
    # A resume token is useless on another account (tenant isolation).
    ws = await relay.session.ws_connect(f"{relay.url}/v1/chat/visitor/clinic",
                                        headers={"Origin": ORIGIN})
    await ws.send_json({"type": "hello", "resume": visitor.resume_token, "last": 0})
    cases.append(await _refused(ws))  # type: ignore[arg-type]

    assert cases == [
        ("frame.malformed", 4400), ("frame.unknown_type", 4400), ("frame.too_large", 4413),
        ("seq.replayed", 4422), ("compliance.plaintext_refused", 4422),
        ("envelope.missing_vault_recipient", 4422), ("envelope.wrong_account", 4422),
        ("seq.replayed", 4422), ("envelope.malformed", 4422), ("origin.forbidden", 4403),
        ("auth.bad_token", 4401), ("auth.forbidden", 4403), ("resume.unknown", 4404)]

    # Counted, by reason code only.
    _, metrics = await relay.call("GET", "/metrics", token=None)
    for code, _close in cases:
        assert f'relay_frames_refused_total{{reason="{code}"}}' in metrics
    # Nothing stored from refused input: only the one good envelope of the replay case.
    outbox_after = await relay.state.store.outbox_stats("clinic")
    assert outbox_after.entries - outbox_before.entries == 5 + 1  # 5 connection-infos + 1
    # The healthy conversation is untouched.
    await visitor.send("after")
    assert (await agent.next_event(types=("msg",)))["text"] == "after"
    await agent.send(eng, "still here")
    assert (await visitor.next_event(types=("msg",)))["text"] == "still here"
    await visitor.close()
    await agent.close()

"""Invariant 6, tenant isolation: an endpoint x role x foreign-account matrix over EVERY
route of the relay and the vault, read from the real apps' route tables.

A route that appears in an app without an entry in ``RELAY_MATRIX``/``VAULT_MATRIX``
fails the test, so a new endpoint cannot ship without saying who may call it. The
victim is account A; every other credential (account B's admin and agent, A's agent,
staff tokens, no token) must be refused with an auth code, and every owner call is
made too (positive control: the refusal came from authorization, not a bad body).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest

from controller_vault.staff.tokens import SCOPES
from envelope import PartyKeys, b64e, sign_agent_certificate, sign_vault_key_statement
from relay.client import AgentClient, VisitorClient

from .conftest import TwoAccountRelay, VaultServer

pytestmark = pytest.mark.timeout(120)

#: Who may call each relay route. public: anyone; operator: the operator token;
#: admin: the operator or the account's own admin; ws-*: checked over a real websocket.
RELAY_MATRIX: dict[str, str] = {
    "POST /v1/accounts": "operator",
    "GET /v1/accounts/{account}": "admin",
    "POST /v1/accounts/{account}/admin-tokens": "operator",
    "PUT /v1/accounts/{account}/vault": "admin",
    "POST /v1/accounts/{account}/agent-certificates": "admin",
    "DELETE /v1/accounts/{account}/agent-certificates/{key_id}": "admin",
    "POST /v1/accounts/{account}/agent-tokens": "admin",
    "GET /v1/accounts/{account}/keys": "public",  # public keys: what clients verify
    "PUT /v1/accounts/{account}/mode": "admin",
    "GET /v1/accounts/{account}/record-of-processing": "admin",
    "GET /v1/accounts/{account}/engagements": "admin",
    "GET /v1/accounts/{account}/engagements/{engagement}/transcript": "admin",
    "DELETE /v1/accounts/{account}/engagements/{engagement}/transcript": "admin",
    "DELETE /v1/accounts/{account}/transcripts": "admin",
    "POST /v1/accounts/{account}/data-keys/rotate": "admin",
    "GET /v1/accounts/{account}/outbox": "admin",
    "GET /v1/accounts/{account}/mode-changes": "admin",
    "GET /v1/accounts/{account}/offload": "admin",
    # Authenticated by the vault's identity-key challenge, not a token: the cross-account
    # refusal is proven against a real relay process in tests/e2e/test_e2e_link_security.py.
    "GET /v1/vault/link": "ws-link",
    "GET /v1/chat/visitor/{account}": "ws-visitor",
    "GET /v1/chat/agent": "ws-agent",
    "GET /v1/openapi.json": "public",
    "GET /metrics": "public",
    "GET /healthz": "public",
    "GET /readyz": "public",
}
#: Vault routes -> the staff scope they need (None: public on the controller's network).
VAULT_MATRIX: dict[str, str | None] = {
    "GET /healthz": None, "GET /readyz": None, "GET /metrics": None,
    "GET /v1/openapi.json": None,
    "GET /v1/engagements": "read",
    "POST /v1/engagements/search": "read",
    "GET /v1/engagements/{engagement_id}": "read",
    "GET /v1/engagements/{engagement_id}/transcript.html": "read",
    "POST /v1/subjects/export": "export",
    "POST /v1/engagements/{engagement_id}/erase": "erase",
    "POST /v1/subjects/erase": "erase",
    "GET /v1/retention/preview": "configure",
    "GET /v1/audit/verify": "audit",
}
AUTH_CODES = {"auth.missing_token", "auth.bad_token", "auth.forbidden", "auth.foreign_account",
              "auth.invalid_token", "auth.scope_denied"}
CANARY_A = "CANARYaaa7f31"
CANARY_B = "CANARYbbb0c92"
_names = itertools.count()


def _route_keys(app: Any) -> list[str]:
    keys = []
    for route in app.router.routes():
        method = "GET" if route.method == "HEAD" else route.method  # HEAD shares GET's handler
        keys.append(f"{method} {route.resource.canonical}")
    return sorted(set(keys))


def _destructive_last(key: str) -> tuple[int, str]:
    return (1 if key.startswith("DELETE") or "erase" in key else 0, key)


def _is_auth_refusal(status: int, body: Any) -> bool:
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return status in (401, 403) and code in AUTH_CODES


async def _standard_conversation(r: TwoAccountRelay, account: str, text: str) -> str:
    letter = account[-1].upper()
    agent = AgentClient(r.url, r.tokens[f"agent-{letter}"], account)
    visitor = VisitorClient(r.url, account, origin=r.origins[account])
    try:
        await agent.connect()
        eng = (await visitor.connect())["engagement"]
        await agent.next_event(types=("offer",))
        await agent.accept(eng)
        await visitor.next_event(types=("assigned",))
        await visitor.send(text)
        await agent.next_event(types=("msg",))
        await visitor.end()
        await agent.next_event(types=("ended",))
    finally:
        await visitor.close()
        await agent.close()
    return str(eng)


def _relay_body(r: TwoAccountRelay, key: str) -> Any:
    account = "acme-a"
    ident, vkey = r.identities[account]
    now = int(r.clock())
    if key == "POST /v1/accounts":
        return {"account": f"fresh-{next(_names)}", "origins": [], "retention_days": 30}
    if key.endswith("/vault"):
        return {"identity_key": b64e(ident.public_bytes), "key_statement":
                sign_vault_key_statement(ident, account=account, key=vkey.public_bytes,
                                         not_before=now - 60, not_after=now + 86400)}
    if key.endswith("/agent-certificates"):
        dev = PartyKeys.generate()
        return {"certificate": sign_agent_certificate(
            ident, account=account, agent="ann", encryption_key=dev.encryption.public_bytes,
            signing_key=dev.signing_public_bytes, not_before=now - 60, not_after=now + 86400)}
    if key.endswith("/agent-tokens"):
        return {"agent": "carl"}
    if key.endswith("/mode"):
        return {"mode": "standard"}
    return None


async def _ws_first(r: TwoAccountRelay, path: str, headers: dict[str, str],
                    hello: dict[str, Any]
                    ) -> tuple[dict[str, Any], aiohttp.ClientWebSocketResponse]:
    ws = await r.http.ws_connect(r.url.replace("http", "ws", 1) + path, headers=headers)
    await ws.send_json(hello)
    msg = await ws.receive(timeout=5)
    frame = msg.json() if msg.type == aiohttp.WSMsgType.TEXT else {"type": "closed"}
    return frame, ws


async def _agent_socket_matrix(r: TwoAccountRelay, roles: dict[str, str | None],
                               a_waiting: str) -> tuple[int, int]:
    """Every credential on the agent socket; agent B must never see or take A's chats."""
    checks = breaches = 0
    for role, token in roles.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        frame, ws = await _ws_first(r, "/v1/chat/agent", headers, {"type": "hello"})
        checks += 1
        try:
            if role in ("agent-A", "agent-B"):
                want = "acme-a" if role == "agent-A" else "acme-b"
                assert frame["type"] == "welcome" and frame["account"] == want, frame
                if role == "agent-B":
                    # Offers are per account: A's queued engagement never reaches B ...
                    seen = []
                    with pytest.raises(asyncio.TimeoutError):
                        while True:
                            seen.append((await ws.receive(timeout=0.5)).data)
                    breaches += sum(a_waiting in str(s) for s in seen)
                    # ... and naming it explicitly does not hand it over.
                    await ws.send_json({"type": "accept", "engagement": a_waiting})
                    reply = await ws.receive(timeout=5)
                    text = str(reply.data)
                    breaches += '"assigned"' in text
                    assert "engagement.unknown" in text or reply.type != aiohttp.WSMsgType.TEXT \
                        or '"error"' in text, text
            else:
                breaches += frame.get("type") == "welcome"
                assert frame.get("code") in AUTH_CODES, (role, frame)
        finally:
            await ws.close()
    return checks, breaches


async def _visitor_socket_matrix(r: TwoAccountRelay) -> tuple[int, int]:
    """Origins and resume tokens of account B never open or resume a chat of account A."""
    breaches = 0
    frame, ws = await _ws_first(r, "/v1/chat/visitor/acme-a",
                                {"Origin": r.origins["acme-b"]}, {"type": "hello"})
    await ws.close()
    breaches += frame.get("type") == "welcome"
    assert frame.get("code") == "origin.forbidden", frame
    frame_b, ws_b = await _ws_first(r, "/v1/chat/visitor/acme-b",
                                    {"Origin": r.origins["acme-b"]}, {"type": "hello"})
    assert frame_b["type"] == "welcome"
    frame, ws = await _ws_first(r, "/v1/chat/visitor/acme-a", {"Origin": r.origins["acme-a"]},
                                {"type": "hello", "resume": frame_b["resume"]})
    await ws.close()
    await ws_b.close()
    breaches += frame.get("engagement") == frame_b["engagement"]
    assert frame.get("type") == "error", frame
    return 2, breaches


async def test_relay_isolation_matrix(two_account_relay: TwoAccountRelay,
                                      two_vaults: dict[str, VaultServer],
                                      proof_line: Any) -> None:
    r = two_account_relay
    routes = _route_keys(r.server.app)
    assert set(routes) == set(RELAY_MATRIX), (
        "every relay route needs a matrix entry: "
        f"missing {sorted(set(routes) - set(RELAY_MATRIX))}, "
        f"stale {sorted(set(RELAY_MATRIX) - set(routes))}")
    eng_a = await _standard_conversation(r, "acme-a", f"my secret is {CANARY_A}")
    await _standard_conversation(r, "acme-b", f"my secret is {CANARY_B}")
    roles: dict[str, str | None] = {
        "operator": r.tokens["operator"], "admin-A": r.tokens["admin-A"],
        "admin-B": r.tokens["admin-B"], "agent-A": r.tokens["agent-A"],
        "agent-B": r.tokens["agent-B"], "none": None,
        **{f"staff-{s}": two_vaults["acme-a"].tokens[s] for s in sorted(SCOPES)}}
    owners = {"public": set(roles), "operator": {"operator"}, "admin": {"operator", "admin-A"}}
    cross = checks = 0

    # Engagement ids are only meaningful inside their account: B's admin naming A's
    # engagement under its own account reads and deletes nothing of A's.
    status, body = await r.call("GET", f"/v1/accounts/acme-b/engagements/{eng_a}/transcript",
                                r.tokens["admin-B"])
    cross += CANARY_A in str(body)
    status, body = await r.call("DELETE",
                                f"/v1/accounts/acme-b/engagements/{eng_a}/transcript",
                                r.tokens["admin-B"])
    cross += status < 300 and body.get("deleted", 0) != 0
    checks += 2

    ws_checks: dict[str, int] = {}
    for key in sorted(routes, key=_destructive_last):
        cls = RELAY_MATRIX[key]
        if cls == "ws-visitor":
            n, breaches = await _visitor_socket_matrix(r)
            ws_checks[key], cross = n, cross + breaches
            continue
        if cls == "ws-link":
            continue
        if cls == "ws-agent":
            waiting = VisitorClient(r.url, "acme-a", origin=r.origins["acme-a"])
            try:
                a_waiting = (await waiting.connect())["engagement"]
                n, breaches = await _agent_socket_matrix(r, roles, a_waiting)
            finally:
                await waiting.close()
            ws_checks[key], cross = n, cross + breaches
            continue
        method, template = key.split(" ", 1)
        path = template.replace("{account}", "acme-a").replace("{engagement}", eng_a) \
            .replace("{key_id}", "0123456789abcdef01234567")
        # Foreign roles first, owners last, so a destructive owner call cannot hide a leak.
        for role in sorted(roles, key=lambda x: x in owners[cls]):
            for verb in (method, "HEAD") if method == "GET" else (method,):
                status, body = await r.call(verb, path, roles[role],
                                            json=_relay_body(r, key) if verb != "HEAD" else None)
                checks += 1
                if role in owners[cls]:
                    assert 200 <= status < 300, (key, verb, role, status, body)
                    continue
                cross += 200 <= status < 300
                if verb != "HEAD":
                    assert _is_auth_refusal(status, body), (key, role, status, body)
                    assert CANARY_A not in str(body)
                else:
                    assert status in (401, 403), (key, role, status)
    # A's transcript survived every foreign DELETE (the owner's own DELETE ran last).
    assert cross == 0
    proof_line(f"isolation(relay): routes={len(routes)} roles={len(roles)} "
               f"http_checks={checks} ws_checks={sum(ws_checks.values())} "
               f"cross_account_successes={cross}")


async def test_vault_isolation_matrix(two_vaults: dict[str, VaultServer],
                                      two_account_relay: TwoAccountRelay,
                                      proof_line: Any) -> None:
    va, vb = two_vaults["acme-a"], two_vaults["acme-b"]
    routes = _route_keys(va.server.app)
    assert set(routes) == set(VAULT_MATRIX), (
        f"every vault route needs a matrix entry: missing {sorted(set(routes) - set(VAULT_MATRIX))}"
        f", stale {sorted(set(VAULT_MATRIX) - set(routes))}")
    emails = {"acme-a": "alice@a.example", "acme-b": "bob@b.example"}
    engs = {"acme-a": "eng-alice-0001", "acme-b": "eng-bobby-0001"}
    for name, vault in two_vaults.items():
        visitor = PartyKeys.generate()
        canary = CANARY_A if name == "acme-a" else CANARY_B
        result = await vault.ingest([
            vault.envelope(engs[name], visitor, "prechat", {"email": emails[name]}),
            vault.envelope(engs[name], visitor, "message", {"text": f"secret {canary}"})])
        assert result.stored == 2, result.rejected
    roles: dict[str, str | None] = {
        **{f"A-staff-{s}": va.tokens[s] for s in sorted(SCOPES)},
        **{f"B-staff-{s}": vb.tokens[s] for s in sorted(SCOPES)},
        "relay-operator": two_account_relay.tokens["operator"],
        "relay-admin-A": two_account_relay.tokens["admin-A"], "none": None}
    cross = scope_violations = checks = 0
    async with aiohttp.ClientSession() as http:
        for key in sorted(routes, key=_destructive_last):
            method, template = key.split(" ", 1)
            path = template.replace("{engagement_id}", engs["acme-a"])
            scope = VAULT_MATRIX[key]
            needs_subject = key.endswith("/search") or (method == "POST" and "subjects" in key)
            body = {"email": emails["acme-a"]} if needs_subject else None
            owner = f"A-staff-{scope}"
            for role in sorted(roles, key=lambda x: x == owner):
                headers = {"X-Purpose": "isolation proof"}
                if roles[role]:
                    headers["Authorization"] = f"Bearer {roles[role]}"
                async with http.request(method, va.url + path, json=body,
                                        headers=headers) as resp:
                    status, text = resp.status, await resp.text()
                checks += 1
                if scope is None or role == owner:
                    assert 200 <= status < 300, (key, role, status, text)
                    continue
                ok = 200 <= status < 300
                if role.startswith("A-staff"):
                    scope_violations += ok
                    assert status == 403, (key, role, status, text)
                else:
                    cross += ok
                    assert status == 401, (key, role, status, text)
                assert CANARY_A not in text and emails["acme-a"] not in text
    assert cross == 0 and scope_violations == 0
    proof_line(f"isolation(vault): routes={len(routes)} roles={len(roles)} checks={checks} "
               f"cross_account_successes={cross} scope_violations={scope_violations}")

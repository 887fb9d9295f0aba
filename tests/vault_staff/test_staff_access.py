"""require_scope on a real aiohttp server: every staff route refuses a token without its scope."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from controller_vault.staff.access import (
    STAFF_AUDIT,
    STAFF_CLOCK,
    STAFF_TOKENS,
    AccessRecord,
    require_scope,
    staff_identity,
    staff_purpose,
)
from controller_vault.staff.token_store import SqliteTokenStore
from controller_vault.staff.tokens import SCOPES, StaffTokens

NOW = 1_700_000_000
KNOWN_ENGAGEMENT = "eng-00000001"
# (method, path template, scope, purpose required): the staff API of issue 6.
ROUTES = [
    ("GET", "/v1/engagements", "read", False),
    ("GET", "/v1/engagements/{engagement_id}", "read", True),
    ("GET", "/v1/engagements/{engagement_id}/transcript.html", "read", True),
    ("POST", "/v1/subjects/export", "export", True),
    ("POST", "/v1/engagements/{engagement_id}/erase", "erase", False),
    ("POST", "/v1/subjects/erase", "erase", False),
    ("PUT", "/v1/config/retention", "configure", False),
    ("GET", "/v1/audit/verify", "audit", False),
]


def _handler(scope: str, purpose: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @require_scope(scope, purpose=purpose)
    async def handle(request: web.Request) -> web.StreamResponse:
        engagement = request.match_info.get("engagement_id")
        if engagement is not None and engagement != KNOWN_ENGAGEMENT:
            return web.json_response({"error": {"code": "engagement.not_found",
                                                "message": "no such engagement"}}, status=404)
        return web.json_response({"actor": staff_identity(request).actor,
                                  "purpose": staff_purpose(request)})
    return handle


@pytest.fixture
async def setup(tmp_path: pathlib.Path, aiohttp_client: Any
                ) -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, str], list[AccessRecord]]]:
    store = await SqliteTokenStore.open(tmp_path)
    tokens = StaffTokens(store)
    audited: list[AccessRecord] = []

    async def audit(record: AccessRecord) -> None:
        audited.append(record)

    app = web.Application()
    app[STAFF_TOKENS] = tokens
    app[STAFF_CLOCK] = lambda: float(NOW)
    app[STAFF_AUDIT] = audit
    for method, path, scope, purpose in ROUTES:
        app.router.add_route(method, path, _handler(scope, purpose))
    issued = {scope: (await tokens.issue(f"staff-{scope}", [scope], now=NOW))[0]
              for scope in SCOPES}
    revoked, record = await tokens.issue("gone", SCOPES, now=NOW)
    await tokens.revoke(record.token_id, now=NOW)
    issued["revoked"] = revoked
    client = await aiohttp_client(app)
    try:
        yield client, issued, audited
    finally:
        await store.close()


def _url(path: str, engagement: str = KNOWN_ENGAGEMENT) -> str:
    return path.replace("{engagement_id}", engagement)


def test_every_route_is_guarded() -> None:
    app = web.Application()
    for method, path, scope, purpose in ROUTES:
        app.router.add_route(method, path, _handler(scope, purpose))
    for route in app.router.routes():
        assert getattr(route.handler, "required_scope", None) in SCOPES


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("method", "path", "scope", "purpose"), ROUTES)
async def test_every_route_refuses_every_other_scope(setup: Any, method: str, path: str,
                                                     scope: str, purpose: bool) -> None:
    client, issued, audited = setup
    for other in sorted(SCOPES - {scope}):
        resp = await client.request(method, _url(path), headers={
            "Authorization": f"Bearer {issued[other]}", "X-Purpose": "ticket 42"})
        assert resp.status == 403
        assert await resp.json() == {"error": {
            "code": "auth.scope_denied", "message": "the token does not grant this operation"}}
    for headers, code in [({}, "auth.missing_token"),
                          ({"Authorization": "Basic abc"}, "auth.missing_token"),
                          ({"Authorization": "Bearer nonsense"}, "auth.invalid_token"),
                          ({"Authorization": f"Bearer {issued['revoked']}"}, "auth.invalid_token")]:
        resp = await client.request(method, _url(path), headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == code
    assert audited == []
    resp = await client.request(method, _url(path), headers={
        "Authorization": f"Bearer {issued[scope]}", "X-Purpose": "ticket 42"})
    assert resp.status == 200
    assert audited[-1].scope == scope and audited[-1].route == path
    assert audited[-1].purpose == ("ticket 42" if purpose else None)


@pytest.mark.timeout(30)
async def test_refusal_does_not_reveal_whether_an_engagement_exists(setup: Any) -> None:
    client, issued, _ = setup
    answers = []
    for engagement in (KNOWN_ENGAGEMENT, "eng-doesnotexist"):
        for headers in ({}, {"Authorization": f"Bearer {issued['audit']}"}):
            resp = await client.get(f"/v1/engagements/{engagement}", headers=headers)
            answers.append((resp.status, await resp.read()))
    assert answers[0] == answers[2] and answers[1] == answers[3]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("headers", "query", "status", "code"), [
    ({}, "", 400, "request.purpose_required"),
    ({"X-Purpose": "   "}, "", 400, "request.purpose_required"),
    ({"X-Purpose": "x" * 201}, "", 400, "request.bad_purpose"),
    ({}, "?purpose=line%0Aforged", 400, "request.bad_purpose"),
    ({}, "?purpose=subject%20access%20request%2017", 200, None),
])
async def test_reads_and_exports_require_a_purpose(setup: Any, headers: dict[str, str],
                                                   query: str, status: int,
                                                   code: str | None) -> None:
    client, issued, audited = setup
    for path, scope in [("/v1/engagements/eng-00000001", "read"),
                        ("/v1/subjects/export", "export")]:
        method = "GET" if scope == "read" else "POST"
        resp = await client.request(method, path + query, headers={
            "Authorization": f"Bearer {issued[scope]}", **headers})
        assert resp.status == status
        if code is not None:
            assert (await resp.json())["error"]["code"] == code
        else:
            assert (await resp.json())["purpose"] == "subject access request 17"
    if code is not None:
        assert audited == []


@pytest.mark.timeout(30)
async def test_purpose_is_checked_only_after_the_token(setup: Any) -> None:
    client, issued, _ = setup
    resp = await client.get("/v1/engagements/eng-00000001")
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "auth.missing_token")
    resp = await client.get("/v1/engagements/eng-00000001",
                            headers={"Authorization": f"Bearer {issued['erase']}"})
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "auth.scope_denied")


@pytest.mark.timeout(30)
async def test_failed_audit_write_blocks_the_read(tmp_path: pathlib.Path,
                                                  aiohttp_client: Any) -> None:
    store = await SqliteTokenStore.open(tmp_path)
    try:
        tokens = StaffTokens(store)
        token, _ = await tokens.issue("dpo", ["read"], now=NOW)
        served = []

        async def broken_audit(record: AccessRecord) -> None:
            raise OSError("disk full")

        @require_scope("read")
        async def handle(request: web.Request) -> web.Response:
            served.append(1)
            return web.json_response({})

        app = web.Application()
        app[STAFF_TOKENS] = tokens
        app[STAFF_AUDIT] = broken_audit
        app.router.add_get("/v1/engagements", handle)
        client = await aiohttp_client(app)
        resp = await client.get("/v1/engagements", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 500 and served == []
    finally:
        await store.close()


def test_unknown_scope_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        require_scope("admin")

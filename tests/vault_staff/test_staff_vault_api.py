"""The staff API on the real vault app and real SQLite files: export, erasure, transcripts,
redaction at ingest, scopes on every route, bad input, and an interrupted erasure."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jsonschema
import pytest

from controller_vault.app import KEYSTORE, STORE
from controller_vault.atrest import blind_token
from controller_vault.certify import certify_agent
from controller_vault.staff.tokens import SCOPES
from controller_vault.staff_api import MAX_REQUEST_BYTES, STAFF_ROUTES
from envelope import PartyKeys, verify_erasure_notice

NOW = 1_800_000_000
SCHEMA = json.loads((pathlib.Path(__file__).resolve().parents[2] / "docs"
                     / "export-bundle.schema.json").read_text())
pytestmark = pytest.mark.timeout(60)


async def _engagement(v: Any, eng: str, email: str, canary: str, agent: PartyKeys) -> None:
    visitor, relay = PartyKeys.generate(), PartyKeys.generate()
    frames = [
        v.env(eng, visitor, "prechat", {"name": f"Name {canary}", "email": email,
                                        "answers": {"reason": f"reason {canary}"}}),
        v.env(eng, visitor, "consent", {"text_version": "privacy-v3", "answer": "granted"}),
        v.env(eng, relay, "connection-info", {"ip": "203.0.113.7", "visitor_id": f"vid{canary}",
                                              "user_agent": f"UA {canary}"}, role="relay"),
        v.env(eng, visitor, "message", {"text": f"hello, my secret is {canary}"}),
        v.env(eng, agent, "message", {"text": "how can I help?"}, role="agent"),
        v.env(eng, visitor, "survey", {"answers": {"rating": f"5 {canary}"}}),
    ]
    result = await v.ingest(frames)
    assert result.stored == len(frames), result.rejected


async def _subjects(v: Any) -> tuple[dict[str, str], dict[str, str], PartyKeys]:
    """Alice with three engagements, Bob with one; engagement -> canary for each."""
    agent = PartyKeys.generate()
    await certify_agent(v.app[STORE], v.keys, agent="agent-ann",
                        encryption_key=agent.encryption.public_bytes,
                        signing_key=agent.signing_public_bytes, now=NOW, days=30)
    alice = {f"eng-alice-{n}": f"ALICEcanary{n}q" for n in range(3)}
    bob = {"eng-bob-0001": "BOBcanary0z"}
    for eng, canary in alice.items():
        await _engagement(v, eng, "Alice.Subject@Example.org", canary, agent)
    for eng, canary in bob.items():
        await _engagement(v, eng, "bob@example.org", canary, agent)
    return alice, bob, agent


async def test_subject_export_is_complete_valid_and_holds_nobody_else(make_staff_vault):
    v = await make_staff_vault()
    alice, bob, _ = await _subjects(v)
    resp = await v.client.post("/v1/subjects/export", headers=v.auth("export"),
                               json={"email": "alice.subject@example.org",
                                     "filename": "alice-sar"})
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="alice-sar.json"'
    raw = await resp.read()
    bundle = json.loads(raw)
    jsonschema.validate(bundle, SCHEMA)
    assert sorted(e["engagement_id"] for e in bundle["engagements"]) == sorted(alice)
    for eng in bundle["engagements"]:
        canary = alice[eng["engagement_id"]]
        assert [c["answer"] for c in eng["consent"]] == ["granted"]
        assert eng["prechat"][0]["name"] == f"Name {canary}"
        assert eng["connection_info"][0]["visitor_id"] == f"vid{canary}"
        assert eng["surveys"][0]["answers"]["rating"] == f"5 {canary}"
        texts = [m["text"] for m in eng["messages"]]
        assert f"hello, my secret is {canary}" in texts and "how can I help?" in texts
        assert {m.get("sender") for m in eng["messages"] if m["role"] == "agent"} == \
            {"agent-ann"}
    assert bundle["summary"]["engagements"] == 3 and bundle["summary"]["consent"] == 3
    for canary in bob.values():
        assert canary.encode() not in raw
    assert b"bob@example.org" not in raw
    audit = await v.app[STORE].audit_rows()
    exports = [e for e, _, _ in audit if e.action == "export"]
    assert exports and exports[-1].actor == "staff-export" and exports[-1].purpose == "ticket 42"


async def test_subject_erasure_leaves_nothing_and_queues_a_signed_notice(make_staff_vault):
    v = await make_staff_vault()
    alice, bob, _ = await _subjects(v)
    store = v.app[STORE]
    token = blind_token(v.keys.index_key, "email", "alice.subject@example.org")
    await store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert token in v.files()  # the blind index row exists before erasure
    v.clock[0] = NOW + 60
    resp = await v.client.post("/v1/subjects/erase", headers=v.auth("erase", "art17 #9"),
                               json={"email": "ALICE.subject@example.org"})
    assert resp.status == 200
    out = await resp.json()
    assert sorted(out["engagements"]) == sorted(alice) and out["rows_deleted"] == 18
    notice = verify_erasure_notice(out["receipts"][0], v.keys.identity.public_bytes,
                                   account="clinic")
    assert sorted(notice.engagements) == sorted(alice) and notice.rule == "subject"
    assert notice.at == NOW + 60
    pending = await store.pending_notices()
    assert [p.notice for p in pending] == out["receipts"]
    # Nothing of Alice's remains in any vault file: no plaintext canary, no blind index
    # token, and no data key (so old copies of vault.db stay unreadable).
    blob = v.files()
    for canary in alice.values():
        assert canary.encode() not in blob and canary.lower().encode() not in blob
    assert token not in blob and b"alice.subject" not in blob.lower()
    for eng in alice:
        assert await store.envelopes_of(eng) == []
        resp = await v.client.get(f"/v1/engagements/{eng}", headers=v.auth("read"))
        assert (resp.status, (await resp.json())["error"]["code"]) == (410, "engagement.erased")
    assert await v.app[KEYSTORE].count() == len(bob)
    resp = await v.client.get("/v1/engagements/eng-bob-0001", headers=v.auth("read"))
    assert resp.status == 200
    erase = [e for e, _, _ in await store.audit_rows() if e.action == "erase"]
    assert erase[-1].actor == "staff-erase" and erase[-1].purpose == "art17 #9"
    # A second run finds nothing left and is harmless (idempotent).
    resp = await v.client.post("/v1/subjects/erase", headers=v.auth("erase"),
                               json={"email": "alice.subject@example.org"})
    assert (await resp.json())["engagements"] == []


async def test_interrupted_erasure_can_be_run_again_to_completion(make_staff_vault):
    v = await make_staff_vault()
    alice, _, _ = await _subjects(v)
    store, keystore = v.app[STORE], v.app[KEYSTORE]
    # The crash point: data keys destroyed, rows and blind index not yet deleted.
    await keystore.destroy(sorted(alice))
    listed = await v.client.post("/v1/engagements/search", headers=v.auth("read"),
                                 json={"email": "alice.subject@example.org"})
    assert len((await listed.json())["engagements"]) == 3  # still findable: not silently done
    resp = await v.client.get("/v1/engagements/eng-alice-0", headers=v.auth("read"))
    assert resp.status == 410
    resp = await v.client.post("/v1/subjects/erase", headers=v.auth("erase"),
                               json={"email": "alice.subject@example.org"})
    assert resp.status == 200 and sorted((await resp.json())["engagements"]) == sorted(alice)
    for eng in alice:
        assert await store.envelopes_of(eng) == []
    assert await store.engagements_for_token(
        blind_token(v.keys.index_key, "email", "alice.subject@example.org")) == []


async def test_transcripts_list_search_json_and_html(make_staff_vault):
    v = await make_staff_vault()
    alice, bob, _ = await _subjects(v)
    v.clock[0] = NOW + 5
    late = PartyKeys.generate()
    await v.ingest([v.env("eng-late-0001", late, "message", {"text": "<script>x</script>"})],
                   at=NOW + 1000)
    resp = await v.client.get("/v1/engagements", headers=v.auth("read", None))
    listed = {e["engagement_id"]: e for e in (await resp.json())["engagements"]}
    assert set(listed) == {*alice, *bob, "eng-late-0001"}
    assert all(e["incomplete"] for e in listed.values())  # no end frames yet
    resp = await v.client.get(f"/v1/engagements?since={NOW + 500}", headers=v.auth("read"))
    assert [e["engagement_id"] for e in (await resp.json())["engagements"]] == ["eng-late-0001"]
    resp = await v.client.get("/v1/engagements?agent=agent-ann", headers=v.auth("read"))
    assert {e["engagement_id"] for e in (await resp.json())["engagements"]} == {*alice, *bob}
    resp = await v.client.post("/v1/engagements/search", headers=v.auth("read"),
                               json={"email": "bob@EXAMPLE.org"})
    assert [e["engagement_id"] for e in (await resp.json())["engagements"]] == list(bob)
    resp = await v.client.get("/v1/engagements/eng-bob-0001", headers=v.auth("read"))
    doc = await resp.json()
    assert doc["incomplete"] is True and doc["prechat"]["email"] == "bob@example.org"
    assert doc["messages"][0]["text"] == "hello, my secret is BOBcanary0z"
    resp = await v.client.get("/v1/engagements/eng-late-0001/transcript.html",
                              headers=v.auth("read"))
    page = await resp.text()
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "&lt;script&gt;" in page and "<script>" not in page and "incomplete" in page
    reads = [e for e, _, _ in await v.app[STORE].audit_rows() if e.action == "read"]
    assert reads[-1].actor == "staff-read" and reads[-1].purpose == "ticket 42"
    access = [e for e, _, _ in await v.app[STORE].audit_rows() if e.action == "staff-access"]
    assert access[-1].target == "/v1/engagements/{engagement_id}/transcript.html"


async def test_the_list_pages_through_every_engagement_once(make_staff_vault):
    v = await make_staff_vault()
    visitor = PartyKeys.generate()
    # Seven engagements over three start times (ties broken by id), one page of three.
    expected = []
    for n in range(7):
        eng = f"eng-page-{n:04d}"
        await v.ingest([v.env(eng, visitor, "message", {"text": "hi"})], at=NOW + n // 3)
        expected.append(eng)
    seen: list[str] = []
    url: str | None = "/v1/engagements?limit=3"
    pages = 0
    while url is not None:
        doc = await (await v.client.get(url, headers=v.auth("read", None))).json()
        seen += [e["engagement_id"] for e in doc["engagements"]]
        url = None if doc["next"] is None else f"/v1/engagements?limit=3&after={doc['next']}"
        pages += 1
    assert seen == expected and pages == 3  # 3 + 3 + 1: the short page ends it


async def test_a_redacted_card_number_never_reaches_the_vault_files(make_staff_vault):
    v = await make_staff_vault()
    visitor = PartyKeys.generate()
    await v.ingest([v.env("eng-card-0001", visitor, "message",
                          {"text": "my card is 4111 1111 1111 1111, exp 12/29"}),
                    v.env("eng-card-0001", visitor, "survey",
                          {"answers": {"card": "4111111111111111"}})])
    resp = await v.client.get("/v1/engagements/eng-card-0001", headers=v.auth("read"))
    text = (await resp.json())["messages"][0]["text"]
    assert text == "my card is [redacted:card], exp 12/29"
    await v.app[STORE]._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    blob = v.files()
    assert b"4111 1111 1111 1111" not in blob and b"4111111111111111" not in blob
    # Read every stored row back with the data key: no original in any plaintext either.
    from controller_vault.erasure import read_engagement

    rows = await read_engagement(v.app[STORE], v.app[KEYSTORE], "eng-card-0001",
                                 actor="test", purpose="test", now=NOW)
    assert all(b"4111" not in r.body for r in rows) and len(rows) == 2
    metrics = await (await v.client.get("/metrics")).text()
    assert 'vault_redactions_total{rule="card"} 2.0' in metrics
    ingest = [e for e, _, _ in await v.app[STORE].audit_rows() if e.action == "ingest"]
    assert json.loads(ingest[-1].detail)["redacted"] == {"card": 2}


def _staff_routes(app: Any) -> list[Any]:
    return [r for r in app.router.routes() if r.resource is not None
            and r.resource.canonical.startswith("/v1/") and r.method != "HEAD"
            and r.resource.canonical != "/v1/openapi.json"]


async def test_every_staff_route_is_guarded_and_documented(make_staff_vault):
    v = await make_staff_vault()
    routes = _staff_routes(v.app)
    assert len(routes) == len(STAFF_ROUTES)
    doc = await (await v.client.get("/v1/openapi.json")).json()
    for route in routes:
        scope = getattr(route.handler, "required_scope", None)
        assert scope in SCOPES, route.resource.canonical
        op = doc["paths"][route.resource.canonical][route.method.lower()]
        assert op["x-scope"] == scope


async def test_every_route_refuses_a_token_without_its_scope(make_staff_vault):
    v = await make_staff_vault()
    await _subjects(v)
    for route in _staff_routes(v.app):
        scope = route.handler.required_scope
        url = route.resource.canonical.replace("{engagement_id}", "eng-alice-0")
        body = {"email": "alice.subject@example.org"}
        for other in sorted(SCOPES - {scope}):
            resp = await v.client.request(route.method, url, headers=v.auth(other), json=body)
            assert resp.status == 403, (url, other)
            assert (await resp.json())["error"]["code"] == "auth.scope_denied"
        resp = await v.client.request(route.method, url, json=body)
        assert resp.status == 401
    # Nothing was read, exported or erased by the refused requests.
    actions = {e.action for e, _, _ in await v.app[STORE].audit_rows()}
    assert not actions & {"read", "export", "erase", "staff-access"}
    assert len(await v.app[STORE].envelopes_of("eng-alice-0")) == 6


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", "/v1/engagements/eng-nothere-1", None, 404, "engagement.not_found"),
    ("GET", "/v1/engagements/bad%20id!", None, 400, "request.bad_engagement_id"),
    ("POST", "/v1/engagements/eng-nothere-1/erase", None, 404, "engagement.not_found"),
    ("POST", "/v1/subjects/export", {"email": "no-at-sign"}, 400, "request.bad_identifier"),
    ("POST", "/v1/subjects/export", {"email": "a@b.example", "phone": "1"}, 400,
     "request.bad_identifier"),
    ("POST", "/v1/subjects/export", {"email": "a@b.example", "filename": "../../etc/passwd"},
     400, "export.bad_filename"),
    ("POST", "/v1/subjects/erase", "not json", 400, "request.bad_json"),
    ("POST", "/v1/engagements/search", {"email": "x" * (MAX_REQUEST_BYTES + 10)}, 413,
     "request.too_large"),
    ("GET", "/v1/engagements?since=yesterday", None, 400, "request.bad_query"),
    ("GET", "/v1/engagements?after=12.bad%20id!", None, 400, "request.bad_query"),
])
async def test_bad_input_gets_a_stable_code(make_staff_vault, method, path, body, status, code):
    v = await make_staff_vault()
    scope = {"export": "export", "erase": "erase"}.get(path.split("/")[-1], "read")
    if path.endswith("/erase"):
        scope = "erase"
    kwargs: dict[str, Any] = {"headers": {**v.auth(scope),
                                          "Content-Type": "application/json"}}
    if body is not None:
        kwargs["data"] = body if isinstance(body, str) else json.dumps(body)
    resp = await v.client.request(method, path, **kwargs)
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code
    assert "passwd" not in err["message"] and "no-at-sign" not in err["message"]

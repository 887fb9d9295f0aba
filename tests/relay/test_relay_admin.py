"""Admin API over a real socket: accounts, tokens, pairing, certificates, mode, reports."""

from __future__ import annotations

import pytest

from envelope import (
    EncryptionKey,
    IdentityKey,
    PartyKeys,
    b64e,
    sign_agent_certificate,
    sign_vault_key_statement,
)

from .conftest import Relay

pytestmark = pytest.mark.timeout(60)


async def test_create_account_and_errors(relay: Relay) -> None:
    admin = await relay.account("clinic")
    status, body = await relay.call("GET", "/v1/accounts/clinic", admin)
    assert status == 200 and body["mode"] == "standard" and body["paired"] is False
    status, body = await relay.call("POST", "/v1/accounts", json={"account": "clinic"})
    assert status == 409 and body["error"]["code"] == "account.exists"
    status, body = await relay.call("POST", "/v1/accounts", json={"account": "Bad Id!"})
    assert status == 400 and body["error"]["code"] == "request.bad_field"
    status, body = await relay.call("POST", "/v1/accounts", data=b"{not json",
                                    headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "request.malformed"
    status, body = await relay.call("POST", "/v1/accounts", token="wrong",
                                    json={"account": "x"})
    assert status == 401 and body["error"]["code"] == "auth.bad_token"
    status, body = await relay.call("POST", "/v1/accounts", token=admin, json={"account": "x"})
    assert status == 401


async def test_pairing_rotation_and_identity_swap(relay: Relay) -> None:
    admin = await relay.account("clinic")
    ident, now = IdentityKey.generate(), int(relay.clock())
    k1, k2 = EncryptionKey.generate(), EncryptionKey.generate()

    def stmt(i: IdentityKey, k: EncryptionKey, nbf: int) -> dict[str, str]:
        return sign_vault_key_statement(i, account="clinic", key=k.public_bytes,
                                        not_before=nbf, not_after=now + 3600)

    path = "/v1/accounts/clinic/vault"
    status, body = await relay.call("PUT", "/v1/accounts/clinic/mode", admin,
                                    json={"mode": "compliance"})
    assert status == 409 and body["error"]["code"] == "mode.not_paired"
    # A statement signed by another key than the one presented is refused.
    status, body = await relay.call("PUT", path, admin, json={
        "identity_key": b64e(ident.public_bytes),
        "key_statement": stmt(IdentityKey.generate(), k1, now - 10)})
    assert status == 400 and body["error"]["code"] == "statement.invalid"
    status, body = await relay.call("PUT", path, admin, json={
        "identity_key": b64e(ident.public_bytes), "key_statement": stmt(ident, k1, now - 10)})
    assert status == 200 and body["vault_key_id"] == k1.key_id
    status, body = await relay.call("PUT", path, admin, json={
        "identity_key": b64e(ident.public_bytes), "key_statement": stmt(ident, k2, now - 5)})
    assert status == 200 and body["vault_key_id"] == k2.key_id  # rotation
    status, body = await relay.call("PUT", path, admin, json={
        "identity_key": b64e(ident.public_bytes), "key_statement": stmt(ident, k1, now - 10)})
    assert status == 409 and body["error"]["code"] == "vault.stale_statement"
    other = IdentityKey.generate()
    swap = {"identity_key": b64e(other.public_bytes), "key_statement": stmt(other, k1, now)}
    status, body = await relay.call("PUT", path, admin, json=swap)
    assert status == 409 and body["error"]["code"] == "vault.identity_mismatch"
    status, body = await relay.call("PUT", path, json=swap)  # the operator may re-pair
    assert status == 200
    status, keys = await relay.call("GET", "/v1/accounts/clinic/keys", token=None)
    assert status == 200 and keys["identity_key"] == b64e(other.public_bytes)


async def test_mode_toggle_certificates_and_records(relay: Relay) -> None:
    admin = await relay.account("clinic", compliance=True)
    ident, _ = relay.vaults["clinic"]
    agent, now = PartyKeys.generate(), int(relay.clock())
    cert = sign_agent_certificate(ident, account="clinic", agent="agent-7",
                                  encryption_key=agent.encryption.public_bytes,
                                  signing_key=agent.signing_public_bytes, not_before=now - 5,
                                  not_after=now + 3600)
    status, body = await relay.call("POST", "/v1/accounts/clinic/agent-certificates", admin,
                                    json={"certificate": cert})
    assert status == 201 and body["key_id"] == agent.encryption_key_id
    forged = sign_agent_certificate(IdentityKey.generate(), account="clinic", agent="x",
                                    encryption_key=agent.encryption.public_bytes,
                                    signing_key=agent.signing_public_bytes,
                                    not_before=now - 5, not_after=now + 3600)
    status, body = await relay.call("POST", "/v1/accounts/clinic/agent-certificates", admin,
                                    json={"certificate": forged})
    assert status == 400 and body["error"]["code"] == "statement.invalid"
    _, keys = await relay.call("GET", "/v1/accounts/clinic/keys", token=None)
    assert keys["agent_certificates"] == [cert]
    status, body = await relay.call("PUT", "/v1/accounts/clinic/mode", admin,
                                    json={"mode": "standard"})
    assert status == 409 and body["error"]["code"] == "mode.confirm_required"
    status, body = await relay.call("PUT", "/v1/accounts/clinic/mode", admin,
                                    json={"mode": "standard", "confirm": True})
    assert status == 200
    _, changes = await relay.call("GET", "/v1/accounts/clinic/mode-changes", admin)
    assert [c["mode"] for c in changes["changes"]] == ["compliance", "standard"]
    status, rop = await relay.call("GET", "/v1/accounts/clinic/record-of-processing", admin)
    assert status == 200
    for key in ("purpose", "categories_of_data_subjects", "categories_of_personal_data",
                "recipients", "transfers_to_third_countries", "retention",
                "security_measures"):
        assert rop[key]
    status, csv_text = await relay.call("GET", "/v1/accounts/clinic/engagements?format=csv",
                                        admin)
    assert status == 200 and csv_text.startswith("engagement,account,mode")


ADMIN_ROUTES = [
    ("GET", "/v1/accounts/{a}"),
    ("PUT", "/v1/accounts/{a}/vault"),
    ("POST", "/v1/accounts/{a}/agent-certificates"),
    ("DELETE", "/v1/accounts/{a}/agent-certificates/0123456789abcdef01234567"),
    ("POST", "/v1/accounts/{a}/agent-tokens"),
    ("PUT", "/v1/accounts/{a}/mode"),
    ("GET", "/v1/accounts/{a}/mode-changes"),
    ("GET", "/v1/accounts/{a}/record-of-processing"),
    ("GET", "/v1/accounts/{a}/engagements"),
    ("GET", "/v1/accounts/{a}/engagements/eng-00000001/transcript"),
    ("DELETE", "/v1/accounts/{a}/engagements/eng-00000001/transcript"),
    ("DELETE", "/v1/accounts/{a}/transcripts"),
    ("POST", "/v1/accounts/{a}/data-keys/rotate"),
    ("GET", "/v1/accounts/{a}/outbox"),
    ("GET", "/v1/accounts/{a}/offload"),
    ("POST", "/v1/accounts/{a}/admin-tokens"),
    ("POST", "/v1/accounts"),
]


async def test_foreign_account_token_refused_on_every_admin_route(relay: Relay) -> None:
    await relay.account("clinic")
    other_admin = await relay.account("bank")
    agent = await relay.agent_token("bank", other_admin, "a1")
    from relay.openapi import PATHS

    documented = {(m.upper(), p) for p, ops in PATHS.items() for m in ops if m != "parameters"}
    admin_paths = {(m, p.replace("{a}", "{account}").replace("eng-00000001", "{engagement}")
                    .replace("0123456789abcdef01234567", "{key_id}"))
                   for m, p in ADMIN_ROUTES}
    public = {("GET", "/v1/accounts/{account}/keys"), ("GET", "/v1/chat/visitor/{account}"),
              ("GET", "/v1/chat/agent"), ("GET", "/v1/openapi.json"), ("GET", "/metrics"),
              ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/vault/link")}
    assert documented == admin_paths | public  # every admin route is in this test
    for method, path in ADMIN_ROUTES:
        url = path.format(a="clinic")
        status, body = await relay.call(method, url, other_admin, json={})
        assert status in (401, 403), (method, url, status)
        if status == 403:
            assert body["error"]["code"] == "auth.foreign_account"
        status, body = await relay.call(method, url, agent, json={})
        assert status in (401, 403), (method, url, status)
    # Nothing changed for the clinic.
    _, acct = await relay.call("GET", "/v1/accounts/clinic")
    assert acct["mode"] == "standard" and acct["paired"] is False


async def test_openapi_lists_every_route(relay: Relay) -> None:
    status, doc = await relay.call("GET", "/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    served = set()
    for route in relay.server.app.router.routes():
        info = route.resource.canonical if route.resource else None
        if info and route.method != "HEAD":
            served.add((route.method.lower(), info))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert served == documented
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _ = await relay.call("GET", path, token=None)
        assert status == 200

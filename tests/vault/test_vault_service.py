"""The app (health, metrics, OpenAPI), config loading and pairing against a relay peer."""

from __future__ import annotations

import pytest
from aiohttp import web

from controller_vault.app import create_app, openapi_document
from controller_vault.config import config_help, load_config
from controller_vault.errors import ConfigError, PairingError
from controller_vault.keyfiles import init_vault
from controller_vault.pairing import publish_agent_certificate, publish_vault_key
from envelope import b64d, verify_agent_certificate, verify_vault_key_statement

NOW = 1_800_000_000
pytestmark = pytest.mark.timeout(30)


def test_config_toml_with_env_overrides(tmp_path):
    path = tmp_path / "vault.toml"
    path.write_text('[vault]\naccount = "clinic"\nstate_dir = "/srv/v"\nport = 9000\n')
    cfg = load_config(path, env={"VAULT_PORT": "9100", "VAULT_RELAY_URL": "https://r.example"})
    assert (cfg.account, cfg.port, cfg.relay_url) == ("clinic", 9100, "https://r.example")
    path.write_text('[vault]\naccount = "clinic"\nstate_dir = "/v"\nprot = 1\n')
    with pytest.raises(ConfigError, match="prot"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="port"):
        load_config(None, env={"VAULT_ACCOUNT": "c", "VAULT_STATE_DIR": "/v",
                               "VAULT_PORT": "many"})
    assert all(len(h) > 10 for h in config_help().values())


def test_boolean_config_fields(tmp_path):
    base = {"VAULT_ACCOUNT": "clinic", "VAULT_STATE_DIR": "/v"}
    assert load_config(None, env=base).link_batch_frames is True
    path = tmp_path / "vault.toml"
    path.write_text('[vault]\naccount = "clinic"\nstate_dir = "/v"\nlink_batch_frames = false\n')
    assert load_config(path, env={}).link_batch_frames is False
    assert load_config(path, env={"VAULT_LINK_BATCH_FRAMES": "on"}).link_batch_frames is True
    with pytest.raises(ConfigError, match="link_batch_frames"):
        load_config(None, env=base | {"VAULT_LINK_BATCH_FRAMES": "2"})


async def test_app_serves_health_metrics_and_openapi(tmp_path, aiohttp_client):
    state = tmp_path / "v"
    init_vault(state, "clinic", now=NOW)
    cfg = load_config(None, env={"VAULT_ACCOUNT": "clinic", "VAULT_STATE_DIR": str(state)})
    app = create_app(cfg, clock=lambda: NOW + 3600)
    client = await aiohttp_client(app)
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["link"] == "disabled"
    text = await (await client.get("/metrics")).text()
    for name in ("vault_ingested_envelopes_total", "vault_rejected_envelopes",
                 "vault_incomplete_engagements", "vault_store_bytes", "vault_audit_entries",
                 "vault_encryption_key_age_seconds 3600.0", 'vault_link_state{state="disabled"}'):
        assert name in text
    doc = await (await client.get("/v1/openapi.json")).json()
    routes = {r.resource.canonical for r in app.router.routes()}
    assert routes == set(doc["paths"]) == set(openapi_document()["paths"])


class AdminPeer:
    """The relay admin API, as far as pairing uses it."""

    def __init__(self) -> None:
        self.vault: dict | None = None
        self.certs: list[dict] = []

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != "Bearer admin-secret":
            raise web.HTTPUnauthorized(
                text='{"error": {"code": "auth.invalid_token", "message": "bad token"}}',
                content_type="application/json")

    async def put_vault(self, request: web.Request) -> web.Response:
        self._auth(request)
        self.vault = await request.json()
        return web.json_response({"paired": True})

    async def post_cert(self, request: web.Request) -> web.Response:
        self._auth(request)
        self.certs.append((await request.json())["certificate"])
        return web.json_response({"ok": True}, status=201)


async def test_pair_and_certificate_publication(tmp_path, aiohttp_server, vault):
    peer = AdminPeer()
    app = web.Application()
    app.router.add_put("/v1/accounts/{account}/vault", peer.put_vault)
    app.router.add_post("/v1/accounts/{account}/agent-certificates", peer.post_cert)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    await publish_vault_key(url, "admin-secret", vault.keys)
    assert peer.vault is not None
    ident = b64d(peer.vault["identity_key"], length=32)
    st = verify_vault_key_statement(peer.vault["key_statement"], ident, account="clinic",
                                    now=NOW)
    assert st.key_id == vault.keys.current_key_id
    from envelope import PartyKeys

    agent = PartyKeys.generate()
    cert = await vault.certify(agent)
    await publish_agent_certificate(url, "admin-secret", "clinic", cert)
    got = verify_agent_certificate(peer.certs[0], ident, account="clinic", now=NOW)
    assert got.signing_public_key == agent.signing_public_bytes
    with pytest.raises(PairingError) as err:
        await publish_vault_key(url, "wrong", vault.keys)
    assert err.value.code == "auth.invalid_token" and "wrong" not in err.value.message
    with pytest.raises(PairingError) as err:
        await publish_vault_key("http://127.0.0.1:9", "admin-secret", vault.keys)
    assert err.value.code == "pair.unreachable"

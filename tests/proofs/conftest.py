"""Fixtures of the proof suites: summary lines and two-account relays and vaults.

Each suite reports ONE summary line through ``proof_line``; the lines are printed in
their own section at the end of the pytest run (independent of ``-rA``/``-s``), so CI
logs carry the figures a reviewer asks for.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from controller_vault.app import INGESTOR, create_app
from controller_vault.config import StaffSettings, VaultConfig
from controller_vault.keyfiles import VaultKeys, init_vault
from controller_vault.staff.access import STAFF_TOKENS
from controller_vault.staff.tokens import SCOPES
from envelope import EncryptionKey, IdentityKey, PartyKeys, encode_body, seal
from tests.relay.conftest import OPERATOR, FakeClock, start_relay
from tests.support.procs import OperatorRelay

_LINES = pytest.StashKey[list[str]]()
VAULT_NOW = 1_800_000_000


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LINES] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_LINES, [])
    if lines:
        terminalreporter.section("security proofs")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def proof_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a suite's one summary line (printed at the end of the run)."""

    def record(line: str) -> None:
        request.config.stash.setdefault(_LINES, []).append(line)

    return record


@dataclass
class TwoAccountRelay:
    """A real relay on 127.0.0.1 with accounts A and B, their tokens and vault identities."""

    server: OperatorRelay
    http: aiohttp.ClientSession
    state_dir: pathlib.Path
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)
    identities: dict[str, tuple[IdentityKey, EncryptionKey]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    async def call(self, method: str, path: str, token: str | None, json: Any = None,
                   **kw: Any) -> tuple[int, Any]:
        """One HTTP request; returns (status, parsed JSON or text)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.http.request(method, self.url + path, json=json, headers=headers,
                                     **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, body


ACCOUNTS = ("acme-a", "acme-b")


async def _setup_accounts(r: TwoAccountRelay) -> None:
    from envelope import b64e, sign_vault_key_statement

    r.tokens["operator"] = OPERATOR
    for name, agent in zip(ACCOUNTS, ("ann", "bob"), strict=True):
        letter = name[-1].upper()
        origin = f"https://{name}.example"
        r.origins[name] = origin
        status, body = await r.call("POST", "/v1/accounts", OPERATOR, json={
            "account": name, "origins": [origin], "retention_days": 30})
        assert status == 201, body
        status, body = await r.call("POST", f"/v1/accounts/{name}/admin-tokens", OPERATOR)
        assert status == 201, body
        r.tokens[f"admin-{letter}"] = admin = body["token"]
        status, body = await r.call("POST", f"/v1/accounts/{name}/agent-tokens", admin,
                                    json={"agent": agent})
        assert status == 201, body
        r.tokens[f"agent-{letter}"] = body["token"]
        ident, vkey = IdentityKey.generate(), EncryptionKey.generate()
        r.identities[name] = (ident, vkey)
        now = int(r.clock())
        st = sign_vault_key_statement(ident, account=name, key=vkey.public_bytes,
                                      not_before=now - 60, not_after=now + 86400 * 30)
        status, body = await r.call("PUT", f"/v1/accounts/{name}/vault", admin, json={
            "identity_key": b64e(ident.public_bytes), "key_statement": st})
        assert status == 200, body


@pytest.fixture
async def two_account_relay(tmp_path: pathlib.Path) -> AsyncIterator[TwoAccountRelay]:
    """A real relay app with two paired, standard-mode accounts (acme-a, acme-b)."""
    clock = FakeClock()
    server = await start_relay(tmp_path / "relay-state", clock)
    try:
        async with aiohttp.ClientSession() as http:
            r = TwoAccountRelay(server, http, tmp_path / "relay-state", clock)
            await _setup_accounts(r)
            yield r
    finally:
        await server.close()


@dataclass
class VaultServer:
    """A real vault app on 127.0.0.1 with one staff token per scope."""

    account: str
    server: TestServer
    keys: VaultKeys
    state: pathlib.Path
    tokens: dict[str, str] = field(default_factory=dict)
    seqs: dict[tuple[str, bytes], int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def envelope(self, engagement: str, sender: PartyKeys, kind: str, body: dict[str, Any],
                 *, role: str = "visitor") -> bytes:
        """One envelope sealed to this vault (next sequence number of ``sender``)."""
        key = (engagement, sender.signing_public_bytes)
        self.seqs[key] = self.seqs.get(key, 0) + 1
        return seal(encode_body(kind, body), sender=sender, role=role, account=self.account,
                    engagement=engagement, sequence=self.seqs[key], kind=kind,
                    recipients=[self.keys.current_key.public_bytes])

    async def ingest(self, frames: list[bytes]) -> Any:
        """Ingest through the app's own Ingestor."""
        return await self.server.app[INGESTOR].ingest(frames, VAULT_NOW)


async def start_vault(state: pathlib.Path, account: str, **cfg: Any) -> VaultServer:
    """Initialise a vault in ``state`` and serve its real app on 127.0.0.1."""
    keys = init_vault(state, account, now=VAULT_NOW)
    cfg.setdefault("retention_sweep_s", 0.0)
    config = VaultConfig(account=account, state_dir=str(state), **cfg)
    app = create_app(config, keys=keys, clock=lambda: float(VAULT_NOW), staff=StaffSettings())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    vault = VaultServer(account, server, keys, state)
    for scope in sorted(SCOPES):
        vault.tokens[scope], _ = await app[STAFF_TOKENS].issue(f"staff-{scope}", [scope],
                                                               now=VAULT_NOW)
    return vault


@pytest.fixture
async def two_vaults(tmp_path: pathlib.Path) -> AsyncIterator[dict[str, VaultServer]]:
    """Vaults of acme-a and acme-b, each with its own staff tokens and data."""
    vaults: dict[str, VaultServer] = {}
    try:
        for name in ACCOUNTS:
            vaults[name] = await start_vault(tmp_path / f"vault-{name}", name)
        yield vaults
    finally:
        for v in vaults.values():
            await v.server.close()

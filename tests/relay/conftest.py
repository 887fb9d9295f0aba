"""Fixtures for relay tests: a real relay app on a real 127.0.0.1 socket, real SQLite."""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from envelope import EncryptionKey, IdentityKey, b64e, sign_vault_key_statement
from relay.state import STATE, RelayState
from tests.support.procs import OperatorRelay

OPERATOR = "operator-token-for-tests-0123456789"
ORIGIN = "https://clinic.example"


class FakeClock:
    """A settable clock injected into the app (real time unless moved)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Relay:
    """A running relay and helpers to call it."""

    server: OperatorRelay
    session: aiohttp.ClientSession
    state_dir: pathlib.Path
    clock: FakeClock
    vaults: dict[str, tuple[IdentityKey, EncryptionKey]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> RelayState:
        return self.server.app[STATE]  # type: ignore[index]

    async def call(self, method: str, path: str, token: str | None = OPERATOR,
                   json: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.session.request(method, self.url + path, json=json, headers=headers,
                                        **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, body

    async def account(self, name: str, *, compliance: bool = False,
                      retention_days: int = 30) -> str:
        """Create an account (optionally paired and in compliance mode); return admin token."""
        status, _ = await self.call("POST", "/v1/accounts", json={
            "account": name, "origins": [ORIGIN], "mode": "standard",
            "retention_days": retention_days})
        assert status == 201
        status, body = await self.call("POST", f"/v1/accounts/{name}/admin-tokens")
        assert status == 201
        admin = str(body["token"])
        if compliance:
            await self.pair_and_toggle(name, admin)
        return admin

    async def pair_and_toggle(self, name: str, admin: str, *,
                              valid_for: int = 86400 * 30) -> None:
        """Pair a fresh vault identity with ``name`` and turn compliance mode on."""
        ident, vkey = IdentityKey.generate(), EncryptionKey.generate()
        self.vaults[name] = (ident, vkey)
        now = int(self.clock())
        st = sign_vault_key_statement(ident, account=name, key=vkey.public_bytes,
                                      not_before=now - 60, not_after=now + valid_for)
        status, body = await self.call("PUT", f"/v1/accounts/{name}/vault", admin, json={
            "identity_key": b64e(ident.public_bytes), "key_statement": st})
        assert status == 200, body
        status, body = await self.call("PUT", f"/v1/accounts/{name}/mode", admin,
                                       json={"mode": "compliance"})
        assert status == 200, body

    async def agent_token(self, account: str, admin: str, agent: str) -> str:
        status, body = await self.call("POST", f"/v1/accounts/{account}/agent-tokens", admin,
                                       json={"agent": agent})
        assert status == 201
        return str(body["token"])


async def start_relay(state_dir: pathlib.Path, clock: FakeClock,
                      _prestart: Callable[[web.Application], object] | None = None,
                      **overrides: Any) -> OperatorRelay:
    """Start the relay app from ``create_app`` on 127.0.0.1 (``_prestart`` may add to it)."""
    # Every test client is 127.0.0.1: the per-address engagement cap is raised unless a
    # test sets it (tests/relay/test_relay_review_fixes.py does).
    overrides.setdefault("max_engagements_per_address", 10_000)
    return await OperatorRelay.start(state_dir.parent, OPERATOR, state_dir=state_dir,
                                     clock=clock, prestart=_prestart, **overrides)


@pytest.fixture
async def relay(tmp_path: pathlib.Path) -> AsyncIterator[Relay]:
    clock = FakeClock()
    server = await start_relay(tmp_path / "state", clock)
    try:
        async with aiohttp.ClientSession() as session:
            yield Relay(server, session, tmp_path / "state", clock)
    finally:
        await server.close()

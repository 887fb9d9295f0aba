"""Abuse limits, outbox bound, idle timeout and mode enforcement on a live relay."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from relay.client import ChatClientError, VisitorClient

from .conftest import ORIGIN, FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def _relay(tmp_path: pathlib.Path, **overrides: Any) -> AsyncIterator[Relay]:
    clock = FakeClock()
    server = await start_relay(tmp_path / "state", clock, **overrides)
    try:
        async with aiohttp.ClientSession() as session:
            yield Relay(server, session, tmp_path / "state", clock)
    finally:
        await server.close()


async def _refusal(make: Callable[[], VisitorClient]) -> str:
    visitor = make()
    try:
        with pytest.raises(ChatClientError) as exc:
            await visitor.connect()
        return exc.value.code
    finally:
        await visitor.close()


async def test_connection_rate_per_address(tmp_path: pathlib.Path) -> None:
    async with _relay(tmp_path, connections_per_ip_per_minute=3,
                      trusted_proxies=("127.0.0.1",)) as relay:
        await relay.account("shop")

        def visitor(ip: str) -> VisitorClient:
            return VisitorClient(relay.url, "shop", origin=ORIGIN,
                                 headers={"X-Forwarded-For": ip})
        clients = [visitor("192.0.2.1") for _ in range(3)]
        for c in clients:
            await c.connect()
        assert await _refusal(lambda: visitor("192.0.2.1")) == "rate.limited"
        other = visitor("192.0.2.2")
        await other.connect()  # another address is not affected
        relay.clock.offset += 61  # the window slides: the address is forgotten
        again = visitor("192.0.2.1")
        await again.connect()
        for c in [*clients, other, again]:
            await c.close()


async def test_concurrent_engagements_per_account(tmp_path: pathlib.Path) -> None:
    async with _relay(tmp_path, max_engagements_per_account=2) as relay:
        await relay.account("shop")
        await relay.account("bank")
        live = [VisitorClient(relay.url, "shop", origin=ORIGIN) for _ in range(2)]
        for c in live:
            await c.connect()
        assert await _refusal(lambda: VisitorClient(relay.url, "shop", origin=ORIGIN)) == \
            "account.busy"
        bank = VisitorClient(relay.url, "bank", origin=ORIGIN)
        await bank.connect()  # another tenant is not affected
        for c in [*live, bank]:
            await c.close()


async def test_idle_timeout(tmp_path: pathlib.Path) -> None:
    async with _relay(tmp_path, idle_timeout_seconds=0.3) as relay:
        await relay.account("shop")
        visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
        await visitor.connect()
        closed = await visitor.next_event(types=("closed",))
        assert closed == {"type": "closed", "code": 4408, "error": "session.idle_timeout"}
        await visitor.close()


async def test_outbox_bound_refuses_when_full(tmp_path: pathlib.Path) -> None:
    async with _relay(tmp_path, outbox_max_bytes=4000) as relay:
        await relay.account("clinic", compliance=True)
        ident, _ = relay.vaults["clinic"]
        visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN,
                                pinned_fingerprint=ident.fingerprint)
        await visitor.connect()
        for i in range(10):
            await visitor.send(f"m{i}")
        closed = await visitor.next_event(types=("closed",))
        assert closed["code"] == 4503 and closed["error"] == "outbox.full"
        stats = await relay.state.store.outbox_stats("clinic")
        assert stats.total_bytes <= 4000
        await visitor.close()
        _, metrics = await relay.call("GET", "/metrics", token=None)
        assert f"relay_outbox_backlog {float(stats.entries)}" in metrics
        assert "relay_outbox_oldest_age_seconds" in metrics


async def test_mode_change_is_enforced_at_once(tmp_path: pathlib.Path) -> None:
    async with _relay(tmp_path) as relay:
        admin = await relay.account("clinic", compliance=True)
        ident, _ = relay.vaults["clinic"]
        visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN,
                                pinned_fingerprint=ident.fingerprint)
        await visitor.connect()
        status, _ = await relay.call("PUT", "/v1/accounts/clinic/mode", admin,
                                     json={"mode": "standard", "confirm": True})
        assert status == 200
        closed = await visitor.next_event(types=("closed",))
        assert closed == {"type": "closed", "code": 4410, "error": "mode.changed"}
        await visitor.close()
        # A fresh standard-mode visitor may now send plaintext.
        plain = VisitorClient(relay.url, "clinic", origin=ORIGIN)
        assert (await plain.connect())["mode"] == "standard"
        await plain.send("hello")
        assert (await plain.next_event(types=("ack",)))["seq"] == 1
        await plain.close()
        _, changes = await relay.call("GET", "/v1/accounts/clinic/mode-changes", admin)
        assert [c["actor"] for c in changes["changes"]] == ["account-admin", "account-admin"]


def test_protocol_catalogue_lists_every_close_code() -> None:
    from relay import protocol

    doc = protocol.__doc__ or ""
    for code, number in protocol.CLOSE_CODES.items():
        assert code in doc and str(number) in doc, code
    assert json.loads(json.dumps(protocol.CLOSE_CODES)) == protocol.CLOSE_CODES

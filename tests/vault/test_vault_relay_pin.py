"""Relay-role envelopes: the relay signing key pinned at `pair` (or trusted on first use
with an alert on change), offload only before any party spoke, one connection-info."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from controller_vault.__main__ import main
from envelope import PartyKeys, b64e

from .conftest import ACCOUNT, NOW

pytestmark = pytest.mark.timeout(30)
OFFLOAD = {"messages": [{"role": "visitor", "text": "earlier words", "ts": NOW - 60}],
           "started": NOW - 120, "mode": "standard"}


def _codes(result):
    return [code for _, code in result.rejected_indexes]


async def test_without_a_pairing_pin_a_relay_key_change_is_accepted_but_alerted(
        vault, conversation):
    relay_a, relay_b = PartyKeys.generate(), PartyKeys.generate()
    first = await vault.ingest([conversation("eng-00000001").env(
        relay_a, "connection-info", {"ip": "203.0.113.1"}, role="relay")], NOW)
    assert first.stored == 1 and vault.anomalies == []
    pin = await vault.store.relay_pin()
    assert pin is not None and (pin.public_key, pin.source) == (relay_a.signing_public_bytes,
                                                                "tofu")
    second = await vault.ingest([conversation("eng-00000002").env(
        relay_b, "connection-info", {"ip": "203.0.113.2"}, role="relay")], NOW + 1)
    assert second.stored == 1
    assert vault.anomalies == [("relay_key_changed", "vault.relay_key_changed")]
    assert (await vault.store.relay_pin()).public_key == relay_b.signing_public_bytes
    assert [e.action for e, _, _ in await vault.store.audit_rows()].count("relay-key-tofu") == 2


async def test_pair_pins_the_relay_key_and_other_keys_are_refused(vault, conversation,
                                                                  aiohttp_server, tmp_path):
    relay, impostor = PartyKeys.generate(), PartyKeys.generate()

    async def put_vault(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer admin-secret"
        return web.json_response({"account": ACCOUNT, "paired": True})

    async def get_keys(request: web.Request) -> web.Response:
        return web.json_response({"account": ACCOUNT,
                                  "relay_signing_key": b64e(relay.signing_public_bytes)})

    app = web.Application()
    app.router.add_put(f"/v1/accounts/{ACCOUNT}/vault", put_vault)
    app.router.add_get(f"/v1/accounts/{ACCOUNT}/keys", get_keys)
    server = await aiohttp_server(app)
    code = await asyncio.to_thread(main, [
        "pair", "--relay", str(server.make_url("/")).rstrip("/"), "--account", ACCOUNT,
        "--token", "admin-secret", "--state-dir", str(vault.state)])
    assert code == 0
    pin = await vault.store.relay_pin()
    assert pin is not None and (pin.public_key, pin.source) == (relay.signing_public_bytes,
                                                                "pair")

    conv = conversation("eng-00000003")
    forged = conv.env(impostor, "connection-info", {"ip": "198.51.100.66"}, role="relay")
    forged_offload = conversation("eng-00000004").env(impostor, "offload", OFFLOAD,
                                                      role="relay")
    result = await vault.ingest([forged, forged_offload], NOW)
    assert _codes(result) == ["vault.relay_key_mismatch"] * 2 and result.receipt is None
    assert await vault.envelope_count() == 0
    assert ("forged_envelope", "vault.relay_key_mismatch") in vault.anomalies
    good = await vault.ingest([conv.env(relay, "connection-info", {"ip": "203.0.113.3"},
                                        role="relay")], NOW + 1)
    assert good.stored == 1
    assert (await vault.store.relay_pin()).source == "pair"  # never downgraded to TOFU


async def test_offload_only_before_any_party_envelope(vault, conversation):
    relay, visitor = PartyKeys.generate(), PartyKeys.generate()
    fresh = conversation("eng-00000005")
    assert (await vault.ingest([fresh.env(relay, "offload", OFFLOAD, role="relay")],
                               NOW)).stored == 1
    live = conversation("eng-00000006")
    await vault.ingest([live.env(visitor, "message", {"text": "hello"})], NOW)
    late = await vault.ingest([live.env(relay, "offload", OFFLOAD, role="relay")], NOW + 1)
    assert _codes(late) == ["vault.offload_not_allowed"]
    # Also within one batch: the party envelope first, then relay "history".
    other = conversation("eng-00000007")
    batch = await vault.ingest([other.env(visitor, "message", {"text": "hi"}),
                                other.env(relay, "offload", OFFLOAD, role="relay")], NOW + 2)
    assert batch.stored == 1 and _codes(batch) == ["vault.offload_not_allowed"]
    assert ("forged_envelope", "vault.offload_not_allowed") in vault.anomalies


async def test_connection_info_only_once_per_engagement(vault, conversation):
    relay = PartyKeys.generate()
    conv = conversation("eng-00000008")
    first = await vault.ingest([conv.env(relay, "connection-info", {"ip": "203.0.113.8"},
                                         role="relay")], NOW)
    assert first.stored == 1
    again = await vault.ingest([conv.env(relay, "connection-info", {"ip": "198.51.100.9"},
                                         role="relay")], NOW + 1)
    assert _codes(again) == ["vault.connection_info_repeated"]
    same_batch = conversation("eng-00000009")
    both = await vault.ingest([
        same_batch.env(relay, "connection-info", {"ip": "203.0.113.10"}, role="relay"),
        same_batch.env(relay, "connection-info", {"ip": "203.0.113.11"}, role="relay")], NOW)
    assert both.stored == 1 and _codes(both) == ["vault.connection_info_repeated"]

"""A relay run at log_level=DEBUG writes no SQL arguments: aiosqlite stays at INFO."""

from __future__ import annotations

import logging
import pathlib

import aiohttp
import pytest

from relay.admin import hash_token

from .conftest import OPERATOR, ORIGIN, FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)


async def test_debug_run_keeps_aiosqlite_quiet(tmp_path: pathlib.Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    # A host that sends every logger's DEBUG lines somewhere (root at DEBUG), and an
    # aiosqlite logger nobody has configured yet.
    logging.getLogger("aiosqlite").setLevel(logging.NOTSET)
    caplog.set_level(logging.DEBUG)
    server = await start_relay(tmp_path / "state", FakeClock(), log_level="DEBUG")
    try:
        async with aiohttp.ClientSession() as session:
            relay = Relay(server, session, tmp_path / "state", FakeClock())
            admin = await relay.account("shop")
            status, _ = await relay.call("GET", "/v1/accounts/shop/engagements", admin)
            assert status == 200
    finally:
        await server.close()
    assert logging.getLogger("relay").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("aiosqlite").getEffectiveLevel() >= logging.INFO
    quiet = [r for r in caplog.records if r.name.startswith("aiosqlite")
             and r.levelno < logging.INFO]
    assert quiet == []
    for secret in (hash_token(admin), hash_token(OPERATOR), ORIGIN):
        assert secret not in caplog.text
    assert hash_token(admin) not in (tmp_path / "state" / "relay.log").read_text()

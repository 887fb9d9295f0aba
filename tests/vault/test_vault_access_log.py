"""The vault's access log keeps staff IPs, headers, raw paths and queries out of the logs."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from controller_vault.access_log import ACCESS_LOGGER_NAME, app_runner
from controller_vault.app import create_app
from controller_vault.config import load_config
from controller_vault.keyfiles import init_vault

NOW = 1_800_000_000
CANARY = "zq7canary"
pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_access_log_has_route_template_and_no_request_details(tmp_path, caplog):
    state = tmp_path / "v"
    init_vault(state, "clinic", now=NOW)
    cfg = load_config(None, env={"VAULT_ACCOUNT": "clinic", "VAULT_STATE_DIR": str(state)})
    caplog.set_level(logging.DEBUG)
    runner = app_runner(create_app(cfg, clock=lambda: NOW))  # the runner `serve` uses
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        headers = {"User-Agent": f"Browser/{CANARY}-ua", "X-Forwarded-For": "203.0.113.77",
                   "Referer": f"https://intranet.example/{CANARY}-ref",
                   "Authorization": f"Bearer {CANARY}-token"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            url = (f"http://127.0.0.1:{port}/v1/engagements/eng-{CANARY}"
                   f"?purpose=subject+{CANARY}+asked+by+phone")
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 401
            async with http.get(f"http://127.0.0.1:{port}/healthz?{CANARY}=1",
                                headers=headers) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    for needle in (CANARY, "203.0.113.77", "127.0.0.1 ", "Browser/", "intranet.example",
                   "purpose="):
        assert needle not in text, needle
    access = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER_NAME]
    assert any(line.startswith("http GET /v1/engagements/{engagement_id} 401 ")
               for line in access), access
    assert any(line.startswith("http GET /healthz 200 ") for line in access), access
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]

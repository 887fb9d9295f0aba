"""The vault's aiohttp application: one ``create_app(config)``.

It opens the key files and both stores, starts the outbound vault link (when a relay
URL is configured) and a checkpoint task, and serves ``/healthz``, ``/readyz``,
``/metrics`` and ``/v1/openapi.json`` on the controller's own network. The staff API
(transcripts, export, erasure) mounts on the same app later.

>>> from controller_vault.config import VaultConfig
>>> app = create_app(VaultConfig(account="clinic", state_dir="/nonexistent"))
>>> sorted({r.resource.canonical for r in app.router.routes()})[:2]
['/healthz', '/metrics']
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .checkpoints import write_checkpoint
from .config import VaultConfig
from .errors import VaultError
from .ingest import Ingestor
from .keyfiles import VaultKeys, load_vault_keys, read_passphrase
from .keystore import KeyStore
from .link_client import VaultLink
from .metrics import VaultMetrics
from .store import AuditRecord, VaultStore

__all__ = [
    "CONFIG",
    "INGESTOR",
    "KEYS",
    "KEYSTORE",
    "LINK",
    "METRICS",
    "STORE",
    "create_app",
    "openapi_document",
]

log = logging.getLogger("controller_vault")

CONFIG = web.AppKey("config", VaultConfig)
KEYS = web.AppKey("keys", VaultKeys)
STORE = web.AppKey("store", VaultStore)
KEYSTORE = web.AppKey("keystore", KeyStore)
INGESTOR = web.AppKey("ingestor", Ingestor)
METRICS = web.AppKey("metrics", VaultMetrics)
LINK = web.AppKey("link", VaultLink)
_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the vault serves."""
    text = importlib.resources.files("controller_vault").joinpath("openapi.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except VaultError as exc:
        return web.json_response({"error": {"code": exc.code, "message": exc.message}},
                                 status=exc.status)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    if STORE not in app:
        return web.json_response({"status": "starting"}, status=503)
    link = app[LINK].state if LINK in app else "disabled"
    return web.json_response({"status": "ready", "link": link})


async def _metrics(request: web.Request) -> web.Response:
    app = request.app
    m = app[METRICS]
    if STORE in app:
        stats = await app[STORE].stats()
        m.incomplete.set(stats.incomplete)
        m.engagements.set(stats.engagements)
        m.envelopes.set(stats.envelopes)
        m.store_bytes.set(stats.bytes_on_disk)
        m.audit_entries.set(stats.audit_entries)
        keys = app[KEYS]
        created = keys.key_created.get(keys.current_key_id)
        if created is not None:
            m.key_age.set(max(0.0, app[_CLOCK]() - created))
    return web.Response(body=generate_latest(m.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def _checkpoint_loop(app: web.Application, last_seq: int) -> None:
    cfg = app[CONFIG]
    last_at = app[_CLOCK]()
    while True:
        await asyncio.sleep(1.0)
        seq, _ = await app[STORE].audit_head()
        now = app[_CLOCK]()
        grown = seq > last_seq
        if grown and (seq - last_seq >= cfg.checkpoint_every
                      or now - last_at >= cfg.checkpoint_interval_s):
            written = await write_checkpoint(app[STORE], app[KEYS], cfg.state_path, int(now))
            last_seq, last_at = written or last_seq, now


async def _vault_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    if KEYS not in app:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        app[KEYS] = load_vault_keys(cfg.state_path, credentials_dir=creds,
                                    passphrase=read_passphrase(cfg.passphrase_file, creds))
    keys = app[KEYS]
    metrics = app[METRICS]
    store = await VaultStore.open(cfg.state_path / "vault.db", keys.account,
                                  busy_timeout_ms=cfg.busy_timeout_ms)
    keystore = await KeyStore.open(cfg.state_path / "keys.db", keys.master_key,
                                   busy_timeout_ms=cfg.busy_timeout_ms)

    def anomaly(kind: str, code: str) -> None:
        metrics.count_anomaly(kind, code)
        log.warning("anomaly %s (%s)", kind, code)  # kinds and codes only: no personal data

    app[STORE], app[KEYSTORE] = store, keystore
    app[INGESTOR] = Ingestor(keys, store, keystore, on_anomaly=anomaly)
    now = int(app[_CLOCK]())
    await store.append_audit([AuditRecord("system", "service-start", "operation", "vault",
                                          {"key_id": keys.current_key_id})], now)
    tasks = []
    tasks.append(asyncio.create_task(_checkpoint_loop(app, 0)))
    if cfg.relay_url:
        app[LINK] = VaultLink(cfg, keys, app[INGESTOR], metrics, clock=app[_CLOCK])
        tasks.append(asyncio.create_task(app[LINK].run()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(VaultError):
            await store.append_audit([AuditRecord("system", "service-stop", "operation",
                                                  "vault", {})], int(app[_CLOCK]()))
            await write_checkpoint(store, keys, cfg.state_path, int(app[_CLOCK]()))
        await keystore.close()
        await store.close()


def create_app(config: VaultConfig, *, keys: VaultKeys | None = None,
               clock: Callable[[], float] = time.time) -> web.Application:
    """Build the vault app; keys are loaded from the state directory unless given."""
    app = web.Application(middlewares=[_errors])
    app[CONFIG] = config
    app[METRICS] = VaultMetrics()
    app[_CLOCK] = clock
    if keys is not None:
        app[KEYS] = keys
    app.cleanup_ctx.append(_vault_ctx)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/openapi.json", _openapi)
    return app

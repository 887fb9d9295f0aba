"""The vault's aiohttp application: one ``create_app(config)``.

It opens the key files and both stores, starts the outbound vault link (when a relay
URL is configured) and a checkpoint task, and serves ``/healthz``, ``/readyz``,
``/metrics`` and ``/v1/openapi.json`` on the controller's own network, plus the staff
API (``staff_api``: transcripts, subject export, erasure, retention, audit), the
retention sweeper, the erasure-notice pump, transcript email and anomaly alerts.

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

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .appkeys import (
    ALERTS,
    CONFIG,
    INGESTOR,
    KEYS,
    KEYSTORE,
    LINK,
    MAILER,
    METRICS,
    NOTICES,
    SETTINGS,
    STORE,
)
from .appkeys import CLOCK as _CLOCK
from .audit import entry_hash, verify_audit_chain
from .checkpoints import verify_audit, write_checkpoint
from .config import StaffSettings, VaultConfig, load_staff_settings
from .errors import VaultError
from .ingest import Ingestor
from .keyfiles import VaultKeys, load_vault_keys, read_passphrase
from .keystore import KeyStore
from .link_client import VaultLink
from .metrics import VaultMetrics
from .staff.access import STAFF_AUDIT, STAFF_CLOCK, STAFF_TOKENS, AccessRecord
from .staff.alerts import AlertDispatcher
from .staff.errors import StaffError
from .staff.token_store import SqliteTokenStore
from .staff.tokens import StaffTokens
from .staff_api import add_staff_routes
from .staff_services import AlertRaiser, NoticePump, TranscriptMailer, sweep_retention
from .store import AuditRecord, VaultStore

__all__ = [
    "ALERTS",
    "CONFIG",
    "INGESTOR",
    "KEYS",
    "KEYSTORE",
    "LINK",
    "MAILER",
    "METRICS",
    "NOTICES",
    "SETTINGS",
    "STORE",
    "create_app",
    "openapi_document",
]

log = logging.getLogger("controller_vault")


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
    except (VaultError, StaffError) as exc:
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


class _AuditSigner:
    """Signs the audit chain's head now and then, over entries it has just verified.

    The service checks its own log, so a broken one is found without anybody running
    `controller-vault audit verify`: the whole log (with every signed checkpoint) at
    start, and before each signing the entries appended since the last check. A log
    that does not verify (an entry edited, deleted or reordered in vault.db, a disk
    fault) raises the audit_verification_failed alert, and nothing more is signed, so a
    signed checkpoint never vouches for a chain that already failed its own hashes (at
    start, a chain sound in itself that only disagrees with older checkpoints is signed
    on: see start).
    (Entries after the last checkpoint rewritten with recomputed hashes cannot be told
    from honest appends without a key; the signed checkpoints bound that window.)
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.verified: tuple[int, str] | None = None
        self.broken = False

    async def start(self) -> None:
        """Verify the whole log (with every signed checkpoint) once.

        A chain that is sound in itself but disagrees with older signed checkpoints (an
        older data store restored over a live one: the checkpoint file still signs the
        entries the restore lost) raises the alert and is signed on from here: those
        checkpoints keep witnessing the loss for `audit verify`, and stopping would
        leave everything after a restore unsigned. A chain broken in itself is not.
        """
        app = self._app
        problems = await verify_audit(app[STORE], app[CONFIG].state_path)
        if problems:
            rows = await app[STORE].audit_rows()
            if verify_audit_chain(rows, [], b""):
                self._broken(problems[0].code)
                return
            self._alert(problems[0].code)
        self.verified = await app[STORE].audit_head()

    async def sign(self, now: int) -> int | None:
        """Verify what was appended since, then sign it; None when nothing was signed."""
        if self.verified is None:
            return None
        app = self._app
        seq, head = self.verified
        rows = await app[STORE].audit_rows_after(max(0, seq - 1))
        if seq and rows:
            # The last verified entry itself is hashed again: an edit to it leaves its
            # stored hash (and the next entry's link) as they were.
            first, prev, stored = rows.pop(0)
            if first.seq != seq or stored != head or entry_hash(prev, first) != head:
                self._broken("audit.changed")
                return None
        problems = verify_audit_chain(rows, [], b"", after=self.verified)
        if problems:
            self._broken(problems[0].code)
            return None
        if rows:
            self.verified = (rows[-1][0].seq, rows[-1][2])
        return await write_checkpoint(app[STORE], app[KEYS], app[CONFIG].state_path, now,
                                      head=self.verified)

    def _broken(self, code: str) -> None:
        self.verified, self.broken = None, True
        log.error("audit log does not verify (%s): no further checkpoints are signed", code)
        self._app[ALERTS].raise_kind("audit_verification_failed", code)

    def _alert(self, code: str) -> None:
        log.error("audit log disagrees with a signed checkpoint (%s): run audit verify", code)
        self._app[ALERTS].raise_kind("audit_verification_failed", code)


async def _checkpoint_loop(app: web.Application, signer: _AuditSigner) -> None:
    cfg = app[CONFIG]
    last_at = app[_CLOCK]()
    await signer.start()
    last_seq = signer.verified[0] if signer.verified else 0
    while signer.verified is not None:
        await asyncio.sleep(1.0)
        seq, _ = await app[STORE].audit_head()
        now = app[_CLOCK]()
        if seq > last_seq and (seq - last_seq >= cfg.checkpoint_every
                               or now - last_at >= cfg.checkpoint_interval_s):
            last_seq, last_at = await signer.sign(int(now)) or last_seq, now


async def _retention_loop(app: web.Application) -> None:
    cfg, settings = app[CONFIG], app[SETTINGS]
    while True:
        try:
            result = await sweep_retention(app[STORE], app[KEYSTORE], app[KEYS],
                                           settings.retention, now=int(app[_CLOCK]()))
            if result.erased.engagements:
                app[NOTICES].wake()
                app[ALERTS].record("erasure")
            if not result.erased.complete:
                app[ALERTS].raise_kind("erasure_incomplete_checkpoint",
                                       "vault.erasure_incomplete_checkpoint",
                                       result.erased.engagements)
        except VaultError as exc:  # a locked store: try again next round
            log.error("retention sweep failed: %s", exc.code)
        await asyncio.sleep(cfg.retention_sweep_s)


async def _vault_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    if KEYS not in app:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        app[KEYS] = load_vault_keys(cfg.state_path, credentials_dir=creds,
                                    passphrase=read_passphrase(cfg.passphrase_file, creds))
    keys = app[KEYS]
    metrics = app[METRICS]
    # A store refused after another opened (keys.db of a newer schema, say) closes the
    # one already open: its aiosqlite thread kept `serve` alive after the error line.
    async with contextlib.AsyncExitStack() as opening:
        store = await VaultStore.open(cfg.state_path / "vault.db", keys.account,
                                      busy_timeout_ms=cfg.busy_timeout_ms)
        opening.push_async_callback(store.close)
        keystore = await KeyStore.open(cfg.state_path / "keys.db", keys.master_key,
                                       busy_timeout_ms=cfg.busy_timeout_ms)
        opening.push_async_callback(keystore.close)
        if SETTINGS not in app:
            app[SETTINGS] = load_staff_settings(cfg.config_file or None)
        tokens = await SqliteTokenStore.open(cfg.state_path)
        opening.pop_all()  # all open: the finally at the end closes them
    settings = app[SETTINGS]
    session = aiohttp.ClientSession()
    clock = app[_CLOCK]
    alerts = AlertRaiser(AlertDispatcher(settings.alerts, registry=metrics.registry,
                                         session=session, smtp=settings.smtp),
                         keys.account, clock=clock)
    mailer = TranscriptMailer(store, keystore, settings.smtp, clock=clock,
                              on_outcome=metrics.count_transcript_mail)
    notices = NoticePump(store, clock=clock)

    def anomaly(kind: str, code: str) -> None:
        metrics.count_anomaly(kind, code)
        log.warning("anomaly %s (%s)", kind, code)  # kinds and codes only: no personal data
        alerts.raise_kind(kind, code)

    def redacted(counts: dict[str, int]) -> None:
        for rule, n in counts.items():
            metrics.redactions.labels(rule=rule).inc(n)

    app[STORE], app[KEYSTORE], app[ALERTS], app[MAILER], app[NOTICES] = \
        store, keystore, alerts, mailer, notices
    app[STAFF_TOKENS] = StaffTokens(tokens)
    app[STAFF_CLOCK] = clock

    async def audit_access(record: AccessRecord) -> None:
        # Route template and ids only: the request's path values and body never.
        await store.append_audit([AuditRecord(
            record.actor, "staff-access", record.purpose or "-", record.route,
            {"token_id": record.token_id, "scope": record.scope,
             "method": record.method})], int(clock()))

    app[STAFF_AUDIT] = audit_access
    app[INGESTOR] = Ingestor(keys, store, keystore, on_anomaly=anomaly,
                             redaction=settings.redaction, on_redacted=redacted,
                             on_transcript_request=mailer.request)
    now = int(app[_CLOCK]())
    await store.append_audit([AuditRecord("system", "service-start", "operation", "vault",
                                          {"key_id": keys.current_key_id})], now)
    tasks = []
    signer = _AuditSigner(app)
    tasks.append(asyncio.create_task(_checkpoint_loop(app, signer)))
    tasks.append(asyncio.create_task(mailer.run()))  # jobs a crash left are sent now
    if cfg.retention_sweep_s > 0:
        tasks.append(asyncio.create_task(_retention_loop(app)))
    if cfg.relay_url:
        app[LINK] = VaultLink(cfg, keys, app[INGESTOR], metrics, clock=app[_CLOCK],
                              notices=notices,
                              on_auth_failed=lambda: alerts.raise_kind("link_auth_failed",
                                                                       "link.auth_failed"))
        tasks.append(asyncio.create_task(app[LINK].run()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            # A background task that died of an error must not skip the rest of the
            # stop (audit entry, checkpoint, closing the stores).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(VaultError):
            await store.append_audit([AuditRecord("system", "service-stop", "operation",
                                                  "vault", {})], int(app[_CLOCK]()))
            if signer.verified is None and not signer.broken:
                await signer.start()  # stopped before the loop's first check
            await signer.sign(int(app[_CLOCK]()))
        # No mailer drain: unsent transcript emails are durable jobs, sent after restart.
        await alerts.drain()  # after the last check, so its alert still goes out
        await session.close()
        await tokens.close()
        await keystore.close()
        await store.close()


def create_app(config: VaultConfig, *, keys: VaultKeys | None = None,
               clock: Callable[[], float] = time.time,
               staff: StaffSettings | None = None) -> web.Application:
    """Build the vault app; keys and staff settings are loaded from disk unless given."""
    app = web.Application(middlewares=[_errors])
    app[CONFIG] = config
    if staff is not None:
        app[SETTINGS] = staff
    app[METRICS] = VaultMetrics()
    app[_CLOCK] = clock
    if keys is not None:
        app[KEYS] = keys
    app.cleanup_ctx.append(_vault_ctx)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/openapi.json", _openapi)
    add_staff_routes(app)
    return app

"""``create_app(config)``: the one factory that builds the relay's aiohttp app.

>>> from relay.config import RelayConfig
>>> callable(create_app)
True
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admin import error_middleware, routes
from .atrest import TranscriptCipher
from .chat import agent_socket, visitor_socket
from .config import RelayConfig, read_operator_token
from .hub import ChatHub
from .keyring import load_keyring
from .logs import configure_logging, log_event
from .metrics import RelayMetrics
from .offload import Offloader
from .openapi import openapi_document
from .sqlite_store import SqliteStore
from .state import STATE, RelayState
from .sweeper import sweep_once
from .vault_link import vault_link_socket

__all__ = ["create_app"]

#: Bounds of the shutdown steps (SIGTERM must end the process; see relay/notify.py).
_STEP_SECONDS = 3.0
_STORE_CLOSE_SECONDS = 5.0


async def _metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    stats = await st.store.outbox_stats()
    st.metrics.outbox_backlog.set(stats.entries)
    st.metrics.outbox_bytes.set(stats.total_bytes)
    st.metrics.outbox_oldest_age.set(0 if stats.oldest_created_at is None
                                     else st.clock() - stats.oldest_created_at)
    st.metrics.commit_batches.set(st.store.batches_committed)
    return web.Response(body=generate_latest(st.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[STATE].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[STATE].config.public_origin))


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    await st.store.open()
    st.hub = ChatHub(st)
    st.offload = Offloader(st)
    await st.offload.refresh_metrics()
    st.ready = True

    async def periodic(interval: float, job: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()  # type: ignore[misc]
            except Exception:
                log_event(st.logger, 40, "background.failed", job=getattr(job, "__name__", "?"))

    async def sweep() -> None:
        await sweep_once(st, now=st.clock())

    tasks = [asyncio.create_task(periodic(1.0, st.hub.tick)),
             asyncio.create_task(st.offload.run()),
             asyncio.create_task(periodic(st.config.sweep_interval_seconds, sweep))]
    log_event(st.logger, 20, "relay.started", port=st.config.port)
    yield
    st.ready = False
    for task in tasks:
        task.cancel()
    await _bounded(st, "shutdown.background", asyncio.gather(*tasks, return_exceptions=True),
                   _STEP_SECONDS)
    # The store's close drains the group-commit queue: nothing acknowledged is lost.
    # Bounded all the same: a write that never resolves must not keep SIGTERM waiting.
    await _bounded(st, "shutdown.store_close", st.store.close(), _STORE_CLOSE_SECONDS)
    log_event(st.logger, 20, "relay.stopped")


async def _bounded(st: RelayState, code: str, step: Awaitable[object], timeout: float) -> None:
    """Await one shutdown step for at most ``timeout`` seconds; log ``code`` if it overran."""
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log_event(st.logger, 30, "shutdown.step_timeout", code=code, seconds=timeout)
    except Exception as exc:
        log_event(st.logger, 40, "shutdown.step_failed", code=code, exc_type=type(exc).__name__)


async def _going_away(app: web.Application) -> None:
    # on_shutdown runs before aiohttp drops open connections: clients get a proper
    # going-away close (and resume elsewhere) instead of a broken socket.
    st = app[STATE]
    st.ready = False
    if st.hub is not None:
        await _bounded(st, "shutdown.close_sockets", st.hub.close_all(), _STEP_SECONDS)
    links = [link.close("going-away", "relay shutting down") for link in st.links.all()]
    await _bounded(st, "shutdown.close_links", asyncio.gather(*links, return_exceptions=True),
                   _STEP_SECONDS)


def create_app(config: RelayConfig, *, clock: Callable[[], float] = time.time,
               env: Mapping[str, str] | None = None) -> web.Application:
    """Build the relay app for ``config`` (tests pass their own clock)."""
    env = os.environ if env is None else env
    state_dir = pathlib.Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    log_file = str(state_dir / config.log_file) if config.log_file else None
    logger = configure_logging(config.log_level, log_file)
    keyring = load_keyring(state_dir, env=env)
    store = SqliteStore(state_dir / "relay.sqlite3", max_batch=config.group_commit_max_batch)
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app[STATE] = RelayState(config=config, store=store, metrics=RelayMetrics.create(),
                            keyring=keyring, cipher=TranscriptCipher(store, keyring.master_key),
                            logger=logger, operator_token=read_operator_token(config, env=env),
                            clock=clock)
    # Committed outbox entries go to the live vault link from memory (no read back).
    store.on_outbox_committed = app[STATE].links.offer
    app.add_routes(routes)
    app.router.add_get("/v1/chat/visitor/{account}", visitor_socket)
    app.router.add_get("/v1/chat/agent", agent_socket)
    app.router.add_get("/v1/vault/link", vault_link_socket)
    app.router.add_get("/v1/openapi.json", _openapi)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_going_away)
    return app

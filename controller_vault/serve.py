"""Running the vault service: the app on its port, systemd readiness and watchdog.

With ``$NOTIFY_SOCKET`` set (systemd ``Type=notify``), READY=1 is sent once the port is
listening and WATCHDOG=1 every ``watchdog_interval_s``; SIGTERM stops cleanly, writing a
final audit checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import sdnotify
from aiohttp import web

from .access_log import app_runner
from .app import create_app
from .config import VaultConfig

__all__ = ["serve"]

log = logging.getLogger("controller_vault")


async def _watchdog(notifier: sdnotify.SystemdNotifier, interval: float) -> None:
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def serve(config: VaultConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Not aiohttp's default access log: it writes staff IPs, User-Agents and the full
    # URL with its free-text ?purpose= to journald (see access_log).
    runner = app_runner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    log.info("vault serving on %s:%s", config.host, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = None
    if os.environ.get("NOTIFY_SOCKET"):
        notifier = sdnotify.SystemdNotifier()
        if notifier.socket is not None:
            # Never block the event loop on a full notify queue (max_dgram_qlen is often
            # 10): a blocking send there froze the relay's loop, HTTP and SIGTERM alike.
            # sdnotify swallows the BlockingIOError, so a ping with no room is dropped.
            notifier.socket.setblocking(False)
        notifier.notify("READY=1")
        watchdog = asyncio.create_task(_watchdog(notifier, config.watchdog_interval_s))
    try:
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        await runner.cleanup()

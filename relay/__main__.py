"""`relay` command line: turns arguments and environment into a config, nothing more.

    relay init [--config FILE]                      make the operator token file (0600)
    relay serve [--config FILE] [--host H] [--port P] [--state-dir D]
    relay account create ACCOUNT --origin O [--origin O2] [--retention-days N]
    relay account token ACCOUNT                     issue an account-admin token
    relay account agent-token ACCOUNT AGENT         issue an agent device token
    relay account mode ACCOUNT compliance|standard [--confirm] [--no-wait] [--wait SECONDS]
                 turning compliance on shows the offload of stored transcripts to the
                 vault as a progress bar on stderr until it completes (or SECONDS pass)

Account commands call the running relay's admin API with the operator token (the
relay owns the single writer connection to its database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import pathlib
import secrets
import signal
import sys
from typing import Any

import aiohttp
from aiohttp import web

from .app import create_app
from .config import ConfigError, RelayConfig, load_config, read_operator_token
from .errors import RelayError
from .logs import NoPersonalDataAccessLogger
from .notify import notifier_from_env

__all__ = ["main"]

_SHUTDOWN_SECONDS = 15.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay", description="Compliance Relay")
    p.add_argument("--config", help="TOML file with a [relay] table")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the operator token file")
    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--state-dir")
    acct = sub.add_parser("account", help="manage accounts through the admin API")
    acct.add_argument("--url", help="relay origin (default: public_origin)")
    asub = acct.add_subparsers(dest="action", required=True)
    create = asub.add_parser("create")
    create.add_argument("account")
    create.add_argument("--origin", action="append", default=[])
    create.add_argument("--retention-days", type=int, default=30)
    token = asub.add_parser("token")
    token.add_argument("account")
    agent = asub.add_parser("agent-token")
    agent.add_argument("account")
    agent.add_argument("agent")
    mode = asub.add_parser("mode")
    mode.add_argument("account")
    mode.add_argument("mode", choices=["compliance", "standard"])
    mode.add_argument("--confirm", action="store_true")
    mode.add_argument("--no-wait", action="store_true", help="do not follow the offload")
    mode.add_argument("--wait", type=float, default=3600.0,
                      help="follow the offload for at most this many seconds")
    return p


def _init(cfg: RelayConfig) -> int:
    path = pathlib.Path(cfg.operator_token_file or pathlib.Path(cfg.state_dir) / "operator_token")
    if path.exists():
        print(f"relay: {path} exists; not overwriting", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    print(f"relay: operator token written to {path} (mode 0600)")
    return 0


def tune_gc(cfg: RelayConfig) -> None:
    """Python's cycle collector for a process holding thousands of sockets.

    With the default young threshold (700 allocations) a message's objects outlive two
    young collections under load and reach the old generation; every full collection
    then walks every socket's objects: at 10,000 engagements 24 full collections took
    9.5 s of the relay's 90 s of CPU, each stopping the event loop ~0.4 s. At 10,000
    allocations per young collection (and 50 per middle one) the same run made none
    (GC 12.7 -> 2.3 s; relay CPU per message 398 -> 253 us; bench/README.md).
    ``gc.freeze()`` then takes what exists once the app is built (modules, the app, its
    state) out of every later collection: it lives as long as the process anyway.
    """
    if cfg.gc_young_threshold:
        # And 50 young collections per middle one (Python: 10): the setting measured.
        gc.set_threshold(cfg.gc_young_threshold, 50, 10)
    gc.freeze()


async def _serve(cfg: RelayConfig) -> None:
    app = create_app(cfg)
    runner = web.AppRunner(app, access_log_class=NoPersonalDataAccessLogger,
                           shutdown_timeout=5.0)
    await runner.setup()
    tune_gc(cfg)
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog: asyncio.Task[None] | None = None
    notifier = notifier_from_env(os.environ)
    if notifier is not None:
        notifier.notify("READY=1")  # only now: the listening socket is up
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if usec > 0:
            async def beat() -> None:
                while True:
                    notifier.notify("WATCHDOG=1")  # non-blocking: see relay/notify.py
                    await asyncio.sleep(usec / 2 / 1_000_000)
            watchdog = loop.create_task(beat())
    print(json.dumps({"event": "relay.listening", "host": cfg.host, "port": cfg.port,
                      "loop": type(loop).__module__.split(".")[0]}), flush=True)
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    if notifier is not None:
        notifier.notify("STOPPING=1")
    # runner.cleanup runs the app's cleanup context: sockets get going-away, the
    # group-commit queue drains, the store closes. Each step is bounded inside; this
    # outer bound makes SIGTERM end the process even if one of them misbehaves.
    try:
        await asyncio.wait_for(runner.cleanup(), _SHUTDOWN_SECONDS)
    except TimeoutError:
        print(json.dumps({"event": "shutdown.timeout", "code": "shutdown.timeout"}),
              file=sys.stderr, flush=True)
    if notifier is not None:
        notifier.close()


async def _admin(cfg: RelayConfig, args: argparse.Namespace) -> int:
    base = (args.url or cfg.public_origin).rstrip("/")
    headers = {"Authorization": f"Bearer {read_operator_token(cfg)}"}
    calls: dict[str, tuple[str, str, Any]] = {
        "create": ("POST", "/v1/accounts", {"account": args.account,
                                            "origins": getattr(args, "origin", []),
                                            "mode": "standard",
                                            "retention_days": getattr(args, "retention_days",
                                                                      30)}),
        "token": ("POST", f"/v1/accounts/{args.account}/admin-tokens", None),
        "agent-token": ("POST", f"/v1/accounts/{args.account}/agent-tokens",
                        {"agent": getattr(args, "agent", "")}),
        "mode": ("PUT", f"/v1/accounts/{args.account}/mode",
                 {"mode": getattr(args, "mode", ""), "confirm": getattr(args, "confirm",
                                                                         False)}),
    }
    method, path, body = calls[args.action]
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.request(method, base + path, json=body) as resp:
            data = await resp.json()
        print(json.dumps(data, indent=2))
        if resp.status >= 300:
            return 1
        if args.action == "mode" and args.mode == "compliance" and not args.no_wait:
            return await _follow_offload(http, f"{base}/v1/accounts/{args.account}/offload",
                                         args.wait)
    return 0


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width if total == 0 else width * done // total
    return f"offload [{'#' * filled}{'.' * (width - filled)}] {done}/{total} transcripts"


async def _follow_offload(http: aiohttp.ClientSession, url: str, limit: float) -> int:
    """Print the offload's progress bar on stderr until complete; 1 if it did not finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        async with http.get(url) as resp:
            progress = await resp.json()
        done = int(progress.get("done", 0)) + int(progress.get("rejected", 0))
        total = int(progress.get("total", 0))
        print("\r" + _bar(done, total), end="", file=sys.stderr, flush=True)
        if progress.get("complete"):
            print(file=sys.stderr)
            if progress.get("rejected"):
                print(f"relay: the vault refused {progress['rejected']} transcript(s); they"
                      " stay here, encrypted", file=sys.stderr)
            return 0
        if loop.time() > deadline:
            print("\nrelay: offload still running (is the vault connected?)", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)


def _use_event_loop(choice: str) -> None:
    """Install uvloop's event loop policy when installed and not refused by config."""
    if choice not in ("auto", "asyncio", "uvloop"):
        raise ConfigError("config field event_loop must be auto, asyncio or uvloop")
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop is uvloop but uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


#: sysexits' EX_CONFIG (a bad setting, a database from a newer release): the unit's
#: RestartPreventExitStatus names it.
EXIT_NOT_RESTARTABLE = 78


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `relay` console script."""
    args = _parser().parse_args(argv)
    try:
        overrides = {}
        if args.command == "serve":
            overrides = {"host": args.host, "port": args.port, "state_dir": args.state_dir}
        cfg = load_config(args.config, **overrides)
        if args.command == "init":
            return _init(cfg)
        if args.command == "serve":
            _use_event_loop(cfg.event_loop)
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_serve(cfg))
            return 0
        return asyncio.run(_admin(cfg, args))
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_NOT_RESTARTABLE  # a bad setting: a restart cannot fix it either
    except RelayError as exc:  # a refusal at start (store.schema_newer): one line, no trace
        print(f"relay: {exc.code}: {exc.message}", file=sys.stderr)
        # 78 (EX_CONFIG): what a restart cannot fix; relay.service does not restart on it
        # (RestartPreventExitStatus) instead of retrying every 2 s for nothing.
        return EXIT_NOT_RESTARTABLE if exc.code == "store.schema_newer" else 1


if __name__ == "__main__":
    sys.exit(main())

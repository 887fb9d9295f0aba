"""Where the bytes of one idle visitor socket go: tracemalloc and object counts, diffed.

Runs the relay in this process (its own event loop in a thread, built by the same
``create_app`` as ``relay serve``, paired to a real ``controller-vault serve``) with
tracemalloc on, opens ``--warm`` idle visitor sockets (bench/idle_clients.py, another
process), snapshots, opens ``--n`` more, snapshots again, and prints the difference per
socket: by allocation site and by object type. The warm-up absorbs one-off growth
(dict resizes, the first pages of each size class) so the diff is the marginal cost.

    python bench/idle_breakdown.py --warm 500 --n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import pathlib
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from relay_load import provision  # type: ignore[import-not-found]
from servers import free_port, raise_nofile, start_vault  # type: ignore[import-not-found]

__all__ = ["main"]

BENCH = pathlib.Path(__file__).resolve().parent


def _serve(cfg: Any, ready: threading.Event, stop: threading.Event) -> None:
    from aiohttp import web

    from relay.app import create_app
    from relay.logs import NoPersonalDataAccessLogger

    async def run() -> None:
        runner = web.AppRunner(create_app(cfg), access_log_class=NoPersonalDataAccessLogger)
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await runner.cleanup()
    asyncio.run(run())


def _hold(url: str, setup: pathlib.Path, n: int, compress: int) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, str(BENCH / "idle_clients.py"), "--url", url,
                               "--setup", str(setup), "--n", str(n), "--procs", "2",
                               "--compress", str(compress)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    if not line.startswith("held"):
        raise RuntimeError("idle clients did not open their sockets")
    return holder


def _types() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _settled() -> tuple[tracemalloc.Snapshot, collections.Counter[str]]:
    time.sleep(2.0)  # queued writes, the welcome frames' buffers
    gc.collect()
    return tracemalloc.take_snapshot(), _types()


def _site(frames: tracemalloc.Traceback) -> str:
    """The innermost frame in the project, then the innermost library frame under it."""
    names = [(f.filename, f.lineno) for f in reversed(frames)]  # most recent call first
    ours = next((f"{pathlib.Path(f).parent.name}/{pathlib.Path(f).name}:{ln}"
                 for f, ln in names if "/relay/" in f and "site-packages" not in f), "-")
    lib = names[0]
    return f"{pathlib.Path(lib[0]).parent.name}/{pathlib.Path(lib[0]).name}:{lib[1]} <- {ours}"


def _component(frames: tracemalloc.Traceback) -> str:
    """A coarse owner for one allocation traceback (most recent frame first)."""
    names = [(f.filename.replace("\\", "/"), f.lineno) for f in reversed(list(frames))]
    files = [f.rsplit("/", 1)[-1] for f, _ in names]
    sites = {f"{f}:{ln}" for f, (_, ln) in zip(files, names, strict=True)}
    if "timeouts.py" in files:
        return "asyncio: receive timeout (a timer and a Timeout per waiting socket)"
    if "base_events.py:744" in sites:  # loop.call_at (CPython 3.11)
        return "asyncio: timer handles (heartbeat, HTTP keep-alive)"
    ours = next((f for f, _ in names if "/relay/" in f and "site-packages" not in f), None)
    if ours is None:
        if files[0] in ("base_events.py", "_weakrefset.py", "tasks.py"):
            return "asyncio: the 2 tasks per connection (aiohttp: start, _handle_request)"
        if files[0] in ("selector_events.py", "socket.py", "selectors.py", "transports.py",
                        "events.py"):
            return "asyncio: transport, socket, selector key"
        if files[0] in ("web_app.py", "web_middlewares.py"):
            return "aiohttp: middleware chain coroutines"
        if files[0].startswith("web_") or files[0] in ("helpers.py", "http_parser.py"):
            return "aiohttp: HTTP connection (RequestHandler, parser, upgrade request, headers)"
        if files[0] in ("core.py",):
            return "relay: account row read (aiosqlite rows)"
        return "other: " + files[0]
    mod = ours.rsplit("/", 1)[-1]
    if mod in ("routing.py", "routing_model.py", "resume_buffer.py"):
        return "relay: Engagement and its two delivery logs"
    if mod == "sqlite_store.py":
        return "relay: account row read (aiosqlite rows)"
    if mod in ("protocol.py", "keys.py", "_codec.py"):
        return "relay: hello frame, visitor keys and key id"
    if mod == "admin.py":
        return "aiohttp: middleware chain coroutines"
    if files[0] in ("web_ws.py", "writer.py", "reader_py.py", "web_response.py", "reader.py",
                    "helpers.py") or "_websocket" in names[0][0]:
        return "aiohttp: WebSocketResponse, reader queue, parser, writer"  # made in hub/chat
    if mod == "hub.py":
        return "relay: hub Conn and its lock"
    if mod == "chat.py":
        if files[0] in ("base_events.py",):
            return "asyncio: futures the handler waits on"
        return "relay: handler coroutine frames and locals"
    return "relay: " + mod


def main(argv: list[str] | None = None) -> int:
    """Print the per-socket breakdown."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--warm", type=int, default=500)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--compress", type=int, default=0,
                   help="clients offer permessage-deflate (15: as browsers do)")
    p.add_argument("--dump", type=pathlib.Path, help="also write both snapshots here")
    args = p.parse_args(argv)
    raise_nofile(20_000)
    from relay.config import load_config

    with tempfile.TemporaryDirectory(prefix="idle-breakdown-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        token_file = tmp / "operator_token"
        token = secrets.token_urlsafe(32)
        token_file.write_text(token)
        token_file.chmod(0o600)
        port = free_port()
        env = {f"RELAY_{k.upper()}": str(v) for k, v in {
            # As bench/servers.py start_relay: one address opens every socket.
            "connections_per_ip_per_minute": 10_000_000,
            "max_engagements_per_account": 100_000,
            "max_engagements_per_address": 10_000_000, "log_level": "WARNING",
            "public_origin": f"http://127.0.0.1:{port}", "idle_timeout_seconds": 3600,
            # A snapshot holds the GIL for seconds, freezing the relay's loop: a 30 s
            # heartbeat then closes sockets whose pongs it could not read in time. The
            # heartbeat's timer exists all the same, so its bytes are still counted.
            "heartbeat_seconds": 3600,
            "operator_token_file": str(token_file)}.items()}
        os.environ.update(env)
        cfg = load_config(None, host="127.0.0.1", port=port, state_dir=str(tmp / "state"))
        tracemalloc.start(30)
        ready, stop = threading.Event(), threading.Event()
        server = threading.Thread(target=_serve, args=(cfg, ready, stop), daemon=True)
        server.start()
        if not ready.wait(30):
            raise RuntimeError("relay did not start")
        url = f"http://127.0.0.1:{port}"
        setup = asyncio.run(provision(url, token, tmp / "vault", [], now=int(time.time())))
        setup_path = tmp / "setup.json"
        import json
        setup_path.write_text(json.dumps(setup))
        holders = []
        with start_vault(tmp / "vault", url):
            try:
                holders.append(_hold(url, setup_path, args.warm, args.compress))
                snap_a, types_a = _settled()
                holders.append(_hold(url, setup_path, args.n, args.compress))
                snap_b, types_b = _settled()
            finally:
                for h in holders:
                    assert h.stdin is not None
                    h.stdin.write("close\n")
                    h.stdin.flush()
                for h in holders:
                    h.wait(timeout=120)
            stop.set()
            server.join(timeout=30)
    n = args.n
    live = types_b["WebSocketResponse"] - types_a["WebSocketResponse"]
    if live != n:  # every figure below would be diluted by sockets that closed
        print(f"WARNING: {live} of the {n} extra sockets were still open at the snapshot")
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        snap_a.dump(str(args.dump / "a.snap"))
        snap_b.dump(str(args.dump / "b.snap"))
    stats = snap_b.compare_to(snap_a, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"traced growth per socket: {total / n:,.0f} B ({total / n / 1024:.2f} KiB), "
          f"{sum(s.count_diff for s in stats) / n:.1f} blocks")
    by_owner: collections.Counter[str] = collections.Counter()
    for s in stats:
        by_owner[_component(s.traceback)] += s.size_diff
    print(f"\n{'bytes/socket':>12}  owner")
    for owner, size in by_owner.most_common():
        if abs(size / n) >= 20:
            print(f"{size / n:>12,.0f}  {owner}")
    by_site: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for s in stats:
        site = _site(s.traceback)
        by_site[site][0] += s.size_diff
        by_site[site][1] += s.count_diff
    print(f"\n{'bytes/socket':>12} {'blocks':>7}  allocation site (library frame <- relay frame)")
    for site, (size, count) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{size / n:>12,.0f} {count / n:>7.2f}  {site}")
    by_file = snap_b.compare_to(snap_a, "filename")
    print(f"\n{'bytes/socket':>12}  file")
    for s in by_file[:args.top]:
        print(f"{s.size_diff / n:>12,.0f}  {s.traceback[0].filename.split('site-packages/')[-1]}")
    print(f"\n{'objects/socket':>14}  type")
    diff = types_b - types_a
    for name, count in diff.most_common(args.top):
        print(f"{count / n:>14.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

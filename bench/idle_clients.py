"""Hold N idle visitor websockets open on the relay (for the idle-memory row).

Each visitor says hello with fresh keys (so the relay opens an engagement for it, as a
widget does on page load) and then stays silent. Split over ``--procs`` processes; the
parent prints ``held N`` once every socket is open and closes them all when a line
arrives on stdin (or after ``--hold`` seconds, whichever is first).

    python bench/idle_clients.py --url http://127.0.0.1:PORT --setup setup.json --n 2000

``--compress 15`` offers permessage-deflate as browsers do (the aiohttp client does not
by default, and the relay's answer decides whether each socket carries a zlib context).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import subprocess
import sys

import aiohttp
from servers import raise_nofile  # type: ignore[import-not-found]

from envelope import PartyKeys, b64e

__all__ = ["main"]


async def _hold(url: str, setup: dict[str, str], n: int, hold: float, compress: int) -> None:
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    gate = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> None:
            async with gate:
                ws = await session.ws_connect(
                    f"{url}/v1/chat/visitor/{setup['account']}", autoping=True,
                    headers={"Origin": setup["origin"]}, compress=compress)
                keys = PartyKeys.generate()
                await ws.send_json({"type": "hello", "keys": {
                    "enc": b64e(keys.encryption.public_bytes),
                    "sig": b64e(keys.signing_public_bytes)}})
                welcome = await ws.receive_json(timeout=30)
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"relay refused an idle visitor: {welcome.get('code')}")
                sockets.append(ws)
        try:
            await asyncio.gather(*(one() for _ in range(n)))
            print(f"held {len(sockets)}", flush=True)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), hold)
        except TimeoutError:
            pass
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Hold the sockets (one process per part), then close them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--url", required=True)
    p.add_argument("--setup", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--hold", type=float, default=300.0)
    p.add_argument("--compress", type=int, default=0,
                   help="offer permessage-deflate with this window (15: as browsers do)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1"):
        p.error("idle clients only connect to 127.0.0.1")
    raise_nofile(args.n + 1000)
    setup = json.loads(pathlib.Path(args.setup).read_text())
    if args.child or args.procs <= 1:
        asyncio.run(asyncio.wait_for(_hold(args.url, setup, args.n, args.hold,
                                           args.compress), args.hold + 300))
        return 0
    children = []
    try:
        for part in range(args.procs):
            n = args.n // args.procs + (part < args.n % args.procs)
            children.append(subprocess.Popen(
                [sys.executable, __file__, "--url", args.url, "--setup", args.setup,
                 "--n", str(n), "--hold", str(args.hold), "--compress", str(args.compress),
                 "--child"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        held = 0
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            held += int(line.split()[1]) if line.startswith("held") else 0
        print(f"held {held}", flush=True)
        sys.stdin.readline()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("close\n")
            child.stdin.flush()
        for child in children:
            child.wait(timeout=120)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

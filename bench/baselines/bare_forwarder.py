"""Baseline (a): a bare aiohttp websocket forwarder: dictionary routing, no durability.

What the relay is measured against (issue 9). Protocol shared with the socket.io
baseline and spoken by ``bench/loadgen.py``::

    GET /ws?pair=PAIR&role=visitor|agent      websocket upgrade
    <- text "ready"       once both sides of PAIR are connected
    -> binary frame       forwarded unchanged to the other side of PAIR (dropped if absent)

Run: ``python bench/baselines/bare_forwarder.py [--port 0]``; it prints
``listening http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT. Listens on
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from _loop import install_uvloop  # type: ignore[import-not-found]
from aiohttp import WSMsgType, web

__all__ = ["create_app", "main"]

PEER = {"visitor": "agent", "agent": "visitor"}
PAIRS = web.AppKey("pairs", dict[str, dict[str, web.WebSocketResponse]])


async def _ws(request: web.Request) -> web.WebSocketResponse:
    pair, role = request.query.get("pair", ""), request.query.get("role", "")
    if not pair or role not in PEER:
        raise web.HTTPBadRequest(text="pair and role required")
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    sides = request.app[PAIRS].setdefault(pair, {})
    sides[role] = ws
    if len(sides) == 2:
        for side in sides.values():
            await side.send_str("ready")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                peer = sides.get(PEER[role])
                if peer is not None and not peer.closed:
                    await peer.send_bytes(msg.data)
    finally:
        if sides.get(role) is ws:
            del sides[role]
        if not sides:
            request.app[PAIRS].pop(pair, None)
    return ws


def create_app() -> web.Application:
    """The forwarder app."""
    app = web.Application()
    app[PAIRS] = {}
    app.router.add_get("/ws", _ws)
    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(create_app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    args = parser.parse_args(argv)
    if args.uvloop:
        install_uvloop()
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Baseline (b): a python-socketio server doing the same forwarding (what a Python team
would pick instead of the relay). Needs the ``bench`` extra.

Protocol (socket.io over its websocket transport, path ``/socket.io/``)::

    connect with auth {"pair": PAIR, "role": "visitor"|"agent"}
    <- event "ready"      once both sides of PAIR are in the room
    -> event "m" (str)    emitted to the room except the sender; the load generator
                          sends base64 text (binary attachments interleave under
                          concurrent emits in python-socketio 5.x)

Run: ``python bench/baselines/socketio_forwarder.py [--port 0]``; prints
``listening http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import socketio
from _loop import install_uvloop  # type: ignore[import-not-found]
from aiohttp import web

__all__ = ["create_app", "main"]


def create_app() -> web.Application:
    """An aiohttp app with a socket.io server that forwards within two-member rooms."""
    sio = socketio.AsyncServer(async_mode="aiohttp", max_http_buffer_size=1 << 20)
    app = web.Application()
    sio.attach(app)
    members: dict[str, int] = {}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        pair = (auth or {}).get("pair")
        if not isinstance(pair, str) or (auth or {}).get("role") not in ("visitor", "agent"):
            return False
        await sio.save_session(sid, {"pair": pair})
        await sio.enter_room(sid, pair)
        members[pair] = members.get(pair, 0) + 1
        if members[pair] == 2:
            await sio.emit("ready", room=pair)
        return True

    @sio.on("m")
    async def message(sid: str, data: str) -> None:
        session = await sio.get_session(sid)
        await sio.emit("m", data, room=session["pair"], skip_sid=sid)

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        session = await sio.get_session(sid)
        pair = session.get("pair")
        if pair in members:
            members[pair] -= 1
            if members[pair] <= 0:
                del members[pair]

    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(create_app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"listening http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
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

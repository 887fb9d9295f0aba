"""Load generator: N concurrent visitor/agent pairs over 127.0.0.1 against a forwarder.

Runs as its own process (so it does not share the server's event loop or GIL).
Every pair has a visitor and an agent connection; both send 1 KiB binary messages to
each other. Each message carries its sequence number and send time, so the receiving
side (in this same process, same monotonic clock) measures latency.

Modes:
  closed loop (default)  each direction keeps at most ``--window`` messages in flight
                         and sends as fast as the forwarder delivers: throughput.
  fixed rate (--rate R)  R messages/second in total, spread evenly over all directions;
                         latency counts from the *scheduled* send time, so a stalled
                         server cannot hide queueing delay (no coordinated omission).

The run stops by itself: after ``--duration`` seconds (or ``--count`` messages per
direction), then at most ``--drain`` seconds for in-flight messages; the whole run is
under a hard timeout.

    python bench/loadgen.py --url http://127.0.0.1:8080 --kind bare --pairs 100 \
        --duration 5 [--rate 1000] [--json]

Kinds: ``bare`` (``/ws?pair=&role=`` websocket, see baselines/bare_forwarder.py),
``socketio`` (needs the ``bench`` extra). A relay client kind is added with the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

__all__ = ["LoadResult", "main", "run_load"]

MESSAGE_BYTES = 1024
_STAMP = struct.Struct(">QQ")  # sequence, send time (monotonic ns)
_PAD = b"\x00" * (MESSAGE_BYTES - _STAMP.size)


class _Side(Protocol):
    ready: asyncio.Event

    async def send(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class LoadResult:
    """What one run measured."""

    kind: str
    pairs: int
    mode: str
    rate: float | None
    duration_s: float
    connect_s: float
    sent: int = 0
    received: int = 0
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The printable, JSON-ready figures."""
        lat = sorted(self.latencies_ns)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6, 3)

        return {"kind": self.kind, "pairs": self.pairs, "mode": self.mode, "rate": self.rate,
                "duration_s": round(self.duration_s, 3), "connect_s": round(self.connect_s, 3),
                "sent": self.sent, "received": self.received,
                "lost": self.sent - self.received,
                "msgs_per_s": round(len(lat) / self.duration_s, 1) if self.duration_s else 0.0,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
                # Near 1.0 means the load generator, not the server, was the bottleneck.
                "loadgen_cpu_share": round(self.cpu_s / self.duration_s, 2)
                if self.duration_s else None}


class _BareSide:
    def __init__(self, session: aiohttp.ClientSession, url: str, pair: str, role: str,
                 on_message: Callable[[bytes], None]) -> None:
        self._url = f"{url.rstrip('/')}/ws?pair={pair}&role={role}"
        self._session, self._on_message = session, on_message
        self.ready = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._ws = await self._session.ws_connect(self._url, max_msg_size=1 << 20,
                                                  autoping=True)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self._on_message(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT and msg.data == "ready":
                self.ready.set()

    async def send(self, data: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(data)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader


class _SocketIOSide:
    def __init__(self, url: str, pair: str, role: str,
                 on_message: Callable[[bytes], None]) -> None:
        import socketio

        self._url, self._auth = url, {"pair": pair, "role": role}
        self.ready = asyncio.Event()
        self._client = socketio.AsyncClient(reconnection=False)
        self._client.on("ready", self._on_ready)
        # Text, not bytes: python-socketio sends bytes as a separate binary attachment
        # packet, and concurrent emits to one client interleave placeholder and attachment
        # (seen at 1,000 pairs: the client fails to decode). One text packet per message
        # is what a team would settle on, so the baseline is not penalised by that bug.
        self._client.on("m", lambda text: on_message(base64.b64decode(text)))

    async def _on_ready(self, *args: Any) -> None:
        self.ready.set()

    async def connect(self) -> None:
        await self._client.connect(self._url, auth=self._auth, transports=["websocket"],
                                   wait_timeout=10)

    async def send(self, data: bytes) -> None:
        await self._client.emit("m", base64.b64encode(data).decode("ascii"))

    async def close(self) -> None:
        await self._client.disconnect()


@dataclass
class _Direction:
    """One sending side and what it has in flight."""

    sender: Any
    window: asyncio.Semaphore
    sent: int = 0


async def run_load(*, url: str, kind: str, pairs: int, duration: float,
                   count: int | None = None, rate: float | None = None, window: int = 4,
                   drain: float = 2.0, connect_concurrency: int = 64) -> LoadResult:
    """Connect the pairs, run one measurement, disconnect; return the result."""
    latencies: list[int] = []
    measuring = {"on": False, "received": 0}

    def make_receiver(direction: list[_Direction]) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            _, sent_ns = _STAMP.unpack_from(data)
            now = time.monotonic_ns()
            measuring["received"] += 1
            if measuring["on"]:
                latencies.append(now - sent_ns)
            if rate is None:
                direction[0].window.release()
        return on_message

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sides: list[Any] = []
    directions: list[_Direction] = []
    gate = asyncio.Semaphore(connect_concurrency)

    async def connect_pair(i: int) -> None:
        pair = f"p{i:06d}"
        holders: dict[str, list[_Direction]] = {"visitor": [], "agent": []}
        made: dict[str, Any] = {}
        for role, other in (("agent", "visitor"), ("visitor", "agent")):
            # A side's receiver releases the window of the *other* side's direction.
            receiver = make_receiver(holders[other])
            side: Any = (_BareSide(session, url, pair, role, receiver) if kind == "bare"
                         else _SocketIOSide(url, pair, role, receiver))
            async with gate:
                await side.connect()
            sides.append(side)
            made[role] = side
        for role in ("visitor", "agent"):
            d = _Direction(made[role], asyncio.Semaphore(window))
            holders[role].append(d)
            directions.append(d)
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in made.values())), 30)

    started = time.monotonic()
    try:
        await asyncio.gather(*(connect_pair(i) for i in range(pairs)))
        connect_s = time.monotonic() - started
        result = LoadResult(kind=kind, pairs=pairs, mode="fixed-rate" if rate else "closed-loop",
                            rate=rate, duration_s=duration, connect_s=connect_s)
        stop_at = time.monotonic() + duration
        interval = len(directions) / rate if rate else 0.0

        async def send_loop(d: _Direction) -> None:
            seq = 0
            next_at = time.monotonic() + random.uniform(0, interval)
            while time.monotonic() < stop_at and (count is None or seq < count):
                if rate:
                    if next_at >= stop_at:
                        break
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    stamp = int(next_at * 1e9)  # the scheduled time: no coordinated omission
                    next_at += interval
                else:
                    try:  # bounded: a forwarder that drops messages cannot hang the run
                        await asyncio.wait_for(d.window.acquire(),
                                               max(0.001, stop_at - time.monotonic()))
                    except TimeoutError:
                        break
                    stamp = time.monotonic_ns()
                seq += 1
                await d.sender.send(_STAMP.pack(seq, stamp) + _PAD)
                d.sent += 1

        measuring["on"] = True
        t0, cpu0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(send_loop(d) for d in directions))
        result.duration_s = time.monotonic() - t0
        result.cpu_s = time.process_time() - cpu0
        result.sent = sum(d.sent for d in directions)
        drain_until = time.monotonic() + drain
        while measuring["received"] < result.sent and time.monotonic() < drain_until:
            await asyncio.sleep(0.01)
        measuring["on"] = False
        result.received = measuring["received"]
        result.latencies_ns = latencies
        return result
    finally:
        await asyncio.gather(*(s.close() for s in sides), return_exceptions=True)
        await session.close()


def main(argv: list[str] | None = None) -> int:
    """Run one load measurement and print it (human table, or one JSON line)."""
    parser = argparse.ArgumentParser(description="websocket forwarding load generator")
    parser.add_argument("--url", required=True, help="forwarder base URL on 127.0.0.1")
    parser.add_argument("--kind", choices=["bare", "socketio"], default="bare")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--count", type=int, help="stop after this many per direction")
    parser.add_argument("--rate", type=float, help="fixed total messages/second")
    parser.add_argument("--window", type=int, default=4, help="closed-loop in-flight per side")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    args = parser.parse_args(argv)
    if "127.0.0.1" not in args.url and "localhost" not in args.url:
        parser.error("load is only generated against 127.0.0.1")
    if args.uvloop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            print("uvloop not installed; using asyncio", file=sys.stderr)
    hard_timeout = args.duration + 120
    result = asyncio.run(asyncio.wait_for(run_load(
        url=args.url, kind=args.kind, pairs=args.pairs, duration=args.duration,
        count=args.count, rate=args.rate, window=args.window), hard_timeout))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>12}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

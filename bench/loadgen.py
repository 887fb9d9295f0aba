"""Load generator: N concurrent visitor/agent pairs over 127.0.0.1 against a forwarder.

Runs as its own process (so it does not share the server's event loop or GIL), or as
``--procs K`` processes that split the pairs, start measuring together and merge their
latencies: one Python process tops out near 10k msgs/s on this machine, so a single
generator would measure itself rather than the server.

Every pair has a visitor and an agent side; both send ~1 KiB binary messages to each
other. The last 16 bytes of each message are unique (a direction id and sequence for
the baselines; the tail of the Ed25519 signature for relay envelopes), so the receiving
side (same process, same monotonic clock) finds the send time of what it got.

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
        --duration 5 [--rate 1000] [--procs 2] [--json]

Kinds: ``bare`` (``/ws?pair=&role=`` websocket, see baselines/bare_forwarder.py),
``socketio`` (needs the ``bench`` extra), ``relay`` (the relay in compliance mode,
pre-sealed envelopes; needs ``--relay-setup FILE``, see relay_load.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from relay_load import RelayPairs  # type: ignore[import-not-found]
from sides import BareSide, SocketIOSide  # type: ignore[import-not-found]

__all__ = ["Direction", "LoadResult", "main", "run_load"]

MESSAGE_BYTES = 1024
_TAIL = struct.Struct(">QQ")  # direction id, sequence: the unique key of a message
_PAD = b"\x00" * (MESSAGE_BYTES - _TAIL.size)
# Printed on stderr around the measured window (and drain), so a caller can read the
# server's CPU time for exactly that span.
MEASURING, MEASURED = "loadgen: measuring", "loadgen: measured"


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
    in_window: int = 0
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    cpu_s: float = 0.0
    procs: int = 1

    def summary(self) -> dict[str, Any]:
        """The printable, JSON-ready figures."""
        lat = sorted(self.latencies_ns)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6, 3)

        return {"kind": self.kind, "pairs": self.pairs, "mode": self.mode, "rate": self.rate,
                "procs": self.procs, "duration_s": round(self.duration_s, 3),
                "connect_s": round(self.connect_s, 3),
                "sent": self.sent, "received": self.received,
                # Sent but not yet received when the drain ended: still in flight (the
                # relay holds them durably), not lost; large when the server is slower
                # than the closed loop's window (pairs x 2 x window messages).
                "undelivered_at_stop": self.sent - self.received,
                "msgs_per_s": round(self.in_window / self.duration_s, 1)
                if self.duration_s else 0.0,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
                # CPU seconds of all generator processes per wall second, in cores: near
                # procs means the generator, not the server, was the bottleneck.
                "loadgen_cpu_cores": round(self.cpu_s / self.duration_s, 2)
                if self.duration_s else None}


@dataclass
class Direction:
    """One sending side of one engagement and what it has in flight."""

    sender: Any
    window: asyncio.Semaphore
    payload: Callable[[int], bytes | None]  # the message with this sequence, None: no more
    sent: int = 0


def _stamped(direction_id: int) -> Callable[[int], bytes]:
    return lambda seq: _PAD + _TAIL.pack(direction_id, seq)


def _from_stock(stock: list[bytes]) -> Callable[[int], bytes | None]:
    return lambda seq: stock[seq - 1] if seq <= len(stock) else None


async def run_load(*, url: str, kind: str, pairs: int, duration: float,
                   count: int | None = None, rate: float | None = None, window: int = 4,
                   drain: float = 2.0, connect_concurrency: int = 64, part: int = 0,
                   parts: int = 1, relay_setup: dict[str, Any] | None = None,
                   per_agent: int = 1, start_gate: Callable[[], Any] | None = None,
                   ) -> LoadResult:
    """Connect this part's pairs, run one measurement, disconnect; return the result."""
    latencies: list[int] = []
    inflight: dict[bytes, tuple[int, Direction]] = {}
    state = {"measuring": False, "received": 0, "window_open": False, "in_window": 0}

    def on_message(data: bytes) -> None:
        entry = inflight.pop(bytes(data[-16:]), None)
        if entry is None:
            return
        state["received"] += 1
        if state["window_open"]:
            state["in_window"] += 1
        if state["measuring"]:
            latencies.append(time.monotonic_ns() - entry[0])
        if rate is None:
            entry[1].window.release()

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sides: list[Any] = []
    directions: list[Direction] = []
    gate = asyncio.Semaphore(connect_concurrency)

    async def connect_pair(i: int) -> None:
        pair = f"p{i:06d}"
        made: dict[str, Any] = {}
        for role in ("agent", "visitor"):
            side: Any = (BareSide(session, url, pair, role, on_message) if kind == "bare"
                         else SocketIOSide(url, pair, role, on_message))
            async with gate:
                await side.connect()
            sides.append(side)
            made[role] = side
        for role in ("visitor", "agent"):
            directions.append(Direction(made[role], asyncio.Semaphore(window),
                                        _stamped(i * 2 + (role == "agent"))))
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in made.values())), 30)

    started = time.monotonic()
    relay_pairs = None
    try:
        if kind == "relay":
            assert relay_setup is not None, "--relay-setup is required for the relay kind"
            relay_pairs = RelayPairs(session, url, relay_setup, on_message,
                                     per_agent=per_agent, window=window)
            await relay_pairs.connect(pairs=pairs, part=part, parts=parts,
                                      concurrency=connect_concurrency)
            directions = [Direction(sock, asyncio.Semaphore(window), _from_stock(stock))
                          for sock, stock in relay_pairs.preseal(count or 64)]
        else:
            await asyncio.gather(*(connect_pair(i) for i in range(part, pairs, parts)))
        connect_s = time.monotonic() - started
        if start_gate is not None:
            await start_gate()
        result = LoadResult(kind=kind, pairs=pairs, mode="fixed-rate" if rate else "closed-loop",
                            rate=rate, duration_s=duration, connect_s=connect_s)
        stop_at = time.monotonic() + duration
        interval = len(directions) / rate if rate else 0.0

        async def send_loop(d: Direction) -> None:
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
                data = d.payload(seq + 1)
                if data is None:
                    break
                seq += 1
                inflight[data[-16:]] = (stamp, d)
                await d.sender.send(data)
                d.sent += 1

        state["measuring"] = state["window_open"] = True
        if parts == 1:
            print(MEASURING, file=sys.stderr, flush=True)
        t0, cpu0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(send_loop(d) for d in directions))
        result.duration_s = time.monotonic() - t0
        result.cpu_s = time.process_time() - cpu0
        state["window_open"] = False
        result.in_window = state["in_window"]
        result.sent = sum(d.sent for d in directions)
        drain_until = time.monotonic() + drain
        while state["received"] < result.sent and time.monotonic() < drain_until:
            await asyncio.sleep(0.01)
        state["measuring"] = False
        if parts == 1:
            print(MEASURED, file=sys.stderr, flush=True)
        result.received = state["received"]
        result.latencies_ns = latencies
        if relay_pairs is not None and relay_pairs.token_retries:
            print(f"loadgen: {relay_pairs.token_retries} agent token retries (auth.bad_token)",
                  file=sys.stderr, flush=True)
        return result
    finally:
        if relay_pairs is not None:
            await relay_pairs.close()
        await asyncio.gather(*(s.close() for s in sides), return_exceptions=True)
        await session.close()


def _merge(results: list[dict[str, Any]], kind: str, pairs: int, rate: float | None
           ) -> LoadResult:
    """One result from the parts' results (latencies concatenated, counts summed)."""
    merged = LoadResult(kind=kind, pairs=pairs, mode="fixed-rate" if rate else "closed-loop",
                        rate=rate, duration_s=max(r["duration_s"] for r in results),
                        connect_s=max(r["connect_s"] for r in results), procs=len(results))
    for r in results:
        merged.sent += r["sent"]
        merged.received += r["received"]
        merged.in_window += r["in_window"]
        merged.cpu_s += r["cpu_s"]
        merged.latencies_ns += r["latencies_ns"]
    return merged


def _run_parts(args: argparse.Namespace, argv: list[str]) -> LoadResult:
    """Start ``--procs`` children, release them together once all are connected, merge."""
    children = []
    rate_each = args.rate / args.procs if args.rate else None
    for part in range(args.procs):
        child_argv = [sys.executable, __file__, *argv, "--child", "--part", str(part)]
        if rate_each:
            child_argv += ["--rate", str(rate_each)]
        children.append(subprocess.Popen(child_argv, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + args.duration + 300
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"load generator part failed before start: {line!r}")
        for child in children:  # every part connected: start measuring together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        print(MEASURING, file=sys.stderr, flush=True)
        results = []
        for child in children:
            out, _ = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(json.loads(out.strip().splitlines()[-1]))
        print(MEASURED, file=sys.stderr, flush=True)
        return _merge(results, args.kind, args.pairs, args.rate)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="websocket forwarding load generator")
    parser.add_argument("--url", required=True, help="forwarder base URL on 127.0.0.1")
    parser.add_argument("--kind", choices=["bare", "socketio", "relay"], default="bare")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--count", type=int, help="stop after this many per direction "
                        "(relay: the pre-sealed stock per direction)")
    parser.add_argument("--rate", type=float, help="fixed total messages/second")
    parser.add_argument("--window", type=int, default=4, help="closed-loop in-flight per side")
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    parser.add_argument("--relay-setup", help="JSON file from bench/relay_load.py setup")
    parser.add_argument("--per-agent", type=int, default=1,
                        help="relay: engagements per agent socket")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one load measurement and print it (human table, or one JSON line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if "127.0.0.1" not in args.url and "localhost" not in args.url:
        parser.error("load is only generated against 127.0.0.1")
    if args.procs > 1 and not args.child:
        passed = [a for a in argv if a not in ("--json",)]
        i = passed.index("--procs")
        del passed[i:i + 2]
        if "--rate" in passed:
            i = passed.index("--rate")
            del passed[i:i + 2]
        result = _run_parts(args, [*passed, "--procs", str(args.procs)])
    else:
        if args.uvloop:
            try:
                import uvloop
                uvloop.install()
            except ImportError:
                print("uvloop not installed; using asyncio", file=sys.stderr)
        setup = json.loads(pathlib.Path(args.relay_setup).read_text()) if args.relay_setup else None

        async def wait_for_go() -> None:
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        result = asyncio.run(asyncio.wait_for(run_load(
            url=args.url, kind=args.kind, pairs=args.pairs, duration=args.duration,
            count=args.count, rate=args.rate, window=args.window, part=args.part,
            parts=args.procs, relay_setup=setup, per_agent=args.per_agent,
            start_gate=wait_for_go if args.child else None), args.duration + 300))
        if args.child:
            print(json.dumps({"duration_s": result.duration_s, "connect_s": result.connect_s,
                              "sent": result.sent, "received": result.received,
                              "in_window": result.in_window, "cpu_s": result.cpu_s,
                              "latencies_ns": result.latencies_ns}), flush=True)
            return 0
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

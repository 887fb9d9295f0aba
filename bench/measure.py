"""One function per group of rows of ``make bench``; each runs real processes on 127.0.0.1.

Every function is bounded: the load generator has its own hard timeout, and each
subprocess call here has one too. Figures come back as plain dicts (JSON-ready).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import servers  # type: ignore[import-not-found]
from loadgen import MEASURED, MEASURING  # type: ignore[import-not-found]
from relay_load import agent_names, provision  # type: ignore[import-not-found]
from servers import (  # type: ignore[import-not-found]
    BENCH,
    ROOT,
    Server,
    cpu_seconds,
    rss_kib,
    start_bare,
    start_relay,
    start_socketio,
    start_vault,
)

__all__ = ["RelayRun", "Sizes", "backlog_growth", "drain", "growth", "idle_memory", "latency",
           "loadgen", "relay_server", "throughput", "vault_ingest"]


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is (full run or CI smoke)."""

    duration: float = 5.0
    engagements: tuple[int, ...] = (100, 1000)
    rates: tuple[int, ...] = (1000, 5000)
    latency_pairs: int = 100
    idle: tuple[int, ...] = (2000, 10_000)
    growth: tuple[int, ...] = (10, 100, 1000, 10_000)
    backlog_rounds: int = 4
    ingest_envelopes: int = 5000
    procs: int = 2
    stock_rate: float = 6000.0  # pre-sealed envelopes cover at least this many msgs/s

    @classmethod
    def smoke(cls) -> Sizes:
        """Tiny counts: every row, in well under a minute."""
        return cls(duration=0.5, engagements=(4, 8), rates=(100, 200), latency_pairs=4,
                   idle=(20, 40), growth=(2, 4, 8, 16), backlog_rounds=2,
                   ingest_envelopes=100, procs=2, stock_rate=600.0)


def loadgen(url: str, kind: str, pairs: int, duration: float, *, procs: int,
            rate: float | None = None, count: int | None = None,
            setup: pathlib.Path | None = None, per_agent: int = 1, window: int = 4,
            server_pid: int | None = None,
            probes: dict[str, Callable[[], float]] | None = None) -> dict[str, Any]:
    """One bench/loadgen.py run (a separate process tree); its JSON summary.

    With ``server_pid``, adds the server's CPU time per delivered message over the
    measured window: steadier than msgs/s on a machine shared with other work. Each of
    ``probes`` is read at the window's start and end too; its change is ``window_NAME``.
    """
    argv = [sys.executable, str(BENCH / "loadgen.py"), "--url", url, "--kind", kind,
            "--pairs", str(pairs), "--duration", str(duration), "--procs", str(procs),
            "--window", str(window), "--json"]
    if rate:
        argv += ["--rate", str(rate)]
    if count:
        argv += ["--count", str(count)]
    if setup:
        argv += ["--relay-setup", str(setup), "--per-agent", str(per_agent)]
    marks: dict[str, float] = {}
    probed: dict[str, dict[str, float]] = {}
    errors: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT) as proc:
        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                mark = line.strip()
                if mark in (MEASURING, MEASURED) and (server_pid or probes):
                    if server_pid:
                        marks[mark] = cpu_seconds(server_pid)
                    probed[mark] = {k: read() for k, read in (probes or {}).items()}
                else:
                    errors.append(line)
        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        # The generator has its own hard timeout; this one only guards against a hang.
        killer = threading.Timer(duration + 400, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            stdout = proc.stdout.read()
            proc.wait()
        finally:
            killer.cancel()
        reader.join(timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen {kind} failed: {''.join(errors)[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if MEASURING in marks and MEASURED in marks and result["received"]:
        result["server_cpu_us_per_msg"] = round(
            1e6 * (marks[MEASURED] - marks[MEASURING]) / result["received"], 1)
    if MEASURING in probed and MEASURED in probed:
        for k in probed[MEASURED]:
            result[f"window_{k}"] = probed[MEASURED][k] - probed[MEASURING][k]
    if result.get("msgs_per_s") and result.get("loadgen_cpu_cores") is not None:
        # The generator's own CPU per message: what the shared cores spent outside the
        # server (sealing is done before the window; this is sockets and bookkeeping).
        result["loadgen_cpu_us_per_msg"] = round(
            1e6 * result["loadgen_cpu_cores"] / result["msgs_per_s"], 1)
    return result


@dataclass
class RelayRun:
    """A relay under test, its paired vault (when running) and the load generator's setup."""

    srv: Server
    setup: pathlib.Path
    vault_dir: pathlib.Path
    vault: Server | None = None


@contextmanager
def relay_server(tmp: pathlib.Path, name: str, agents: list[str] | None = None, *,
                 vault: bool = True, **settings: object) -> Iterator[RelayRun]:
    """A fresh relay, a compliance account paired to a real vault, certified ``agents``.

    With ``vault`` the vault's ``serve`` runs throughout (the whole path: the outbox is
    delivered, receipted and deleted while the load runs); otherwise it stays offline
    until :func:`drain` starts it.
    """
    with start_relay(tmp / name / "state", **settings) as srv:
        vault_dir = tmp / name / "vault"
        setup = asyncio.run(provision(srv.url, srv.operator_token, vault_dir, agents or [],
                                      now=int(time.time())))
        path = tmp / name / "setup.json"
        path.write_text(json.dumps(setup))
        run = RelayRun(srv, path, vault_dir)
        if not vault:
            yield run
            return
        with start_vault(vault_dir, srv.url) as vsrv:
            run.vault = vsrv
            yield run


def drain(run: RelayRun, bound: float = 180.0) -> dict[str, Any]:
    """Wait (bounded) until the relay's outbox backlog is 0; start the vault if offline."""
    started = time.monotonic()
    before = metric(run.srv.url, "relay_outbox_backlog")

    def wait() -> dict[str, Any]:
        while True:
            left = metric(run.srv.url, "relay_outbox_backlog")
            took = time.monotonic() - started
            if left == 0 or took > bound:
                return {"backlog_before_drain": before, "backlog_after_drain": left,
                        "drain_seconds": round(took, 2),
                        "drained": left == 0}
            time.sleep(0.2)
    if run.vault is not None:
        return wait()
    with start_vault(run.vault_dir, run.srv.url) as vsrv:
        run.vault = vsrv
        result = wait()
    run.vault = None
    return result


def metric(url: str, name: str) -> float | None:
    """One unlabelled metric value from the server's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310 (127.0.0.1)
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def _stock(sizes: Sizes, pairs: int, duration: float) -> int:
    return max(8, int(sizes.stock_rate * duration / (2 * pairs)) + 4)


def _relay_load(tmp: pathlib.Path, name: str, sizes: Sizes, pairs: int, *,
                rate: float | None = None, per_agent: int = 1, window: int = 4,
                count: int | None = None, **settings: object) -> dict[str, Any]:
    # One retry on a fresh relay: under load an agent token created a moment earlier was
    # sometimes refused as unknown (auth.bad_token, about 1 run in 5 here); the count of
    # retries is kept in the result, and the lead has the report.
    for attempt in range(2):
        try:
            with relay_server(tmp, f"{name}-{attempt}", agent_names(pairs, per_agent),
                              **settings) as run:
                srv, setup = run.srv, run.setup
                stock = count or (int(rate * sizes.duration / (2 * pairs)) + 2 if rate
                                  else _stock(sizes, pairs, sizes.duration))
                result = loadgen(srv.url, "relay", pairs, sizes.duration, procs=sizes.procs,
                                 rate=rate, count=stock, setup=setup, per_agent=per_agent,
                                 window=window, server_pid=srv.pid,
                                 probes=_vault_probes(run))
                result.update(_vault_cost(result))
                result["server_rss_kib"] = rss_kib(srv.pid)
                result["outbox_backlog"] = metric(srv.url, "relay_outbox_backlog")
                result.update(drain(run))
                result["vault_rss_kib"] = rss_kib(run.vault.pid) if run.vault else None
                result["retries"] = attempt
                return result
        except RuntimeError as exc:
            if attempt == 1 or "auth.bad_token" not in str(exc):
                raise
            print(f"[{name}: relay refused a fresh agent token; retrying once]",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _vault_probes(run: RelayRun) -> dict[str, Callable[[], float]]:
    """The collecting vault's CPU and the relay's receipted deletions, read at the
    window's marks (``servers.cpu_seconds``: ``quick.py`` wraps ``measure.cpu_seconds``
    to split the relay's threads and must see only the relay's reads)."""
    if run.vault is None:
        return {}
    vault_pid, url = run.vault.pid, run.srv.url
    return {"vault_cpu_s": lambda: servers.cpu_seconds(vault_pid),
            "deleted": lambda: metric(url, "relay_vault_link_deleted_total") or 0.0}


def _vault_cost(result: dict[str, Any]) -> dict[str, Any]:
    """The vault's CPU per envelope it took over the window (stored, receipted and the
    relay's row deleted), and the whole path's CPU per message on the shared cores."""
    taken, cpu = result.get("window_deleted"), result.get("window_vault_cpu_s")
    if not taken or cpu is None:
        return {}
    vault_us = round(1e6 * cpu / taken, 1)
    out: dict[str, Any] = {"vault_cpu_us_per_env": vault_us}
    relay_us, gen_us = result.get("server_cpu_us_per_msg"), result.get("loadgen_cpu_us_per_msg")
    if relay_us is not None and gen_us is not None:
        out["path_cpu_us_per_msg"] = round(relay_us + vault_us + gen_us, 1)
        # What these cores could carry if the relay cost nothing at all: the vault and
        # the generator alone, each message once (a bound, not a measurement of a relay).
        out["ceiling_msgs_per_s_relay_free"] = round(
            (os.cpu_count() or 1) * 1e6 / (vault_us + gen_us))
    return out


def throughput(tmp: pathlib.Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Closed-loop msgs/s: relay (compliance, whole path) vs bare and socket.io forwarders."""
    rows: dict[str, dict[str, Any]] = {}
    for pairs in sizes.engagements:
        with start_bare() as srv:
            rows[f"bare@{pairs}"] = loadgen(srv.url, "bare", pairs, sizes.duration,
                                            procs=sizes.procs, server_pid=srv.pid)
        with start_socketio() as srv:
            rows[f"socketio@{pairs}"] = loadgen(srv.url, "socketio", pairs, sizes.duration,
                                                procs=sizes.procs, server_pid=srv.pid)
        rows[f"relay@{pairs}"] = _relay_load(tmp, f"tp{pairs}", sizes, pairs)
    return rows


def latency(tmp: pathlib.Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Fixed-rate p50/p99/p999: relay vs the bare forwarder at the same rates."""
    rows: dict[str, dict[str, Any]] = {}
    pairs = sizes.latency_pairs
    for rate in sizes.rates:
        with start_bare() as srv:
            rows[f"bare@{rate}/s"] = loadgen(srv.url, "bare", pairs, sizes.duration,
                                             procs=sizes.procs, rate=rate, server_pid=srv.pid)
        rows[f"relay@{rate}/s"] = _relay_load(tmp, f"lat{rate}", sizes, pairs, rate=rate)
    return rows


def idle_memory(tmp: pathlib.Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Relay RSS per idle visitor websocket (engagement opened, then silent)."""
    rows: dict[str, dict[str, Any]] = {}
    for n in sizes.idle:
        with relay_server(tmp, f"idle{n}") as run:
            srv, setup = run.srv, run.setup
            before = rss_kib(srv.pid)
            argv = [sys.executable, str(BENCH / "idle_clients.py"), "--url", srv.url,
                    "--setup", str(setup), "--n", str(n), "--procs", str(sizes.procs)]
            with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd=ROOT) as holder:
                try:
                    assert holder.stdout is not None and holder.stdin is not None
                    line = holder.stdout.readline()  # "held N" once every socket is open
                    held = int(line.split()[1]) if line.startswith("held") else 0
                    time.sleep(1.0)  # let the relay settle (queued writes, buffers)
                    after = rss_kib(srv.pid)
                    holder.stdin.write("close\n")
                    holder.stdin.flush()
                    holder.wait(timeout=120)
                finally:
                    if holder.poll() is None:
                        holder.kill()
            rows[f"idle@{n}"] = {"connections": held, "rss_before_kib": before,
                                 "rss_after_kib": after,
                                 "kib_per_connection": round((after - before) / max(held, 1),
                                                             2)}
    return rows


def growth(tmp: pathlib.Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Throughput and memory as concurrent engagements grow (5 per agent socket)."""
    rows: dict[str, dict[str, Any]] = {}
    for n in sizes.growth:
        # One message in flight per direction and a fixed stock keep 10,000 engagements
        # (20,000 directions) bounded in sealing time and in-flight messages.
        count = max(3, min(40, int(sizes.stock_rate * sizes.duration / (2 * n))))
        try:
            rows[f"growth@{n}"] = _relay_load(tmp, f"gr{n}", sizes, n, per_agent=5, window=1,
                                              count=count)
        except RuntimeError as exc:  # the bound was hit: that is where the curve bends
            rows[f"growth@{n}"] = {"msgs_per_s": None, "server_rss_kib": None, "sent": 0,
                                   "undelivered_at_stop": 0, "error": str(exc)[-300:]}
    return rows


def backlog_growth(tmp: pathlib.Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Throughput and memory in successive rounds while the outbox backlog grows."""
    rows: dict[str, dict[str, Any]] = {}
    pairs = sizes.engagements[0]
    agents = [a for r in range(sizes.backlog_rounds)
              for a in agent_names(pairs, 1, prefix=f"r{r}")]
    # The vault stays offline during the rounds (a vault down for a while), then starts
    # and the time it takes to collect the whole backlog is the last row.
    # The backlog must be allowed to grow past the default per-account bound, which would
    # otherwise (rightly) refuse new engagements with outbox.backpressure.
    with relay_server(tmp, "backlog", agents, vault=False,
                      outbox_account_max_bytes=1 << 30, outbox_max_bytes=1 << 30) as run:
        srv, setup = run.srv, run.setup
        base = json.loads(setup.read_text())
        for r in range(sizes.backlog_rounds):
            round_setup = tmp / "backlog" / f"setup{r}.json"
            # New agent pseudonyms each round: the last round's agents keep their
            # engagements for the resume grace, so their seats are full.
            round_setup.write_text(json.dumps({**base, "agent_prefix": f"r{r}"}))
            backlog = metric(srv.url, "relay_outbox_backlog")
            result = loadgen(srv.url, "relay", pairs, sizes.duration, procs=sizes.procs,
                             count=_stock(sizes, pairs, sizes.duration), setup=round_setup,
                             server_pid=srv.pid)
            result["backlog_before"] = backlog
            result["server_rss_kib"] = rss_kib(srv.pid)
            rows[f"backlog.round{r + 1}"] = result
        rows["backlog.drain"] = drain(run, bound=300.0)
    return rows


def vault_ingest(sizes: Sizes) -> dict[str, Any]:
    """bench_vault_ingest.py: vault ingest vs the floor, in its own process."""
    out = subprocess.run([sys.executable, "-c",
                          "import json, sys; sys.path.insert(0, 'bench');"
                          "import bench_vault_ingest as b;"
                          f"r = b.main(['--envelopes', '{sizes.ingest_envelopes}']);"
                          "print(json.dumps(r))"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result

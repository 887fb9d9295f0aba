"""One or a few relay rows, whole path, with the relay's CPU per message split by thread.

    python bench/quick.py tp:100 tp:1000 lat:5000

``tp:N`` is the closed-loop throughput row at N engagements, ``lat:R`` the fixed-rate
latency row at R msgs/s (``measure.Sizes().latency_pairs`` engagements): the same
``measure._relay_load`` the full run uses, each on a fresh relay and vault. Besides the
row's figures it prints the relay's CPU per delivered message per thread over the
measured window (``main`` = the event loop; the others are the group-commit writer and
aiosqlite's reader thread, by OS thread id): where a change moved work, and whether the
event loop (the one thread that bounds the rate) got lighter. For development: a full
``make bench`` is what the README quotes.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

import measure  # type: ignore[import-not-found]
from servers import raise_nofile  # type: ignore[import-not-found]

_KEEP = ("msgs_per_s", "server_cpu_us_per_msg", "p50_ms", "p99_ms", "p999_ms",
         "outbox_backlog", "drain_seconds", "undelivered_at_stop", "loadgen_cpu_cores",
         "loadgen_cpu_us_per_msg", "vault_cpu_us_per_env", "path_cpu_us_per_msg",
         "ceiling_msgs_per_s_relay_free")
_TICK = os.sysconf("SC_CLK_TCK")


def per_thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` (``main`` for the main thread)."""
    out: dict[str, float] = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        name = "main" if task.name == str(pid) else f"tid{task.name}"
        out[name] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def main() -> None:
    """Run each row named on the command line; one JSON line per row."""
    raise_nofile(20_000)
    sizes = measure.Sizes()
    snaps: list[dict[str, float]] = []
    real_cpu_seconds = measure.cpu_seconds

    def cpu_seconds(pid: int) -> float:
        # measure.loadgen reads the server's CPU at the window's start and end.
        snaps.append(per_thread_cpu(pid))
        return float(real_cpu_seconds(pid))

    measure.cpu_seconds = cpu_seconds
    with tempfile.TemporaryDirectory(prefix="relay-quick-") as t:
        tmp = pathlib.Path(t)
        for spec in sys.argv[1:]:
            kind, _, n = spec.partition(":")
            snaps.clear()
            if kind == "tp":
                row = measure._relay_load(tmp, f"tp{n}", sizes, int(n))
            elif kind == "lat":
                row = measure._relay_load(tmp, f"lat{n}", sizes, sizes.latency_pairs,
                                          rate=int(n))
            else:
                raise SystemExit(f"unknown row {spec!r}: tp:N or lat:R")
            out = {"row": spec, **{k: row.get(k) for k in _KEEP}}
            if len(snaps) >= 2 and row.get("received"):
                a, b = snaps[-2], snaps[-1]
                out["cpu_us_per_msg_by_thread"] = {
                    k: round(1e6 * (b[k] - a.get(k, 0.0)) / row["received"], 1)
                    for k in b if b[k] - a.get(k, 0.0) > 0}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

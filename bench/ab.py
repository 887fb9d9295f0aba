"""Interleaved A/B of the relay's whole-path throughput: an older commit against this tree.

    python bench/ab.py --before main --after HEAD --rounds 2 --pairs 100,1000

Each side is a ``git archive`` of its ref unpacked in a temporary directory (``--after``
left out: this working tree, which edits during the run would change); the relay runs
from it through ``BENCH_RELAY_SRC`` (bench/servers.py), everything else (load
generator, vault) from this tree. Runs alternate A, B, A, B... on fresh relays so load
from other work on the machine hits both sides alike; the ratio after/before of the
medians is the figure to quote (absolute rates on this shared machine are noise).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

import measure  # type: ignore[import-not-found]
from servers import ROOT, raise_nofile  # type: ignore[import-not-found]

_KEEP = ("msgs_per_s", "server_cpu_us_per_msg", "p50_ms", "p99_ms", "outbox_backlog",
         "drain_seconds", "drained", "undelivered_at_stop")


def _unpack(ref: str, into: pathlib.Path) -> None:
    tar = subprocess.run(["git", "archive", ref, "relay", "envelope"], cwd=ROOT,
                         capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(into, filter="data")


def main(argv: list[str] | None = None) -> int:
    """Run the interleaved rounds; print one JSON line per run and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="main", help="git ref of the A side")
    p.add_argument("--after", default="", help="git ref of the B side (default: this tree)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pairs", default="100,1000")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rate", type=int, default=0,
                   help="fixed msgs/s (the latency rows) instead of the closed loop")
    args = p.parse_args(argv)
    raise_nofile(20_000)
    sizes = measure.Sizes(duration=args.duration)
    results: dict[str, dict[int, list[dict[str, Any]]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory(prefix="relay-ab-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        src = tmp / "before-src"
        _unpack(args.before, src)
        after_src = ""
        if args.after:
            after_src = str(tmp / "after-src")
            _unpack(args.after, pathlib.Path(after_src))
        for r in range(args.rounds):
            for pairs in (int(x) for x in args.pairs.split(",")):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in order:
                    if side == "before":
                        os.environ["BENCH_RELAY_SRC"] = str(src)
                    elif after_src:
                        os.environ["BENCH_RELAY_SRC"] = after_src
                    else:
                        os.environ.pop("BENCH_RELAY_SRC", None)
                    t = time.monotonic()
                    row = measure._relay_load(tmp, f"{side}{r}-{pairs}", sizes, pairs,
                                              rate=args.rate or None)
                    kept = {k: row.get(k) for k in _KEEP}
                    results[side].setdefault(pairs, []).append(kept)
                    print(json.dumps({"side": side, "round": r, "pairs": pairs, **kept,
                                      "wall_s": round(time.monotonic() - t, 1)}), flush=True)
    os.environ.pop("BENCH_RELAY_SRC", None)
    for pairs, before in results["before"].items():
        after = results["after"][pairs]
        b = statistics.median(x["msgs_per_s"] for x in before)
        a = statistics.median(x["msgs_per_s"] for x in after)
        bc = statistics.median(x["server_cpu_us_per_msg"] for x in before)
        ac = statistics.median(x["server_cpu_us_per_msg"] for x in after)
        bp = statistics.median(x["p99_ms"] for x in before)
        ap = statistics.median(x["p99_ms"] for x in after)
        print(f"{pairs} engagements: {b:.0f} -> {a:.0f} msgs/s ({a / b:.2f}x), "
              f"server CPU {bc:.0f} -> {ac:.0f} us/msg ({ac / bc:.2f}x), "
              f"p99 {bp:.1f} -> {ap:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

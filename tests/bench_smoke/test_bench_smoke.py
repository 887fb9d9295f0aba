"""``make bench`` in smoke mode produces its whole table (a functional check, never timed).

Runs ``python bench/run_all.py --smoke`` as a real subprocess: servers, load generators
and the relay all run as their own processes on 127.0.0.1, with tiny counts.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Every row family the issue asks for, as the table names it.
FAMILIES = {
    "throughput": 4,  # 2 sizes x (vs bare, vs socket.io)
    "server CPU per message": 4,
    # Where the shared cores go (relay + vault + generator) and the bound that sets.
    "path CPU per message": 2, "ceiling if the relay cost nothing": 2,
    "latency p50 ": 2, "latency p99 ": 2, "latency p999 ": 2,
    "vault ingest": 2,  # ~200-byte bodies, and 1 KiB bodies to vault + peer
    "envelope": 2,
    "idle memory": 2,
    "growth": 4,
    "backlog.round": 2,
    "vault drained the outbox after": 8,  # every relay run's backlog collected
    "backlog: vault offline, then started": 1,
}


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_run_all_smoke_prints_every_row(tmp_path: pathlib.Path) -> None:
    out_file = tmp_path / "latest.json"
    out = subprocess.run([sys.executable, "bench/run_all.py", "--smoke", "--out",
                          str(out_file)], capture_output=True, text=True, timeout=160,
                         cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert result["smoke"] is True
    names = [r["row"] for r in result["rows"]]
    for family, count in FAMILIES.items():
        found = [n for n in names if n.startswith(family)]
        assert len(found) == count, (family, found)
        assert all(n[:40] in out.stdout for n in found)
    for row in result["rows"]:
        assert row["value"] is not None, row
    # Baseline rows and targets are present, and every load run delivered everything.
    assert {"bare forwarder", "python-socketio", "floor: open+verify+raw insert"} <= {
        r["baseline"] for r in result["rows"]}
    for group in ("throughput", "latency", "growth", "backlog"):
        for name, fig in result["raw"][group].items():
            if name == "backlog.drain":
                continue
            assert fig["undelivered_at_stop"] == 0 and fig["sent"] > 0, (name, fig)
    # The real vault collected every envelope of every relay run (the whole path).
    drains = [fig for group in ("throughput", "latency", "growth")
              for name, fig in result["raw"][group].items() if "drained" in fig]
    drains.append(result["raw"]["backlog"]["backlog.drain"])
    assert len(drains) == 2 + 2 + 4 + 1 and all(d["drained"] for d in drains), drains
    assert result["raw"]["backlog"]["backlog.drain"]["backlog_before_drain"] > 0
    assert all(r["connections"] > 0 for r in result["raw"]["idle"].values())

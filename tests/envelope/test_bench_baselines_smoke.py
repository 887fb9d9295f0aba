"""Smoke runs of the benchmark tools (issue 9 groundwork): they run and deliver everything.

Functional checks only: no timing is asserted (benchmarks are never timed tests).
Each forwarder and the load generator run as real subprocesses on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@contextmanager
def _forwarder(script: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(BENCH / "baselines" / script)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening http://127.0.0.1:PORT"
        assert line.startswith("listening http://127.0.0.1:"), line
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _load(url: str, kind: str, *extra: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), "--url", url, "--kind", kind, "--json",
         *extra], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


KINDS = [("bare_forwarder.py", "bare"), ("socketio_forwarder.py", "socketio")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("script", "kind"), KINDS, ids=[k for _, k in KINDS])
def test_forwarder_delivers_every_message(script: str, kind: str) -> None:
    if kind == "socketio" and importlib.util.find_spec("socketio") is None:
        pytest.skip("python-socketio is in the bench extra")
    with _forwarder(script) as url:
        closed = _load(url, kind, "--pairs", "5", "--count", "30", "--duration", "10")
        assert closed["sent"] == closed["received"] == 5 * 2 * 30
        fixed = _load(url, kind, "--pairs", "5", "--rate", "200", "--duration", "1")
        assert fixed["undelivered_at_stop"] == 0 and fixed["mode"] == "fixed-rate"
        assert fixed["p50_ms"] is not None and fixed["p999_ms"] is not None


@pytest.mark.timeout(60)
def test_envelope_bench_smoke_prints_its_table() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "bench_envelope.py"), "--smoke"],
                         capture_output=True, text=True, check=True, timeout=50, cwd=ROOT)
    assert "seal_1KiB_3_recipients" in out.stdout and "open_1KiB" in out.stdout

"""`make demo` runs end to end (real processes) and exits 0 within its time bound."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(90)
def test_demo_exits_zero_and_finds_nothing_at_the_relay() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "found none" in proc.stdout and "OK:" in proc.stdout
    assert "Hello, my knee" in proc.stdout  # the vault's staff view was shown

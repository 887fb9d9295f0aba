"""Invariant 7, bad input: the atheris fuzz targets of fuzz/ run for a bounded time.

The four targets (envelope parser and opener, relay frame decoder, receipt verifier,
export file naming) run in parallel subprocesses for ``FUZZ_SECONDS`` each; ``make
fuzz`` runs them for minutes. A crash (an untyped exception or a broken invariant)
fails the test with the input libFuzzer saved.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

from controller_vault.staff.errors import StaffError
from controller_vault.staff.export import export_filename

pytest.importorskip("atheris")
pytestmark = pytest.mark.timeout(120)
ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGETS = ("envelope", "frames", "receipts", "export_name")
FUZZ_SECONDS = 10


def test_fuzz_targets_bounded(tmp_path: pathlib.Path, proof_line: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {t: subprocess.Popen(
        [sys.executable, "-m", "fuzz.launcher", t, f"-max_total_time={FUZZ_SECONDS}",
         "-rss_limit_mb=1024"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT) for t in TARGETS}
    runs: dict[str, int] = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=FUZZ_SECONDS + 60)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, (name, text[-3000:])
        runs[name] = int(re.findall(r"Done (\d+) runs", text)[-1])
    assert not list(tmp_path.glob("crash-*"))
    proof_line("fuzz: " + " ".join(f"{t}={n}" for t, n in runs.items())
               + f" seconds_each={FUZZ_SECONDS} crashes=0")


@pytest.mark.parametrize("name", ["report.", "exportport.", "a..b", "../x", "CON"])
def test_export_name_refuses_names_that_end_in_dots(name: str) -> None:
    # Found by fuzz_export_name: "report." became "report..json".
    with pytest.raises(StaffError):
        export_filename(name, account="clinic", export_id="e" * 16, generated_at=0)

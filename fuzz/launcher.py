"""Run one fuzz target under atheris (libFuzzer) with seeds written to a corpus dir.

    python -m fuzz.launcher envelope -max_total_time=300

Targets: envelope, frames, receipts, export_name. Extra arguments go to libFuzzer.
Exit status 0 means no crash; a crash leaves its input as ``crash-*`` in the cwd.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import tempfile

import atheris

__all__ = ["TARGETS", "main"]

TARGETS = ("envelope", "frames", "receipts", "export_name")


def main(argv: list[str]) -> None:
    """Fuzz ``argv[1]`` with libFuzzer flags ``argv[2:]``."""
    name = argv[1]
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; one of {', '.join(TARGETS)}")
    with atheris.instrument_imports(include=["envelope", "relay", "controller_vault"]):
        module = importlib.import_module(f"fuzz.fuzz_{name}")
    corpus = pathlib.Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(module.seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([argv[0], *argv[2:], str(corpus)], module.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

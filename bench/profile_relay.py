"""Profile the relay (and the vault) with py-spy under the whole-path throughput load.

    python bench/profile_relay.py --pairs 100 --out bench/profiles/relay_thru2_before

Runs one ``measure._relay_load`` row (fresh relay, real vault collecting) and, while the
load generator runs, ``py-spy record --format raw --nonblocking`` on the relay and the
vault processes; writes ``OUT.relay.raw`` / ``OUT.vault.raw`` and their summaries
(bench/spy_summary.py) as ``OUT.relay.txt`` / ``OUT.vault.txt``. py-spy is a measuring
tool, not a bench dependency: ``pip install py-spy`` into the venv first.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import measure  # type: ignore[import-not-found]
import spy_summary  # type: ignore[import-not-found]
from servers import raise_nofile  # type: ignore[import-not-found]


def main(argv: list[str] | None = None) -> int:
    """One profiled throughput row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--spy-seconds", type=int, default=6)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output path prefix")
    p.add_argument("--header", default="", help="first line of each summary")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
    raise_nofile(20_000)
    spies: list[tuple[str, subprocess.Popen[bytes]]] = []

    real_cpu_seconds = measure.cpu_seconds
    vault_pid: list[int] = []

    def cpu_seconds_hook(pid: int) -> float:
        # measure.loadgen reads the server's CPU time when the generator prints MEASURING
        # (its window starts, connects done): start sampling right then, relay and vault.
        if not spies:
            for who, spid in (("relay", pid), *(("vault", v) for v in vault_pid)):
                raw = args.out.with_name(f"{args.out.name}.{who}.raw")
                spies.append((who, subprocess.Popen(
                    [spy, "record", "--pid", str(spid), "--rate", str(args.rate),
                     "--duration", str(args.spy_seconds), "--nonblocking", "--threads",
                     "--format", "raw", "-o", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        return float(real_cpu_seconds(pid))

    real_relay_server = measure.relay_server

    def relay_server_hook(*a: Any, **kw: Any) -> Any:
        cm = real_relay_server(*a, **kw)

        class _Wrap:
            def __enter__(self) -> Any:
                run = cm.__enter__()
                vault_pid[:] = [run.vault.pid] if run.vault else []
                return run

            def __exit__(self, *exc: Any) -> Any:
                return cm.__exit__(*exc)
        return _Wrap()

    measure.cpu_seconds = cpu_seconds_hook
    measure.relay_server = relay_server_hook
    with tempfile.TemporaryDirectory(prefix="relay-prof-") as tmp:
        row = measure._relay_load(pathlib.Path(tmp), f"prof{args.pairs}",
                                  measure.Sizes(duration=args.duration), args.pairs)
    for who, proc in spies:
        proc.wait(timeout=60)
        raw = args.out.with_name(f"{args.out.name}.{who}.raw")
        if raw.exists():
            text = spy_summary.summarise(raw.read_text(), 30)
            txt = args.out.with_name(f"{args.out.name}.{who}.txt")
            head = f"# {args.header}\n" if args.header else ""
            txt.write_text(head + f"# row: msgs_per_s={row.get('msgs_per_s')}"
                           f" server_cpu_us_per_msg={row.get('server_cpu_us_per_msg')}"
                           f" pairs={args.pairs} at {time.strftime('%Y-%m-%d %H:%M')}\n"
                           + text)
            print(txt.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

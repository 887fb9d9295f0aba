"""The outbox path's cost with ``secure_delete`` ON (as shipped) and OFF, same run, A/B.

    python bench/bench_secure_delete.py [--rounds 6] [--envelopes 20000]

Each round opens a fresh :class:`relay.sqlite_store.SqliteStore` (real file, WAL,
``synchronous=FULL``) with the pragma set one way, then does what the whole path does to
the outbox: appends 1.5 KiB envelopes through group commit (``--concurrency`` callers at
a time, as many sockets would) and deletes them with signed-receipt-sized
``apply_receipt`` calls, the vault's pace being one receipt per ``--receipt`` envelopes.
Sides alternate ON, OFF, OFF, ON... so load from other work hits both; prints wall and
process CPU microseconds per envelope and the medians' ratio OFF/ON. Only a measurement:
the outbox shares its file with the transcripts, which keep ``secure_delete``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from relay import sqlite_store
from relay.store import OutboxEntry


async def _one(path: pathlib.Path, secure: bool, envelopes: int, concurrency: int,
               receipt: int) -> dict[str, float]:
    pragmas = tuple(p.replace("secure_delete=ON", f"secure_delete={'ON' if secure else 'OFF'}")
                    for p in sqlite_store._PRAGMAS)
    saved = sqlite_store._PRAGMAS
    sqlite_store._PRAGMAS = pragmas
    try:
        store = sqlite_store.SqliteStore(path)
        await store.open()
    finally:
        sqlite_store._PRAGMAS = saved
    body = os.urandom(1536)
    t0, c0 = time.perf_counter(), time.process_time()
    pending: list[tuple[str, str, str]] = []
    for start in range(0, envelopes, concurrency):
        batch = [OutboxEntry("clinic", 0, f"e{i:021d}", f"eng-{i % 100:08d}", f"h{i}", body, i)
                 for i in range(start, min(start + concurrency, envelopes))]
        await asyncio.gather(*(store.append_outbox([e]) for e in batch))
        pending += [(e.engagement, e.envelope_id, e.envelope_hash) for e in batch]
        while len(pending) >= receipt:
            items, pending = pending[:receipt], pending[receipt:]
            await store.apply_receipt("clinic", f"r{start}", items, 0)
    if pending:
        await store.apply_receipt("clinic", "last", pending, 0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    left = (await store.outbox_stats("clinic")).entries
    await store.close()
    assert left == 0
    return {"wall_us": 1e6 * wall / envelopes, "cpu_us": 1e6 * cpu / envelopes}


def main(argv: list[str] | None = None) -> int:
    """Alternate ON/OFF rounds; print each and the ratio of the medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--envelopes", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--receipt", type=int, default=64)
    args = p.parse_args(argv)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="relay-sd-") as tmp:
        for r in range(args.rounds):
            for secure in ((True, False) if r % 2 == 0 else (False, True)):
                path = pathlib.Path(tmp) / f"r{r}-{secure}.sqlite3"
                row = asyncio.run(_one(path, secure, args.envelopes, args.concurrency,
                                       args.receipt))
                runs[secure].append(row)
                print(json.dumps({"secure_delete": secure, "round": r,
                                  **{k: round(v, 1) for k, v in row.items()}}), flush=True)
    for key in ("wall_us", "cpu_us"):
        on = statistics.median(x[key] for x in runs[True])
        off = statistics.median(x[key] for x in runs[False])
        print(f"{key} per envelope: ON {on:.1f}, OFF {off:.1f}, OFF/ON {off / on:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

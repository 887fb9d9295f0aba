"""Vault ingest benchmark: envelopes per second durably stored, beside this run's floor.

The floor is the least any vault must do for the same envelopes: PyNaCl open + verify
(envelope.open_envelope) and a raw batched SQLite insert of the same rows (WAL,
synchronous=FULL, one transaction per batch). The ratio says what the vault's own
work costs on top (re-encryption under the data key, blind index, idempotency and
sequence checks, audit chain, receipt signature).

    python bench/bench_vault_ingest.py [--envelopes N] [--batch B]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sqlite3
import tempfile
import time

from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import init_vault
from controller_vault.keystore import KeyStore
from controller_vault.staff.redaction import RedactionRules
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, envelope_hash, open_envelope, seal

NOW = 1_800_000_000


def make_envelopes(vault_pk: bytes, n: int, engagements: int = 20) -> list[bytes]:
    """``n`` visitor messages of ~200 bytes spread over ``engagements``."""
    visitors = [PartyKeys.generate() for _ in range(engagements)]
    text = "I would like to book an appointment for next week, " * 4
    return [seal(encode_body("message", {"text": text}), sender=visitors[i % engagements],
                 role="visitor", account="bench", engagement=f"eng-{i % engagements:08d}",
                 sequence=i // engagements + 1, kind="message", recipients=[vault_pk])
            for i in range(n)]


async def vault_rate(state: pathlib.Path, envelopes: list[bytes], keys, batch: int) -> float:
    """Envelopes per second through the real Ingestor, receipts signed."""
    store = await VaultStore.open(state / "vault.db", "bench")
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    # The service's default redaction rules, as `controller-vault serve` runs them (this
    # row used to leave redaction out, which hid its cost: ~200 us per KiB of text).
    ingestor = Ingestor(keys, store, keystore, redaction=RedactionRules())
    start = time.perf_counter()
    for i in range(0, len(envelopes), batch):
        result = await ingestor.ingest(envelopes[i:i + batch], NOW)
        assert result.receipt is not None and result.stored == len(envelopes[i:i + batch])
    elapsed = time.perf_counter() - start
    await store.close()
    await keystore.close()
    return len(envelopes) / elapsed


def floor_rate(path: pathlib.Path, envelopes: list[bytes], keys, batch: int) -> float:
    """Envelopes per second for open + verify + raw batched insert of the same rows."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("CREATE TABLE envelopes (envelope_id TEXT PRIMARY KEY, engagement TEXT, "
                "hash TEXT, sender_key_id TEXT, seq INTEGER, kind TEXT, body BLOB)")
    start = time.perf_counter()
    for i in range(0, len(envelopes), batch):
        rows = []
        for data in envelopes[i:i + batch]:
            opened = open_envelope(data, keys.current_key)
            h = opened.header
            rows.append((h.envelope_id, h.engagement, envelope_hash(data), h.sender_key_id,
                         h.sequence, h.kind, opened.body))
        con.execute("BEGIN")
        con.executemany("INSERT INTO envelopes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return len(envelopes) / elapsed


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run both measurements and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envelopes", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        keys = init_vault(root / "vault", "bench", now=NOW)
        envelopes = make_envelopes(keys.current_key.public_bytes, args.envelopes)
        floor = floor_rate(root / "floor.db", envelopes, keys, args.batch)
        vault = asyncio.run(vault_rate(root / "vault", envelopes, keys, args.batch))
    ratio = vault / floor
    print(f"vault ingest: {vault:,.0f} envelopes/s durably stored "
          f"(batch {args.batch}, {args.envelopes} envelopes, {os.cpu_count()} cpus)")
    print(f"floor (open+verify+raw batched insert): {floor:,.0f} envelopes/s")
    print(f"ratio vault/floor: {ratio:.2f}")
    return {"vault": vault, "floor": floor, "ratio": ratio}


if __name__ == "__main__":
    main()

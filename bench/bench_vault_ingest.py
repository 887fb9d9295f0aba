"""Vault ingest benchmark: envelopes per second durably stored, beside this run's floor.

The floor is the least any vault must do for the same envelopes: PyNaCl open + verify
(envelope.open_envelope) and a raw batched SQLite insert of the same rows (WAL,
synchronous=FULL, one transaction per batch). The ratio says what the vault's own
work costs on top (re-encryption under the data key, blind index, idempotency and
sequence checks, audit chain, receipt signature).

Two rows, each against its own floor: ``short`` (~200-byte visitor messages over 20
engagements, sealed to the vault alone) and ``kib`` (1 KiB messages over 100 engagements,
visitor and certified agent taking turns, each sealed to the vault and the other: the
whole-path bench's envelopes, see relay_load.py; what the vault sees in the relay rows).
``--rows`` picks which to run. Each row also prints the process CPU per
envelope (all threads) of the vault and of the floor: on a shared machine it moves far
less between runs than the rates do.

    python bench/bench_vault_ingest.py [--envelopes N] [--batch B] [--rows short,kib]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sqlite3
import tempfile
import time

from controller_vault.certify import certify_agent
from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import init_vault
from controller_vault.keystore import KeyStore
from controller_vault.staff.redaction import RedactionRules
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, envelope_hash, open_envelope, seal

NOW = 1_800_000_000


#: Message text per row: ~200 bytes, and relay_load.py's 1 KiB text (digit-free, as there).
TEXTS = {"short": "I would like to book an appointment for next week, " * 4,
         "kib": ("Hello, I would like to ask about my appointment next week. " * 20)[:1024]}


#: Engagements per row; the kib row has the whole-path bench's 100-engagement shape.
ENGAGEMENTS = {"short": 20, "kib": 100}


def make_envelopes(vault_pk: bytes, n: int, *, row: str = "short"
                   ) -> tuple[list[bytes], list[PartyKeys]]:
    """``n`` messages of the row's text spread over its engagements, and the agents the
    vault must certify. ``short``: visitors only, sealed to the vault. ``kib``: visitor
    and agent take turns, each sealing to the vault and the other (relay_load.py)."""
    engagements = ENGAGEMENTS[row]
    visitors = [PartyKeys.generate() for _ in range(engagements)]
    agents = [PartyKeys.generate() for _ in range(engagements)] if row == "kib" else []
    body = encode_body("message", {"text": TEXTS[row]})
    out = []
    for i in range(n):
        e, turn = i % engagements, i // engagements
        sender, peer, role = visitors[e], agents[e] if agents else None, "visitor"
        if agents and turn % 2:
            sender, peer, role = agents[e], visitors[e], "agent"
        out.append(seal(body, sender=sender, role=role, account="bench",
                        engagement=f"eng-{e:08d}", sequence=turn // (2 if agents else 1) + 1,
                        kind="message", recipients=[vault_pk] + (
                            [peer.encryption.public_bytes] if peer else [])))
    return out, agents


async def vault_rate(state: pathlib.Path, envelopes: list[bytes], keys, batch: int,
                     agents: list[PartyKeys] = ()) -> tuple[float, float]:
    """Envelopes per second through the real Ingestor, receipts signed; CPU us each."""
    store = await VaultStore.open(state / "vault.db", "bench")
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    for n, agent in enumerate(agents):  # as `certify-agent` does, before the clock starts
        await certify_agent(store, keys, agent=f"agent-{n}", now=NOW,
                            encryption_key=agent.encryption.public_bytes,
                            signing_key=agent.signing_public_bytes)
    # The service's default redaction rules, as `controller-vault serve` runs them (this
    # row used to leave redaction out, which hid its cost: ~200 us per KiB of text).
    ingestor = Ingestor(keys, store, keystore, redaction=RedactionRules())
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(envelopes), batch):
        result = await ingestor.ingest(envelopes[i:i + batch], NOW)
        assert result.receipt is not None and result.stored == len(envelopes[i:i + batch])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await store.close()
    await keystore.close()
    return len(envelopes) / elapsed, cpu / len(envelopes) * 1e6


def floor_rate(path: pathlib.Path, envelopes: list[bytes], keys, batch: int
               ) -> tuple[float, float]:
    """Envelopes per second for open + verify + raw batched insert of the same rows; CPU
    us each."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("CREATE TABLE envelopes (envelope_id TEXT PRIMARY KEY, engagement TEXT, "
                "hash TEXT, sender_key_id TEXT, seq INTEGER, kind TEXT, body BLOB)")
    start, cpu = time.perf_counter(), time.process_time()
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
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    con.close()
    return len(envelopes) / elapsed, cpu / len(envelopes) * 1e6


def run_row(row: str, envelopes: int, batch: int) -> dict[str, float]:
    """One row: its envelopes, the floor, then the vault, in fresh files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        keys = init_vault(root / "vault", "bench", now=NOW)
        stock, agents = make_envelopes(keys.current_key.public_bytes, envelopes, row=row)
        floor, floor_cpu = floor_rate(root / "floor.db", stock, keys, batch)
        vault, vault_cpu = asyncio.run(vault_rate(root / "vault", stock, keys, batch, agents))
    return {"vault": vault, "floor": floor, "ratio": vault / floor,
            "vault_cpu_us": vault_cpu, "floor_cpu_us": floor_cpu}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run each row's measurements and print the ratios.

    Returns the ``short`` row as ``vault``/``floor``/``ratio`` (what run_all.py has always
    read) and the ``kib`` row with a ``_kib`` suffix.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envelopes", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rows", default="short,kib",
                        help="comma-separated rows to run: short, kib")
    args = parser.parse_args(argv)
    out: dict[str, float] = {}
    for row in args.rows.split(","):
        if row not in TEXTS:
            parser.error(f"unknown row {row!r}")
        r = run_row(row, args.envelopes, args.batch)
        note = ("~200-byte visitor messages, vault only" if row == "short"
                else "1 KiB messages both ways, sealed to vault + peer")
        print(f"[{row}] vault ingest: {r['vault']:,.0f} envelopes/s durably stored "
              f"({note}; batch {args.batch}, {args.envelopes} envelopes, "
              f"{os.cpu_count()} cpus)")
        print(f"[{row}] floor (open+verify+raw batched insert): {r['floor']:,.0f} envelopes/s")
        print(f"[{row}] ratio vault/floor: {r['ratio']:.2f}")
        # Process CPU (every thread) per envelope: steadier than the rates on a shared
        # machine, and what the vault takes from the relay's cores in the whole path.
        print(f"[{row}] cpu per envelope: vault {r['vault_cpu_us']:.0f} us, "
              f"floor {r['floor_cpu_us']:.0f} us")
        suffix = "" if row == "short" else f"_{row}"
        out.update({f"{k}{suffix}": v for k, v in r.items()})
    return out


if __name__ == "__main__":
    main()

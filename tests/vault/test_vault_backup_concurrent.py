"""A backup taken while another process ingests is consistent: the restored data store
holds whole batches only (each batch is one transaction), every restored envelope opens
with a key from the restored key store, and the audit chain verifies.

Run as a script, this module is that writer process:
``python test_vault_backup_concurrent.py STATE STOP_FILE``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time

import pytest

BATCH = 20
NOW = 1_800_000_000
REPO = pathlib.Path(__file__).resolve().parents[2]


async def _writer(state: pathlib.Path, stop: pathlib.Path) -> None:
    from controller_vault.ingest import Ingestor
    from controller_vault.keyfiles import load_vault_keys
    from controller_vault.keystore import KeyStore
    from controller_vault.store import VaultStore
    from envelope import PartyKeys, encode_body, seal

    keys = load_vault_keys(state)
    store = await VaultStore.open(state / "vault.db", keys.account, busy_timeout_ms=10_000)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key, busy_timeout_ms=10_000)
    ingestor = Ingestor(keys, store, keystore, on_anomaly=lambda kind, code: None)
    visitor, n, deadline = PartyKeys.generate(), 0, time.monotonic() + 40
    try:
        while not stop.exists() and time.monotonic() < deadline:
            eng = f"eng-{n:08d}"
            frames = [seal(encode_body("message", {"text": f"line {i} of {eng}"}),
                           sender=visitor, role="visitor", account=keys.account,
                           engagement=eng, sequence=i, kind="message",
                           recipients=[keys.current_key.public_bytes])
                      for i in range(1, BATCH + 1)]
            result = await ingestor.ingest(frames, NOW + n)
            assert result.stored == BATCH
            n += 1
            print(f"batch {n}", flush=True)
    finally:
        await store.close()
        await keystore.close()
    print(f"done {n}", flush=True)


async def _check_restored(state: pathlib.Path) -> int:
    from controller_vault.checkpoints import verify_audit
    from controller_vault.erasure import read_engagement
    from controller_vault.keyfiles import load_vault_keys
    from controller_vault.keystore import KeyStore
    from controller_vault.store import VaultStore

    keys = load_vault_keys(state)
    store = await VaultStore.open(state / "vault.db", keys.account)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    try:
        stats = await store.stats()
        assert stats.envelopes == BATCH * stats.engagements, "a torn batch in the copy"
        for n in range(stats.engagements):
            rows = await read_engagement(store, keystore, f"eng-{n:08d}", actor="t",
                                         purpose="check", now=NOW)
            assert len(rows) == BATCH and b"line 20 of" in rows[-1].body
        assert await verify_audit(store, state) == []
        return stats.engagements
    finally:
        await store.close()
        await keystore.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_backups_taken_during_concurrent_ingest_are_consistent(tmp_path):
    import shutil

    from controller_vault.backup import restore_backup, take_backup
    from controller_vault.keyfiles import init_vault

    state, stop = tmp_path / "vault", tmp_path / "stop"
    init_vault(state, "clinic", now=NOW)
    writer = subprocess.Popen([sys.executable, __file__, str(state), str(stop)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert writer.stdout is not None
        for _ in range(3):  # the writer is committing before the first backup starts
            assert writer.stdout.readline().startswith("batch")
        dests = []
        for k in range(4):
            dests.append(tmp_path / f"backup-{k}")
            take_backup(state, dests[-1], now=NOW + k)
            time.sleep(0.05)
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
    assert writer.returncode == 0
    total = int(out.strip().splitlines()[-1].split()[1])
    counts = []
    for k, dest in enumerate(dests):
        fresh = tmp_path / f"fresh-{k}"
        fresh.mkdir()
        shutil.copytree(state / "secrets", fresh / "secrets")
        restore_backup(dest, fresh)
        counts.append(asyncio.run(_check_restored(fresh)))
    assert counts == sorted(counts) and counts[0] >= 3
    assert counts[-1] < total, "the backups were not taken while the writer was ingesting"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    asyncio.run(_writer(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])))

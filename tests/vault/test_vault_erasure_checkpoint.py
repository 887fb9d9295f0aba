"""Erasure checks its WAL checkpoint: a reader holding an old snapshot makes it report
incomplete (audited, with a warning) instead of claiming the wrapped key is gone."""

from __future__ import annotations

import sqlite3

import pytest

from controller_vault.erasure import INCOMPLETE_CHECKPOINT, erase_and_notify
from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import init_vault
from controller_vault.keystore import KeyStore
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, seal

NOW = 1_800_000_000
ENG = "eng-00000042"
pytestmark = pytest.mark.timeout(30)


def _on_disk(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


async def test_reader_holding_a_snapshot_makes_erasure_report_incomplete(tmp_path):
    state = tmp_path / "v"
    keys = init_vault(state, "clinic", now=NOW)
    # A short busy timeout keeps each bounded checkpoint attempt quick in the test.
    store = await VaultStore.open(state / "vault.db", "clinic", busy_timeout_ms=100)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key, busy_timeout_ms=100)
    reader = None
    try:
        visitor = PartyKeys.generate()
        frame = seal(encode_body("message", {"text": "hello"}), sender=visitor, role="visitor",
                     account="clinic", engagement=ENG, sequence=1, kind="message",
                     recipients=[keys.current_key.public_bytes])
        assert (await Ingestor(keys, store, keystore).ingest([frame], NOW)).stored == 1
        assert await keystore.flush_wal() and await store.flush_wal()
        with sqlite3.connect(state / "keys.db") as peek:
            wrapped = peek.execute("SELECT wrapped FROM data_keys").fetchone()[0]
        assert wrapped in _on_disk(state / "keys.db")
        # A concurrent reader (a backup, a CLI query) holds a read transaction open.
        reader = sqlite3.connect(state / "keys.db", isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM data_keys").fetchone()[0] == 1

        outcome = await erase_and_notify(store, keystore, keys, [ENG], actor="dpo",
                                         purpose="art17", rule="request", now=NOW + 5)
        assert outcome.complete is False
        answer = outcome.to_json()
        assert answer["complete"] is False
        assert answer["warning"]["code"] == INCOMPLETE_CHECKPOINT  # type: ignore[index]
        # Why it must not claim success: the wrapped key is still in keys.db's file.
        assert wrapped in _on_disk(state / "keys.db")
        audit = [e for e, _, _ in await store.audit_rows() if e.action == INCOMPLETE_CHECKPOINT]
        assert len(audit) == 1 and audit[0].target == ENG and audit[0].actor == "dpo"
        assert '"keys_db":false' in audit[0].detail

        # Once the reader is gone, running the erasure again finishes it.
        reader.execute("COMMIT")
        reader.close()
        reader = None
        again = await erase_and_notify(store, keystore, keys, [ENG], actor="dpo",
                                       purpose="art17", rule="request", now=NOW + 6)
        assert again.complete is True and "warning" not in again.to_json()
        assert wrapped not in _on_disk(state / "keys.db")
    finally:
        if reader is not None:
            reader.close()
        await store.close()
        await keystore.close()

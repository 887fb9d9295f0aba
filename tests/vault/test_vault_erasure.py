"""Crypto-shredding: after erasure no canary is in any vault file, and an old copy of
the data file cannot be decrypted with the keys that remain."""

from __future__ import annotations

import shutil

import pytest

from controller_vault.atrest import open_row
from controller_vault.erasure import erase_engagements, read_engagement
from controller_vault.errors import DataKeyDestroyed
from controller_vault.keystore import KeyStore
from controller_vault.store import VaultStore
from envelope import PartyKeys

NOW = 1_800_000_000


def _vault_files(state):
    return [p for p in state.rglob("*") if p.is_file()]


async def test_erasure_leaves_no_canary_and_old_copies_unreadable(vault, conversation, tmp_path):
    visitor, relay = PartyKeys.generate(), PartyKeys.generate()
    canaries = {}
    for n in range(3):
        eng = f"eng-{n:08d}"
        c = f"CANARY{n}x7q"
        canaries[eng] = c
        conv = conversation(eng)
        await vault.ingest([
            conv.env(visitor, "prechat", {"name": f"name-{c}", "email": f"{c}@example.org"}),
            conv.env(visitor, "message", {"text": f"my secret is {c}"}),
            conv.env(relay, "connection-info", {"ip": "203.0.113.9", "visitor_id": c},
                     role="relay"),
        ], NOW)
    # Before erasure the canaries are already nowhere in clear (encrypted at rest).
    await vault.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup = tmp_path / "backup-vault.db"
    shutil.copy(vault.state / "vault.db", backup)
    target = "eng-00000001"
    await erase_engagements(vault.store, vault.keystore, [target], actor="dpo",
                            purpose="art17-request", rule="request", now=NOW + 10)
    blob = b"".join(p.read_bytes() for p in _vault_files(vault.state))
    for c in canaries.values():
        assert c.encode() not in blob and c.lower().encode() not in blob
    assert await vault.store.envelopes_of(target) == []
    with pytest.raises(DataKeyDestroyed):
        await vault.keystore.data_key(target)
    # The backup still holds the ciphertext rows; no remaining key opens them.
    old = await VaultStore.open(backup, "clinic")
    remaining = await KeyStore.open(vault.state / "keys.db", vault.keys.master_key)
    try:
        rows = await old.envelopes_of(target)
        assert len(rows) == 3
        with pytest.raises(DataKeyDestroyed):
            await remaining.data_key(target)
        other_keys = [await remaining.data_key(e) for e in canaries if e != target]
        for row in rows:
            for key in other_keys:
                with pytest.raises(DataKeyDestroyed):
                    open_row(key, target, row.envelope_id, row.ciphertext)
        # The other engagements are untouched and still readable.
        kept = await read_engagement(old, remaining, "eng-00000002", actor="t", purpose="t",
                                     now=NOW)
        assert len(kept) == 3
    finally:
        await old.close()
        await remaining.close()
    audit = await vault.store.audit_rows()
    erase = [e for e, _, _ in audit if e.action == "erase"]
    assert erase and erase[-1].actor == "dpo" and erase[-1].target == target


async def test_redelivery_after_erasure_is_acknowledged_but_not_stored(vault, conversation):
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    frame = conv.env(visitor, "message", {"text": "gone soon"})
    await vault.ingest([frame], NOW)
    await erase_engagements(vault.store, vault.keystore, ["eng-00000001"], actor="dpo",
                            purpose="request", rule="request", now=NOW)
    again = await vault.ingest([frame, conv.env(visitor, "message", {"text": "late"})], NOW)
    assert again.stored == 0 and len(again.items) == 2 and again.receipt is not None
    assert await vault.envelope_count() == 0
    assert await vault.keystore.count() == 0


async def test_erasure_by_another_process_stops_later_writes(vault, conversation, reopen):
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    await vault.ingest([conv.env(visitor, "message", {"text": "one"})], NOW)
    staff = await reopen(vault.state, vault.keys)  # e.g. a staff CLI erasing meanwhile
    try:
        await erase_engagements(staff.store, staff.keystore, ["eng-00000001"], actor="dpo",
                                purpose="request", rule="request", now=NOW)
    finally:
        await staff.store.close()
        await staff.keystore.close()
    late = await vault.ingest([conv.env(visitor, "message", {"text": "two"})], NOW)
    assert late.stored == 0 and late.receipt is not None
    assert await vault.envelope_count() == 0 and await vault.keystore.count() == 0

"""Backup and restore: a fresh state directory reads the transcripts back, an erasure made
after a backup survives restoring that backup's data store, and bad backups or live
targets are refused with a stable code."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

from controller_vault.backup import (
    BackupError,
    latest_schema_version,
    restore_backup,
    take_backup,
)
from controller_vault.erasure import erase_engagements, read_engagement
from controller_vault.errors import DataKeyDestroyed
from controller_vault.keyfiles import init_vault, load_vault_keys
from envelope import PartyKeys

from .conftest import ACCOUNT, NOW, Conversation, open_vault

pytestmark = pytest.mark.timeout(60)

REPO = pathlib.Path(__file__).resolve().parents[2]


async def _own_vault(tmp_path):
    # Not the shared fixture: these tests stop the "service" (close the stores) midway.
    state = tmp_path / "vault"
    return await open_vault(state, init_vault(state, ACCOUNT, now=NOW))


async def _populate(vault, engagements):
    visitor = PartyKeys.generate()
    for eng in engagements:
        conv = Conversation(vault.keys.current_key.public_bytes, eng)
        await vault.ingest([conv.env(visitor, "prechat", {"name": f"name of {eng}"}),
                            conv.env(visitor, "message", {"text": f"hello from {eng}"})], NOW)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller_vault", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _fresh_state_with_secrets(vault, tmp_path) -> pathlib.Path:
    # Secrets are never in a backup: the operator brings them back from their own custody.
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    shutil.copytree(vault.state / "secrets", fresh / "secrets")
    return fresh


async def test_cli_backup_of_a_running_vault_restores_into_a_fresh_state(
        vault, tmp_path):
    engs = [f"eng-{n:08d}" for n in range(3)]
    await _populate(vault, engs)
    dest = tmp_path / "backup"
    proc = _cli("backup", str(dest), "--state-dir", str(vault.state))  # stores are open here
    assert proc.returncode == 0, proc.stderr
    assert "SHORTER" in proc.stdout
    manifest = json.loads((dest / "manifest.json").read_text())
    assert set(manifest["parts"]) == {"data", "keys"} and manifest["account"] == "clinic"
    assert manifest["parts"]["data"]["files"]["vault.db"]["schema_version"] == \
        latest_schema_version("vault")
    assert manifest["parts"]["keys"]["files"]["keys.db"]["schema_version"] == \
        latest_schema_version("keys")
    assert not (dest / "keys" / "vault.db").exists() and not (dest / "data" / "keys.db").exists()
    assert not list(dest.rglob("*.key")), "no secret file may be in a backup"
    for path in dest.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    fresh = _fresh_state_with_secrets(vault, tmp_path)
    proc = _cli("restore", str(dest), "--state-dir", str(fresh))
    assert proc.returncode == 0, proc.stderr
    restored = await open_vault(fresh, load_vault_keys(fresh))
    try:
        for eng in engs:
            rows = await read_engagement(restored.store, restored.keystore, eng, actor="dpo",
                                         purpose="restore-check", now=NOW)
            assert [r.kind for r in rows] == ["prechat", "message"]
            assert f"hello from {eng}".encode() in rows[1].body
        actions = [e.action for e, _, _ in await restored.store.audit_rows()]
        assert "restore" in actions
    finally:
        await restored.store.close()
        await restored.keystore.close()
    proc = _cli("audit", "verify", "--state-dir", str(fresh))
    assert proc.returncode == 0, proc.stderr


async def test_erasure_after_backup_survives_restoring_the_data_store(tmp_path, reopen):
    vault = await _own_vault(tmp_path)
    await _populate(vault, ["eng-00000001", "eng-00000002"])
    dest = tmp_path / "backup"
    take_backup(vault.state, dest, now=NOW)
    await erase_engagements(vault.store, vault.keystore, ["eng-00000001"], actor="dpo",
                            purpose="art17-request", rule="request", now=NOW + 5)
    await vault.store.close()
    await vault.keystore.close()  # the service is stopped for a restore
    report = restore_backup(dest, vault.state, parts=("data",), force=True)
    assert report.parts == {"data": ["vault.db"]}
    again = await reopen(vault.state, vault.keys)
    try:
        # The restored data store holds the erased engagement's ciphertext again...
        assert len(await again.store.envelopes_of("eng-00000001")) == 2
        # ...but the CURRENT key store has no key for it: it stays unreadable.
        with pytest.raises(DataKeyDestroyed):
            await read_engagement(again.store, again.keystore, "eng-00000001", actor="dpo",
                                  purpose="check", now=NOW + 6)
        kept = await read_engagement(again.store, again.keystore, "eng-00000002", actor="dpo",
                                     purpose="check", now=NOW + 6)
        assert len(kept) == 2
    finally:
        await again.store.close()
        await again.keystore.close()
    # Why key-store backups need the shorter retention: the OLD key store still opens it.
    restore_backup(dest, vault.state, parts=("keys",), force=True)
    old = await reopen(vault.state, vault.keys)
    try:
        rows = await read_engagement(old.store, old.keystore, "eng-00000001", actor="dpo",
                                     purpose="check", now=NOW + 7)
        assert b"hello from eng-00000001" in rows[1].body
    finally:
        await old.store.close()
        await old.keystore.close()


async def test_restore_refuses_live_nonempty_tampered_and_foreign(tmp_path):
    vault = await _own_vault(tmp_path)
    await _populate(vault, ["eng-00000001"])
    dest = tmp_path / "backup"
    take_backup(vault.state, dest, now=NOW)
    with pytest.raises(BackupError) as err:
        take_backup(vault.state, dest, now=NOW)
    assert err.value.code == "backup.exists"
    # The vault fixture holds its stores open: that is a running service.
    with pytest.raises(BackupError) as err:
        restore_backup(dest, vault.state, force=True)
    assert err.value.code == "backup.live_store"
    await vault.store.close()
    await vault.keystore.close()
    with pytest.raises(BackupError) as err:
        restore_backup(dest, vault.state)
    assert err.value.code == "backup.target_not_empty"
    tampered = tmp_path / "tampered"
    shutil.copytree(dest, tampered)
    with (tampered / "keys" / "keys.db").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff")
    with pytest.raises(BackupError) as err:
        restore_backup(tampered, tmp_path / "t1")
    assert err.value.code == "backup.checksum"
    # A manifest edited to match a broken file still fails the integrity check.
    broken = tmp_path / "broken"
    shutil.copytree(dest, broken)
    (broken / "keys" / "keys.db").write_bytes(b"not a database" * 100)
    doc = json.loads((broken / "keys" / "manifest.json").read_text())


    doc["files"]["keys.db"]["sha256"] = hashlib.sha256(b"not a database" * 100).hexdigest()
    (broken / "keys" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackupError) as err:
        restore_backup(broken, tmp_path / "t2")
    assert err.value.code == "backup.integrity"
    assert not (tmp_path / "t2" / "keys.db").exists()
    (broken / "keys" / "manifest.json").unlink()
    with pytest.raises(BackupError) as err:
        restore_backup(broken, tmp_path / "t3")
    assert err.value.code == "backup.manifest"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "vault.json").write_text(json.dumps({"account": "other-clinic"}))
    with pytest.raises(BackupError) as err:
        restore_backup(dest, foreign)
    assert err.value.code == "backup.account_mismatch"


def test_cli_restore_refusal_exit_code_and_message(tmp_path):
    proc = _cli("restore", str(tmp_path / "nothing"), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 1 and "backup.manifest" in proc.stderr


@pytest.mark.parametrize("damaged", ["vault.db", "staff.db"])
def test_cli_restore_replaces_an_unreadable_store(tmp_path, damaged):
    # The remedy README.md gives for `*.store_unavailable`: restore the data part over it.
    state, backup = tmp_path / "vault", tmp_path / "backup"
    assert _cli("init", "--account", ACCOUNT, "--state-dir", str(state)).returncode == 0
    assert _cli("token", "list", "--state-dir", str(state)).returncode == 0  # all stores
    assert _cli("backup", str(backup), "--state-dir", str(state)).returncode == 0
    (state / damaged).write_bytes(b"\xa5" * 8192)
    code = "vault" if damaged == "vault.db" else "staff"
    refused = _cli("token", "list", "--state-dir", str(state))
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"controller-vault: {code}.store_unavailable: ")
    kept = _cli("restore", str(backup), "--state-dir", str(state), "--only", "data")
    assert kept.returncode == 1 and "backup.target_not_empty" in kept.stderr, kept.stderr
    restored = _cli("restore", str(backup), "--state-dir", str(state), "--only", "data",
                    "--force")
    assert restored.returncode == 0, restored.stderr  # was a sqlite3 traceback
    assert "Traceback" not in restored.stderr
    assert _cli("token", "list", "--state-dir", str(state)).returncode == 0
    verified = _cli("audit", "verify", "--state-dir", str(state))
    assert verified.returncode == 0, verified.stderr

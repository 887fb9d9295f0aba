"""init, loading, rotation, passphrase and systemd credentials, on real files."""

from __future__ import annotations

import json
import os
import stat

import nacl.pwhash
import pytest

from controller_vault.errors import KeyFileError, VaultExists
from controller_vault.keyfiles import (
    embed_attribute,
    init_vault,
    load_vault_keys,
    rotate_encryption_key,
)
from envelope import PartyKeys, open_envelope, seal, verify_vault_key_statement

NOW = 1_800_000_000
# The weakest setting the vault accepts (its floor) is also the fastest one tests can use.
FAST = {"kdf_ops": nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        "kdf_mem": nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE}


def test_init_creates_private_files_and_a_verifying_statement(tmp_path):
    state = tmp_path / "v"
    keys = init_vault(state, "clinic", now=NOW)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700
    secrets = sorted(p.name for p in (state / "secrets").iterdir())
    assert secrets == sorted(["identity.key", "master.key", "index.key",
                              f"enc-{keys.current_key_id}.key"])
    for p in (state / "secrets").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    st = verify_vault_key_statement(keys.current_statement, keys.identity.public_bytes,
                                    account="clinic", now=NOW)
    assert st.key_id == keys.current_key_id
    assert embed_attribute(keys) == f'data-controller-fingerprint="{keys.identity.fingerprint}"'
    loaded = load_vault_keys(state)
    assert loaded.identity.public_bytes == keys.identity.public_bytes
    assert loaded.master_key == keys.master_key and loaded.index_key == keys.index_key


def test_init_refuses_to_overwrite(tmp_path):
    state = tmp_path / "v"
    keys = init_vault(state, "clinic", now=NOW)
    with pytest.raises(VaultExists):
        init_vault(state, "clinic", now=NOW)
    assert load_vault_keys(state).identity.public_bytes == keys.identity.public_bytes


@pytest.mark.parametrize("damage", ["missing", "corrupt", "mode", "swapped"])
def test_bad_key_files_stop_loading_with_the_file_named(tmp_path, damage):
    state = tmp_path / "v"
    init_vault(state, "clinic", now=NOW)
    target = state / "secrets" / "master.key"
    if damage == "missing":
        target.unlink()
    elif damage == "corrupt":
        target.write_text("{not json")
    elif damage == "mode":
        os.chmod(target, 0o644)
    else:
        os.replace(state / "secrets" / "index.key", target)
    with pytest.raises(KeyFileError) as err:
        load_vault_keys(state)
    assert "master.key" in err.value.message
    hint = {"missing": "restore", "corrupt": "restore", "mode": "chmod 600",
            "swapped": "corrupt"}[damage]
    assert hint in err.value.message


def test_missing_vault_json_says_run_init(tmp_path):
    with pytest.raises(KeyFileError) as err:
        load_vault_keys(tmp_path / "nowhere")
    assert "controller-vault init" in err.value.message


def test_rotation_keeps_old_keys_for_opening(tmp_path):
    state = tmp_path / "v"
    keys = init_vault(state, "clinic", now=NOW)
    visitor = PartyKeys.generate()
    old_env = seal(b"old", sender=visitor, role="visitor", account="clinic",
                   engagement="eng-00000001", sequence=1, kind="message",
                   recipients=[keys.current_key.public_bytes])
    rotated = rotate_encryption_key(state, now=NOW + 100)
    assert rotated.current_key_id != keys.current_key_id
    assert set(rotated.encryption_keys) == {keys.current_key_id, rotated.current_key_id}
    assert open_envelope(old_env, rotated.encryption_keys[keys.current_key_id]).body == b"old"
    st = verify_vault_key_statement(rotated.current_statement, keys.identity.public_bytes,
                                    account="clinic", now=NOW + 100)
    assert st.key_id == rotated.current_key_id
    assert rotated.key_created[rotated.current_key_id] == NOW + 100


def test_passphrase_protects_every_secret(tmp_path):
    state = tmp_path / "v"
    keys = init_vault(state, "clinic", now=NOW, passphrase=b"correct horse", **FAST)
    for p in (state / "secrets").iterdir():
        doc = json.loads(p.read_text())
        assert "key" not in doc and "ct" in doc
    with pytest.raises(KeyFileError, match="passphrase"):
        load_vault_keys(state)
    with pytest.raises(KeyFileError, match="does not open"):
        load_vault_keys(state, passphrase=b"wrong")
    loaded = load_vault_keys(state, passphrase=b"correct horse")
    assert loaded.master_key == keys.master_key
    rotated = rotate_encryption_key(state, now=NOW + 1, passphrase=b"correct horse")
    assert len(rotated.encryption_keys) == 2


@pytest.mark.parametrize("weaken", ["ops", "mem"])
def test_kdf_costs_below_the_floor_in_vault_json_are_refused(tmp_path, weaken):
    state = tmp_path / "v"
    init_vault(state, "clinic", now=NOW, passphrase=b"correct horse", **FAST)
    doc = json.loads((state / "vault.json").read_text())
    # An attacker who can edit vault.json lowers one cost to libsodium's minimum.
    doc["kdf"][weaken] = (nacl.pwhash.argon2id.OPSLIMIT_MIN if weaken == "ops"
                          else nacl.pwhash.argon2id.MEMLIMIT_MIN)
    (state / "vault.json").write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="below the floor") as err:
        load_vault_keys(state, passphrase=b"correct horse")
    assert str(state / "vault.json") in err.value.message
    with pytest.raises(KeyFileError, match="below the floor"):
        rotate_encryption_key(state, now=NOW + 1, passphrase=b"correct horse")


def test_init_refuses_kdf_costs_below_the_floor(tmp_path):
    with pytest.raises(KeyFileError, match="below the floor"):
        init_vault(tmp_path / "v", "clinic", now=NOW, passphrase=b"pw",
                   kdf_ops=nacl.pwhash.argon2id.OPSLIMIT_MIN,
                   kdf_mem=nacl.pwhash.argon2id.MEMLIMIT_MIN)


def test_systemd_credentials_win_over_state_files(tmp_path):
    state, creds = tmp_path / "v", tmp_path / "creds"
    keys = init_vault(state, "clinic", now=NOW)
    creds.mkdir()
    for p in (state / "secrets").iterdir():
        (creds / p.name).write_bytes(p.read_bytes())
        p.unlink()
    with pytest.raises(KeyFileError):
        load_vault_keys(state)
    loaded = load_vault_keys(state, credentials_dir=str(creds))
    assert loaded.identity.public_bytes == keys.identity.public_bytes

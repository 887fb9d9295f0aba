"""The staff subcommands of `controller-vault` in real subprocesses on a real vault:
tokens, transcripts, export with progress, erasure and the retention dry run; a token
command refused by a store (a newer vault.db or staff.db) changes no staff.db, and an
unreadable staff.db stops the commands and serve with one line."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import time

import jsonschema
import pytest

from controller_vault.backup import latest_schema_version
from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import init_vault
from controller_vault.keystore import KeyStore
from controller_vault.staff.token_store import SCHEMA_VERSION
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, seal

SCHEMA = json.loads((pathlib.Path(__file__).resolve().parents[2] / "docs"
                     / "export-bundle.schema.json").read_text())
pytestmark = pytest.mark.timeout(120)
DAY = 86_400


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "controller_vault", *args],
                          capture_output=True, text=True, timeout=30, env=dict(os.environ))
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def _populate(state: pathlib.Path) -> None:
    keys = init_vault(state, "clinic", now=int(time.time()))

    async def run() -> None:
        store = await VaultStore.open(state / "vault.db", "clinic")
        keystore = await KeyStore.open(state / "keys.db", keys.master_key)
        ingestor = Ingestor(keys, store, keystore)
        now = int(time.time())
        for n, (email, age_days) in enumerate([("ann@example.org", 400), ("ann@example.org", 1),
                                               ("ann@example.org", 2), ("ben@example.org", 1)]):
            visitor = PartyKeys.generate()
            eng = f"eng-cli-{n:04d}"
            frames = [seal(encode_body(kind, body), sender=visitor, role="visitor",
                           account="clinic", engagement=eng, sequence=i + 1, kind=kind,
                           recipients=[keys.current_key.public_bytes])
                      for i, (kind, body) in enumerate([
                          ("prechat", {"email": email}),
                          ("consent", {"text_version": "v1", "answer": "granted"}),
                          ("message", {"text": f"text of {eng}"})])]
            result = await ingestor.ingest(frames, now - age_days * DAY)
            assert result.stored == 3
        await store.close()
        await keystore.close()

    asyncio.run(run())


def test_staff_cli_end_to_end(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "vault"
    _populate(state)
    where = ("--state-dir", str(state))
    made = _cli("token", "create", *where, "--actor", "dpo", "--scope", "read",
                "--scope", "export")
    token = made.stdout.strip()
    assert token.startswith("crst1.") and "read" in made.stderr
    token_id = token.split(".")[1]
    assert token not in (state / "staff.db").read_bytes().decode("latin-1")
    listed = _cli("token", "list", *where).stdout
    assert token_id in listed and "live" in listed and token not in listed
    assert "revoked" in _cli("token", "revoke", *where, token_id).stdout
    assert "revoked" in _cli("token", "list", *where).stdout
    assert _cli("token", "revoke", *where, token_id, check=False).returncode == 1

    out = _cli("transcripts", "list", *where).stdout
    assert out.count("eng-cli-") == 4 and "incomplete" in out
    shown = json.loads(_cli("transcripts", "show", *where, "eng-cli-0003",
                            "--purpose", "complaint 7").stdout)
    assert shown["messages"][0]["text"] == "text of eng-cli-0003"
    html = _cli("transcripts", "show", *where, "eng-cli-0003", "--purpose", "p", "--html")
    assert html.stdout.startswith("<!DOCTYPE html>")

    out_file = tmp_path / "ann.json"
    exported = _cli("export", *where, "--subject-email", "ANN@example.org",
                    "--out", str(out_file))
    assert "3/3 engagements" in exported.stderr and "export [" in exported.stderr
    bundle = json.loads(out_file.read_text())
    jsonschema.validate(bundle, SCHEMA)
    assert sorted(e["engagement_id"] for e in bundle["engagements"]) == [
        "eng-cli-0000", "eng-cli-0001", "eng-cli-0002"]
    assert "ben@example.org" not in out_file.read_text()
    assert out_file.stat().st_mode & 0o777 == 0o600

    dry = _cli("retention", *where, "--dry-run").stdout
    assert "0 engagement(s) affected" in dry  # no [retention] configured: nothing goes
    config = tmp_path / "vault.toml"
    config.write_text(f'[vault]\naccount = "clinic"\nstate_dir = "{state}"\n'
                      "[retention]\ntranscripts_days = 365\nprechat_days = 365\n")
    dry = _cli("retention", "--config", str(config), "--dry-run").stdout
    assert "eng-cli-0000" in dry and "1 engagement(s) affected, 1 erased whole" in dry
    assert "eng-cli-0000" in _cli("transcripts", "list", *where).stdout  # dry run kept it

    erased = json.loads(_cli("erase", *where, "--subject-email", "ann@example.org").stdout)
    assert len(erased["engagements"]) == 3 and erased["receipts"]
    erased = json.loads(_cli("erase", *where, "--engagement", "eng-cli-0003").stdout)
    assert erased["engagements"] == ["eng-cli-0003"]
    assert "eng-cli-" not in _cli("transcripts", "list", *where).stdout
    missing = _cli("erase", *where, "--engagement", "eng-nothing", check=False)
    assert missing.returncode == 1 and "engagement.not_found" in missing.stderr
    assert "audit log verifies" in _cli("audit", "verify", *where).stdout


def test_ids_that_start_with_a_dash_are_reachable_from_the_command_line(
        tmp_path: pathlib.Path) -> None:
    # Engagement ids are base64url: one minted elsewhere may start with "-", which argparse
    # reads as an option. The documented forms ("-- ID", "--engagement=ID") reach it.
    state = tmp_path / "vault"
    keys = init_vault(state, "clinic", now=int(time.time()))
    eng = "-dash-eng-0001"

    async def run() -> None:
        store = await VaultStore.open(state / "vault.db", "clinic")
        keystore = await KeyStore.open(state / "keys.db", keys.master_key)
        frame = seal(encode_body("message", {"text": "dash text"}),
                     sender=PartyKeys.generate(), role="visitor", account="clinic",
                     engagement=eng, sequence=1, kind="message",
                     recipients=[keys.current_key.public_bytes])
        assert (await Ingestor(keys, store, keystore).ingest([frame], int(time.time()))
                ).stored == 1
        await store.close()
        await keystore.close()

    asyncio.run(run())
    where = ("--state-dir", str(state))
    shown = json.loads(_cli("transcripts", "show", *where, "--purpose", "p", "--", eng).stdout)
    assert shown["engagement_id"] == eng and shown["messages"][0]["text"] == "dash text"
    erased = json.loads(_cli("erase", *where, f"--engagement={eng}").stdout)
    assert erased["engagements"] == [eng]


def _set_version(path: pathlib.Path, version: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


def test_token_commands_change_no_staff_db_when_a_store_is_refused(
        tmp_path: pathlib.Path) -> None:
    state = tmp_path / "vault"
    init_vault(state, "clinic", now=int(time.time()))
    where = ("--state-dir", str(state))
    _cli("rotate-key", *where)  # vault.db now exists
    latest = latest_schema_version("vault")
    _set_version(state / "vault.db", latest + 1)
    # vault.db is opened first: refused, the command stops before staff.db is created.
    for command in (["create", "--actor", "dpo", "--scope", "read"], ["list"]):
        refused = _cli("token", command[0], *where, *command[1:], check=False)
        assert refused.returncode == 78 and "vault.schema_newer" in refused.stderr
        assert not (state / "staff.db").exists(), command
    _set_version(state / "vault.db", latest)
    _set_version(state / "staff.db", SCHEMA_VERSION + 1)  # a newer vault's staff.db
    before = (state / "staff.db").read_bytes()
    # serve too: exit 78, which controller-vault.service does not restart on (it would
    # otherwise start it every 2 s). Port 0: were the refusal missing, serve would
    # listen until the timeout.
    for command in (["token", "create", "--actor", "dpo", "--scope", "read"],
                    ["token", "list"], ["serve"]):
        refused = subprocess.run(
            [sys.executable, "-m", "controller_vault", *command[:2], *where, *command[2:]],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "VAULT_PORT": "0"})
        assert refused.returncode == 78, (command, refused.stderr)
        assert refused.stderr == (
            f"controller-vault: config.staff_db_version: staff.db is from a newer version "
            f"(schema {SCHEMA_VERSION + 1}, this vault knows {SCHEMA_VERSION}): "
            "run the newer vault\n")
        assert (state / "staff.db").read_bytes() == before, command
        assert not (state / "staff.db-wal").exists()


@pytest.mark.parametrize("damage", ["garbage", "garbage_behind_a_valid_header"])
def test_an_unreadable_staff_db_stops_commands_and_serve_with_one_line(
        tmp_path: pathlib.Path, damage: str) -> None:
    state = tmp_path / "vault"
    init_vault(state, "clinic", now=int(time.time()))
    where = ("--state-dir", str(state))
    _cli("token", "list", *where)  # vault.db, keys.db and staff.db now exist, closed
    staff = state / "staff.db"
    data = staff.read_bytes()
    assert len(data) >= 4096 and not (state / "staff.db-wal").exists()
    if damage == "garbage":
        # Not a database at all: refused by the read-only version check.
        staff.write_bytes(b"\xa5" * len(data))
    else:
        # The 100-byte header stays valid (the version check passes); page 1's schema
        # table is garbage, so the first statement that loads the schema on the new
        # connection fails: that connection, left open, would keep the process alive.
        staff.write_bytes(data[:100] + b"\xa5" * 3996 + data[4096:])
    before = staff.read_bytes()
    for command in (["token", "list"], ["token", "create", "--actor", "dpo", "--scope", "read"],
                    ["serve"]):
        proc = subprocess.run(
            [sys.executable, "-m", "controller_vault", *command[:2], *where, *command[2:]],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "VAULT_PORT": "0"})  # port 0: no clash, were serve to run
        assert proc.returncode == 1, (command, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr == (f"controller-vault: staff.store_unavailable: cannot open "
                               f"database {staff}: DatabaseError\n"), command
        assert proc.stdout == "", command  # no token was printed
        assert staff.read_bytes() == before, command


def test_a_locked_staff_db_stops_token_create_and_revoke_with_one_line(
        tmp_path: pathlib.Path) -> None:
    state = tmp_path / "vault"
    init_vault(state, "clinic", now=int(time.time()))
    where = ("--state-dir", str(state))
    token_id = _cli("token", "create", *where, "--actor", "dpo", "--scope", "read"
                    ).stdout.strip().split(".")[1]
    # A second connection (another command, an operator's sqlite3 shell) holds the write
    # lock for longer than staff.db's busy timeout (2 s).
    other = sqlite3.connect(state / "staff.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        for command in (["create", "--actor", "auditor", "--scope", "read"],
                        ["revoke", token_id]):
            proc = _cli("token", command[0], *where, *command[1:], check=False)
            assert proc.returncode == 1, (command, proc.stderr)
            assert proc.stderr == ("controller-vault: staff.store_unavailable: cannot write "
                                   "staff.db: locked\n"), command
            assert proc.stdout == "", command  # no token printed, nothing "revoked"
        assert token_id in _cli("token", "list", *where).stdout  # a WAL read still works
    finally:
        other.execute("ROLLBACK")
        other.close()
    listed = _cli("token", "list", *where).stdout.splitlines()
    assert len(listed) == 1 and listed[0].endswith("live")
    made = _cli("token", "create", *where, "--actor", "auditor", "--scope", "read")
    assert made.stdout.startswith("crst1.")
    assert _cli("token", "revoke", *where, token_id).stdout == f"revoked {token_id}\n"
    vault = sqlite3.connect(state / "vault.db")
    try:
        actions = vault.execute("SELECT action FROM audit_log WHERE action LIKE 'token-%' "
                                "ORDER BY seq").fetchall()
    finally:
        vault.close()
    # The refused commands audited nothing: only the writes that happened are in the log.
    assert actions == [("token-create",), ("token-create",), ("token-revoke",)]

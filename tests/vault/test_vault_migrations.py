"""Schema upgrades of vault.db and keys.db, tested from the FIRST version on populated files.

The machinery applies the schema files exactly as a vault of version N left them
(files 1..N, ``PRAGMA user_version = N``), fills the database with realistic rows written
in that version's SQL, then opens it with the current code and reads everything back
through the vault's own read paths. Every schema file must have a populate step here:
adding ``vault-002.sql`` without a ``_populate_vault_v2`` fails the suite, so each
migration is tested against data, not only against an empty file.

A store of a NEWER schema than the code knows (a downgraded package, a newer vault's
state restored) is refused by the stores, by ``serve`` and by the CLI commands, and left
byte for byte as it was, also when a killed newer vault left its last writes in the -wal.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from controller_vault import database
from controller_vault.atrest import blind_token, seal_row, wrap_data_key
from controller_vault.audit import GENESIS, AuditEntry, entry_hash, sign_checkpoint
from controller_vault.backup import latest_schema_version
from controller_vault.checkpoints import CHECKPOINT_FILE, verify_audit
from controller_vault.erasure import read_engagement
from controller_vault.errors import SchemaNewer
from controller_vault.ingest import Ingestor, open_and_check
from controller_vault.keyfiles import VaultKeys, init_vault
from controller_vault.keystore import KeyStore
from controller_vault.store import VaultStore
from envelope import PartyKeys, canonical_json, encode_body, envelope_hash, key_id, seal

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000
KEPT, ERASED = "eng-00000001", "eng-00000002"
EMAIL = "visitor@example.org"
RELAY_PIN = bytes(range(1, 33))


def _schema_files(prefix: str) -> list[tuple[int, str]]:
    found = [(int(r.name[len(prefix) + 1:-4]), r.read_text())
             for r in importlib.resources.files("controller_vault.schema").iterdir()
             if r.name.startswith(prefix + "-") and r.name.endswith(".sql")]
    return sorted(found)


def _create_at_version(path: pathlib.Path, prefix: str, version: int) -> sqlite3.Connection:
    """A database as a vault of ``version`` left it: files 1..version applied, WAL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    for number, sql in _schema_files(prefix):
        if number <= version:
            db.executescript(sql)
            db.execute(f"PRAGMA user_version = {number}")
    return db


@dataclass
class World:
    """What the populate steps wrote, for the checks after the upgrade."""

    state: pathlib.Path
    keys: VaultKeys
    visitor: PartyKeys
    frames: dict[str, list[bytes]]
    bodies: dict[str, list[bytes]]


def _world(tmp_path: pathlib.Path) -> World:
    state = tmp_path / "vault"
    keys = init_vault(state, "clinic", now=NOW)
    visitor = PartyKeys.generate()
    frames: dict[str, list[bytes]] = {}
    for eng in (KEPT, ERASED):
        frames[eng] = [
            seal(encode_body(kind, body), sender=visitor, role="visitor", account="clinic",
                 engagement=eng, sequence=seq, kind=kind,
                 recipients=[keys.current_key.public_bytes])
            for seq, (kind, body) in enumerate(
                [("prechat", {"name": "Ada", "email": EMAIL}),
                 ("message", {"text": f"first words of {eng}"})], start=1)]
    return World(state, keys, visitor, frames, {})


def _populate_vault_v1(db: sqlite3.Connection, w: World, data_key: bytes) -> None:
    """Rows in vault-001.sql's columns, as the v1 ingest, certify and erase wrote them."""
    sig_key_id = ""
    for eng, frames in w.frames.items():
        erased = eng == ERASED
        db.execute("INSERT INTO engagements (engagement, account, first_at, last_at, "
                   "visitor_key, end_final, complete, missing, erased_at, erase_rule) "
                   "VALUES (?, 'clinic', ?, ?, ?, NULL, NULL, 0, ?, ?)",
                   (eng, NOW, NOW + 1, None if erased else w.visitor.signing_public_bytes,
                    NOW + 2 if erased else None, "request" if erased else None))
        if erased:
            continue  # erasure left only the tombstone
        w.bodies[eng] = []
        for frame in frames:
            opened, body, kid = open_and_check(frame, w.keys)
            h = opened.header
            sig_key_id = h.sender_key_id
            db.execute("INSERT OR IGNORE INTO engagement_senders VALUES (?, ?, ?)",
                       (eng, h.sender_key_id, h.role))
            db.execute("INSERT INTO envelopes (envelope_id, engagement, hash, sender_key_id, "
                       "role, seq, kind, received_at, vault_key_id, ciphertext) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (h.envelope_id, eng, envelope_hash(frame), h.sender_key_id,
                        h.role, h.sequence, h.kind, NOW + 1, kid,
                        seal_row(data_key, eng, h.envelope_id, opened.body)))
            w.bodies[eng].append(opened.body)
            if body.get("email"):
                db.execute("INSERT INTO subject_index VALUES (?, ?)",
                           (blind_token(w.keys.index_key, "email", body["email"]), eng))
    agent = PartyKeys.generate()
    db.execute("INSERT INTO agent_certificates VALUES (?, ?, ?, ?, ?, ?, ?)",
               (key_id(agent.signing_public_bytes), "agent-1", agent.encryption_key_id, NOW,
                NOW + 86400, "{}", NOW))
    assert sig_key_id
    head = GENESIS
    for seq, (actor, action, target) in enumerate(
            [("vault-link", "ingest", "batch"), ("dpo", "erase", ERASED)], start=1):
        entry = AuditEntry(seq, NOW + seq, actor, action, "storage", target,
                           canonical_json({"n": seq}).decode())
        new = entry_hash(head, entry)
        db.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (seq, entry.at, actor, action, entry.purpose, target, entry.detail,
                    head, new))
        head = new
    body, sig = sign_checkpoint(w.keys.identity, account="clinic", seq=2, head=head, at=NOW)
    db.execute("INSERT INTO audit_checkpoints VALUES (2, ?, ?)", (body, sig))
    (w.state / CHECKPOINT_FILE).write_text(json.dumps({"body": body, "sig": sig}) + "\n")


def _populate_vault_v2(db: sqlite3.Connection, w: World, data_key: bytes) -> None:
    """vault-002.sql: v1 rows plus the signed erasure notice of the erased engagement,
    still pending at the relay, and an older one already recorded."""
    _populate_vault_v1(db, w, data_key)
    for n, recorded in ((1, NOW + 3), (2, None)):
        db.execute("INSERT INTO erasure_notices (notice, created_at, recorded_at) "
                   "VALUES (?, ?, ?)",
                   (json.dumps({"body": f"notice-{n}-for-{ERASED}", "sig": "sig"}), NOW + n,
                    recorded))


def _populate_vault_v3(db: sqlite3.Connection, w: World, data_key: bytes) -> None:
    """vault-003.sql: v2 rows plus the relay signing key pinned at pairing."""
    _populate_vault_v2(db, w, data_key)
    db.execute("INSERT INTO relay_signing_key VALUES (1, ?, 'pair', ?)", (RELAY_PIN, NOW))


def _populate_vault_v4(db: sqlite3.Connection, w: World, data_key: bytes) -> None:
    """vault-004.sql: v3 rows plus a transcript-email job still waiting for a retry."""
    _populate_vault_v3(db, w, data_key)
    envelope_id = open_and_check(w.frames[KEPT][0], w.keys)[0].header.envelope_id
    db.execute("INSERT INTO mail_jobs VALUES (?, ?, 2, ?, ?)", (envelope_id, KEPT, NOW + 5,
                                                                 NOW))


def _populate_keys_v1(db: sqlite3.Connection, w: World, data_key: bytes) -> None:
    """keys-001.sql: the kept engagement's wrapped key; the erased one's was deleted."""
    nonce, wrapped = wrap_data_key(w.keys.master_key, KEPT, data_key)
    db.execute("INSERT INTO data_keys VALUES (?, ?, ?, ?)", (KEPT, nonce, wrapped, NOW))


Populate = Callable[[sqlite3.Connection, World, bytes], None]
POPULATE: dict[tuple[str, int], Populate] = {
    ("vault", 1): _populate_vault_v1,
    ("vault", 2): _populate_vault_v2,
    ("vault", 3): _populate_vault_v3,
    ("vault", 4): _populate_vault_v4,
    ("keys", 1): _populate_keys_v1,
}
STEPS = [(prefix, n) for prefix in ("vault", "keys") for n, _ in _schema_files(prefix)]


@pytest.mark.parametrize("prefix", ["vault", "keys"])
def test_schema_files_are_numbered_from_one_without_gaps(prefix):
    numbers = [n for n, _ in _schema_files(prefix)]
    assert numbers == list(range(1, len(numbers) + 1))
    assert latest_schema_version(prefix) == numbers[-1]


def test_every_schema_version_has_a_populate_step():
    assert set(STEPS) == set(POPULATE)


@pytest.mark.parametrize(("prefix", "start"), STEPS)
async def test_upgrade_from_each_version_keeps_populated_data(tmp_path, prefix, start):
    w = _world(tmp_path)
    data_key = bytes(range(32))
    # The store under test starts at ``start``; the other one at its own first version.
    for name in ("vault", "keys"):
        version = start if name == prefix else 1
        db = _create_at_version(w.state / f"{name}.db", name, version)
        POPULATE[(name, version)](db, w, data_key)
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
        db.close()
    store = await VaultStore.open(w.state / "vault.db", "clinic")
    keystore = await KeyStore.open(w.state / "keys.db", w.keys.master_key)
    try:
        for name in ("vault", "keys"):
            check = sqlite3.connect(w.state / f"{name}.db")
            assert check.execute("PRAGMA user_version").fetchone()[0] == \
                latest_schema_version(name)
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            check.close()
        rows = await read_engagement(store, keystore, KEPT, actor="dpo", purpose="check",
                                     now=NOW + 10)
        assert [r.body for r in rows] == w.bodies[KEPT]
        token = blind_token(w.keys.index_key, "email", EMAIL)
        assert await store.engagements_for_token(token) == [KEPT]
        assert "agent-1" in {c.agent for c in (await store.certified_keys()).values()}
        assert await verify_audit(store, w.state) == []
        if prefix == "vault" and start >= 2:  # a pending notice is still sent after upgrade
            assert [n.notice["body"] for n in await store.pending_notices()] == \
                [f"notice-2-for-{ERASED}"]
            assert await store.notice_counts() == (1, 1)
        if prefix == "vault" and start >= 3:  # the pin survives: no silent re-trust
            pin = await store.relay_pin()
            assert pin is not None and pin.public_key == RELAY_PIN and pin.source == "pair"
        if prefix == "vault" and start >= 4:  # a job waiting for its retry is still there
            jobs = await store.due_mail_jobs(NOW + 5)
            assert [(j.engagement, j.attempts, j.role) for j in jobs] == [(KEPT, 2, "visitor")]
        # Writes still work and the tombstone still holds: a redelivered envelope of the
        # erased engagement is acknowledged but not stored, a new engagement is.
        ingestor = Ingestor(w.keys, store, keystore, on_anomaly=lambda kind, code: None)
        again = await ingestor.ingest(w.frames[ERASED], NOW + 20)
        assert again.stored == 0 and again.receipt is not None
        fresh = seal(encode_body("message", {"text": "after the upgrade"}), sender=w.visitor,
                     role="visitor", account="clinic", engagement="eng-00000003", sequence=1,
                     kind="message", recipients=[w.keys.current_key.public_bytes])
        assert (await ingestor.ingest([fresh], NOW + 21)).stored == 1
        assert await keystore.count() == 2
    finally:
        await store.close()
        await keystore.close()
    # Opening again is a no-op: nothing is applied twice.
    store = await VaultStore.open(w.state / "vault.db", "clinic")
    await store.close()


# A newer vault's last write still in the -wal: it was killed before any checkpoint.
_KILLED_WRITER = ("import os, sqlite3, sys\n"
                  "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                  "db.execute('PRAGMA wal_autocheckpoint=0')\n"
                  "db.execute(f'PRAGMA user_version={int(sys.argv[2])}')\n"
                  "os._exit(0)\n")


def _refusal(name):
    known = latest_schema_version(name)
    return (f"{name}.db: database schema {known + 1} is newer than this vault ({known}):"
            " run the newer vault, or restore a backup made by this version")


def _stores_with_one_newer(tmp_path, newer, *, in_wal=False):
    """Both stores populated at their newest version; then ``newer`` as a vault one
    schema ahead left it, closed or killed (its version only in the -wal)."""
    w = _world(tmp_path)
    data_key = bytes(range(32))
    for name in ("vault", "keys"):
        latest = latest_schema_version(name)
        path = w.state / f"{name}.db"
        db = _create_at_version(path, name, latest)
        POPULATE[(name, latest)](db, w, data_key)
        db.close()
        if name == newer:
            if in_wal:
                subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path),
                                str(latest + 1)], check=True, timeout=30)
                assert int.from_bytes(path.read_bytes()[60:64], "big") == latest
                assert (w.state / f"{name}.db-wal").stat().st_size > 0
            else:
                db = sqlite3.connect(path, isolation_level=None)
                db.execute(f"PRAGMA user_version = {latest + 1}")
                db.close()
                assert not (w.state / f"{name}.db-wal").exists()
    return w


def _files(state, name):
    """sha256 of ``<name>.db`` and its -wal, and any -shm where there is no -wal (a -shm
    is SQLite's rebuildable shared-memory index, not content; none may appear)."""
    names = {p.name for p in state.iterdir()}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in state.iterdir()
            if p.name.startswith(f"{name}.db")
            and not (p.name.endswith("-shm") and p.name[:-4] + "-wal" in names)}


async def _open(w, name):
    if name == "vault":
        return await VaultStore.open(w.state / "vault.db", "clinic")
    return await KeyStore.open(w.state / "keys.db", w.keys.master_key)


@pytest.mark.parametrize("in_wal", [False, True], ids=["closed", "killed"])
@pytest.mark.parametrize("prefix", ["vault", "keys"])
async def test_a_newer_store_is_refused_and_left_unchanged(tmp_path, prefix, in_wal):
    w = _stores_with_one_newer(tmp_path, prefix, in_wal=in_wal)
    before = _files(w.state, prefix)
    with pytest.raises(SchemaNewer) as refused:
        await _open(w, prefix)
    assert refused.value.code == "vault.schema_newer"
    assert refused.value.message == _refusal(prefix)
    assert _files(w.state, prefix) == before  # no upgrade, pragma, recovery or checkpoint
    # At the newest version this code knows, the same stores open and read as always.
    check = sqlite3.connect(w.state / f"{prefix}.db", isolation_level=None)
    check.execute(f"PRAGMA user_version = {latest_schema_version(prefix)}")
    check.close()
    store, keystore = await _open(w, "vault"), await _open(w, "keys")
    try:
        rows = await read_engagement(store, keystore, KEPT, actor="dpo", purpose="check",
                                     now=NOW + 10)
        assert [r.body for r in rows] == w.bodies[KEPT]
    finally:
        await keystore.close()
        await store.close()


async def test_a_store_made_newer_after_the_first_read_is_still_refused(tmp_path,
                                                                       monkeypatch):
    # Stands in for a newer vault upgrading the file between the read-only check and
    # the connection: the version read on the connection itself refuses it too.
    w = _stores_with_one_newer(tmp_path, "vault")
    monkeypatch.setattr(database, "_refuse_newer", lambda path, newest: None)
    with pytest.raises(SchemaNewer) as refused:
        await _open(w, "vault")
    assert refused.value.message == _refusal("vault")
    with sqlite3.connect(w.state / "vault.db") as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == \
            latest_schema_version("vault") + 1


@pytest.mark.parametrize(("prefix", "commands"), [
    ("vault", [["serve"], ["audit", "verify"], ["transcripts", "list"]]),
    # keys.db is opened after vault.db: the open vault.db must not keep the process alive.
    ("keys", [["serve"], ["transcripts", "list"]]),
])
def test_cli_commands_refuse_a_newer_store_in_one_line(tmp_path, prefix, commands):
    w = _stores_with_one_newer(tmp_path, prefix)
    before = _files(w.state, prefix)
    # Port 0: were the refusal missing, serve would listen on a free port until the timeout.
    env = {**os.environ, "VAULT_PORT": "0"}
    for command in commands:
        out = subprocess.run([sys.executable, "-m", "controller_vault", *command,
                              "--state-dir", str(w.state)],
                             capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 78, (command, out.stderr)  # not restarted by the unit
        assert out.stderr == f"controller-vault: vault.schema_newer: {_refusal(prefix)}\n"
        assert _files(w.state, prefix) == before, command

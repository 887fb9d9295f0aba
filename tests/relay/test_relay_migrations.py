"""Relay schema upgrades tested from the FIRST version on populated files.

The test applies schema files 1..N exactly as ``relay.sqlite_schema.migrate`` does (statements
in one transaction, then ``PRAGMA user_version = N``), fills the database with rows
written in version N's SQL, then opens it with the current store and reads everything
back through its named methods. Every schema file needs a populate step here: adding
``004_*.sql`` without ``_populate_v4`` fails the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from importlib import resources

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope import EncryptionKey, IdentityKey, sign_vault_key_statement
from relay.admin import hash_token
from relay.atrest import TranscriptCipher
from relay.errors import SchemaNewer
from relay.sqlite_schema import migrate, statements
from relay.sqlite_store import SCHEMA_VERSION, SqliteStore
from relay.store import OutboxEntry, OutboxStats, TokenRecord

pytestmark = pytest.mark.timeout(60)

NOW = 1_800_000_000
MASTER = bytes(range(32))
DATA_KEY = bytes(range(32, 64))
KEY_ID = "0011223344556677"
ITEMS = [{"role": "visitor", "agent": None, "seq": 1, "text": "hello", "ts": NOW},
         {"role": "agent", "agent": "ann", "seq": 1, "text": "hi, how can I help", "ts": NOW}]
IDENT, VKEY = IdentityKey.generate(), EncryptionKey.generate()


def _schema_files() -> list[tuple[int, str]]:
    root = resources.files("relay") / "schema"
    return sorted((int(r.name.split("_", 1)[0]), r.read_text()) for r in root.iterdir()
                  if r.name.endswith(".sql"))


def _create_at_version(path: pathlib.Path, version: int) -> sqlite3.Connection:
    """A database as a relay of ``version`` left it (WAL, files 1..version)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for number, sql in _schema_files():
        if number <= version:
            db.execute("BEGIN IMMEDIATE")
            for stmt in statements(sql):
                db.execute(stmt)
            db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
    return db


def _seal_v1(account: str, engagement: str, item: dict[str, object]) -> bytes:
    """A transcript item as v1's at-rest cipher wrote it (version byte, nonce, AES-GCM)."""
    nonce = os.urandom(12)
    data = json.dumps(item, separators=(",", ":")).encode()
    return b"\x01" + nonce + AESGCM(DATA_KEY).encrypt(nonce, data,
                                                      f"{account}/{engagement}".encode())


def _populate_v1(db: sqlite3.Connection) -> None:
    """001_initial.sql: a paired compliance account, a standard one with a transcript."""
    statement = sign_vault_key_statement(IDENT, account="clinic", key=VKEY.public_bytes,
                                         not_before=NOW - 60, not_after=NOW + 86400)
    db.execute("INSERT INTO accounts VALUES ('clinic', 'compliance', ?, 30, ?, ?, ?, ?, ?)",
               (json.dumps(["https://clinic.example"]), IDENT.public_bytes,
                json.dumps(statement), VKEY.key_id, VKEY.public_bytes, NOW))
    db.execute("INSERT INTO accounts VALUES ('shop', 'standard', ?, 7, NULL, NULL, NULL,"
               " NULL, ?)", (json.dumps(["https://shop.example"]), NOW))
    db.execute("INSERT INTO mode_changes (account, mode, actor, at) VALUES"
               " ('clinic', 'compliance', 'account-admin', ?)", (NOW,))
    db.execute("INSERT INTO tokens VALUES (?, 'admin', 'clinic', NULL, ?)",
               (hash_token("clinic-admin"), NOW))
    db.execute("INSERT INTO tokens VALUES (?, 'agent', 'shop', 'ann', ?)",
               (hash_token("shop-agent"), NOW))
    db.execute("INSERT INTO agent_certificates VALUES ('clinic', 'kid-ann', 'ann', ?, ?)",
               (json.dumps({"body": "b", "sig": "s"}), NOW))
    for eng, account, mode in (("eng-c1", "clinic", "compliance"), ("eng-s1", "shop", "standard")):
        db.execute("INSERT INTO engagements (engagement, account, mode, started_at, ended_at,"
                   " queue_wait_s, first_response_s, visitor_messages, agent_messages,"
                   " visitor_bytes, agent_bytes, agent, transfers, outcome, receipts)"
                   " VALUES (?, ?, ?, ?, ?, 5, 10, 2, 1, 300, 200, 'ann', 0, 'completed', 0)",
                   (eng, account, mode, NOW, NOW + 60))
    db.execute("INSERT INTO outbox_counters (account, next_seq) VALUES ('clinic', 3)")
    for seq in (1, 2):
        db.execute("INSERT INTO outbox VALUES ('clinic', ?, ?, 'eng-c1', ?, ?, ?)",
                   (seq, f"env-{seq}", f"hash-{seq}", bytes([seq]) * 100, NOW))
    nonce = os.urandom(12)
    wrapped = b"\x01" + nonce + AESGCM(MASTER).encrypt(nonce, DATA_KEY,
                                                       f"shop/{KEY_ID}".encode())
    db.execute("INSERT INTO data_keys VALUES ('shop', ?, ?, ?, 1)", (KEY_ID, wrapped, NOW))
    for item in ITEMS:
        db.execute("INSERT INTO transcripts (account, engagement, key_id, sealed, created_at)"
                   " VALUES ('shop', 'eng-s1', ?, ?, ?)",
                   (KEY_ID, _seal_v1("shop", "eng-s1", item), NOW))


def _populate_v2(db: sqlite3.Connection) -> None:
    """002_vault_link.sql: v1 rows plus a receipt, a rejection and an erasure notice."""
    _populate_v1(db)
    db.execute("INSERT INTO engagement_receipts VALUES ('clinic', 'eng-c1', 'rh-0', 3, ?)",
               (NOW,))
    db.execute("INSERT INTO engagement_rejections (account, engagement, code, at) VALUES"
               " ('clinic', 'eng-c1', 'vault.connection_info_repeated', ?)", (NOW,))
    db.execute("INSERT INTO engagement_erasures VALUES ('clinic', 'eng-c0', 'request', ?,"
               " 'nh-0')", (NOW,))


def _populate_v3(db: sqlite3.Connection) -> None:
    """003_offload_checkpoint.sql: v2 rows plus a purge whose checkpoint is pending."""
    _populate_v2(db)
    db.execute("INSERT INTO offload VALUES ('shop', 'eng-s0', 'done', ?, 1)", (NOW,))


def _populate_v4(db: sqlite3.Connection) -> None:
    """004_outbox_totals.sql: v3 rows with the totals a v4 relay keeps beside them
    (upgrades from 1..3 get the same totals from the schema file's backfill)."""
    _populate_v3(db)
    db.execute("UPDATE outbox_counters SET entries=2, bytes=200 WHERE account='clinic'")


POPULATE: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _populate_v1, 2: _populate_v2, 3: _populate_v3, 4: _populate_v4}
VERSIONS = [n for n, _ in _schema_files()]


def test_schema_files_are_numbered_from_one_without_gaps() -> None:
    assert list(range(1, len(VERSIONS) + 1)) == VERSIONS
    assert VERSIONS[-1] == SCHEMA_VERSION


def test_every_schema_version_has_a_populate_step() -> None:
    assert set(POPULATE) == set(VERSIONS)


@pytest.mark.parametrize("start", VERSIONS)
async def test_upgrade_from_each_version_keeps_populated_data(tmp_path: pathlib.Path,
                                                              start: int) -> None:
    path = tmp_path / "relay.sqlite3"
    db = _create_at_version(path, start)
    POPULATE[start](db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == start
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        check = sqlite3.connect(path)
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        check.close()
        clinic = await store.get_account("clinic")
        assert clinic is not None and clinic.paired and clinic.mode == "compliance"
        assert clinic.vault_key == VKEY.public_bytes and clinic.vault_key_id == VKEY.key_id
        assert clinic.identity_key == IDENT.public_bytes
        assert [a.account for a in await store.list_accounts()] == ["clinic", "shop"]
        assert [m.mode for m in await store.mode_changes("clinic")] == ["compliance"]
        assert await store.find_token(hash_token("clinic-admin")) == \
            TokenRecord("admin", "clinic", None)
        assert await store.find_token(hash_token("shop-agent")) == \
            TokenRecord("agent", "shop", "ann")
        assert [c.agent for c in await store.agent_certificates("clinic")] == ["ann"]
        (rec,) = await store.list_engagements("clinic")
        assert rec.engagement == "eng-c1" and rec.visitor_messages == 2
        assert [e.envelope_id for e in await store.read_outbox("clinic", 0, 10)] == \
            ["env-1", "env-2"]
        # Schema 004 counted the outbox rows already there (backfill) or as they came.
        assert await store.outbox_stats("clinic") == OutboxStats(2, 200, NOW)
        assert await store.outbox_stats() == OutboxStats(2, 200, NOW)
        # The transcript still decrypts with the relay's at-rest keys.
        assert await TranscriptCipher(store, MASTER).read("shop", "eng-s1") == ITEMS
        if start >= 2:
            assert rec.receipts == 3 and rec.rejected == 1
            assert rec.receipt_hashes == ("rh-0",)
        if start >= 3:
            assert await store.checkpoint_pending() == [("shop", "eng-s0")]
        # New writes of the later versions' features work on the upgraded file.
        seqs = await store.append_outbox([OutboxEntry("clinic", 0, "env-3", "eng-c1", "hash-3",
                                                      b"\x03" * 100, NOW + 1)])
        assert seqs == [3]  # the v1 counter is kept: a sequence is never reused
        outcome = await store.apply_receipt("clinic", "rh-1", [("eng-c1", "env-3", "hash-3")],
                                            NOW + 2)
        assert outcome.deleted == ((3, NOW + 1),)
        assert await store.outbox_stats("clinic") == OutboxStats(2, 200, NOW)
        assert "rh-1" in (await store.list_engagements("clinic"))[0].receipt_hashes
        assert await store.plan_offload("shop", NOW + 3) == 1
        await store.queue_offload("shop", "eng-s1", [OutboxEntry(
            "shop", 0, "off-1", "eng-s1", "hash-off", b"\x04" * 100, NOW + 3)])
        outcome = await store.apply_receipt("shop", "rh-2", [("eng-s1", "off-1", "hash-off")],
                                            NOW + 4)
        assert outcome.offloaded == ("eng-s1",)
        assert await store.read_transcript("shop", "eng-s1") == []
        assert ("shop", "eng-s1") in await store.checkpoint_pending()
        assert await store.checkpoint()
    finally:
        await store.close()
    # Opening again is a no-op: nothing is applied twice.
    store = SqliteStore(path)
    await store.open()
    await store.close()


NEWER = SCHEMA_VERSION + 1
REFUSAL = (f"database schema {NEWER} is newer than this relay ({SCHEMA_VERSION}): run the"
           " newer relay, or restore a backup made by this version")
# A newer relay's last write still in the -wal: it was killed before any checkpoint.
_KILLED_WRITER = ("import os, sqlite3, sys\n"
                  "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                  "db.execute('PRAGMA wal_autocheckpoint=0')\n"
                  "db.execute(f'PRAGMA user_version={int(sys.argv[2])}')\n"
                  "os._exit(0)\n")


def _newer_database(path: pathlib.Path, *, in_wal: bool) -> None:
    """A populated file as a relay of schema NEWER left it, cleanly or killed (-wal)."""
    db = _create_at_version(path, SCHEMA_VERSION)
    POPULATE[SCHEMA_VERSION](db)
    if not in_wal:
        db.execute(f"PRAGMA user_version={NEWER}")
        db.close()
        assert not path.with_name(path.name + "-wal").exists()
        return
    db.close()
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path), str(NEWER)],
                   check=True, timeout=30)
    # The main file still says SCHEMA_VERSION: only a reader of the -wal sees NEWER.
    assert int.from_bytes(path.read_bytes()[60:64], "big") == SCHEMA_VERSION
    assert path.with_name(path.name + "-wal").stat().st_size > 0


def _files(directory: pathlib.Path) -> dict[str, str]:
    """sha256 of the database's files in ``directory``; a -shm (SQLite's rebuildable
    shared-memory index, not content) only counts where there is no -wal: then none
    may appear."""
    names = {p.name for p in directory.iterdir()}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in directory.iterdir() if p.name.startswith("relay.sqlite3")
            and not (p.name.endswith("-shm") and p.name[:-4] + "-wal" in names)}


@pytest.mark.parametrize("in_wal", [False, True], ids=["closed", "killed"])
async def test_a_newer_database_is_refused_and_left_unchanged(tmp_path: pathlib.Path,
                                                              in_wal: bool) -> None:
    path = tmp_path / "relay.sqlite3"
    _newer_database(path, in_wal=in_wal)
    before = _files(tmp_path)
    with pytest.raises(SchemaNewer) as refused:
        await SqliteStore(path).open()
    assert refused.value.code == "store.schema_newer" and refused.value.message == REFUSAL
    assert _files(tmp_path) == before  # no upgrade, recount, pragma or checkpoint
    # The upgrade step refuses it too (a file made newer after the first read).
    check = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(SchemaNewer):
        migrate(check)
    # At the newest version this code knows, the same file opens and serves as always.
    check.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    check.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert [a.account for a in await store.list_accounts()] == ["clinic", "shop"]
        assert await store.outbox_stats("clinic") == OutboxStats(2, 200, NOW)
    finally:
        await store.close()


def test_relay_serve_refuses_a_newer_database(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "relay.toml"
    # Port 0: were the refusal missing, it would listen on a free port until the timeout.
    cfg.write_text(f'[relay]\nstate_dir = "{state}"\nport = 0\n'
                   'public_origin = "http://127.0.0.1:8440"\n')

    def relay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relay", "--config", str(cfg), *args],
                              capture_output=True, text=True, timeout=30)

    assert relay("init").returncode == 0
    _newer_database(state / "relay.sqlite3", in_wal=False)
    before = _files(state)
    out = relay("serve")
    assert out.returncode == 78  # EX_CONFIG: relay.service does not restart on it
    assert out.stderr == f"relay: store.schema_newer: {REFUSAL}\n"  # one line, no traceback
    assert out.stdout == ""  # it never listened
    assert _files(state) == before

"""Staff tokens in a real staff.db: issue, hash-only storage, verify, expiry, revocation,
and a staff.db of a newer version refused without a byte of it changed."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import stat
from collections.abc import AsyncIterator

import pytest

from controller_vault.staff.errors import (
    AuthError,
    ScopeDenied,
    StaffConfigError,
    TokenStoreUnavailable,
)
from controller_vault.staff.token_store import SCHEMA_VERSION, SqliteTokenStore
from controller_vault.staff.tokens import SCOPES, StaffTokens, hash_token

NOW = 1_700_000_000


@pytest.fixture
async def tokens(tmp_path: pathlib.Path) -> AsyncIterator[StaffTokens]:
    store = await SqliteTokenStore.open(tmp_path)
    try:
        yield StaffTokens(store)
    finally:
        await store.close()


async def test_issue_then_verify(tokens: StaffTokens) -> None:
    token, record = await tokens.issue("dpo", ["read", "export"], now=NOW)
    identity = await tokens.verify(token, now=NOW + 1)
    assert (identity.actor, identity.scopes) == ("dpo", frozenset({"read", "export"}))
    assert identity.token_id == record.token_id
    identity.require("read")
    with pytest.raises(ScopeDenied) as err:
        identity.require("erase")
    assert err.value.code == "auth.scope_denied"


async def test_only_the_hash_is_written(tmp_path: pathlib.Path, tokens: StaffTokens) -> None:
    token, _ = await tokens.issue("alice", SCOPES, now=NOW)
    secret = token.rsplit(".", 1)[1]
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in blobs
    rows = sqlite3.connect(tmp_path / "staff.db").execute(
        "SELECT token_hash FROM staff_tokens").fetchall()
    assert rows == [(hash_token(token),)]
    assert stat.S_IMODE(os.stat(tmp_path / "staff.db").st_mode) == 0o600
    mode = sqlite3.connect(tmp_path / "staff.db").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


@pytest.mark.parametrize("bad", [
    None, "", "garbage", "crst1.0000000000000000." + "A" * 43,
])
async def test_unknown_or_malformed_tokens_are_refused(tokens: StaffTokens,
                                                       bad: str | None) -> None:
    with pytest.raises(AuthError) as err:
        await tokens.verify(bad, now=NOW)
    assert err.value.status == 401


async def test_wrong_secret_for_a_real_id_is_refused(tokens: StaffTokens) -> None:
    token, _ = await tokens.issue("alice", ["read"], now=NOW)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(AuthError) as err:
        await tokens.verify(forged, now=NOW)
    assert err.value.code == "auth.invalid_token"
    assert forged not in err.value.message and token not in err.value.message


async def test_revocation_and_expiry(tokens: StaffTokens) -> None:
    token, record = await tokens.issue("bob", ["erase"], now=NOW, ttl_s=60)
    await tokens.verify(token, now=NOW + 59)
    with pytest.raises(AuthError):
        await tokens.verify(token, now=NOW + 60)
    token2, record2 = await tokens.issue("bob", ["erase"], now=NOW)
    assert await tokens.revoke(record2.token_id, now=NOW + 5)
    assert not await tokens.revoke(record2.token_id, now=NOW + 6)
    assert not await tokens.revoke("ffffffffffffffff", now=NOW + 6)
    with pytest.raises(AuthError) as err:
        await tokens.verify(token2, now=NOW + 7)
    assert err.value.code == "auth.invalid_token"
    listed = await tokens.store.list_tokens()
    assert [r.token_id for r in listed] == sorted([record.token_id, record2.token_id])
    assert [r.revoked_at for r in listed if r.token_id == record2.token_id] == [NOW + 5]


async def test_revocation_survives_reopen(tmp_path: pathlib.Path) -> None:
    store = await SqliteTokenStore.open(tmp_path)
    token, record = await StaffTokens(store).issue("carol", ["audit"], now=NOW)
    await StaffTokens(store).revoke(record.token_id, now=NOW)
    await store.close()
    store = await SqliteTokenStore.open(tmp_path)
    try:
        with pytest.raises(AuthError):
            await StaffTokens(store).verify(token, now=NOW)
    finally:
        await store.close()


async def test_a_locked_staff_db_refuses_writes_and_the_connection_stays_usable(
        tmp_path: pathlib.Path) -> None:
    store = await SqliteTokenStore.open(tmp_path)
    tokens = StaffTokens(store)
    try:
        _, kept = await tokens.issue("dana", ["read"], now=NOW)
        # Another process (a second CLI) holds the write lock past the busy timeout,
        # then commits a token of its own.
        other = sqlite3.connect(tmp_path / "staff.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO staff_tokens (token_id, token_hash, actor, scopes, "
                          "created_at) VALUES ('0000000000000000', ?, 'eve', 'read', 1)",
                          ("0" * 64,))
            with pytest.raises(TokenStoreUnavailable) as err:
                await tokens.issue("erin", ["read"], now=NOW)
            assert err.value.code == "staff.store_unavailable" and err.value.status == 503
            assert err.value.message == "cannot write staff.db: locked"
            with pytest.raises(TokenStoreUnavailable):
                await tokens.revoke(kept.token_id, now=NOW + 1)
            other.execute("COMMIT")
        finally:
            other.close()
        # The same connection, once the lock is gone: the refused writes left nothing.
        assert sorted(r.actor for r in await store.list_tokens()) == ["dana", "eve"]
        _, later = await tokens.issue("erin", ["read"], now=NOW + 2)
        assert await tokens.revoke(kept.token_id, now=NOW + 3)
    finally:
        await store.close()
    check = sqlite3.connect(tmp_path / "staff.db")
    try:
        rows = dict(check.execute("SELECT actor, revoked_at FROM staff_tokens").fetchall())
    finally:
        check.close()
    assert rows == {"dana": NOW + 3, "eve": None, "erin": None}
    assert later.actor == "erin"


@pytest.mark.parametrize(("actor", "scopes", "code"), [
    ("alice", [], "config.bad_scope"), ("alice", ["read", "root"], "config.bad_scope"),
    ("bad actor\n", ["read"], "config.bad_actor"), ("", ["read"], "config.bad_actor"),
])
async def test_bad_issue_requests(tokens: StaffTokens, actor: str, scopes: list[str],
                                  code: str) -> None:
    with pytest.raises(StaffConfigError) as err:
        await tokens.issue(actor, scopes, now=NOW)
    assert err.value.code == code


def _staff_files(directory: pathlib.Path) -> dict[str, bytes]:
    """staff.db and its -wal (a -shm is SQLite's rebuildable index, not content)."""
    return {p.name: p.read_bytes() for p in directory.iterdir()
            if p.name in ("staff.db", "staff.db-wal")}


@pytest.mark.parametrize("in_wal", [False, True], ids=["closed", "killed"])
async def test_a_newer_staff_db_is_refused_and_left_byte_for_byte(tmp_path: pathlib.Path,
                                                                  in_wal: bool) -> None:
    newer = SCHEMA_VERSION + 1
    writer = sqlite3.connect(tmp_path / "staff.db", isolation_level=None)
    writer.execute("CREATE TABLE newer_things (x)")
    if in_wal:
        # A newer vault killed before its last checkpoint: the version only in the -wal.
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute(f"PRAGMA user_version = {newer}")
    state = tmp_path / "state"
    state.mkdir()
    for name in ("staff.db", "staff.db-wal"):  # copied while open: as the kill left them
        if (tmp_path / name).exists():
            (state / name).write_bytes((tmp_path / name).read_bytes())
    writer.close()
    assert (state / "staff.db-wal").exists() == in_wal
    before = _staff_files(state)
    with pytest.raises(StaffConfigError) as err:
        await SqliteTokenStore.open(state)
    assert _staff_files(state) == before  # no WAL switch, recovery or checkpoint
    assert err.value.code == "config.staff_db_version"
    assert f"schema {newer}" in err.value.message
    if not in_wal:
        assert sorted(p.name for p in state.iterdir()) == ["staff.db"]

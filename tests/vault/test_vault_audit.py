"""The audit log verifies when honest and fails, saying where, on each kind of tampering."""

from __future__ import annotations

import sqlite3

import pytest

from controller_vault.checkpoints import verify_audit, write_checkpoint
from controller_vault.store import AuditRecord

NOW = 1_800_000_000


async def _log_with_entries(vault, n=12):
    for i in range(n):
        await vault.store.append_audit(
            [AuditRecord("staff-7", "read", "support", f"eng-{i:08d}", {"i": i})], NOW + i)
    await write_checkpoint(vault.store, vault.keys, vault.state, NOW + n)


async def _problems_after(vault, reopen, sql):
    await vault.store.close()
    con = sqlite3.connect(vault.state / "vault.db")
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()
    reopened = await reopen(vault.state, vault.keys)
    vault.store = reopened.store
    await reopened.keystore.close()
    return await verify_audit(vault.store, vault.state)


async def test_honest_log_verifies(vault):
    await _log_with_entries(vault)
    assert await verify_audit(vault.store, vault.state) == []


@pytest.mark.parametrize(("name", "sql", "code", "seq"), [
    ("changed", ["UPDATE audit_log SET purpose = 'marketing' WHERE seq = 5"],
     "audit.changed", 5),
    ("deleted", ["DELETE FROM audit_log WHERE seq = 4"], "audit.deleted", 4),
    ("reordered", ["UPDATE audit_log SET seq = -1 WHERE seq = 6",
                   "UPDATE audit_log SET seq = 6 WHERE seq = 7",
                   "UPDATE audit_log SET seq = 7 WHERE seq = -1"], "audit.reordered", 6),
    ("truncated", ["DELETE FROM audit_log WHERE seq > 9",
                   "DELETE FROM audit_checkpoints"], "audit.truncated", 10),
])
async def test_tampering_is_detected_and_located(vault, reopen, name, sql, code, seq):
    await _log_with_entries(vault)
    problems = await _problems_after(vault, reopen, sql)
    assert problems, name
    assert (problems[0].code, problems[0].seq) == (code, seq)
    assert str(seq) in problems[0].message


async def test_a_forged_checkpoint_is_reported(vault):
    await _log_with_entries(vault)
    with (vault.state / "audit-checkpoints.jsonl").open("a") as fh:
        fh.write('{"body": "{}", "sig": "AAAA"}\n')
    problems = await verify_audit(vault.store, vault.state)
    assert [p.code for p in problems] == ["audit.bad_checkpoint"]


async def test_two_writers_on_one_file_keep_one_chain(vault, reopen):
    """`serve` and a CLI command (certify-agent, rotate-key) append to the same log."""
    other = await reopen(vault.state, vault.keys)
    try:
        for i in range(6):
            writer = vault.store if i % 2 else other.store
            await writer.append_audit([AuditRecord("admin", "certify-agent", "admin",
                                                   f"agent-{i}", {})], NOW + i)
        await write_checkpoint(other.store, vault.keys, vault.state, NOW + 9)
        assert await verify_audit(vault.store, vault.state) == []
        assert [e.seq for e, _, _ in await vault.store.audit_rows()] == [1, 2, 3, 4, 5, 6]
    finally:
        await other.store.close()
        await other.keystore.close()

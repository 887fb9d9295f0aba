"""Ingest on real SQLite files: receipts, idempotency, gaps, blind index, pinning."""

from __future__ import annotations

import json
import sqlite3

import pytest

from controller_vault.atrest import blind_token
from controller_vault.erasure import read_engagement
from controller_vault.errors import StoreUnavailable
from envelope import PartyKeys, envelope_hash, verify_receipt

NOW = 1_800_000_000


async def test_few_hundred_envelopes_stored_with_verifying_receipts(vault, conversation):
    visitor, agent = PartyKeys.generate(), PartyKeys.generate()
    await vault.certify(agent)
    frames, sent = [], {}
    for n in range(10):
        conv = conversation(f"eng-{n:08d}")
        for i in range(15):
            frames.append(conv.env(visitor, "message", {"text": f"visitor {n} says {i}"}))
            frames.append(conv.env(agent, "message", {"text": f"agent {n} says {i}"},
                                   role="agent"))
    for f in frames:
        sent[envelope_hash(f)] = f
    assert len(frames) == 300
    named = set()
    for start in range(0, 300, 128):
        result = await vault.ingest(frames[start:start + 128], NOW)
        items = verify_receipt(result.receipt, vault.keys.identity.public_bytes,
                               account="clinic")
        assert len(items) == len(frames[start:start + 128]) == result.stored
        named |= {i.envelope_hash for i in items}
    assert named == set(sent)
    assert await vault.envelope_count() == 300
    rows = await read_engagement(vault.store, vault.keystore, "eng-00000003", actor="test",
                                 purpose="test", now=NOW)
    texts = {json.loads(r.body)["text"] for r in rows}
    assert "visitor 3 says 14" in texts and "agent 3 says 0" in texts and len(rows) == 30


async def test_duplicates_are_stored_once_and_get_the_same_receipt(vault, conversation):
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    frames = [conv.env(visitor, "message", {"text": f"m{i}"}) for i in range(5)]
    first = await vault.ingest(frames, NOW)
    again = await vault.ingest(frames, NOW + 5)
    assert first.stored == 5 and again.stored == 0 and again.duplicates == 5
    assert again.receipt == first.receipt
    within = await vault.ingest([frames[0], frames[0]], NOW + 6)
    assert within.duplicates == 2 and within.rejected == {}
    assert await vault.envelope_count() == 5


async def test_duplicate_inside_one_new_batch_is_stored_once(vault, conversation):
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    f = conv.env(visitor, "message", {"text": "once"})
    result = await vault.ingest([f, f], NOW)
    assert result.stored == 1 and result.duplicates == 1 and len(result.items) == 2
    assert await vault.envelope_count() == 1


async def test_gap_marks_engagement_incomplete_until_the_missing_frame_arrives(
        vault, conversation):
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    frames = [conv.env(visitor, "message", {"text": f"m{i}"}) for i in range(1, 5)]
    skid = frames and __import__("envelope").key_id(visitor.signing_public_bytes)
    end = conv.env(visitor, "end", {"final": {skid: 5}})
    result = await vault.ingest([frames[0], frames[1], frames[3], end], NOW)
    assert result.gaps == {"eng-00000001": 1}
    assert await vault.store.incomplete_engagements() == {"eng-00000001": 1}
    assert ("incomplete_engagement", "vault.gap") in vault.anomalies
    late = await vault.ingest([frames[2]], NOW + 60)
    assert late.gaps == {"eng-00000001": 0}
    assert await vault.store.incomplete_engagements() == {}


async def test_subject_identifiers_go_into_the_blind_index_only_as_keyed_hashes(
        vault, conversation):
    conv, visitor, relay = conversation("eng-00000001"), PartyKeys.generate(), \
        PartyKeys.generate()
    await vault.ingest([
        conv.env(visitor, "prechat", {"name": "Ann", "email": "Ann.Canary@Example.org ",
                                      "phone": "+44 (0)20 7946-0000"}),
        conv.env(relay, "connection-info", {"ip": "203.0.113.7", "visitor_id": "vid-123"},
                 role="relay"),
    ], NOW)
    idx = vault.keys.index_key
    for field, value in (("email", "ann.canary@example.org"), ("phone", "+4402079460000"),
                         ("visitor_id", "vid-123")):
        token = blind_token(idx, field, value)
        assert await vault.store.engagements_for_token(token) == ["eng-00000001"]
    raw = (vault.state / "vault.db").read_bytes() + (vault.state / "vault.db-wal").read_bytes()
    assert b"canary" not in raw.lower() and b"vid-123" not in raw


async def test_first_visitor_key_is_pinned(vault, conversation):
    conv, visitor, intruder = conversation("eng-00000001"), PartyKeys.generate(), \
        PartyKeys.generate()
    ok = await vault.ingest([conv.env(visitor, "message", {"text": "hi"})], NOW)
    assert ok.stored == 1
    forged = await vault.ingest([conv.env(intruder, "message", {"text": "send money"})], NOW)
    assert forged.rejected == {"vault.visitor_key_mismatch": 1} and forged.receipt is None
    assert ("forged_envelope", "vault.visitor_key_mismatch") in vault.anomalies
    assert await vault.envelope_count() == 1


async def test_agent_must_be_certified_by_this_vault(vault, conversation):
    conv, agent = conversation("eng-00000001"), PartyKeys.generate()
    refused = await vault.ingest([conv.env(agent, "message", {"text": "x"}, role="agent")],
                                 NOW)
    assert refused.rejected == {"vault.agent_not_certified": 1}
    await vault.certify(agent)
    accepted = await vault.ingest([conv.env(agent, "message", {"text": "x"}, role="agent",
                                            seq=1)], NOW)
    assert accepted.stored == 1


async def test_locked_database_gives_no_receipt_and_writes_nothing(vault, conversation):
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    await vault.ingest([conv.env(visitor, "message", {"text": "first"})], NOW)
    other = sqlite3.connect(vault.state / "vault.db", timeout=0.1)
    other.execute("BEGIN EXCLUSIVE")
    try:
        await vault.store._db.execute("PRAGMA busy_timeout = 100")
        with pytest.raises(StoreUnavailable) as err:
            await vault.ingest([conv.env(visitor, "message", {"text": "second"})], NOW)
        assert "locked" in err.value.message
    finally:
        other.rollback()
        other.close()
    assert await vault.envelope_count() == 1


async def test_full_database_gives_no_receipt_and_writes_nothing(tmp_path, conversation,
                                                                 vault, reopen):
    await vault.store.close()
    full = await vault.store.open(vault.state / "vault.db", "clinic", max_page_count=1)
    vault.store = full
    vault.ingestor._store = full
    conv, visitor = conversation("eng-00000001"), PartyKeys.generate()
    big = "x" * 16000
    with pytest.raises(StoreUnavailable) as err:
        await vault.ingest([conv.env(visitor, "message", {"text": big}) for _ in range(8)],
                           NOW)
    assert "full" in err.value.message
    assert await vault.envelope_count() == 0


async def test_end_frames_of_both_sides_are_merged_for_the_gap_check(vault, conversation):
    from envelope import key_id

    conv, visitor, agent = conversation("eng-00000001"), PartyKeys.generate(), \
        PartyKeys.generate()
    await vault.certify(agent)
    v, a = key_id(visitor.signing_public_bytes), key_id(agent.signing_public_bytes)
    frames = [conv.env(visitor, "message", {"text": "v1"}),
              conv.env(agent, "message", {"text": "a1"}, role="agent"),
              conv.env(agent, "message", {"text": "a3"}, role="agent", seq=3)]
    # The visitor never saw agent message 2 and 3; the agent's own end names 3.
    frames.append(conv.env(visitor, "end", {"final": {v: 2, a: 1}}))
    frames.append(conv.env(agent, "end", {"final": {v: 2, a: 4}}, role="agent"))
    result = await vault.ingest(frames, NOW)
    assert result.gaps == {"eng-00000001": 1}  # agent seq 2 is missing


def test_passphrase_from_systemd_credentials_wins(tmp_path):
    from controller_vault.keyfiles import read_passphrase

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "passphrase").write_bytes(b"from-credentials\n")
    (tmp_path / "pw").write_bytes(b"from-file\n")
    assert read_passphrase(str(tmp_path / "pw"), str(creds)) == b"from-credentials"
    assert read_passphrase(str(tmp_path / "pw"), None) == b"from-file"
    assert read_passphrase(None, None) is None

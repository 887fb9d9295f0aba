"""An offload purge's WAL checkpoint is checked: a reader holding a snapshot blocks it,
the purge stays "checkpoint pending" (API and metric), and the sweeper retries it."""

from __future__ import annotations

import sqlite3

import pytest

from envelope import envelope_hash
from relay.store import OutboxEntry, TranscriptRow
from relay.sweeper import sweep_once

from .conftest import Relay

pytestmark = pytest.mark.timeout(60)

ENG = "eng-checkpoint-1"
MARK = b"TRANSCRIPT-CIPHERTEXT-MARK"


def _metric(relay: Relay, name: str, labels: dict[str, str] | None = None) -> float:
    value = relay.state.metrics.registry.get_sample_value(name, labels or {})
    return float(value or 0.0)


async def test_blocked_checkpoint_stays_pending_until_a_sweeper_tick(relay: Relay) -> None:
    admin = await relay.account("shop")
    st = relay.state
    assert st.offload is not None
    now = int(relay.clock())
    await st.store.append_transcript(
        [TranscriptRow("shop", ENG, "k1", MARK + bytes([i]) * 32, now) for i in range(20)])
    assert await st.store.plan_offload("shop", now) == 1
    data = b"offload envelope bytes"
    await st.store.queue_offload("shop", ENG, [OutboxEntry("shop", 0, "env-1", ENG,
                                                           envelope_hash(data), data, now)])
    wal = relay.state_dir / "relay.sqlite3-wal"
    # A reader opens a read transaction and holds its snapshot across the purge.
    reader = sqlite3.connect(relay.state_dir / "relay.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM transcripts").fetchone()[0] == 20
        outcome = await st.store.apply_receipt(
            "shop", "receipt-hash", [(ENG, "env-1", envelope_hash(data))], now)
        assert outcome.offloaded == (ENG,)
        await st.offload.purged("shop", outcome.offloaded)
        _, progress = await relay.call("GET", "/v1/accounts/shop/offload", admin)
        assert progress["done"] == 1 and progress["checkpoint_pending"] == 1
        assert progress["complete"] is False
        assert _metric(relay, "relay_wal_checkpoint_incomplete_total") >= 1
        assert _metric(relay, "relay_offload_engagements", {"state": "checkpoint_pending"}) == 1
        assert MARK in wal.read_bytes()  # what the blocked checkpoint leaves behind
        await sweep_once(st, now=relay.clock())  # still blocked: still pending
        assert (await st.store.offload_progress("shop"))["checkpoint_pending"] == 1
        reader.execute("COMMIT")
    finally:
        reader.close()
    await sweep_once(st, now=relay.clock())
    _, progress = await relay.call("GET", "/v1/accounts/shop/offload", admin)
    assert progress["checkpoint_pending"] == 0 and progress["complete"] is True
    assert _metric(relay, "relay_offload_engagements", {"state": "checkpoint_pending"}) == 0
    # The checkpoint truncated the WAL; only the flag's own small write follows it.
    assert MARK not in wal.read_bytes()
    assert MARK not in (relay.state_dir / "relay.sqlite3").read_bytes()
    assert await st.store.read_transcript("shop", ENG) == []


async def test_blocked_checkpoint_after_a_retention_sweep_is_retried(relay: Relay) -> None:
    await relay.account("shop")
    st = relay.state
    now = int(relay.clock())
    await st.store.append_transcript(
        [TranscriptRow("shop", "eng-expired-1", "k1", MARK + bytes([i]) * 32, now)
         for i in range(20)])
    later = relay.clock() + 400 * 86_400  # past any retention the account can have
    wal = relay.state_dir / "relay.sqlite3-wal"
    reader = sqlite3.connect(relay.state_dir / "relay.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM transcripts").fetchone()[0] == 20
        assert await sweep_once(st, now=later) == 20
        assert st.sweep_checkpoint_pending is True
        assert _metric(relay, "relay_wal_checkpoint_incomplete_total") >= 1
        assert MARK in wal.read_bytes()  # the expired rows' page images, still there
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert await sweep_once(st, now=later) == 0  # nothing new to delete: still folds
    assert st.sweep_checkpoint_pending is False
    assert MARK not in wal.read_bytes()
    assert MARK not in (relay.state_dir / "relay.sqlite3").read_bytes()

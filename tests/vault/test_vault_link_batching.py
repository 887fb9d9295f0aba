"""Batched outbox frames between the REAL relay app (relay.app.create_app, on 127.0.0.1)
and the REAL vault link (VaultLink, real SQLite stores), negotiated in both directions:
both new -> batches; a vault that names no features (as every vault before them) -> one
frame per entry; a relay that uses none (as every relay before them) -> one frame per
entry to a new vault. Every case delivers the whole outbox exactly once."""

from __future__ import annotations

import asyncio
import math
import pathlib
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from controller_vault.config import VaultConfig
from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import VaultKeys, init_vault
from controller_vault.keystore import KeyStore
from controller_vault.link_client import VaultLink
from controller_vault.metrics import VaultMetrics
from controller_vault.pairing import publish_vault_key
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, envelope_hash, parse_envelope, seal
from relay.state import STATE
from relay.store import OutboxEntry
from tests.support.procs import OperatorRelay

pytestmark = pytest.mark.timeout(90)

OPERATOR = "operator-token-for-batch-tests-0123456789"
ACCOUNT = "clinic"


@dataclass
class Link:
    """A relay app and a paired vault on real files, with the outbox already filled."""

    app: web.Application
    url: str
    state: pathlib.Path
    keys: VaultKeys
    store: VaultStore
    ingestor: Ingestor
    envelope_ids: set[str]

    def relay_metric(self, name: str) -> float:
        """A sample of the relay's registry (0 when absent)."""
        return self.app[STATE].metrics.registry.get_sample_value(name) or 0.0

    async def backlog(self) -> int:
        """Entries left in the relay's outbox."""
        return (await self.app[STATE].store.outbox_stats(ACCOUNT)).entries

    async def run(self, metrics: VaultMetrics, **config: Any) -> VaultLink:
        """Run the vault link until the outbox is empty and every envelope is stored."""
        cfg = VaultConfig(account=ACCOUNT, state_dir=str(self.state), relay_url=self.url,
                          batch_wait_ms=10, backoff_initial_s=0.05, backoff_max_s=0.2,
                          **config)
        link = VaultLink(cfg, self.keys, self.ingestor, metrics, rng=random.Random(5))
        task = asyncio.create_task(link.run())
        try:
            async def delivered() -> None:
                while await self.backlog() or (await self.store.stats()).envelopes < len(
                        self.envelope_ids):
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(delivered(), 60)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return link


@asynccontextmanager
async def _linked(tmp_path: pathlib.Path, n: int,
                  **relay_config: Any) -> AsyncIterator[Link]:
    """A relay (config ``relay_config``) with ``n`` sealed envelopes queued for a paired vault."""
    # The relay names its own URL in the link challenge (OperatorRelay binds it first).
    relay = await OperatorRelay.start(tmp_path, OPERATOR, state_dir=tmp_path / "relay",
                                      **relay_config)
    app, url = relay.app, relay.url
    keys = init_vault(tmp_path / "vault", ACCOUNT, now=int(time.time()))
    store = await VaultStore.open(tmp_path / "vault" / "vault.db", ACCOUNT)
    keystore = await KeyStore.open(tmp_path / "vault" / "keys.db", keys.master_key)
    try:
        admin = await relay.create_account(ACCOUNT, origins=["https://clinic.example"],
                                           mode="standard", retention_days=30)
        await publish_vault_key(url, admin, keys)
        visitor, now = PartyKeys.generate(), int(time.time())
        entries = []
        for i in range(n):
            env = seal(encode_body("message", {"text": f"message {i}"}), sender=visitor,
                       role="visitor", account=ACCOUNT, engagement="eng-00000001",
                       sequence=i + 1, kind="message",
                       recipients=[keys.current_key.public_bytes])
            entries.append(OutboxEntry(ACCOUNT, 0, parse_envelope(env).header.envelope_id,
                                       "eng-00000001", envelope_hash(env), env, now))
        await app[STATE].store.append_outbox(entries)
        yield Link(app, url, tmp_path / "vault", keys, store, Ingestor(keys, store, keystore),
                   {e.envelope_id for e in entries})
    finally:
        await store.close()
        await keystore.close()
        await relay.close()


async def _stored_once(link: Link) -> None:
    assert await link.backlog() == 0
    assert (await link.store.stats()).envelopes == len(link.envelope_ids)
    assert set(await link.store.known_envelopes(link.envelope_ids)) == link.envelope_ids


@pytest.mark.parametrize(("relay_batches", "vault_batches"), [
    (True, True), (True, False), (False, True)],
    ids=["both-new", "vault-names-no-features", "relay-uses-none"])
async def test_negotiation_in_both_directions_delivers_everything_once(
        tmp_path: pathlib.Path, relay_batches: bool, vault_batches: bool) -> None:
    n = 600  # more than the relay's window (256): several passes
    async with _linked(tmp_path, n, link_batch_frames=relay_batches) as link:
        vault_metrics = VaultMetrics()
        vault = await link.run(vault_metrics, link_batch_frames=vault_batches)
        await _stored_once(link)
        sent = link.relay_metric("relay_vault_link_frames_sent_total")
        batches = link.relay_metric("relay_vault_link_batches_sent_total")
        bad = vault_metrics.registry.get_sample_value(
            "vault_rejected_envelopes_total", {"reason": "link.bad_frame"}) or 0.0
    assert sent >= n and bad == 0
    if relay_batches and vault_batches:
        assert vault.batched
        assert 3 <= batches < n / 10  # many entries per frame
    else:
        assert not vault.batched and batches == 0  # one frame per entry, as before


async def test_a_batch_larger_than_batch_max_is_committed_in_pieces(
        tmp_path: pathlib.Path) -> None:
    n, batch_max = 300, 16
    # A window above n: the relay sends the whole outbox in its first pass, one frame.
    async with _linked(tmp_path, n, link_window=n + 1) as link:
        vault_metrics = VaultMetrics()
        vault = await link.run(vault_metrics, batch_max=batch_max)
        await _stored_once(link)
        assert vault.batched
        assert link.relay_metric("relay_vault_link_batches_sent_total") == 1
    receipts = vault_metrics.registry.get_sample_value("vault_receipts_sent_total")
    assert receipts is not None and receipts >= math.ceil(n / batch_max)

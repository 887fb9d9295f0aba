"""Compliance toggle ON: move every stored standard-mode transcript of the account to its
vault, then purge it here.

    plan     PUT .../mode compliance marks each engagement with transcript rows
             (table ``offload``, state pending): durable, so a restart resumes
    seal     the worker decrypts a transcript, seals it to the vault key as kind
             "offload", role "relay" (bodies per envelope/bodies.py), and appends the
             envelopes to the outbox in the same transaction that marks it queued
    deliver  the vault link streams them like any envelope
    purge    the receipt that covers an engagement's last offload envelope deletes its
             transcript rows in the same transaction (SQLite secure_delete zeroes the
             pages); then the WAL is checkpointed (TRUNCATE) so no old page image of a
             transcript survives in the -wal file either

Offload envelopes use relay sequence numbers from ``OFFLOAD_SEQ_BASE`` up, so they never
collide with the relay's connection-info stream of the same engagement (the vault
refuses a reused position as a replay).

>>> bodies = offload_bodies([{"role": "visitor", "text": "hi", "ts": 5}])
>>> bodies[0]["messages"], bodies[0]["started"]
([{'role': 'visitor', 'text': 'hi', 'ts': 5}], 5)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from envelope import check_shape, encode_body, envelope_hash, seal

from .logs import log_event
from .state import RelayState
from .store import OutboxEntry

__all__ = ["OFFLOAD_SEQ_BASE", "Offloader", "offload_bodies"]

OFFLOAD_SEQ_BASE = 1 << 30
_BODY_BUDGET = 48_000  # bytes of JSON per offload body, well under MAX_BODY_BYTES
_PIECE_CHARS = 4_000  # a longer message is split (4 bytes/char worst case fits a body)


def offload_bodies(items: Sequence[dict[str, Any]], mode: str = "standard"
                   ) -> list[dict[str, Any]]:
    """Split transcript items into offload bodies that each fit in one envelope."""
    pieces: list[dict[str, Any]] = []
    for item in items:
        text, role, ts = str(item.get("text", "")), str(item.get("role", "")), int(item["ts"])
        for start in range(0, max(1, len(text)), _PIECE_CHARS):
            pieces.append({"role": role, "text": text[start:start + _PIECE_CHARS], "ts": ts})
    started = min((int(p["ts"]) for p in pieces), default=0)
    bodies: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for piece in pieces:
        n = len(json.dumps(piece, ensure_ascii=False).encode()) + 1
        if current and size + n > _BODY_BUDGET:
            bodies.append({"messages": current, "started": started, "mode": mode})
            current, size = [], 0
        current.append(piece)
        size += n
    if current:
        bodies.append({"messages": current, "started": started, "mode": mode})
    return bodies


class Offloader:
    """Seals planned transcripts for the vault; runs for the life of the app."""

    def __init__(self, st: RelayState) -> None:
        self.st = st
        self._wake = asyncio.Event()

    async def start(self, account: str, now: float) -> int:
        """Plan the offload of every stored transcript of ``account``; return how many."""
        planned = await self.st.store.plan_offload(account, int(now))
        self._wake.set()
        await self.refresh_metrics()
        log_event(self.st.logger, logging.INFO, "offload.planned", account=account,
                  engagements=planned)
        return planned

    async def progress(self, account: str) -> dict[str, Any]:
        """Progress for the admin API and the CLI's bar."""
        counts = await self.st.store.offload_progress(account)
        total = sum(n for state, n in counts.items() if state != "checkpoint_pending")
        finished = counts["done"] + counts["rejected"]
        # A purge is not finished while its old page images may still sit in the WAL.
        return {"total": total, **counts,
                "complete": finished == total and counts["checkpoint_pending"] == 0}

    async def refresh_metrics(self) -> None:
        """Set the offload gauges (all accounts; no account label)."""
        for state, n in (await self.st.store.offload_progress(None)).items():
            self.st.metrics.offload_engagements.labels(state).set(n)

    async def purged(self, account: str, engagements: Sequence[str]) -> None:
        """Receipts covered these transcripts and their rows are gone: fold the WAL."""
        log_event(self.st.logger, logging.INFO, "offload.purged", account=account,
                  engagements=len(engagements))
        await self.fold_wal()

    async def fold_wal(self) -> bool:
        """Checkpoint the WAL for every purge still pending; True when none is left.

        Called after each purge and on every sweeper tick: a checkpoint a reader
        blocked is retried later, and the purge stays "checkpoint pending" (API, metric)
        until it succeeds, so no purged transcript's ciphertext is left in the WAL unseen.
        """
        pending = await self.st.store.checkpoint_pending()
        if not pending:
            return True
        done = await self.st.store.checkpoint()
        if done:
            await self.st.store.clear_checkpoint_pending(pending)
        else:
            self.st.metrics.wal_checkpoint_incomplete.inc()
            log_event(self.st.logger, logging.WARNING, "offload.checkpoint_pending",
                      engagements=len(pending))
        await self.refresh_metrics()
        return done

    async def run(self) -> None:
        """Seal pending transcripts; sleep until a new plan (or a 5 s backstop)."""
        while True:
            self._wake.clear()
            sealed = 0
            try:
                for account, engagement in await self.st.store.pending_offloads(32):
                    sealed += await self._seal(account, engagement)
            except Exception:
                log_event(self.st.logger, logging.ERROR, "offload.failed")
            if sealed:
                await self.refresh_metrics()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):  # wait_for (3.11) can eat a cancel
                    await self._wake.wait()

    async def _seal(self, account: str, engagement: str) -> int:
        st = self.st
        acct = await st.store.get_account(account)
        if acct is None or acct.vault_key is None or acct.vault_key_id is None:
            return 0  # stays pending until a vault is paired
        items = await st.cipher.read(account, engagement)
        now = int(st.clock())
        entries = []
        for i, body in enumerate(offload_bodies(items)):
            data = seal(encode_body("offload", body), sender=st.keyring.relay_keys,
                        role="relay", account=account, engagement=engagement,
                        sequence=OFFLOAD_SEQ_BASE + i, kind="offload",
                        recipients=[acct.vault_key])
            header = check_shape(data, account=account, vault_key_id=acct.vault_key_id)
            entries.append(OutboxEntry(account, 0, header.envelope_id, engagement,
                                       envelope_hash(data), data, now))
        await st.store.queue_offload(account, engagement, entries)
        st.links.wake(account)
        return 1

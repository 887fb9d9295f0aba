"""Invariant 2, soak: nothing lost, nothing doubled, through SOAK_KILLS random SIGKILLs.

A visitor streams compliance messages continuously while, at seeded random moments, the
vault, the relay or both are killed with SIGKILL and restarted (killing the vault also
cuts the vault link mid-window). Afterwards, counted by message canary through the
vault's staff read path: every message the relay acknowledged before any crash put it
in doubt is in the vault exactly once; a message still unacknowledged when the relay
died is sent again by the SDK (into a new engagement), so it is there once or, if its
first copy had been durable, twice (the SDK's documented at-least-once for
unacknowledged messages; counted as ``in_doubt_twice``). Then every database file of
both services passes ``PRAGMA integrity_check``.

CI: SOAK_KILLS=30 (default). ``make soak``: 500. SOAK_SEED repeats a run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import random
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from relay.client import VisitorClient
from tests.support.stack import ORIGIN, Stack, reconnect_until, wait_until

KILLS = int(os.environ.get("SOAK_KILLS", "30"))
SEED = int(os.environ.get("SOAK_SEED", str(random.SystemRandom().randrange(1 << 32))))
_LETTERS = "ghijklmnopqrstuv"
_ENGAGEMENTS = "#engagements"  # not a message text (those are letters only)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(230, 12 * KILLS))]


def _text(i: int) -> str:
    # Letters only: the vault redacts Luhn-valid digit runs (card numbers) in messages.
    return "soakmsg" + "".join(_LETTERS[int(d, 16)] for d in f"{i:06x}")


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    s = Stack(tmp_path, relay_env={"RELAY_CONNECTIONS_PER_IP_PER_MINUTE": "100000"})
    s.start_compliance()
    try:
        yield s
    finally:
        s.stop()



class _Soak:
    """The stream, the chaos and the books: what was sent and what was in doubt."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng
        self.sent: list[str] = []
        self.in_doubt: set[str] = set()
        self.kills: collections.Counter[str] = collections.Counter()
        self.engagements = 0
        self.visitor = VisitorClient(stack.relay_url, stack.account, origin=ORIGIN,
                                     pinned_fingerprint=stack.fingerprint)

    async def _burst(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(self.visitor.unacked) < 40:
                for _ in range(5):
                    text = _text(len(self.sent))
                    self.sent.append(text)
                    await self.visitor.send(text)
            await asyncio.sleep(0.005)

    async def _crash(self, target: str) -> None:
        s = self.stack
        assert s.relay is not None and s.vault is not None
        if target in ("relay", "both"):
            s.relay.kill()
        if target in ("vault", "both"):
            s.vault.kill()
        self.kills[target] += 1
        if target == "vault":
            # The relay lives on: the stream goes on into the outbox while the vault
            # restarts (in a thread, so this loop keeps sending and reading acks).
            restart = asyncio.create_task(asyncio.to_thread(s.start_vault))
            await self._burst(self.rng.uniform(0.0, 0.3))
            await restart
            return
        # Whatever was not acknowledged when the relay died is in doubt from here on.
        self.in_doubt.update(b["text"] for _, b in self.visitor.pending.values())
        await asyncio.to_thread(s.start_relay)
        if target == "both":
            await asyncio.to_thread(s.start_vault)
        await reconnect_until(self.visitor)

    async def run(self, kills: int) -> None:
        """Stream with ``kills`` crashes at random moments, then drain every ack."""
        await self.visitor.connect()
        try:
            for _ in range(kills):
                await self._burst(self.rng.uniform(0.02, 0.4))
                await self._crash(self.rng.choice(("vault", "relay", "both")))
            await self._burst(0.2)
            deadline = time.monotonic() + 60
            while self.visitor.unacked:
                assert time.monotonic() < deadline, "messages never acknowledged"
                await asyncio.sleep(0.05)
        finally:
            await self.visitor.close()


def _vault_counts(stack: Stack, token: str) -> collections.Counter[str]:
    """Message texts as the vault's staff read them, counted."""
    base = f"http://127.0.0.1:{stack.vault_port}/v1/engagements"
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": "soak proof"}

    def get(url: str) -> object:
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - 127.0.0.1
        with urllib.request.urlopen(req, timeout=20) as resp:  # noqa: S310
            return json.loads(resp.read())
    listing = get(base + "?limit=100000")
    counts: collections.Counter[str] = collections.Counter()
    for eng in listing["engagements"]:  # type: ignore[index]
        doc = get(f"{base}/{eng['engagement_id']}")
        counts.update(m["text"] for m in doc["messages"])  # type: ignore[index]
    counts[_ENGAGEMENTS] = len(listing["engagements"])  # type: ignore[index]
    return counts


def _integrity(roots: list[pathlib.Path]) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*.db")):
            with sqlite3.connect(path) as db:
                out[str(path)] = db.execute("PRAGMA integrity_check").fetchone()[0]
            db.close()
    return out


def test_soak_kills_lose_and_double_nothing(stack: Stack,
                                            proof_line: Callable[[str], None]) -> None:
    print(f"soak seed: SOAK_SEED={SEED} SOAK_KILLS={KILLS}")
    started = time.monotonic()
    soak = _Soak(stack, random.Random(SEED))
    asyncio.run(soak.run(KILLS))
    token = stack.vault_cli("token", "create", "--actor", "soak-proof", "--scope", "read"
                            ).split()[0]
    sent = set(soak.sent)

    def settled() -> collections.Counter[str] | None:
        counts = _vault_counts(stack, token)
        return counts if sent <= set(counts) else None
    counts: collections.Counter[str] = wait_until(
        settled, timeout=120, interval=1.0, what=f"all messages in the vault (seed {SEED})")
    wait_until(lambda: stack.outbox_entries() == 0, timeout=60, what="outbox drained")
    soak.engagements = counts.pop(_ENGAGEMENTS)
    certain = [t for t in soak.sent if t not in soak.in_doubt]
    lost = [t for t in soak.sent if counts[t] == 0]
    doubled = [t for t in certain if counts[t] > 1]
    in_doubt_twice = [t for t in soak.in_doubt if counts[t] == 2]
    assert not lost and not doubled, (SEED, lost[:5], doubled[:5])
    assert all(counts[t] <= 2 for t in soak.in_doubt), SEED
    assert not set(counts) - sent  # nothing the stream did not send
    stack.stop()
    checks = _integrity([stack.relay_state, stack.vault_state])
    assert checks and all(v == "ok" for v in checks.values()), checks
    proof_line(f"soak: seed={SEED} kills={sum(soak.kills.values())} "
               f"(vault={soak.kills['vault']} relay={soak.kills['relay']} "
               f"both={soak.kills['both']}) messages={len(soak.sent)} "
               f"acked_before_any_crash_doubt={len(certain)} lost=0 doubled=0 "
               f"in_doubt={len(soak.in_doubt)} in_doubt_twice={len(in_doubt_twice)} "
               f"engagements={soak.engagements} databases_ok={len(checks)} "
               f"seconds={time.monotonic() - started:.0f}")

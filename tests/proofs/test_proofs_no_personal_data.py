"""Invariant 1, full: no personal data at the processor.

PROOF_ENGAGEMENTS (default 200) compliance-mode engagements across 3 accounts, each
with its own vault as a real process, one relay as a real process behind a trusted
proxy address (127.0.0.1, so X-Forwarded-For is believed and becomes the client
address). Every personal field carries a unique canary: name, email, phone, a pre-chat
answer, each message (visitor and agent), the user agent, the forwarded-for address
and the visitor id. Then every file under the relay's state directory (database, -wal,
-shm, log), the relay's stdout/stderr, /metrics and every GET of the relay's OpenAPI
document (as the operator and as each account's admin, for every account and every
engagement) are scanned for every canary in raw, base64, hex, UTF-16 and URL forms.

Positive control: the vaults' files are encrypted at rest, so the control goes through
their decrypted read path: a subject-access export per engagement (staff API, by the
canary email) must contain every canary of that engagement, found by the same scanner.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from tests.proofs.canary_engagements import (
    AgentDesk,
    CanaryEngagement,
    new_engagement,
    run_engagement,
)
from tests.support.canary import CanaryIndex, Hit
from tests.support.stack import Stack, deploy_accounts, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ENGAGEMENTS = int(os.environ.get("PROOF_ENGAGEMENTS", "200"))
ACCOUNTS = ("clinic-a", "clinic-b", "clinic-c")
LANES = 6  # concurrent engagements per account (one agent socket serves them all)


@pytest.fixture
def stacks(tmp_path: pathlib.Path) -> Iterator[list[Stack]]:
    deployed: list[Stack] = []
    try:
        deployed = deploy_accounts(tmp_path, ACCOUNTS, {"RELAY_TRUSTED_PROXIES": "127.0.0.1"})
        yield deployed
    finally:
        for s in reversed(deployed):
            s.stop()


async def _run_account(stack: Stack, token: str, keys: object,
                       plan: list[CanaryEngagement]) -> list[str]:
    from relay.client import AgentClient

    desk = AgentDesk(AgentClient(stack.relay_url, token, stack.account, keys=keys,  # type: ignore[arg-type]
                                 pinned_fingerprint=stack.fingerprint, capacity=LANES))
    await desk.start()
    queue = list(plan)
    done: list[str] = []

    async def lane() -> None:
        while queue:
            done.append(await run_engagement(stack, desk, queue.pop()))
    try:
        await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(LANES))), 150)
    finally:
        await desk.close()
    return done


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - 127.0.0.1 test URL
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _relay_api_responses(stacks: list[Stack], engagements: dict[str, list[str]]
                         ) -> dict[str, bytes]:
    """Every GET route of the relay's own OpenAPI document, as operator and each admin."""
    base = stacks[0].relay_url
    status, raw = _get(base + "/v1/openapi.json", None)
    assert status == 200
    doc = json.loads(raw)
    tokens = {"operator": stacks[0].operator_token} | {s.account: s.admin_token for s in stacks}
    out: dict[str, bytes] = {}
    for path, item in doc["paths"].items():
        get = item.get("get")
        if get is None or "101" in get["responses"]:
            continue  # websockets: their traffic was the engagements themselves
        for s in stacks:
            engs = engagements[s.account] if "{engagement}" in path else [""]
            for eng in engs:
                url = path.replace("{account}", s.account).replace("{engagement}", eng)
                queries = ["", "?format=csv"] if url.endswith("/engagements") else [""]
                for who, token in tokens.items():
                    for q in queries:
                        status, body = _get(base + url + q, token)
                        assert status < 500, (url, status)
                        out[f"GET {url}{q} as {who} -> {status}"] = body
    return out


def _vault_exports(stack: Stack, plan: list[CanaryEngagement]) -> dict[str, bytes]:
    """The decrypted read path: one subject-access export per engagement (staff API)."""
    token = stack.vault_cli("token", "create", "--actor", "proof-control", "--scope", "export"
                            ).split()[0]
    out = {}
    for e in plan:
        req = urllib.request.Request(
            f"http://127.0.0.1:{stack.vault_port}/v1/subjects/export", method="POST",
            data=json.dumps({"email": e.email}).encode(),
            headers={"Authorization": f"Bearer {token}", "X-Purpose": "proof control",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:  # noqa: S310
                out[e.email] = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"vault export: {exc.code} {exc.read()[:300]!r}") from None
    return out


def _rejections(stacks: list[Stack]) -> dict[str, float]:
    """What each vault refused, and what the relay dropped on those refusals."""
    out = {s.account: s.metric("vault_rejected_envelopes_total", "vault") for s in stacks}
    out["relay"] = stacks[0].metric("relay_vault_link_rejected_total")
    return out


def test_no_canary_reaches_the_relay(stacks: list[Stack],
                                     proof_line: Callable[[str], None]) -> None:
    started = time.monotonic()
    plans = {s.account: [new_engagement(s.account, n)
                         for n in range(i, ENGAGEMENTS, len(stacks))]
             for i, s in enumerate(stacks)}
    agents = {s.account: s.certify_agent(f"agent-{s.account}") for s in stacks}
    for s in stacks:
        s.set_mode("compliance")
    wait_until(lambda: stacks[0].metric("relay_vault_links") >= len(stacks), timeout=20,
               what="three vault links")

    async def run_all() -> list[list[str]]:
        return await asyncio.gather(*(_run_account(s, *agents[s.account], plans[s.account])
                                      for s in stacks))
    done = dict(zip((s.account for s in stacks), asyncio.run(run_all()), strict=True))
    chat_s = time.monotonic() - started
    assert sum(len(v) for v in done.values()) == ENGAGEMENTS
    for s in stacks:
        wait_until(lambda s=s: s.outbox_entries() == 0, timeout=60, what="outbox drained")

    everything = [e for plan in plans.values() for e in plan]
    index = CanaryIndex(c for e in everything for c in e.canaries())
    relay = stacks[0]
    places: dict[str, bytes] = {}
    for path in sorted(relay.relay_state.rglob("*")):
        if path.is_file():
            places[str(path)] = path.read_bytes()
    places["relay stdout/stderr"] = (relay.root / "relay.out").read_bytes()
    places.update(_relay_api_responses(stacks, done))
    assert any(name.endswith("relay.db-wal") or name.endswith("relay.log") for name in places)
    hits: list[Hit] = []
    for where, data in places.items():
        hits += index.scan(where, data)
    assert hits == [], hits[:10]

    # Positive control through the vaults' read path: every canary of every engagement.
    found: set[str] = set()
    for s in stacks:
        for email, export in _vault_exports(s, plans[s.account]).items():
            found.update(h.canary for h in index.scan(f"export {email}", export))
    missing = set(index.canaries) - found
    assert not missing, (sorted(missing)[:5], _rejections(stacks))
    proof_line(f"no-personal-data: engagements={ENGAGEMENTS} accounts={len(stacks)} "
               f"canaries={len(index.canaries)} places_scanned={len(places)} "
               f"relay_bytes={sum(len(d) for d in places.values())} hits=0 "
               f"vault_control_found={len(found)}/{len(index.canaries)} "
               f"chat_s={chat_s:.1f} total_s={time.monotonic() - started:.1f}")

"""Compliance engagements with a unique canary in every personal field, run through the SDK.

One ``AgentDesk`` per account serves many concurrent visitors with one agent socket:
it accepts every offer and routes the agent's events by engagement, so an account
runs several engagements at once without the agents racing for offers.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass
from typing import Any

from relay.client import AgentClient, VisitorClient
from tests.support.stack import ORIGIN, Stack

__all__ = ["AgentDesk", "CanaryEngagement", "new_engagement", "run_engagement"]

#: Shared by every canary of a run, so the scanner's heads stay few (tests/support/canary.py).
PREFIX = "CANARYPROOF"
_LETTERS = "ghijklmnopqrstuv"


@dataclass(frozen=True)
class CanaryEngagement:
    """The personal values of one engagement, each a unique canary."""

    account: str
    name: str
    email: str
    phone: str
    answer: str
    visitor_texts: tuple[str, str]
    agent_text: str
    user_agent: str
    forwarded_for: str
    visitor_id: str

    def canaries(self) -> list[str]:
        """Every canary of the engagement (the email's local part stands for the email)."""
        return [self.name, self.email.split("@")[0], self.phone, self.answer,
                *self.visitor_texts, self.agent_text, self.user_agent, self.forwarded_for,
                self.visitor_id]


def new_engagement(account: str, n: int) -> CanaryEngagement:
    """Fresh canaries for engagement ``n`` of ``account``."""
    def c(field: str) -> str:
        # Letters only after the prefix: the vault redacts digit runs that pass the Luhn
        # check (card numbers) in messages, which would hide a canary from the control.
        tag = "".join(_LETTERS[int(d, 16)] for d in f"{n:03x}{secrets.token_hex(8)}")
        return f"{PREFIX}{field}{tag}"
    groups = ":".join(f"{secrets.randbits(16):x}" for _ in range(4))
    return CanaryEngagement(
        account=account, name=c("name"), email=c("email") + "@example.org", phone=c("phone"),
        answer=c("answer"), visitor_texts=(c("vmsga"), c("vmsgb")), agent_text=c("amsg"),
        user_agent=c("ua"),
        # A documentation-range IPv6 address, unique per engagement: the relay sees it as
        # the client address (X-Forwarded-For from a trusted proxy), seals it to the vault
        # and must write it nowhere.
        forwarded_for=f"2001:db8:{n:x}:ca7a:{groups}", visitor_id=c("vid"))


class AgentDesk:
    """One agent socket that accepts every offer and hands out events per engagement."""

    def __init__(self, agent: AgentClient) -> None:
        self.agent = agent
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = collections.defaultdict(
            asyncio.Queue)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect the agent and start routing its events."""
        await self.agent.connect()
        self._task = asyncio.create_task(self._route())

    async def _route(self) -> None:
        assert self.agent.session is not None
        while True:
            event = await self.agent.session.events.get()
            eng = event.get("engagement")
            if event.get("type") == "offer" and eng:
                await self.agent.accept(eng)
            if eng:
                self.queues[eng].put_nowait(event)

    async def wait(self, engagement: str, kind: str, timeout: float) -> dict[str, Any]:
        """The next event of ``kind`` in ``engagement``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            event = await asyncio.wait_for(self.queues[engagement].get(), max(left, 0.01))
            if event.get("type") == kind:
                return event

    async def close(self) -> None:
        """Stop routing and close the agent."""
        if self._task is not None:
            self._task.cancel()
        await self.agent.close()


async def _acked(unacked: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while unacked:
        if time.monotonic() > deadline:
            raise TimeoutError("message not acknowledged by the relay")
        await asyncio.sleep(0.01)


async def run_engagement(stack: Stack, desk: AgentDesk, e: CanaryEngagement,
                         timeout: float = 20.0) -> str:
    """Pre-chat, two visitor messages, one agent reply, end; returns the engagement id."""
    visitor = VisitorClient(stack.relay_url, stack.account, origin=ORIGIN,
                            pinned_fingerprint=stack.fingerprint, user_agent=e.user_agent,
                            visitor_id=e.visitor_id,
                            headers={"X-Forwarded-For": e.forwarded_for})
    try:
        eng = str((await visitor.connect())["engagement"])
        await visitor.send_prechat(name=e.name, email=e.email, phone=e.phone,
                                   answers={"reason": e.answer})
        await visitor.next_event(timeout, types=("assigned",))
        await visitor.send(e.visitor_texts[0])
        got = await desk.wait(eng, "msg", timeout)
        while got.get("kind") != "message":
            got = await desk.wait(eng, "msg", timeout)
        assert got["text"] == e.visitor_texts[0]
        await desk.agent.send(eng, e.agent_text)
        assert (await visitor.next_event(timeout, types=("msg",)))["text"] == e.agent_text
        await visitor.send(e.visitor_texts[1])
        assert (await desk.wait(eng, "msg", timeout))["text"] == e.visitor_texts[1]
        await _acked(visitor.unacked, timeout)
        await _acked(desk.agent.unacked, timeout)
        await visitor.end()
        await desk.wait(eng, "ended", timeout)
        return eng
    finally:
        await visitor.close()

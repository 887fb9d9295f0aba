"""The agent side of the chat SDK (what an agent console does), both modes."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from envelope import (
    BindingError,
    EnvelopeError,
    PartyKeys,
    b64d,
    decode_body,
    encode_body,
    open_envelope,
    parse_envelope,
    seal,
)

from ._session import PublicKeys, SenderSequences, Session, fetch_keys

__all__ = ["AgentClient"]


class AgentClient:
    """An agent device: takes offers, chats in many engagements, transfers, resumes.

    In compliance mode ``keys`` are the device keys the vault certified; the client
    seals replies to the visitor's engagement key and the vault key (verified against
    ``pinned_fingerprint``), and opens only envelopes signed by the visitor key the
    engagement started with.
    """

    def __init__(self, base_url: str, token: str, account: str, *,
                 keys: PartyKeys | None = None, pinned_fingerprint: str | None = None,
                 capacity: int = 5, allow_standard: bool = False) -> None:
        self.base_url, self.token, self.account = base_url.rstrip("/"), token, account
        self.allow_standard = allow_standard  # see PublicKeys: explicit downgrade opt-in
        self.party, self.pinned, self.capacity = keys, pinned_fingerprint, capacity
        self.http: aiohttp.ClientSession | None = None
        self.session: Session | None = None
        self.public: PublicKeys | None = None
        self.last: dict[str, int] = {}
        self.seq: dict[str, int] = {}
        self.unacked: dict[tuple[str, int], dict[str, Any] | bytes] = {}
        self.visitors: dict[str, dict[str, bytes]] = {}
        self.welcome: dict[str, Any] = {}
        self.sequences = SenderSequences()

    @property
    def compliance(self) -> bool:
        """True when the account is in compliance mode."""
        # A pinned device never believes a relay that says "standard" (downgrade attack),
        # unless the controller opted this device into a migrating account.
        if self.pinned is not None and not self.allow_standard:
            return True
        return self.welcome.get("mode") == "compliance"

    async def connect(self) -> dict[str, Any]:
        """Open the socket (or reopen it, resuming every engagement)."""
        self.http = self.http or aiohttp.ClientSession()
        self.public = await fetch_keys(self.http, self.base_url, self.account, self.pinned,
                                       int(time.time()), allow_standard=self.allow_standard)
        hello: dict[str, Any] = {"type": "hello", "capacity": self.capacity, "last": self.last}
        if self.party is not None:
            hello["key_id"] = self.party.encryption_key_id
        url = self.base_url.replace("http", "ws", 1) + "/v1/chat/agent"
        self.session = Session(self.http, url, {"Authorization": f"Bearer {self.token}"})
        self.session.on_text, self.session.on_binary = self._on_text, self._on_binary
        self.welcome = await self.session.open(hello)
        for item in self.welcome.get("engagements", []):
            eng, acked = item["engagement"], int(item["acked"])
            self._remember_visitor(eng, item.get("visitor_keys"))
            for key in [k for k in self.unacked if k[0] == eng and k[1] <= acked]:
                del self.unacked[key]
            self.seq[eng] = max(self.seq.get(eng, 0), acked)
        for (_eng, _seq), frame in sorted(self.unacked.items()):
            if isinstance(frame, bytes):
                await self.session.send_bytes(frame)
            else:
                await self.session.send_json(frame)
        return self.welcome

    def _remember_visitor(self, eng: str, keys: dict[str, str] | None) -> None:
        if keys and eng not in self.visitors:
            # Pinned for the rest of the engagement: a later substitution is ignored.
            self.visitors[eng] = {"enc": b64d(keys["enc"], length=32),
                                  "sig": b64d(keys["sig"], length=32)}

    async def _on_text(self, frame: dict[str, Any]) -> None:
        eng = frame.get("engagement")
        if "dseq" in frame and eng:
            if frame["dseq"] <= self.last.get(eng, 0):
                return
            self.last[eng] = frame["dseq"]
        if frame.get("type") == "ack" and eng:
            self.unacked.pop((eng, frame["seq"]), None)
        if frame.get("type") in ("assigned", "offer") and eng:
            self._remember_visitor(eng, frame.get("visitor_keys"))
        if frame.get("type") == "assigned" and eng:
            self.seq.setdefault(eng, 0)
        assert self.session is not None
        self.session.events.put_nowait(frame)

    async def _on_binary(self, dseq: int, data: bytes) -> None:
        assert self.session is not None
        try:
            eng = parse_envelope(data).header.engagement
            if dseq <= self.last.get(eng, 0):
                return
            self.last[eng] = dseq
            assert self.party is not None
            visitor = self.visitors.get(eng)
            if visitor is None:
                # Only engagements offered or assigned to us, with their visitor key
                # pinned: otherwise a relay could splice envelopes of other engagements
                # (or sign its own) into an engagement we never took.
                raise BindingError("envelope for an engagement not ours",
                                   code="envelope.wrong_engagement")
            opened = open_envelope(data, self.party.encryption, account=self.account,
                                   engagement=eng, sender_public_key=visitor["sig"])
            body = decode_body(opened.header.kind, opened.body)
            skipped = self.sequences.check(eng, opened.header.sender_key_id,
                                           opened.header.sequence)
        except EnvelopeError as exc:
            self.session.events.put_nowait({"type": "rejected", "code": exc.code})
            return
        if skipped:
            self.session.events.put_nowait({"type": "gap", "engagement": eng,
                                            "code": "envelope.gap", "missing": skipped})
        kind = opened.header.kind
        self.session.events.put_nowait({
            "type": "history" if kind == "history-handoff" else "msg", "engagement": eng,
            "from": opened.header.role, "kind": kind, "seq": opened.header.sequence, **body})

    async def accept(self, engagement: str) -> None:
        """Accept an offered engagement."""
        assert self.session is not None
        await self.session.send_json({"type": "accept", "engagement": engagement})

    async def send(self, engagement: str, text: str) -> int:
        """Send a chat message in ``engagement``; returns its sequence number."""
        assert self.session is not None
        seq = self.seq[engagement] = self.seq.get(engagement, 0) + 1
        if self.compliance:
            assert self.party is not None and self.public is not None
            assert self.public.vault_key is not None
            data = seal(encode_body("message", {"text": text}), sender=self.party,
                        role="agent", account=self.account, engagement=engagement,
                        sequence=seq, kind="message",
                        recipients=[self.public.vault_key, self.visitors[engagement]["enc"]])
            self.unacked[(engagement, seq)] = data
            await self.session.send_bytes(data)
        else:
            frame = {"type": "msg", "engagement": engagement, "seq": seq, "text": text}
            self.unacked[(engagement, seq)] = frame
            await self.session.send_json(frame)
        return seq

    async def typing(self, engagement: str, on: bool = True) -> None:
        """Send a typing indicator."""
        assert self.session is not None
        await self.session.send_json({"type": "typing", "engagement": engagement, "on": on})

    async def transfer(self, engagement: str, to_agent: str) -> None:
        """Hand the engagement to another online agent."""
        assert self.session is not None
        await self.session.send_json({"type": "transfer", "engagement": engagement,
                                      "to": to_agent})

    async def end(self, engagement: str) -> None:
        """End the engagement."""
        assert self.session is not None
        await self.session.send_json({"type": "end", "engagement": engagement})

    async def next_event(self, timeout: float = 10.0, *, types: tuple[str, ...] = ()
                         ) -> dict[str, Any]:
        """The next event (skipping those whose type is not in ``types`` when given)."""
        assert self.session is not None
        return await self.session.next_event(timeout, types=types)

    async def drop(self) -> None:
        """Lose the connection abruptly."""
        assert self.session is not None
        await self.session.close(abrupt=True)

    async def close(self) -> None:
        """Close the socket and the HTTP session."""
        if self.session is not None:
            await self.session.close()
        if self.http is not None:
            await self.http.close()

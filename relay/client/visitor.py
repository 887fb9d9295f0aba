"""The visitor side of the chat SDK (what a website widget does), both modes."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from envelope import (
    EnvelopeError,
    PartyKeys,
    b64e,
    decode_body,
    encode_body,
    open_envelope,
    seal,
)

from ._session import ChatClientError, PublicKeys, SenderSequences, Session, fetch_keys

__all__ = ["VisitorClient"]


class VisitorClient:
    """A visitor: opens an engagement, sends, receives, resumes after a drop.

    In compliance mode it verifies the account's keys against ``pinned_fingerprint``,
    makes fresh keys for the engagement, seals every body to the vault and the
    assigned agent, and re-seals its history to each newly assigned agent.
    """

    def __init__(self, base_url: str, account: str, *, origin: str,
                 pinned_fingerprint: str | None = None, visitor_id: str | None = None,
                 user_agent: str | None = None, headers: dict[str, str] | None = None,
                 allow_standard: bool = False) -> None:
        self.base_url, self.account = base_url.rstrip("/"), account
        self.pinned = pinned_fingerprint
        self.allow_standard = allow_standard  # see PublicKeys: explicit downgrade opt-in
        self.visitor_id = visitor_id
        self.http_headers = {"Origin": origin, **(headers or {})}
        if user_agent is not None:
            self.http_headers["User-Agent"] = user_agent
        self.http: aiohttp.ClientSession | None = None
        self.session: Session | None = None
        self.keys: PublicKeys | None = None
        self.party = PartyKeys.generate()
        self.engagement: str | None = None
        self.resume_token: str | None = None
        self.last_dseq = 0
        self.seq = 0
        self.unacked: dict[int, dict[str, Any] | bytes] = {}
        # What each unacknowledged frame said, so it can be sealed again into a new
        # engagement if the relay lost the old one (restart): see reconnect().
        self.pending: dict[int, tuple[str, dict[str, Any]]] = {}
        self.history: list[dict[str, Any]] = []
        self.agent: str | None = None
        self.agent_key_id: str | None = None
        self.agent_cert: Any = None
        self.sequences = SenderSequences()
        # Set when the relay assigned an agent whose keys do not verify: sending stops.
        self.key_error: ChatClientError | None = None

    @property
    def compliance(self) -> bool:
        """True when the account is in compliance mode."""
        return self.keys is not None and self.keys.mode == "compliance"

    async def connect(self) -> dict[str, Any]:
        """Fetch and verify keys, open the socket, start an engagement; return welcome."""
        self.http = self.http or aiohttp.ClientSession(headers=self.http_headers)
        self.keys = await fetch_keys(self.http, self.base_url, self.account, self.pinned,
                                     int(time.time()), allow_standard=self.allow_standard)
        hello: dict[str, Any] = {"type": "hello"}
        if self.compliance:
            hello["keys"] = {"enc": b64e(self.party.encryption.public_bytes),
                             "sig": b64e(self.party.signing_public_bytes)}
        if self.visitor_id:
            hello["visitor_id"] = self.visitor_id
        return await self._open(hello)

    async def _open(self, hello: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        ws_url = self.base_url.replace("http", "ws", 1) + f"/v1/chat/visitor/{self.account}"
        self.session = Session(self.http, ws_url, {})
        self.session.on_text, self.session.on_binary = self._on_text, self._on_binary
        welcome = await self.session.open(hello)
        self.engagement, self.resume_token = welcome["engagement"], welcome["resume"]
        if welcome.get("agent"):
            await self._assigned(welcome["agent"], welcome.get("key_id"), handoff=False)
        return welcome

    async def _assigned(self, agent: str, key_id: str | None, *, handoff: bool) -> None:
        self.agent, self.agent_key_id = agent, key_id
        if self.compliance:
            assert self.http is not None and self.keys is not None
            # Certificates are re-fetched and verified: the relay names the agent, but
            # only the controller's identity key can vouch for its keys.
            try:
                self.keys = await fetch_keys(self.http, self.base_url, self.account,
                                             self.pinned, int(time.time()),
                                             allow_standard=self.allow_standard)
                self.agent_cert = self.keys.agent(agent, key_id)
            except ChatClientError as exc:
                # A relay-made or forged agent: seal nothing more in this engagement (not
                # even to the vault alone), and say so instead of dying in the reader.
                self.agent_cert, self.key_error = None, exc
                assert self.session is not None
                self.session.events.put_nowait({"type": "rejected", "code": exc.code})
                return
            self.key_error = None
            if handoff and self.history:
                await self._send_sealed("history-handoff", {"items": list(self.history)})

    async def _on_text(self, frame: dict[str, Any]) -> None:
        if "dseq" in frame:
            if frame["dseq"] <= self.last_dseq:
                return  # already seen before a resume
            self.last_dseq = frame["dseq"]
        if frame.get("type") == "ack":
            self.unacked.pop(frame["seq"], None)
            self.pending.pop(frame["seq"], None)
        if frame.get("type") == "assigned":
            await self._assigned(frame["agent"], frame.get("key_id"), handoff=True)
        if frame.get("type") == "msg":
            self.history.append({"role": "agent", "seq": frame["seq"], "text": frame["text"],
                                 "ts": int(time.time())})
        assert self.session is not None
        self.session.events.put_nowait(frame)

    async def _on_binary(self, dseq: int, data: bytes) -> None:
        if dseq <= self.last_dseq:
            return
        self.last_dseq = dseq
        assert self.session is not None and self.keys is not None
        try:
            sender = self.agent_cert.signing_public_key if self.agent_cert else None
            opened = open_envelope(data, self.party.encryption, account=self.account,
                                   engagement=self.engagement, sender_public_key=sender)
            body = decode_body(opened.header.kind, opened.body)
            skipped = self.sequences.check(opened.header.engagement,
                                           opened.header.sender_key_id, opened.header.sequence)
        except EnvelopeError as exc:
            self.session.events.put_nowait({"type": "rejected", "code": exc.code})
            return
        if skipped:
            self.session.events.put_nowait({"type": "gap", "code": "envelope.gap",
                                            "missing": skipped})
        if opened.header.kind == "message":
            self.history.append({"role": "agent", "seq": opened.header.sequence,
                                 "text": body["text"], "ts": int(time.time())})
        self.session.events.put_nowait({"type": "msg", "from": opened.header.role,
                                        "kind": opened.header.kind,
                                        "seq": opened.header.sequence, **body})

    async def _send_sealed(self, kind: str, body: dict[str, Any]) -> int:
        if self.key_error is not None:
            raise self.key_error
        assert self.keys is not None and self.keys.vault_key is not None
        assert self.session is not None and self.engagement is not None
        recipients = [self.keys.vault_key]
        if self.agent_cert is not None:
            recipients.append(self.agent_cert.encryption_public_key)
        self.seq += 1
        data = seal(encode_body(kind, body), sender=self.party, role="visitor",
                    account=self.account, engagement=self.engagement, sequence=self.seq,
                    kind=kind, recipients=recipients)
        self.unacked[self.seq] = data
        self.pending[self.seq] = (kind, body)
        await self.session.send_bytes(data)
        return self.seq

    async def send(self, text: str) -> int:
        """Send a chat message; returns its sequence number."""
        assert self.session is not None
        if self.compliance:
            seq = await self._send_sealed("message", {"text": text})
        else:
            self.seq += 1
            seq = self.seq
            frame = {"type": "msg", "seq": seq, "text": text}
            self.unacked[seq] = frame
            self.pending[seq] = ("message", {"text": text})
            await self.session.send_json(frame)
        self.history.append({"role": "visitor", "seq": seq, "text": text,
                             "ts": int(time.time())})
        return seq

    async def send_prechat(self, **fields: Any) -> int:
        """Seal pre-chat answers (name, email, phone, answers) to the vault (compliance)."""
        return await self._send_sealed("prechat", fields)

    async def typing(self, on: bool = True) -> None:
        """Send a typing indicator."""
        assert self.session is not None
        await self.session.send_json({"type": "typing", "on": on})

    async def next_event(self, timeout: float = 10.0, *, types: tuple[str, ...] = ()
                         ) -> dict[str, Any]:
        """The next event (skipping those whose type is not in ``types`` when given)."""
        assert self.session is not None
        return await self.session.next_event(timeout, types=types)

    async def drop(self) -> None:
        """Lose the connection abruptly (as a flaky network would)."""
        assert self.session is not None
        await self.session.close(abrupt=True)

    async def resume(self) -> dict[str, Any]:
        """Reconnect with the resume token; get missed frames; resend what was not acked."""
        welcome = await self._open({"type": "hello", "resume": self.resume_token,
                                    "last": self.last_dseq})
        acked = int(welcome.get("acked", 0))
        for seq in [s for s in self.unacked if s <= acked]:
            del self.unacked[seq]
            self.pending.pop(seq, None)
        assert self.session is not None
        for _seq, frame in sorted(self.unacked.items()):
            if isinstance(frame, bytes):
                await self.session.send_bytes(frame)
            else:
                await self.session.send_json(frame)
        return welcome

    async def reconnect(self) -> dict[str, Any]:
        """Resume; if the relay no longer knows the engagement (it restarted), open a new
        one and send again every message it never acknowledged, sealed into the new one.

        Acknowledged messages are durable at the relay and are not sent again; an
        unacknowledged one may have been durable too, so it can reach the vault twice
        (once per engagement): at-least-once for what was never acknowledged.
        """
        try:
            return await self.resume()
        except ChatClientError as exc:
            if exc.code != "resume.unknown":
                raise
        again = [self.pending[s] for s in sorted(self.pending)]
        self.unacked.clear()
        self.pending.clear()
        self.seq, self.last_dseq = 0, 0
        self.agent = self.agent_key_id = self.agent_cert = None
        if self.session is not None:
            await self.session.close()
        welcome = await self.connect()
        for kind, body in again:
            if self.compliance:
                await self._send_sealed(kind, body)
            elif kind == "message":
                await self.send(body["text"])
        return welcome

    async def end(self) -> None:
        """End the engagement."""
        assert self.session is not None
        await self.session.send_json({"type": "end"})

    async def close(self) -> None:
        """Close the socket and the HTTP session."""
        if self.session is not None:
            await self.session.close()
        if self.http is not None:
            await self.http.close()

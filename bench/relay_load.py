"""The relay's side of the load generator: compliance-mode engagements with real envelopes.

``provision`` (run once per relay, by bench/run_all.py) creates a compliance-mode account
over the admin API and pairs it with a vault identity; it returns the *setup* dict the
load generator's processes read from ``--relay-setup FILE``.

``RelayPairs`` opens, for its part of the pairs, one agent socket per ``per_agent``
engagements (the agent device is certified by the vault identity) and one visitor socket
per engagement, has each agent accept exactly its own visitors, and then **pre-seals**
every envelope the run may send (``preseal``): sealing is the clients' work, done in
each visitor's browser and agent's console, so it is kept out of the measured window
where, on this 2-core machine, it would compete with the relay for CPU. Each envelope
is a 1 KiB text message sealed to the vault and the peer, about 1.5 KiB on the wire.

Setup dict::

    {"account": ACCT, "origin": ORIGIN, "admin": ADMIN_TOKEN,
     "identity_seed": B64, "vault_key": B64}
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from envelope import (
    EncryptionKey,
    IdentityKey,
    PartyKeys,
    b64d,
    b64e,
    encode_body,
    seal,
    sign_agent_certificate,
    sign_vault_key_statement,
)

__all__ = ["RelayPairs", "provision"]

TEXT = ("Hello, I would like to ask about my appointment next week. " * 20)[:1024]
ORIGIN = "https://bench.example"


async def _call(http: aiohttp.ClientSession, method: str, url: str, token: str,
                body: Any = None) -> Any:
    async with http.request(method, url, json=body,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url.split('/v1/')[-1]}: {resp.status} {data}")
        return data


async def provision(url: str, operator_token: str, account: str = "bench", *,
                    identity: IdentityKey | None = None,
                    vault_key: EncryptionKey | None = None, now: int) -> dict[str, str]:
    """Create a compliance-mode account paired to ``identity``; return the setup dict."""
    identity = identity or IdentityKey.generate()
    vault_key = vault_key or EncryptionKey.generate()
    base = url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        await _call(http, "POST", f"{base}/v1/accounts", operator_token, {
            "account": account, "origins": [ORIGIN], "mode": "standard",
            "retention_days": 30})
        admin = (await _call(http, "POST", f"{base}/v1/accounts/{account}/admin-tokens",
                             operator_token))["token"]
        statement = sign_vault_key_statement(identity, account=account,
                                             key=vault_key.public_bytes,
                                             not_before=now - 60, not_after=now + 86400)
        await _call(http, "PUT", f"{base}/v1/accounts/{account}/vault", admin, {
            "identity_key": b64e(identity.public_bytes), "key_statement": statement})
        await _call(http, "PUT", f"{base}/v1/accounts/{account}/mode", admin,
                    {"mode": "compliance"})
    return {"account": account, "origin": ORIGIN, "admin": admin,
            "identity_seed": b64e(identity.seed), "vault_key": b64e(vault_key.public_bytes)}


class _Socket:
    """A chat websocket: binary frames to ``on_message``, acks skipped, other text queued."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse,
                 on_message: Callable[[bytes], None]) -> None:
        self.ws, self._on_message = ws, on_message
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self._on_message(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data.startswith('{"type": "ack"'):
                    continue  # the durable-ack of our own frame: nothing to measure here
                self.events.put_nowait(json.loads(msg.data))

    async def next(self, ftype: str, timeout: float = 30.0, **match: str) -> dict[str, Any]:
        """The next text frame of ``ftype`` (matching ``match``), skipping others."""
        async def wait() -> dict[str, Any]:
            while True:
                frame = await self.events.get()
                if frame.get("type") == "error":
                    raise RuntimeError(f"relay refused: {frame.get('code')}")
                if frame.get("type") == ftype and all(frame.get(k) == v
                                                      for k, v in match.items()):
                    return frame
        return await asyncio.wait_for(wait(), timeout)

    async def send(self, data: bytes) -> None:
        """Send one envelope."""
        await self.ws.send_bytes(data)

    async def close(self) -> None:
        """Close and wait for the reader."""
        await self.ws.close()
        await self.reader


class RelayPairs:
    """This part's agents and visitors, connected and paired, and their directions."""

    def __init__(self, session: aiohttp.ClientSession, url: str, setup: dict[str, Any],
                 on_message: Callable[[bytes], None], *, per_agent: int, window: int) -> None:
        self.session, self.url, self.setup = session, url.rstrip("/"), setup
        self.on_message, self.per_agent, self.window = on_message, per_agent, window
        self.identity = IdentityKey.from_seed(b64d(setup["identity_seed"]))
        self.vault_key = b64d(setup["vault_key"])
        self.sockets: list[_Socket] = []
        self.token_retries = 0
        # (engagement, visitor socket, visitor keys, agent socket, agent keys)
        self.engagements: list[tuple[str, _Socket, PartyKeys, _Socket, PartyKeys]] = []

    async def _agent(self, http: aiohttp.ClientSession, name: str) -> tuple[_Socket, PartyKeys]:
        acct, admin = self.setup["account"], self.setup["admin"]
        keys = PartyKeys.generate()
        now = int(time.time())
        cert = sign_agent_certificate(self.identity, account=acct, agent=name,
                                      encryption_key=keys.encryption.public_bytes,
                                      signing_key=keys.signing_public_bytes,
                                      not_before=now - 60, not_after=now + 86400)
        await _call(http, "POST", f"{self.url}/v1/accounts/{acct}/agent-certificates", admin,
                    {"certificate": cert})
        token = (await _call(http, "POST", f"{self.url}/v1/accounts/{acct}/agent-tokens",
                             admin, {"agent": name}))["token"]
        for attempt in range(4):
            ws = await self.session.ws_connect(f"{self.url}/v1/chat/agent",
                                               max_msg_size=1 << 20,
                                               headers={"Authorization": f"Bearer {token}"})
            sock = _Socket(ws, self.on_message)
            await ws.send_json({"type": "hello", "key_id": keys.encryption_key_id,
                                "capacity": self.per_agent})
            try:
                await sock.next("welcome")
                break
            except RuntimeError as exc:
                # Seen under load: a token committed a moment ago refused as unknown
                # (auth.bad_token). Retrying the same token says whether it is a stale
                # read (it then succeeds) or a lost write; the retries are counted.
                await sock.close()
                if "auth.bad_token" not in str(exc) or attempt == 3:
                    raise
                self.token_retries += 1
                await asyncio.sleep(0.2 * (attempt + 1))
        self.sockets.append(sock)
        return sock, keys

    async def _visitor(self, agent: _Socket, agent_keys: PartyKeys) -> None:
        acct = self.setup["account"]
        keys = PartyKeys.generate()
        ws = await self.session.ws_connect(f"{self.url}/v1/chat/visitor/{acct}",
                                           max_msg_size=1 << 20,
                                           headers={"Origin": self.setup["origin"]})
        sock = _Socket(ws, self.on_message)
        self.sockets.append(sock)
        await ws.send_json({"type": "hello", "keys": {
            "enc": b64e(keys.encryption.public_bytes), "sig": b64e(keys.signing_public_bytes)}})
        eng = (await sock.next("welcome"))["engagement"]
        await agent.next("offer", engagement=eng)
        await agent.ws.send_json({"type": "accept", "engagement": eng})
        await sock.next("assigned", engagement=eng)
        self.engagements.append((eng, sock, keys, agent, agent_keys))

    async def connect(self, *, pairs: int, part: int, parts: int, concurrency: int) -> None:
        """Open this part's agents (agent j belongs to part j % parts) and their visitors."""
        agents = -(-pairs // self.per_agent)
        gate = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as http:
            async def one_agent(j: int) -> None:
                async with gate:
                    prefix = self.setup.get("agent_prefix", "a")
                    sock, keys = await self._agent(http, f"{prefix}{j:06d}")
                    for _ in range(min(self.per_agent, pairs - j * self.per_agent)):
                        await self._visitor(sock, keys)
            await asyncio.gather(*(one_agent(j) for j in range(part, agents, parts)))

    def preseal(self, count: int) -> list[tuple[_Socket, list[bytes]]]:
        """Seal ``count`` messages per direction, before the measured window."""
        out = []
        body = encode_body("message", {"text": TEXT})
        acct = self.setup["account"]
        for eng, visitor, vkeys, agent, akeys in self.engagements:
            for sock, sender, role, peer in ((visitor, vkeys, "visitor", akeys),
                                             (agent, akeys, "agent", vkeys)):
                stock = [seal(body, sender=sender, role=role, account=acct, engagement=eng,
                              sequence=seq, kind="message",
                              recipients=[self.vault_key, peer.encryption.public_bytes])
                         for seq in range(1, count + 1)]
                out.append((sock, stock))
        return out

    async def close(self) -> None:
        """Close every socket."""
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)

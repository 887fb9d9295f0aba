"""The relay's side of the load generator: compliance-mode engagements with real envelopes.

``provision`` (run once per relay, by bench/measure.py) creates the account over the
admin API, has a real vault (``controller-vault init`` + ``pair``, in ``vault_dir``)
publish its identity and key statement, certifies every agent device the run will use
with that vault's identity (recorded in the vault's own store, as ``certify-agent``
does, so the vault's ingest trusts their envelopes), publishes the certificates at the
relay and turns compliance mode on. It returns the *setup* dict the load generator's
processes read from ``--relay-setup FILE``.

``RelayPairs`` opens, for its part of the pairs, one agent socket per ``per_agent``
engagements (with the pre-certified device keys of the setup) and one visitor socket
per engagement, has each agent accept exactly its own visitors, and then **pre-seals**
every envelope the run may send (``preseal``): sealing is the clients' work, done in
each visitor's browser and agent's console, so it is kept out of the measured window
where, on this 2-core machine, it would compete with the relay for CPU. Each envelope
is a 1 KiB text message sealed to the vault and the peer, about 1.5 KiB on the wire.

Setup dict::

    {"account": ACCT, "origin": ORIGIN, "admin": ADMIN_TOKEN, "vault_key": B64,
     "agents": {NAME: {"keys": PartyKeys.to_json(), "certificate": CERT}}}
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from servers import init_vault  # type: ignore[import-not-found]

from envelope import PartyKeys, b64d, b64e, encode_body, seal

__all__ = ["RelayPairs", "agent_names", "provision"]

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


async def _certify(vault_dir: pathlib.Path, agents: Sequence[str], now: int
                   ) -> tuple[bytes, dict[str, dict[str, Any]]]:
    """Certify each agent's fresh device keys in the vault's store; the vault's key too."""
    from controller_vault.certify import certify_agent
    from controller_vault.keyfiles import load_vault_keys
    from controller_vault.store import VaultStore

    keys = load_vault_keys(vault_dir)
    store = await VaultStore.open(vault_dir / "vault.db", keys.account)
    out: dict[str, dict[str, Any]] = {}
    try:
        for name in agents:
            party = PartyKeys.generate()
            cert = await certify_agent(store, keys, agent=name,
                                       encryption_key=party.encryption.public_bytes,
                                       signing_key=party.signing_public_bytes, now=now,
                                       days=2)
            out[name] = {"keys": party.to_json(), "certificate": cert}
    finally:
        await store.close()
    return keys.current_key.public_bytes, out


async def provision(url: str, operator_token: str, vault_dir: pathlib.Path,
                    agents: Sequence[str], account: str = "bench", *, now: int
                    ) -> dict[str, Any]:
    """Account + real paired vault + certified agents, compliance on; the setup dict."""
    base = url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        await _call(http, "POST", f"{base}/v1/accounts", operator_token, {
            "account": account, "origins": [ORIGIN], "mode": "standard",
            "retention_days": 30})
        admin = (await _call(http, "POST", f"{base}/v1/accounts/{account}/admin-tokens",
                             operator_token))["token"]
        await asyncio.to_thread(init_vault, vault_dir, account, base, admin)
        vault_key, certified = await _certify(vault_dir, agents, now)
        gate = asyncio.Semaphore(16)

        async def publish(cert: dict[str, str]) -> None:
            async with gate:
                await _call(http, "POST", f"{base}/v1/accounts/{account}/agent-certificates",
                            admin, {"certificate": cert})
        await asyncio.gather(*(publish(a["certificate"]) for a in certified.values()))
        await _call(http, "PUT", f"{base}/v1/accounts/{account}/mode", admin,
                    {"mode": "compliance"})
    return {"account": account, "origin": ORIGIN, "admin": admin,
            "vault_key": b64e(vault_key), "agents": certified}


def agent_names(pairs: int, per_agent: int, prefix: str = "a") -> list[str]:
    """The agent pseudonyms a run of ``pairs`` engagements uses (as ``connect`` names them)."""
    return [f"{prefix}{j:06d}" for j in range(-(-pairs // per_agent))]


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
        self.vault_key = b64d(setup["vault_key"])
        self.sockets: list[_Socket] = []
        self.token_retries = 0
        # (engagement, visitor socket, visitor keys, agent socket, agent keys)
        self.engagements: list[tuple[str, _Socket, PartyKeys, _Socket, PartyKeys]] = []

    async def _agent(self, http: aiohttp.ClientSession, name: str) -> tuple[_Socket, PartyKeys]:
        acct, admin = self.setup["account"], self.setup["admin"]
        keys = PartyKeys.from_json(self.setup["agents"][name]["keys"])
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

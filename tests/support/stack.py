"""A relay and a vault as real processes on 127.0.0.1, wired together the way an operator
and a controller would: account, admin token, vault init, pairing, agent certificate.

Used by the end-to-end tests and by ``examples/demo.py`` (one harness, so the demo
shows exactly what the tests prove). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envelope import PartyKeys, b64e

from .procs import Service, free_port, write_operator_token

__all__ = ["ORIGIN", "Stack", "deploy_accounts", "reconnect_until", "wait_until"]

ORIGIN = "https://clinic.example"


def wait_until(check: Callable[[], Any], *, timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached after {timeout}s")
        time.sleep(interval)


@dataclass
class Stack:
    """Directories, ports and processes of one relay + one vault deployment."""

    root: pathlib.Path
    account: str = "clinic"
    relay_port: int = field(default_factory=free_port)
    vault_port: int = field(default_factory=free_port)
    relay_env: dict[str, str] = field(default_factory=dict)
    vault_env: dict[str, str] = field(default_factory=dict)
    relay: Service | None = None
    vault: Service | None = None
    admin_token: str = ""
    fingerprint: str = ""

    @property
    def relay_url(self) -> str:
        """The relay's origin (also its configured public_origin)."""
        return f"http://127.0.0.1:{self.relay_port}"

    @property
    def relay_state(self) -> pathlib.Path:
        """The relay's state directory (scanned for canaries)."""
        return self.root / "relay-state"

    @property
    def vault_state(self) -> pathlib.Path:
        """The vault's state directory."""
        return self.root / "vault-state"

    @property
    def operator_token(self) -> str:
        """The relay operator token (written once, mode 0600, outside the state dir)."""
        path = self.root / "operator_token"
        if not path.exists():
            write_operator_token(self.root, secrets.token_urlsafe(32))
        return path.read_text().strip()

    # processes ------------------------------------------------------------------

    def start_relay(self, *, timeout: float = 20.0) -> Service:
        """Start (or restart) the relay process and wait until it is healthy."""
        _ = self.operator_token
        env = {"RELAY_STATE_DIR": str(self.relay_state), "RELAY_PORT": str(self.relay_port),
               "RELAY_HOST": "127.0.0.1", "RELAY_PUBLIC_ORIGIN": self.relay_url,
               "RELAY_OPERATOR_TOKEN_FILE": str(self.root / "operator_token"),
               "RELAY_LOG_FILE": "relay.log", "RELAY_HEARTBEAT_SECONDS": "5",
               # every simulated visitor is 127.0.0.1: lift the per-address cap
               "RELAY_MAX_ENGAGEMENTS_PER_ADDRESS": "10000", **self.relay_env}
        self.relay = Service("relay", ["serve"], f"{self.relay_url}/healthz",
                             self.root / "relay.out", env=env).start(timeout=timeout)
        return self.relay

    def init_vault(self) -> str:
        """``controller-vault init``; returns the identity fingerprint."""
        out = self.vault_cli("init", "--account", self.account, "--state-dir",
                             str(self.vault_state), where=False)
        for line in out.splitlines():
            if line.startswith("identity fingerprint:"):
                self.fingerprint = line.split(":", 1)[1].strip()
        assert self.fingerprint, out
        return self.fingerprint

    def start_vault(self, *, timeout: float = 20.0) -> Service:
        """Start (or restart) the vault service, dialing the relay."""
        env = {"VAULT_RELAY_URL": self.relay_url, "VAULT_PORT": str(self.vault_port),
               "VAULT_BACKOFF_INITIAL_S": "0.05", "VAULT_BACKOFF_MAX_S": "0.5",
               "VAULT_BATCH_WAIT_MS": "5", **self.vault_env}
        self.vault = Service("controller_vault",
                             ["serve", "--state-dir", str(self.vault_state)],
                             f"http://127.0.0.1:{self.vault_port}/healthz",
                             self.root / "vault.out", env=env).start(timeout=timeout)
        return self.vault

    def stop(self) -> None:
        """Stop whatever is running (SIGTERM, then SIGKILL)."""
        for svc in (self.vault, self.relay):
            if svc is not None:
                svc.stop()

    # calls ---------------------------------------------------------------------

    def vault_cli(self, *args: str, where: bool = True, check: bool = True) -> str:
        """Run ``controller-vault ARGS`` (with ``--state-dir``) and return its stdout."""
        extra = ["--state-dir", str(self.vault_state)] if where else []
        proc = subprocess.run([sys.executable, "-m", "controller_vault", *args, *extra],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "RELAY_ADMIN_TOKEN": self.admin_token},
                              check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"controller-vault {args[0]} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def call(self, method: str, path: str, body: Any = None, *,
             token: str | None = None) -> tuple[int, Any]:
        """One admin API call (operator token unless ``token``); returns (status, JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - 127.0.0.1 test URL
            self.relay_url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {token or self.operator_token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def metric(self, name: str, service: str = "relay") -> float:
        """Sum of every sample of metric ``name`` on the service's /metrics."""
        port = self.relay_port if service == "relay" else self.vault_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=10) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # set-up steps ---------------------------------------------------------------

    def create_account(self) -> str:
        """Create the account in standard mode and an account-admin token."""
        status, body = self.call("POST", "/v1/accounts", {
            "account": self.account, "origins": [ORIGIN], "retention_days": 30})
        assert status == 201, body
        status, body = self.call("POST", f"/v1/accounts/{self.account}/admin-tokens")
        assert status == 201, body
        self.admin_token = str(body["token"])
        return self.admin_token

    def pair(self) -> None:
        """``controller-vault pair``: publish the identity key and key statement."""
        self.vault_cli("pair", "--relay", self.relay_url, "--account", self.account)

    def certify_agent(self, agent: str) -> tuple[str, PartyKeys]:
        """Device keys made client-side, certified by the vault; returns (token, keys)."""
        keys = PartyKeys.generate()
        # "--opt=value": a base64url key starting with "-" would otherwise be read as an
        # option by argparse (one run in 32 failed with a usage error).
        self.vault_cli("certify-agent", "--agent", agent,
                       f"--enc-pk={b64e(keys.encryption.public_bytes)}",
                       f"--sig-pk={b64e(keys.signing_public_bytes)}", "--relay", self.relay_url)
        status, body = self.call("POST", f"/v1/accounts/{self.account}/agent-tokens",
                                 {"agent": agent}, token=self.admin_token)
        assert status == 201, body
        return str(body["token"]), keys

    def set_mode(self, mode: str, *, confirm: bool = False) -> dict[str, Any]:
        """Toggle the account's mode as its admin."""
        status, body = self.call("PUT", f"/v1/accounts/{self.account}/mode",
                                 {"mode": mode, "confirm": confirm}, token=self.admin_token)
        assert status == 200, body
        return dict(body)

    def start_compliance(self) -> Stack:
        """Relay and vault running, one account paired and in compliance mode."""
        self.start_relay()
        self.create_account()
        self.init_vault()
        self.start_vault()
        self.pair()
        self.set_mode("compliance")
        return self

    def vault_transcript(self, engagement: str) -> dict[str, Any]:
        """The transcript as the vault's staff see it (``transcripts show``)."""
        # "--" before the id: an id minted elsewhere may start with "-" (argparse option).
        doc: dict[str, Any] = json.loads(self.vault_cli(
            "transcripts", "show", "--purpose", "end-to-end check",
            f"--state-dir={self.vault_state}", "--", engagement, where=False))
        return doc

    def vault_engagements(self) -> list[str]:
        """Engagement ids the vault holds (``transcripts list``)."""
        return [line.split()[0] for line in self.vault_cli("transcripts", "list").splitlines()
                if line.strip()]

    def outbox_entries(self) -> int:
        """The account's outbox backlog, from the admin API."""
        status, body = self.call("GET", f"/v1/accounts/{self.account}/outbox",
                                 token=self.admin_token)
        assert status == 200, body
        return int(body["entries"])


def deploy_accounts(root: pathlib.Path, accounts: tuple[str, ...],
                    relay_env: dict[str, str] | None = None) -> list[Stack]:
    """One relay process, one account per name, each with its own paired vault process.

    The first stack owns the relay (its ``relay_state``, ``relay.out``); the others share
    its port and operator token. On failure, whatever started is stopped.
    """
    import shutil

    first = Stack(root / accounts[0], account=accounts[0], relay_env=dict(relay_env or {}))
    stacks = [first]
    try:
        first.root.mkdir(parents=True)
        first.start_relay()
        for name in accounts[1:]:
            s = Stack(root / name, account=name, relay_port=first.relay_port)
            s.root.mkdir(parents=True)
            shutil.copy(first.root / "operator_token", s.root / "operator_token")
            stacks.append(s)
        for s in stacks:
            s.create_account()
            s.init_vault()
            s.start_vault()
            s.pair()
    except BaseException:
        for s in reversed(stacks):
            s.stop()
        raise
    return stacks


async def converse(stack: Stack, agent: tuple[str, str, PartyKeys | None],
                   script: list[tuple[str, str]], *, prechat: dict[str, str] | None = None,
                   user_agent: str | None = None, visitor_id: str | None = None,
                   timeout: float = 15.0) -> str:
    """Run a visitor/agent conversation through the SDK; return the engagement id.

    ``agent`` is (pseudonym, token, certified keys or None in standard mode); ``script``
    lists ("visitor"|"agent", text). Every line is sent and acknowledged (durable at
    the relay) before the next, and the other side receives it.
    """
    import asyncio

    from relay.client import AgentClient, VisitorClient

    compliance = agent[2] is not None
    pin = stack.fingerprint if compliance else None
    bot = AgentClient(stack.relay_url, agent[1], stack.account, keys=agent[2],
                      pinned_fingerprint=pin)
    visitor = VisitorClient(stack.relay_url, stack.account, origin=ORIGIN,
                            pinned_fingerprint=pin, user_agent=user_agent,
                            visitor_id=visitor_id)

    async def acked(client: Any) -> None:
        deadline = time.monotonic() + timeout
        while client.unacked:
            if time.monotonic() > deadline:
                raise TimeoutError("message not acknowledged by the relay")
            await asyncio.sleep(0.02)

    try:
        await bot.connect()
        eng = str((await visitor.connect())["engagement"])
        if prechat:
            await visitor.send_prechat(**prechat)
        await bot.accept((await bot.next_event(timeout, types=("offer",)))["engagement"])
        await visitor.next_event(timeout, types=("assigned",))
        for role, text in script:
            if role == "visitor":
                await visitor.send(text)
                await acked(visitor)
                got = await bot.next_event(timeout, types=("msg",))
            else:
                await bot.send(eng, text)
                await acked(bot)
                got = await visitor.next_event(timeout, types=("msg",))
            assert got["text"] == text
        await visitor.end()
        await bot.next_event(timeout, types=("ended",))
        return eng
    finally:
        await visitor.close()
        await bot.close()


async def reconnect_until(visitor: Any, limit: float = 30.0, pause: float = 0.1) -> None:
    """Reconnect an SDK visitor, retrying while the relay restarts, for ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        try:
            await visitor.reconnect()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(pause)

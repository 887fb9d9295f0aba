"""Fixtures of the vault tests: a real vault in tmp_path and envelope factories."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from controller_vault.ingest import Ingestor, IngestResult
from controller_vault.keyfiles import VaultKeys, init_vault
from controller_vault.keystore import KeyStore
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, seal

NOW = 1_800_000_000
ACCOUNT = "clinic"


@dataclass
class VaultUnderTest:
    """A vault opened on real SQLite files in a temporary directory."""

    state: pathlib.Path
    keys: VaultKeys
    store: VaultStore
    keystore: KeyStore
    ingestor: Ingestor
    anomalies: list[tuple[str, str]] = field(default_factory=list)

    async def certify(self, agent: PartyKeys, name: str = "agent-1") -> dict[str, str]:
        """Certify an agent device the way `certify-agent` does, and keep the certificate."""
        from controller_vault.certify import certify_agent

        return await certify_agent(self.store, self.keys, agent=name,
                                   encryption_key=agent.encryption.public_bytes,
                                   signing_key=agent.signing_public_bytes, now=NOW,
                                   days=30)

    async def ingest(self, frames: list[bytes], now: int) -> IngestResult:
        """Ingest through the real Ingestor."""
        return await self.ingestor.ingest(frames, now)

    async def envelope_count(self) -> int:
        """Stored envelopes."""
        return (await self.store.stats()).envelopes


@dataclass
class Conversation:
    """Seals envelopes of one engagement to the vault, numbering each sender's stream."""

    vault_pk: bytes
    engagement: str
    account: str = ACCOUNT
    seqs: dict[bytes, int] = field(default_factory=dict)

    def env(self, sender: PartyKeys, kind: str, body: dict[str, object], *,
            role: str = "visitor", seq: int | None = None,
            recipients: list[bytes] | None = None, account: str | None = None) -> bytes:
        """One sealed envelope (next sequence number of ``sender`` unless given)."""
        key = sender.signing_public_bytes
        if seq is None:
            seq = self.seqs.get(key, 0) + 1
        self.seqs[key] = max(seq, self.seqs.get(key, 0))
        return seal(encode_body(kind, body), sender=sender, role=role,
                    account=account or self.account, engagement=self.engagement,
                    sequence=seq, kind=kind, recipients=recipients or [self.vault_pk])


async def open_vault(state: pathlib.Path, keys: VaultKeys) -> VaultUnderTest:
    """Open the store files of an initialised vault."""
    store = await VaultStore.open(state / "vault.db", keys.account)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    anomalies: list[tuple[str, str]] = []
    ingestor = Ingestor(keys, store, keystore,
                        on_anomaly=lambda kind, code: anomalies.append((kind, code)))
    return VaultUnderTest(state, keys, store, keystore, ingestor, anomalies)


@pytest.fixture
async def vault(tmp_path: pathlib.Path) -> AsyncIterator[VaultUnderTest]:
    """A freshly initialised vault with its stores open."""
    state = tmp_path / "vault"
    keys = init_vault(state, ACCOUNT, now=NOW)
    v = await open_vault(state, keys)
    yield v
    await v.store.close()
    await v.keystore.close()


@pytest.fixture
def conversation(vault: VaultUnderTest) -> Callable[[str], Conversation]:
    """Factory: an engagement sealing to the vault's current key."""
    return lambda engagement: Conversation(vault.keys.current_key.public_bytes, engagement)


@pytest.fixture
def reopen() -> Callable[[pathlib.Path, VaultKeys], Awaitable[VaultUnderTest]]:
    """Open the stores of an initialised vault again (the caller closes them)."""
    return open_vault

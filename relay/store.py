"""The relay's narrow store interface and the records it stores.

Everything the relay persists goes through :class:`RelayStore`, so a PostgreSQL
store can join the embedded SQLite one (:mod:`relay.sqlite_store`) without the rest
of the code changing. SQL lives only in the store implementation.

Outbox rows are keyed by ``(account, seq)``: ``seq`` grows per account and is never
reused, so a vault link can read the backlog in order from any sequence and delete
acknowledged entries by ``(envelope_id, envelope_hash)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = [
    "Account",
    "AgentCertificateRow",
    "DataKeyRow",
    "DuplicateEnvelope",
    "EngagementRecord",
    "ModeChange",
    "OutboxEntry",
    "OutboxStats",
    "ReceiptOutcome",
    "RelayStore",
    "TokenRecord",
    "TranscriptRow",
]


class DuplicateEnvelope(Exception):
    """An outbox append reused an envelope id already stored for the account (a replay)."""


@dataclass(frozen=True)
class Account:
    """One customer account's configuration."""

    account: str
    mode: str
    origins: tuple[str, ...]
    retention_days: int
    created_at: int
    identity_key: bytes | None = None
    key_statement: dict[str, str] | None = None
    vault_key_id: str | None = None
    vault_key: bytes | None = None

    @property
    def paired(self) -> bool:
        """True once a verified identity key and key statement are stored."""
        return self.identity_key is not None and self.vault_key_id is not None


@dataclass(frozen=True)
class TokenRecord:
    """What a (hashed) bearer token grants."""

    kind: str
    account: str
    agent: str | None


@dataclass(frozen=True)
class AgentCertificateRow:
    """An uploaded, verified agent certificate."""

    account: str
    key_id: str
    agent: str
    certificate: dict[str, str]


@dataclass(frozen=True)
class ModeChange:
    """A recorded mode toggle."""

    account: str
    mode: str
    actor: str
    at: int


@dataclass(frozen=True)
class EngagementRecord:
    """Non-personal engagement record (times already rounded)."""

    engagement: str
    account: str
    mode: str
    started_at: int
    outcome: str
    ended_at: int | None = None
    queue_wait_s: int | None = None
    first_response_s: int | None = None
    visitor_messages: int = 0
    agent_messages: int = 0
    visitor_bytes: int = 0
    agent_bytes: int = 0
    agent: str | None = None
    transfers: int = 0
    receipts: int = 0
    rejected: int = 0
    erased_at: int | None = None
    erasure_rule: str | None = None
    receipt_hashes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return dict(self.__dict__)


class OutboxEntry(NamedTuple):
    """One envelope waiting for the vault (a NamedTuple: built twice per message, at a
    third of a frozen dataclass's cost, and as immutable)."""

    account: str
    seq: int
    envelope_id: str
    engagement: str
    envelope_hash: str
    data: bytes
    created_at: int


@dataclass(frozen=True)
class OutboxStats:
    """Backlog size and age, for metrics and bounds."""

    entries: int
    total_bytes: int
    oldest_created_at: int | None


@dataclass(frozen=True)
class ReceiptOutcome:
    """What one verified receipt deleted: outbox ``(seq, created_at)`` pairs and the
    engagements whose offload completed (their transcripts are gone)."""

    deleted: tuple[tuple[int, int], ...]
    offloaded: tuple[str, ...]


@dataclass(frozen=True)
class DataKeyRow:
    """A standard-mode data key, wrapped by the master key."""

    account: str
    key_id: str
    wrapped: bytes
    active: bool


@dataclass(frozen=True)
class TranscriptRow:
    """One encrypted standard-mode transcript item."""

    account: str
    engagement: str
    key_id: str
    sealed: bytes
    created_at: int


class RelayStore(Protocol):
    """What the relay needs from storage; every method is a named operation."""

    async def open(self) -> None:
        """Open connections and apply schema upgrades."""

    async def close(self) -> None:
        """Flush pending writes and close."""

    async def create_account(self, account: Account) -> bool:
        """Insert; False when the id exists."""

    async def get_account(self, account: str) -> Account | None:
        """One account or None."""

    async def list_accounts(self) -> list[Account]:
        """Every account."""

    async def set_vault(self, account: str, identity_key: bytes, statement: dict[str, str],
                        vault_key_id: str, vault_key: bytes) -> None:
        """Store a verified pairing."""

    async def set_mode(self, account: str, mode: str, actor: str, at: int) -> None:
        """Change the mode and record the change."""

    async def mode_changes(self, account: str) -> list[ModeChange]:
        """The recorded toggles, oldest first."""

    async def add_token(self, token_hash: str, record: TokenRecord, at: int) -> None:
        """Store a hashed token."""

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """Look a hashed token up."""

    async def add_agent_certificate(self, row: AgentCertificateRow, at: int) -> None:
        """Store (or replace) a verified agent certificate."""

    async def delete_agent_certificate(self, account: str, key_id: str) -> bool:
        """Remove one agent certificate; False when there was none."""

    async def agent_certificates(self, account: str) -> list[AgentCertificateRow]:
        """The account's agent certificates."""

    async def agent_certificate(self, account: str, key_id: str) -> AgentCertificateRow | None:
        """One certificate by its key id (what an agent connect needs), or None."""

    async def upsert_engagements(self, records: Sequence[EngagementRecord]) -> None:
        """Write engagement records (group-committed)."""

    async def list_engagements(self, account: str, limit: int = 1000) -> list[EngagementRecord]:
        """The account's records, newest first."""

    async def add_receipts(self, account: str, engagement: str, count: int) -> None:
        """Count delivered receipts on an engagement record."""

    async def append_outbox(self, entries: Sequence[OutboxEntry]) -> list[int]:
        """Append envelopes (``seq`` ignored); return their outbox sequences after commit."""

    async def read_outbox(self, account: str, after_seq: int, limit: int) -> list[OutboxEntry]:
        """The backlog in order, entries with ``seq > after_seq``."""

    async def delete_outbox(self, account: str, envelope_id: str, envelope_hash: str) -> bool:
        """Delete one acknowledged entry; False when nothing matched."""

    async def outbox_stats(self, account: str | None = None) -> OutboxStats:
        """Backlog of one account or of all."""

    async def apply_receipt(self, account: str, receipt_hash: str,
                            items: Sequence[tuple[str, str, str]], at: int) -> ReceiptOutcome:
        """Delete entries matching ``(engagement, envelope_id, hash)``; keep the receipt hash."""

    async def reject_outbox(self, account: str, seq: int, code: str, at: int) -> str | None:
        """Drop a refused entry, count it on its engagement; its engagement or None."""

    async def record_erasure(self, account: str, notice_hash: str, engagements: Sequence[str],
                             rule: str, at: int) -> int:
        """Record a verified erasure notice on engagement records; return how many."""

    async def plan_offload(self, account: str, at: int) -> int:
        """Mark every stored transcript of ``account`` for offload; return how many."""

    async def pending_offloads(self, limit: int) -> list[tuple[str, str]]:
        """``(account, engagement)`` pairs still to seal, oldest plan first."""

    async def queue_offload(self, account: str, engagement: str,
                            entries: Sequence[OutboxEntry]) -> None:
        """Append offload envelopes and mark the engagement queued, in one transaction."""

    async def offload_progress(self, account: str | None) -> dict[str, int]:
        """Offload rows of ``account`` (or of all accounts) by state."""

    async def add_data_key(self, row: DataKeyRow, at: int) -> None:
        """Store a new active data key (older ones become inactive)."""

    async def data_keys(self, account: str) -> list[DataKeyRow]:
        """Every data key of an account, active first."""

    async def replace_wrapped_keys(self, rows: Sequence[DataKeyRow]) -> None:
        """Rewrite wrapped data keys (master key rotation)."""

    async def append_transcript(self, rows: Sequence[TranscriptRow]) -> None:
        """Append encrypted transcript items (group-committed)."""

    async def read_transcript(self, account: str, engagement: str) -> list[TranscriptRow]:
        """An engagement's items in order."""

    async def delete_transcripts(self, account: str, *, engagement: str | None = None,
                                 before: int | None = None) -> int:
        """Delete by engagement and/or age; return rows deleted."""

"""Ingest: open, verify and durably store envelopes, then sign one batched receipt.

This is the domain operation the vault link calls: bytes and ``now`` in, a result with
the receipt out. Every envelope is checked before anything is written:

    check                                   refusal code                 attack it stops
    parse, sizes, header patterns           envelope.* (from envelope)   garbage, oversize
    header account is this vault's          envelope.wrong_account       cross-tenant splice
    a vault key we hold is a recipient      vault.not_recipient          misaddressed frames
    signature + sealed key + AEAD + pad     envelope.undecryptable       tampering, forgery
    body matches its kind's schema          vault.bad_body               malformed plaintext
    role "relay" only for connection-info   vault.role_not_allowed       relay posing as a
      and offload; others never those                                    visitor or agent
    relay key = the pinned relay key        vault.relay_key_mismatch     anyone posing as
      (pinned at `pair`; see below)                                      the relay
    offload only before any party envelope  vault.offload_not_allowed    relay-made text in
      of the engagement is stored                                        a live engagement
    one connection-info per engagement      vault.connection_info_repeated  relay rewriting
                                                                         the visitor's
    visitor key = engagement's first one    vault.visitor_key_mismatch   relay-injected text
    agent/bot key certified by this vault   vault.agent_not_certified    relay-made agents
    same envelope id, other bytes           vault.envelope_id_conflict   replay with edits
    (engagement, sender, seq) reused        vault.sequence_reused        splice/reorder

The relay's signing key is pinned by ``controller-vault pair`` from the relay's
``/keys`` answer (``relay_signing_key``); then any other key is refused. A relay that
does not publish one is trusted on first use: the first relay-role key seen is kept,
and a later different key is still accepted (a key rotation must not lose frames) but
raises the ``relay_key_changed`` anomaly and becomes the remembered key. TOFU stops
nothing on its own; it makes a substitution visible to the controller.

The same envelope twice is stored once and named in the receipt again (idempotent), as
is a redelivery for an erased engagement (acknowledged, never stored again). Refused
envelopes are counted, reported to ``on_anomaly`` by a non-personal kind, summarised in
one audit entry per batch, and get no receipt. If the commit fails (locked or full
database) StoreUnavailable propagates and no receipt exists: the relay keeps the frames.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envelope import (
    SUBJECT_FIELDS,
    EnvelopeError,
    OpenedEnvelope,
    decode_body,
    envelope_hash,
    open_envelope,
    parse_envelope,
    sign_receipt,
)

from .atrest import blind_token, seal_row
from .errors import IngestRejected
from .keyfiles import VaultKeys
from .keystore import KeyStore
from .staff.redaction import RedactionRules, redact_body
from .store import AuditRecord, NewEnvelope, VaultStore

__all__ = ["ANOMALY_KINDS", "IngestResult", "Ingestor", "open_and_check"]

#: Time after an agent certificate expires during which its envelopes are still
#: accepted: the relay may deliver late after a vault outage (outbox max age).
AGENT_CERT_GRACE_S = 7 * 86400
_RELAY_KINDS = frozenset({"connection-info", "offload"})
_CERTIFIED_ROLES = frozenset({"agent", "bot"})
#: Refusal code -> the anomaly kind shown to the controller (a security signal).
ANOMALY_KINDS = {
    "envelope.undecryptable": "tampered_envelope",
    "vault.visitor_key_mismatch": "forged_envelope",
    "vault.agent_not_certified": "forged_envelope",
    "vault.role_not_allowed": "forged_envelope",
    "vault.relay_key_mismatch": "forged_envelope",
    "vault.offload_not_allowed": "forged_envelope",
    "vault.connection_info_repeated": "replayed_envelope",
    "vault.not_recipient": "unknown_recipient_key",
    "envelope.wrong_account": "misaddressed_envelope",
    "vault.envelope_id_conflict": "replayed_envelope",
    "vault.sequence_reused": "replayed_envelope",
}


@dataclass(frozen=True)
class IngestResult:
    """What one batch did; ``receipt`` is None when nothing can be acknowledged."""

    receipt: dict[str, str] | None
    items: tuple[tuple[str, str, str], ...]
    stored: int
    duplicates: int
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_indexes: tuple[tuple[int, str], ...] = ()
    gaps: dict[str, int] = field(default_factory=dict)


def open_and_check(data: bytes, keys: VaultKeys) -> tuple[OpenedEnvelope, dict[str, Any], str]:
    """Stateless checks of one envelope: ``(opened, body, vault key id)`` or IngestRejected."""
    try:
        # Parsed once: the header checks below and the opening share it.
        parsed = parse_envelope(data)
        header = parsed.header
        if header.account != keys.account:
            raise IngestRejected("envelope is for another account",
                                 code="envelope.wrong_account")
        kid = next((k for k in header.recipients if k in keys.encryption_keys), None)
        if kid is None:
            raise IngestRejected("no vault key of ours is a recipient",
                                 code="vault.not_recipient")
        opened = open_envelope(parsed, keys.encryption_keys[kid])
    except IngestRejected:
        raise
    except EnvelopeError as exc:
        raise IngestRejected(exc.message, code=exc.code) from None
    except Exception:
        # A frame that trips an unexpected parser error must be refused alone, not crash
        # the batch: otherwise one poison frame would stall the link for good.
        raise IngestRejected("frame does not parse", code="vault.bad_frame") from None
    role, kind = header.role, header.kind
    # The relay can seal to the vault like anyone; it may only speak for what it saw.
    if (role == "relay") != (kind in _RELAY_KINDS) or role == "vault":
        raise IngestRejected("role may not send this kind", code="vault.role_not_allowed")
    try:
        body = decode_body(kind, opened.body)
    except EnvelopeError:
        raise IngestRejected("body does not match its kind", code="vault.bad_body") from None
    return opened, body, kid


class Ingestor:
    """Verifies and stores batches for one vault; keeps the certified agent keys cached."""

    def __init__(self, keys: VaultKeys, store: VaultStore, keystore: KeyStore, *,
                 on_anomaly: Callable[[str, str], None] | None = None,
                 redaction: RedactionRules | None = None,
                 on_redacted: Callable[[dict[str, int]], None] | None = None,
                 on_transcript_request: Callable[[], None] | None = None
                 ) -> None:
        self._keys = keys
        self._redaction = redaction
        self._on_redacted = on_redacted
        # Called after a commit that stored a transcript request (and its mail job, in
        # the same transaction): the mailer sends from the stored envelope, so the
        # address never passes through here (see staff_services.TranscriptMailer).
        self._on_transcript_request = on_transcript_request
        self._store = store
        self._keystore = keystore
        self._on_anomaly = on_anomaly
        self.rejected_total: collections.Counter[str] = collections.Counter()
        self.stored_total = 0
        self.duplicates_total = 0
        self.relay_key_changes = 0

    async def ingest(self, frames: Sequence[bytes], now: int) -> IngestResult:
        """Verify ``frames``, commit the good ones in one transaction, sign one receipt."""
        checked: list[tuple[int, bytes, OpenedEnvelope, dict[str, Any], str]] = []
        rejections: list[tuple[int, str]] = []
        for i, data in enumerate(frames):
            try:
                raw = bytes(data)
                checked.append((i, raw, *open_and_check(raw, self._keys)))
            except IngestRejected as exc:
                rejections.append((i, exc.code))
        headers = [c[2].header for c in checked]
        # One read hop for the whole batch; agent certificates and the relay-role facts
        # only for the keys and engagements the batch's checks will look at.
        view = await self._store.ingest_view(
            engagements={h.engagement for h in headers},
            envelope_ids={h.envelope_id for h in headers},
            positions={(h.engagement, h.sender_key_id, h.sequence) for h in headers},
            certified_senders={h.sender_key_id for h in headers
                               if h.role in _CERTIFIED_ROLES},
            relay_engagements={h.engagement for h in headers if h.role == "relay"})
        states, known, taken, certified = view.states, view.known, view.taken, view.certified
        pinned = {e: s.visitor_key for e, s in states.items()}
        relay_pin = view.relay_pin
        relay_key = relay_pin.public_key if relay_pin is not None else None
        relay_changes = 0
        with_parties, with_conninfo = view.with_parties, view.with_conninfo
        items: list[tuple[str, str, str]] = []
        pending: list[tuple[bytes, OpenedEnvelope, dict[str, Any], str, str]] = []
        seen_ids: dict[str, str] = {}
        duplicates = 0
        for i, data, opened, body, kid in checked:
            h = opened.header
            digest = envelope_hash(data)
            prior = known.get(h.envelope_id) or (
                (h.engagement, seen_ids[h.envelope_id]) if h.envelope_id in seen_ids else None)
            if prior is not None:
                if prior != (h.engagement, digest):
                    rejections.append((i, "vault.envelope_id_conflict"))
                    continue
                duplicates += 1
                items.append((h.engagement, h.envelope_id, digest))
                continue
            state = states.get(h.engagement)
            if state is not None and state.erased:
                items.append((h.engagement, h.envelope_id, digest))
                continue
            code = self._sender_refusal(h, pinned, certified, now)
            if code is None and h.role == "relay":
                code = self._relay_refusal(h, relay_pin, with_parties, with_conninfo)
            if code is None and (h.engagement, h.sender_key_id, h.sequence) in taken:
                code = "vault.sequence_reused"
            if code is not None:
                rejections.append((i, code))
                continue
            if h.role == "relay":
                if h.kind == "connection-info":
                    with_conninfo.add(h.engagement)
                if relay_key != h.sender_public_key:
                    relay_changes += relay_key is not None
                    relay_key = h.sender_public_key
            else:
                with_parties.add(h.engagement)
            if h.role == "visitor" and pinned.get(h.engagement) is None:
                pinned[h.engagement] = h.sender_public_key
            taken.add((h.engagement, h.sender_key_id, h.sequence))
            seen_ids[h.envelope_id] = digest
            pending.append((data, opened, body, kid, digest))
            items.append((h.engagement, h.envelope_id, digest))
        gaps = await self._commit(pending, rejections, duplicates, now)
        if relay_key is not None and (relay_pin is None or relay_pin.public_key != relay_key):
            # Only reachable without a pairing pin (a pinned key never changes here).
            await self._store.set_relay_pin(relay_key, "tofu", now, AuditRecord(
                "vault-link", "relay-key-tofu", "integrity", "relay",
                {"changed": relay_pin is not None or relay_changes > 0}))
            if relay_pin is not None or relay_changes:
                self.relay_key_changes += 1
                if self._on_anomaly is not None:
                    self._on_anomaly("relay_key_changed", "vault.relay_key_changed")
        counts = collections.Counter(code for _, code in rejections)
        self.rejected_total.update(counts)
        self.stored_total += len(pending)
        self.duplicates_total += duplicates
        if self._on_anomaly is not None:
            for _, code in rejections:
                self._on_anomaly(ANOMALY_KINDS.get(code, "malformed_envelope"), code)
        receipt = None
        if items:
            receipt = sign_receipt(self._keys.identity, account=self._keys.account, items=items)
        return IngestResult(receipt=receipt, items=tuple(items), stored=len(pending),
                            duplicates=duplicates, rejected=dict(counts),
                            rejected_indexes=tuple(rejections), gaps=gaps)

    def _sender_refusal(self, h: Any, pinned: dict[str, bytes | None],
                        certified: dict[str, Any], now: int) -> str | None:
        if h.role == "visitor":
            first = pinned.get(h.engagement)
            # Anyone can seal to the vault: only the engagement's first visitor key may
            # speak as the visitor afterwards (stops a relay injecting visitor text).
            if first is not None and first != h.sender_public_key:
                return "vault.visitor_key_mismatch"
        elif h.role in _CERTIFIED_ROLES:
            cert = certified.get(h.sender_key_id)
            if cert is None or not cert.not_before <= now <= cert.not_after + AGENT_CERT_GRACE_S:
                return "vault.agent_not_certified"
        return None

    @staticmethod
    def _relay_refusal(h: Any, pin: Any, with_parties: set[str],
                       with_conninfo: set[str]) -> str | None:
        # Pinned at pairing: a key the controller never saw cannot speak as the relay.
        if pin is not None and pin.source == "pair" and pin.public_key != h.sender_public_key:
            return "vault.relay_key_mismatch"
        # An offload carries the transcript the relay stored before compliance mode; once
        # a visitor or agent has spoken under end-to-end keys, relay-made "history" for
        # that engagement would be fabricated content inserted into a live conversation.
        if h.kind == "offload" and h.engagement in with_parties:
            return "vault.offload_not_allowed"
        # The relay sees the visitor's connection once; a second one would overwrite
        # the record of where the visitor came from.
        if h.kind == "connection-info" and h.engagement in with_conninfo:
            return "vault.connection_info_repeated"
        return None

    async def _commit(self, pending: list[tuple[bytes, OpenedEnvelope, dict[str, Any], str,
                                                str]],
                      rejections: list[tuple[int, str]], duplicates: int,
                      now: int) -> dict[str, int]:
        audit = []
        if pending or rejections:
            detail: dict[str, Any] = {"stored": len(pending), "duplicates": duplicates}
            if rejections:
                detail["rejected"] = dict(collections.Counter(c for _, c in rejections))
            audit.append(AuditRecord("vault-link", "ingest", "storage", "batch", detail))
        if not pending:
            if audit:
                await self._store.append_audit(audit, now)
            return {}
        data_keys = await self._keystore.ensure_keys(
            sorted({p[1].header.engagement for p in pending}), now)
        rows = []
        redacted: collections.Counter[str] = collections.Counter()
        for _data, opened, body, kid, digest in pending:
            h = opened.header
            tokens = tuple(blind_token(self._keys.index_key, f, body[f])
                           for f in SUBJECT_FIELDS.get(h.kind, ()) if body.get(f))
            plaintext = opened.body
            if self._redaction is not None:
                # Masked here, before the first write: the original of a card number
                # or national id never reaches vault.db, its WAL or a backup.
                clean, counts = redact_body(h.kind, body, self._redaction)
                if counts:
                    redacted.update(counts)
                    plaintext = json.dumps(clean, separators=(",", ":"),
                                           ensure_ascii=False).encode("utf-8")
            rows.append(NewEnvelope(
                envelope_id=h.envelope_id, engagement=h.engagement, envelope_hash=digest,
                sender_key_id=h.sender_key_id, role=h.role, seq=h.sequence, kind=h.kind,
                vault_key_id=kid,
                ciphertext=seal_row(data_keys[h.engagement], h.engagement, h.envelope_id,
                                    plaintext),
                visitor_key=h.sender_public_key if h.role == "visitor" else None,
                end_final=body["final"] if h.kind == "end" else None,
                blind_tokens=tokens))
        if redacted and audit:
            # Counts per rule only (bounded keys), never the masked text.
            audit[0] = dataclasses.replace(audit[0], detail={**audit[0].detail,
                                                             "redacted": dict(redacted)})
        gaps = await self._store.commit_batch(rows, now, audit)
        if redacted and self._on_redacted is not None:
            self._on_redacted(dict(redacted))
        if self._on_transcript_request is not None and any(
                opened.header.kind == "transcript-request" for _, opened, _, _, _ in pending):
            self._on_transcript_request()  # its job row was committed with it
        incomplete = {e: m for e, m in gaps.items() if m}
        if incomplete:
            await self._store.append_audit(
                [AuditRecord("vault-link", "engagement-incomplete", "integrity", e,
                             {"missing": m}) for e, m in sorted(incomplete.items())], now)
            if self._on_anomaly is not None:
                for _ in incomplete:
                    self._on_anomaly("incomplete_engagement", "vault.gap")
        return gaps

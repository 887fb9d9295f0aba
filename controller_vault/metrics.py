"""Prometheus metrics of one vault, on a registry of its own (no global state).

Labels take only bounded, non-personal values: refusal codes, anomaly kinds, link
states and transcript-mail outcomes from fixed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LINK_STATES", "MAIL_OUTCOMES", "VaultMetrics"]

LINK_STATES = ("disabled", "connecting", "authenticating", "ready", "backoff")
#: What one transcript-mail attempt came to (README.md, "Transcript email", maps the
#: audited outcome codes onto these).
MAIL_OUTCOMES = ("sent", "rejected", "gave_up", "retry", "refused", "smtp_not_configured",
                 "internal_error")


class VaultMetrics:
    """Every metric the vault exposes on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter("vault_ingested_envelopes", "Envelopes durably stored",
                                registry=r)
        self.duplicates = Counter("vault_duplicate_envelopes",
                                  "Envelopes received again and acknowledged again", registry=r)
        self.rejected = Counter("vault_rejected_envelopes", "Envelopes refused, by stable code",
                                ["reason"], registry=r)
        self.anomalies = Counter("vault_anomalies", "Security anomalies, by kind", ["kind"],
                                 registry=r)
        self.receipts = Counter("vault_receipts_sent", "Batched receipts sent to the relay",
                                registry=r)
        self.incomplete = Gauge("vault_incomplete_engagements",
                                "Engagements whose end frame shows gaps", registry=r)
        self.engagements = Gauge("vault_engagements", "Stored (not erased) engagements",
                                 registry=r)
        self.envelopes = Gauge("vault_stored_envelopes", "Stored envelopes", registry=r)
        self.store_bytes = Gauge("vault_store_bytes", "Size of vault.db and its WAL", registry=r)
        self.audit_entries = Gauge("vault_audit_entries", "Entries in the audit log", registry=r)
        self.key_age = Gauge("vault_encryption_key_age_seconds",
                             "Age of the current vault encryption key", registry=r)
        self.link_state = Gauge("vault_link_state", "1 for the vault link's current state",
                                ["state"], registry=r)
        self.link_reconnects = Counter("vault_link_reconnects",
                                       "Vault link connection attempts after the first",
                                       registry=r)
        self.link_backlog = Gauge("vault_link_backlog",
                                  "Outbox backlog the relay reported at the last ready",
                                  registry=r)
        self.delivery_latency = Histogram(
            "vault_link_delivery_latency_seconds",
            "Batch received from the relay until its receipt was sent (incl. the commit)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        self.redactions = Counter("vault_redactions", "Values masked at ingest, by rule",
                                  ["rule"], registry=r)  # rule names come from config
        self.transcript_mail = Counter("vault_transcript_mail",
                                       "Transcript email attempts, by outcome", ["outcome"],
                                       registry=r)
        for outcome in MAIL_OUTCOMES:  # at 0 from the start: increase() sees the first one
            self.transcript_mail.labels(outcome=outcome)
        self.set_link_state("disabled")

    def set_link_state(self, state: str) -> None:
        """Mark ``state`` (one of LINK_STATES) as the current link state."""
        for s in LINK_STATES:
            self.link_state.labels(state=s).set(1 if s == state else 0)

    def count_anomaly(self, kind: str, code: str) -> None:
        """Ingest's anomaly hook: count by kind and refusal code."""
        self.anomalies.labels(kind=kind).inc()
        if code != "vault.gap":
            self.rejected.labels(reason=code).inc()

    def count_transcript_mail(self, outcome: str) -> None:
        """The mail worker's hook: count one attempt by its outcome (one of MAIL_OUTCOMES)."""
        # Anything else is a bug upstream; it is counted, but never becomes a new label
        # (an address or an engagement id would otherwise reach the scrape).
        self.transcript_mail.labels(
            outcome=outcome if outcome in MAIL_OUTCOMES else "internal_error").inc()

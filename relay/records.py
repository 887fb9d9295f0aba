"""Engagement records for reporting, and the GDPR Art. 30 record of processing.

Pure functions: records in, JSON/CSV out. Times are rounded down to a granularity
(default one minute) so records do not carry precise timestamps that could be matched
against other logs to re-identify a visitor (timing correlation).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from .store import Account, EngagementRecord

__all__ = ["CSV_FIELDS", "OUTCOMES", "record_of_processing", "records_csv", "round_down"]

OUTCOMES = ("queued", "active", "completed", "abandoned", "missed")
CSV_FIELDS = ("engagement", "account", "mode", "started_at", "ended_at", "queue_wait_s",
              "first_response_s", "visitor_messages", "agent_messages", "visitor_bytes",
              "agent_bytes", "agent", "transfers", "outcome", "receipts")


def round_down(t: float, granularity: int) -> int:
    """``t`` rounded down to a multiple of ``granularity`` seconds."""
    g = max(1, int(granularity))
    return int(t) // g * g


def records_csv(records: list[EngagementRecord]) -> str:
    """Records as CSV with a header row (non-personal fields only)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in records:
        writer.writerow(["" if getattr(r, f) is None else getattr(r, f) for f in CSV_FIELDS])
    return buf.getvalue()


def record_of_processing(account: Account, *, controller_name: str, processor_origin: str,
                         granularity: int) -> dict[str, Any]:
    """The Art. 30(2) record of processing the relay carries out for ``account``."""
    compliance = account.mode == "compliance"
    data_categories = ["engagement metadata (ids, rounded times, counts, byte sizes, outcome)",
                       "agent pseudonyms"]
    if compliance:
        data_categories.append("end-to-end encrypted chat envelopes (ciphertext only, held "
                               "until the controller's vault acknowledges them)")
    else:
        data_categories += ["chat message text", "visitor IP address and user agent "
                            "(memory only, for abuse limits)"]
    return {
        "article": "GDPR Art. 30(2)",
        "account": account.account,
        "controller": controller_name,
        "processor": {"service": "Compliance Relay", "origin": processor_origin},
        "mode": account.mode,
        "purpose": "routing live chat between the controller's website visitors and its "
                   "agents",
        "categories_of_data_subjects": ["website visitors", "the controller's agents"],
        "categories_of_personal_data": data_categories,
        "recipients": (["the controller's vault (sole reader of envelope contents)",
                        "the controller's assigned agents"] if compliance else
                       ["the controller's agents"]),
        "transfers_to_third_countries": "none",
        "retention": (
            {"envelopes": "until acknowledged by the controller's vault",
             "engagement_records": "non-personal; kept for reporting",
             "ip_and_user_agent": "never stored; sealed to the vault at connect"}
            if compliance else
            {"transcripts_days": account.retention_days,
             "engagement_records": "non-personal; kept for reporting",
             "ip_and_user_agent": "memory only while connected"}),
        "security_measures": [
            "TLS in transit (reverse proxy)",
            ("end-to-end encryption to the controller's vault key (X25519, XChaCha20-Poly1305,"
             " Ed25519 signatures); the relay cannot read envelopes") if compliance else
            "transcripts encrypted at rest (AES-256-GCM data keys wrapped by a master key)",
            "hashed bearer tokens scoped to one account, compared in constant time",
            f"record timestamps rounded to {granularity} s",
            "no IP address or user agent in logs, metrics or files",
        ],
    }

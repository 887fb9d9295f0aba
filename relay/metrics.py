"""Prometheus metrics, one registry per app (tests never share one).

No label carries an engagement id, an address, a user agent or any personal value:
labels are roles, modes, directions, outcomes and stable reason codes, all from
fixed sets, so the number of series is bounded too.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RelayMetrics"]


@dataclass
class RelayMetrics:
    """Every metric the relay exports."""

    registry: CollectorRegistry
    connections: Gauge
    connections_total: Counter
    engagements_active: Gauge
    engagements_total: Counter
    frames_relayed: Counter
    frames_refused: Counter
    http_refused: Counter
    outbox_backlog: Gauge
    outbox_bytes: Gauge
    outbox_oldest_age: Gauge
    outbox_expired: Counter
    routing_latency: Histogram
    sweeper_runs: Counter
    transcripts_swept: Counter
    commit_batches: Gauge

    @classmethod
    def create(cls) -> RelayMetrics:
        """A fresh registry with every metric registered."""
        r = CollectorRegistry()
        return cls(
            registry=r,
            connections=Gauge("relay_connections_open", "open chat sockets", ["role"], registry=r),
            connections_total=Counter("relay_connections_opened", "chat sockets opened", ["role"],
                                      registry=r),
            engagements_active=Gauge("relay_engagements_active", "live engagements",
                                     registry=r),
            engagements_total=Counter("relay_engagements", "engagements closed by outcome",
                                      ["outcome"], registry=r),
            frames_relayed=Counter("relay_frames_relayed", "frames accepted and forwarded",
                                   ["mode", "direction"], registry=r),
            frames_refused=Counter("relay_frames_refused", "websocket input refused",
                                   ["reason"], registry=r),
            http_refused=Counter("relay_http_refused", "HTTP requests refused", ["reason"],
                                 registry=r),
            outbox_backlog=Gauge("relay_outbox_backlog", "envelopes waiting for vaults",
                                 registry=r),
            outbox_bytes=Gauge("relay_outbox_bytes", "bytes waiting for vaults", registry=r),
            outbox_oldest_age=Gauge("relay_outbox_oldest_age_seconds",
                                    "age of the oldest outbox entry", registry=r),
            outbox_expired=Counter("relay_outbox_expired", "outbox entries dropped by age",
                                   registry=r),
            routing_latency=Histogram("relay_routing_latency_seconds",
                                      "frame received to forwarded (incl. commit)",
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25, 0.5, 1.0, 2.5), registry=r),
            sweeper_runs=Counter("relay_sweeper_runs", "retention sweeper runs", registry=r),
            transcripts_swept=Counter("relay_transcripts_swept",
                                      "standard-mode transcript items deleted by age",
                                      registry=r),
            commit_batches=Gauge("relay_store_commit_batches", "group commits so far",
                                 registry=r),
        )

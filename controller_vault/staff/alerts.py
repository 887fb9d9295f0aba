"""Anomaly alerts for the controller: webhook, email and a metric, with a breach clock.

    kind                        raised when
    forged_envelope             a sender signature or pinned visitor key does not verify
    tampered_envelope           header binding, AEAD tag or sequence checks fail
    unknown_recipient_key       an envelope names a vault key id the vault does not hold
    link_auth_failed            the relay refused the vault link's authentication
    audit_verification_failed   the service's own check (at start, before each signed
                                checkpoint) or ``GET /v1/audit/verify`` found a
                                changed, missing or reordered entry
    export_burst                more subject exports than the threshold within the window
    erasure_burst               more erasures than the threshold within the window

Webhook payload (JSON POST; ``X-Alert-Signature: sha256=<hex HMAC of the body>`` when a
secret is configured, so the receiver can refuse forged alerts)::

    {"type": "compliance-relay.alert", "v": 1, "id": HEX32, "kind": KIND,
     "account": ACCOUNT, "raised_at": "2024-01-01T00:00:00Z", "raised_at_unix": INT,
     "notify_deadline": RAISED_AT + 72 h, "summary": FIXED TEXT, "count": INT,
     "code": STABLE ERROR CODE | null, "engagement_ids": [...], "key_ids": [...],
     "token_ids": [...]}

``notify_deadline`` is the GDPR Art. 33 limit: a personal-data breach is notified to the
supervisory authority within 72 hours of becoming aware of it. Every reference is
checked against a fixed id pattern when the alert is built, so an alert cannot carry
personal data even by mistake; delivery failures are counted and logged by id and
kind, never raised into the code that detected the anomaly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from envelope.limits import ACCOUNT_PATTERN, ENGAGEMENT_PATTERN, KEY_ID_PATTERN

from .errors import AlertError, MailError, StaffConfigError
from .mailer import SmtpConfig, build_message, check_address, send_message

__all__ = [
    "ALERT_KINDS",
    "BREACH_NOTIFICATION_S",
    "Alert",
    "AlertConfig",
    "AlertDispatcher",
    "detect_burst",
    "new_alert",
]

log = logging.getLogger(__name__)

BREACH_NOTIFICATION_S = 72 * 3600
ALERT_KINDS: dict[str, str] = {
    "forged_envelope": "An envelope with a forged sender signature or key was refused.",
    "tampered_envelope": "An envelope that was altered in transit was refused.",
    "unknown_recipient_key": "An envelope was sealed to a vault key this vault does not hold.",
    "link_auth_failed": "The vault link failed to authenticate with the relay.",
    "audit_verification_failed": "The audit log did not verify.",
    "export_burst": "Unusually many subject-access exports in a short time.",
    "erasure_burst": "Unusually many erasures in a short time.",
    "relay_key_changed": "The relay signed with a different key than before (no key was "
                         "pinned at pairing); pair again to pin the relay's key.",
    "erasure_incomplete_checkpoint": "An erasure deleted the keys and rows, but a concurrent "
                                     "reader kept old pages on disk; run it again.",
}
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_CODE = re.compile(r"[a-z_]{1,32}\.[a-z_]{1,48}")


def _utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ids(values: Iterable[str], pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    out = tuple(values)
    if len(out) > 1000 or not all(isinstance(v, str) and pattern.fullmatch(v) for v in out):
        # The message names the field, never the value: the value may be personal data.
        raise AlertError(f"alert {what} must be ids")
    return out


@dataclass(frozen=True)
class Alert:
    """One alert: ids, kind, counts and times only."""

    alert_id: str
    kind: str
    account: str
    raised_at: int
    count: int = 1
    code: str | None = None
    engagement_ids: tuple[str, ...] = ()
    key_ids: tuple[str, ...] = ()
    token_ids: tuple[str, ...] = ()

    @property
    def notify_deadline(self) -> int:
        """The 72-hour breach-notification deadline (UNIX seconds)."""
        return self.raised_at + BREACH_NOTIFICATION_S

    def to_payload(self) -> dict[str, object]:
        """The webhook JSON body."""
        return {"type": "compliance-relay.alert", "v": 1, "id": self.alert_id,
                "kind": self.kind, "account": self.account,
                "raised_at": _utc(self.raised_at), "raised_at_unix": self.raised_at,
                "notify_deadline": _utc(self.notify_deadline),
                "summary": ALERT_KINDS[self.kind], "count": self.count, "code": self.code,
                "engagement_ids": list(self.engagement_ids), "key_ids": list(self.key_ids),
                "token_ids": list(self.token_ids)}

    def to_text(self) -> str:
        """The email body."""
        p = self.to_payload()
        lines = [str(p["summary"]), "", f"Alert id:        {self.alert_id}",
                 f"Kind:            {self.kind}", f"Account:         {self.account}",
                 f"Raised at:       {p['raised_at']}",
                 f"Notify by:       {p['notify_deadline']} (72 hours, GDPR Art. 33)",
                 f"Count:           {self.count}"]
        if self.code:
            lines.append(f"Error code:      {self.code}")
        for label, ids in (("Engagements", self.engagement_ids), ("Key ids", self.key_ids),
                           ("Staff tokens", self.token_ids)):
            if ids:
                lines.append(f"{label + ':':<17}{', '.join(ids)}")
        return "\n".join(lines) + "\n"


def new_alert(kind: str, account: str, *, now: int, count: int = 1, code: str | None = None,
              engagement_ids: Iterable[str] = (), key_ids: Iterable[str] = (),
              token_ids: Iterable[str] = ()) -> Alert:
    """Build an alert, refusing anything that is not a known kind or an id."""
    if kind not in ALERT_KINDS:
        raise AlertError("unknown alert kind")
    if not ACCOUNT_PATTERN.fullmatch(account):
        raise AlertError("alert account must be an account id")
    if code is not None and not _CODE.fullmatch(code):
        raise AlertError("alert code must be a stable error code")
    if type(count) is not int or count < 1:
        raise AlertError("alert count must be a positive integer")
    return Alert(alert_id=secrets.token_hex(16), kind=kind, account=account, raised_at=now,
                 count=count, code=code,
                 engagement_ids=_ids(engagement_ids, ENGAGEMENT_PATTERN, "engagements"),
                 key_ids=_ids(key_ids, KEY_ID_PATTERN, "key ids"),
                 token_ids=_ids(token_ids, _TOKEN_ID, "token ids"))


def detect_burst(times: Sequence[float], now: float, *, window_s: float, threshold: int,
                 last_alert_at: float | None) -> tuple[tuple[float, ...], bool]:
    """Sliding window: the event times still in the window (``now`` included), and
    whether they cross ``threshold`` for the first time since the last alert.

    One alert per window: after alerting, the next can come only once ``window_s`` has
    passed, so a running burst does not flood the controller's inbox.
    """
    kept = tuple(t for t in (*times, now) if now - window_s < t <= now)
    quiet = last_alert_at is None or now - last_alert_at >= window_s
    return kept, len(kept) > threshold and quiet


@dataclass(frozen=True)
class AlertConfig:
    """Where alerts go and when bursts count as anomalies."""

    webhook_url: str = field(default="", metadata={"help": "URL alerts are POSTed to"})
    webhook_secret: str = field(default="", repr=False, metadata={
        "help": "HMAC-SHA256 key for X-Alert-Signature (empty: unsigned)"})
    email_to: tuple[str, ...] = field(default=(), metadata={
        "help": "addresses of the data-protection officer and on-call staff"})
    export_burst_threshold: int = field(default=20, metadata={
        "help": "more exports than this in the window raise export_burst"})
    erasure_burst_threshold: int = field(default=50, metadata={
        "help": "more erasures than this in the window raise erasure_burst"})
    burst_window_s: int = field(default=3600, metadata={"help": "burst window in seconds"})
    timeout_s: float = field(default=10.0, metadata={"help": "webhook request timeout"})

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_url.startswith(("https://", "http://")):
            raise StaffConfigError("alerts.webhook_url must be http(s)", code="config.bad_alerts")
        try:
            for address in self.email_to:
                check_address(address)
        except MailError as exc:
            raise StaffConfigError("alerts.email_to has a bad address",
                                   code="config.bad_alerts") from exc
        if min(self.export_burst_threshold, self.erasure_burst_threshold,
               self.burst_window_s) < 1:
            raise StaffConfigError("burst settings must be positive", code="config.bad_alerts")


class AlertDispatcher:
    """Deliver alerts to the webhook and by email, count them, and watch for bursts."""

    def __init__(self, config: AlertConfig, *, registry: CollectorRegistry,
                 session: aiohttp.ClientSession, smtp: SmtpConfig | None = None) -> None:
        self.config = config
        self._session = session
        self._smtp = smtp
        # Labels are the fixed alert kinds and channel names: bounded, never personal.
        self._raised = Counter("vault_alerts_total", "Anomaly alerts raised, by kind.",
                               ["kind"], registry=registry)
        self._failed = Counter("vault_alert_delivery_failures_total",
                               "Alert deliveries that failed, by channel.", ["channel"],
                               registry=registry)
        self._bursts: dict[str, tuple[tuple[float, ...], float | None]] = {}

    def _sign(self, body: bytes) -> dict[str, str]:
        if not self.config.webhook_secret:
            return {}
        mac = hmac.new(self.config.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Alert-Signature": f"sha256={mac}"}

    async def _post(self, alert: Alert) -> bool:
        body = json.dumps(alert.to_payload(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **self._sign(body)}
        try:
            async with self._session.post(
                    self.config.webhook_url, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _email(self, alert: Alert) -> bool:
        assert self._smtp is not None
        msg = build_message(self._smtp, self.config.email_to,
                            f"[vault alert] {alert.kind} ({alert.account})", alert.to_text())
        try:
            await send_message(self._smtp, msg)
        except MailError:
            return False
        return True

    async def deliver(self, alert: Alert) -> dict[str, bool]:
        """Count, post and email one alert; per channel, whether delivery succeeded."""
        self._raised.labels(kind=alert.kind).inc()
        results: dict[str, bool] = {}
        if self.config.webhook_url:
            results["webhook"] = await self._post(alert)
        if self.config.email_to and self._smtp is not None:
            results["email"] = await self._email(alert)
        for channel, ok in results.items():
            if not ok:
                self._failed.labels(channel=channel).inc()
        log.warning("alert %s kind=%s delivered=%s", alert.alert_id, alert.kind,
                    ",".join(c for c, ok in results.items() if ok) or "none")
        return results

    async def record(self, activity: str, account: str, *, now: int,
                     token_id: str | None = None) -> Alert | None:
        """Note one export or erasure; raise and deliver a burst alert when one starts."""
        if activity not in ("export", "erasure"):
            raise AlertError("activity must be export or erasure")
        threshold = (self.config.export_burst_threshold if activity == "export"
                     else self.config.erasure_burst_threshold)
        key = f"{activity}:{account}"
        times, last = self._bursts.get(key, ((), None))
        kept, alarm = detect_burst(times, now, window_s=self.config.burst_window_s,
                                   threshold=threshold, last_alert_at=last)
        self._bursts[key] = (kept, now if alarm else last)
        if not alarm:
            return None
        alert = new_alert(f"{activity}_burst", account, now=now, count=len(kept),
                          token_ids=[token_id] if token_id else ())
        await self.deliver(alert)
        return alert

"""The staff side's background work: erasure notices to the relay, retention sweeps,
transcript email to visitors and anomaly alerts.

Each piece takes its clock as an argument (``now`` or a ``clock`` callable), so tests
drive retention and bursts at injected times. Nothing here logs or audits personal
data: engagement ids, counts, rule names and stable codes only.

>>> sorted(categories_of(frozenset({"message", "consent"})))
['prechat', 'transcripts']
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from envelope import key_id

from .erasure import ErasureOutcome, OpenedRow, erase_and_notify, read_engagement
from .errors import DataKeyDestroyed, VaultError
from .keyfiles import VaultKeys
from .keystore import KeyStore
from .staff.alerts import ALERT_KINDS, AlertDispatcher, new_alert
from .staff.errors import MailRejected, StaffError
from .staff.mailer import SmtpConfig, check_address, send_transcript
from .staff.retention import (
    CATEGORIES,
    Expired,
    RetainedEngagement,
    RetentionRules,
    select_expired,
)
from .store import AuditRecord, VaultStore
from .store_staff import MailJob
from .transcripts import build_transcript

__all__ = [
    "AlertRaiser",
    "NoticePump",
    "RetentionOutcome",
    "TranscriptMailer",
    "categories_of",
    "expired_engagements",
    "sweep_retention",
]

log = logging.getLogger("controller_vault.staff")

#: Ingest anomaly kind -> controller alert kind (the others are counted, not alerted).
_ALERTED = {"forged_envelope": "forged_envelope", "tampered_envelope": "tampered_envelope",
            "replayed_envelope": "tampered_envelope",
            "unknown_recipient_key": "unknown_recipient_key"}


class NoticePump:
    """Sends queued erasure notices over the live link; marks them when recorded.

    The queue is vault.db's ``erasure_notices`` table, so notices made while the link
    is down (or by the CLI in another process) are sent at the next connection. The
    relay answers each notice in order, so answers are matched first in, first out.
    """

    def __init__(self, store: VaultStore, *, clock: Callable[[], float] = time.time,
                 poll_s: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._in_flight: collections.deque[int] = collections.deque()
        self._recorded = 0

    def wake(self) -> None:
        """A notice was queued: send it now rather than at the next poll."""
        self._wake.set()

    def recorded(self) -> None:
        """The relay answered ``erasure-recorded`` for the oldest notice in flight."""
        self._recorded += 1
        self._wake.set()

    async def run(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """For one link session: send every pending notice, then wait for more."""
        self._in_flight.clear()
        self._recorded = 0
        sent: set[int] = set()
        while True:
            self._wake.clear()
            while self._recorded and self._in_flight:
                self._recorded -= 1
                await self._store.mark_notice_recorded(self._in_flight.popleft(),
                                                       int(self._clock()))
            for pending in await self._store.pending_notices():
                if pending.notice_id not in sent:
                    await send({"type": "erasure", "notice": pending.notice})
                    sent.add(pending.notice_id)
                    self._in_flight.append(pending.notice_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):  # wait_for (3.11) can eat a cancel
                    await self._wake.wait()


def categories_of(kinds: frozenset[str]) -> frozenset[str]:
    """The retention categories an engagement holds, from its stored envelope kinds."""
    return frozenset(c for c, members in CATEGORIES.items() if kinds & members)


async def expired_engagements(store: VaultStore, rules: RetentionRules,
                              now: int) -> list[Expired]:
    """What a retention sweep at ``now`` would erase (the dry run)."""
    rows = await store.retained_engagements()
    return select_expired([RetainedEngagement(r.engagement, r.account, r.last_at,
                                              categories_of(r.kinds)) for r in rows],
                          rules, now)


@dataclass(frozen=True)
class RetentionOutcome:
    """What one sweep did."""

    erased: ErasureOutcome
    partial: dict[str, int]


async def sweep_retention(store: VaultStore, keystore: KeyStore, keys: VaultKeys,
                          rules: RetentionRules, *, now: int) -> RetentionOutcome:
    """Erase every engagement past its age; delete expired categories of the others."""
    expired = await expired_engagements(store, rules, now)
    whole = [e.engagement_id for e in expired if e.whole]
    outcome = await erase_and_notify(store, keystore, keys, whole, actor="retention",
                                     purpose="retention-by-age", rule="retention", now=now)
    partial: dict[str, int] = {}
    for item in expired:
        if not item.whole:
            kinds = sorted(set().union(*(CATEGORIES[c] for c in item.categories)))
            partial[item.engagement_id] = await store.delete_kinds(
                item.engagement_id, kinds, now,
                AuditRecord("retention", "erase-categories", "retention-by-age",
                            item.engagement_id, {"categories": list(item.categories)}))
    return RetentionOutcome(outcome, partial)


class AlertRaiser:
    """Turns anomalies into alerts delivered in the background (never delaying ingest)."""

    def __init__(self, dispatcher: AlertDispatcher, account: str, *,
                 clock: Callable[[], float] = time.time, quiet_s: float = 60.0) -> None:
        self.dispatcher = dispatcher
        self._account = account
        self._clock = clock
        self._quiet_s = quiet_s
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def raise_kind(self, kind: str, code: str | None = None,
                   engagement_ids: tuple[str, ...] = ()) -> None:
        """Raise one alert of ``kind`` unless the same kind was raised within quiet_s."""
        kind = _ALERTED.get(kind, kind)
        if kind not in ALERT_KINDS:
            return
        now = self._clock()
        # One alert per kind per quiet period: a relay replaying garbage cannot turn
        # the controller's webhook and inbox into a flood (the metric still counts all).
        if now - self._last.get(kind, -1e18) < self._quiet_s:
            return
        self._last[kind] = now
        try:
            alert = new_alert(kind, self._account, now=int(now), code=code,
                              engagement_ids=engagement_ids)
        except StaffError:
            return
        self._spawn(self.dispatcher.deliver(alert))

    def record(self, activity: str, token_id: str | None = None) -> None:
        """An export or erasure happened: the dispatcher alerts on a burst."""
        self._spawn(self.dispatcher.record(activity, self._account, now=int(self._clock()),
                                           token_id=token_id))

    async def drain(self) -> None:
        """Wait for alerts still being delivered (at shutdown and in tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class _Refused(Exception):
    """A transcript request the rule refuses; ``code`` is stable and non-personal."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


#: Audited outcome code -> the metric's outcome (metrics.MAIL_OUTCOMES); the codes not
#: here are ``transcript.*`` (refused) and the rest (internal_error).
_METRIC_OUTCOMES = {"sent": "sent", "mail.rejected": "rejected", "mail.gave_up": "gave_up",
                    "mail.send_failed": "retry", "vault.store_unavailable": "retry",
                    "smtp-not-configured": "smtp_not_configured",
                    "mail.bad_recipient": "refused", "vault.data_key_destroyed": "refused"}

#: Outcomes that keep the job for the next delay: a send that failed for now, and a
#: store that was locked or full for a moment (its read or audit entry not written).
_RETRIED = frozenset({"mail.send_failed", "vault.store_unavailable"})


def _metric_outcome(code: str) -> str:
    """The fixed metric label of an audited outcome code (never an id or an address)."""
    if code.startswith("transcript."):
        return "refused"
    return _METRIC_OUTCOMES.get(code, "internal_error")


def _normalised_address(address: str) -> str:
    return unicodedata.normalize("NFC", address).strip().casefold()


def _requested_address(rows: list[OpenedRow], envelope_id: str) -> str:
    for row in rows:
        if row.envelope_id == envelope_id and row.kind == "transcript-request":
            with contextlib.suppress(ValueError):
                email = json.loads(row.body).get("email")
                if isinstance(email, str):
                    return email
    raise _Refused("transcript.request_unreadable")


def _prechat_addresses(rows: list[OpenedRow], visitor_key_id: str) -> set[str]:
    found = set()
    for row in rows:
        if row.kind == "prechat" and row.role == "visitor" \
                and row.sender_key_id == visitor_key_id:
            with contextlib.suppress(ValueError):
                email = json.loads(row.body).get("email")
                if isinstance(email, str) and email.strip():
                    found.add(_normalised_address(email))
    return found


class TranscriptMailer:
    """Emails a transcript to the visitor who asked for it (a transcript-request envelope).

    The rule (a decrypted transcript leaves the vault by email only to the visitor):
    send only when the request was signed by the engagement's pinned visitor key (its
    first visitor key) AND the address equals, after NFC, trimming and case folding, an
    email that same visitor key gave in a pre-chat envelope of the engagement. Otherwise
    nothing is sent and the audit records ``transcript.not_pinned_visitor`` or
    ``transcript.address_not_given``. This stops a hostile relay that sends its own
    visitor-key request (or any request to its own address) from receiving the agents'
    replies by mail.

    Delivery is durable: ingest stores a job row with the request envelope (same
    transaction), and this worker sends due jobs, on start-up too, so a crash between
    receipt and mail loses nothing. A failed send (``mail.send_failed``: server down or
    unreachable, a 4xx reply, TLS or login failing) is retried after RETRY_DELAYS_S,
    and so is an attempt vault.db could not serve (``vault.store_unavailable``: locked
    or full for now); after the last one the job is given up (``mail.gave_up``,
    audited). A permanent
    refusal of this message (``mail.rejected``: a 5xx reply to RCPT TO or DATA, such as
    550 mailbox unavailable, or 552 too large; not the vault's own setup: see
    staff/mailer.py) ends the job at once: resending would only repeat the refusal
    at the visitor's mail server, six times over a day. At least once: a crash after
    the server accepted the mail but before the job was dropped sends it again on restart.
    Each attempt's outcome goes to ``on_outcome`` as one of a fixed set of words (the
    app counts them in ``vault_transcript_mail_total{outcome}``).
    """

    RETRY_DELAYS_S = (60, 300, 1800, 7200, 21600, 86400)
    LEASE_S = 600  # a job being sent is not due again before this

    def __init__(self, store: VaultStore, keystore: KeyStore, smtp: SmtpConfig | None, *,
                 clock: Callable[[], float] = time.time,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._keystore = keystore
        self._smtp = smtp
        self._clock = clock
        self._on_outcome = on_outcome  # the metric: one of metrics.MAIL_OUTCOMES per attempt
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one sender: a job is never attempted twice at once
        self.sent = 0
        self.refused = 0
        self.rejected = 0  # mail.rejected: the mail server refused for good (5xx)
        self.failed_attempts = 0

    def request(self) -> None:
        """Ingest's hook, after the commit that stored the job: send it now."""
        self._wake.set()

    async def run(self) -> None:
        """Send due jobs; sleep until a new request or the next retry (for the service)."""
        while True:
            self._wake.clear()
            delay = 60.0
            try:
                await self.send_due()
                due = await self._store.next_mail_at()
                if due is not None:
                    delay = min(delay, max(0.5, due - self._clock()))
            except VaultError:
                delay = 5.0  # the store is locked or full: try again shortly, not hot
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # wait_for (3.11) can eat a cancel
                    await self._wake.wait()

    async def send_due(self) -> int:
        """Attempt every job due now, each at most once per call; return how many."""
        attempted: set[str] = set()
        async with self._lock:
            while True:
                now = int(self._clock())
                jobs = [j for j in await self._store.due_mail_jobs(now)
                        if j.envelope_id not in attempted]
                if not jobs:
                    break
                for job in jobs:
                    attempted.add(job.envelope_id)
                    # Leased first, in its own transaction: if recording the outcome
                    # fails after the server took the mail, the job comes back only
                    # when the lease ends (one more send per lease at worst, never a
                    # loop mailing the visitor); a job erased meanwhile (the cascade
                    # removed it) is not sent at all, nor one another sender leased
                    # since it was read as due.
                    if await self._store.lease_mail_job(job.envelope_id, now,
                                                        now + self.LEASE_S):
                        await self._attempt(job)
        return len(attempted)

    async def drain(self) -> None:
        """Send what is due now (at shutdown and in tests); retries stay scheduled."""
        await self.send_due()

    async def _attempt(self, job: MailJob) -> None:
        now = int(self._clock())
        outcome = "sent"
        smtp_code: int | None = None
        try:
            state = (await self._store.engagement_states([job.engagement])).get(job.engagement)
            pinned = state.visitor_key if state is not None else None
            if self._smtp is None:
                outcome = "smtp-not-configured"
            elif pinned is None or job.role != "visitor" \
                    or job.sender_key_id != key_id(bytes(pinned)):
                outcome = "transcript.not_pinned_visitor"
            else:
                rows = await read_engagement(self._store, self._keystore, job.engagement,
                                             actor="vault", purpose="transcript-email",
                                             now=now)
                address = _requested_address(rows, job.envelope_id)
                check_address(address)
                if _normalised_address(address) not in _prechat_addresses(
                        rows, key_id(bytes(pinned))):
                    raise _Refused("transcript.address_not_given")
                summary = await self._store.engagement_summary(job.engagement)
                agents = await self._store.agent_names()
                transcript = build_transcript(
                    job.engagement, self._store.account,
                    summary.first_at if summary else now, None,
                    bool(summary and summary.complete), rows, agents)
                await send_transcript(self._smtp, address, transcript)
                self.sent += 1
        except MailRejected as exc:
            outcome, smtp_code = exc.code, exc.smtp_code
            self.rejected += 1
        except (StaffError, VaultError, DataKeyDestroyed) as exc:
            outcome = exc.code
        except _Refused as exc:
            outcome = exc.code
        except Exception as exc:
            # A bug (rendering, an unexpected body) must not stop every other visitor's
            # mail nor come back on each start: the job ends, audited. The class name
            # only: an exception's text could quote the transcript or the address.
            log.error("transcript email for %s failed: %s", job.engagement,
                      type(exc).__name__)
            outcome = "mail.internal_error"
        if outcome.startswith("transcript."):
            self.refused += 1
        # The audit names the engagement and the outcome code (and the numeric SMTP
        # reply code of a rejection); never the address nor the server's reply text.
        detail: dict[str, Any] = {"outcome": outcome}
        if smtp_code is not None:
            detail["smtp_code"] = smtp_code
        with contextlib.suppress(VaultError):
            # A store error is retried like a failed send, not ended as the outcome: a
            # busy or full vault.db is transient, and ending the job there dropped the
            # visitor's transcript for good.
            if outcome in _RETRIED and job.attempts < len(self.RETRY_DELAYS_S):
                self.failed_attempts += 1
                detail["retry_in_s"] = self.RETRY_DELAYS_S[job.attempts]
                await self._store.retry_mail_job(
                    job.envelope_id, now + self.RETRY_DELAYS_S[job.attempts],
                    AuditRecord("vault", "transcript-email", "visitor-request",
                                job.engagement, detail), now)
            else:
                if outcome in _RETRIED:
                    self.failed_attempts += 1
                    outcome = detail["outcome"] = "mail.gave_up"
                await self._store.finish_mail_job(
                    job.envelope_id, AuditRecord("vault", "transcript-email",
                                                 "visitor-request", job.engagement, detail),
                    now)
        if self._on_outcome is not None:
            self._on_outcome(_metric_outcome(outcome))  # after retry / gave_up is decided
        log.info("transcript email for %s: %s%s", job.engagement, outcome,
                 f" (SMTP {smtp_code})" if smtp_code is not None else "")

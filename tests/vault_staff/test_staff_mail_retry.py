"""Transcript email is a durable job: a failed send is retried with backoff against a real
SMTP server that comes up later, given up after the last delay, and a vault SIGKILLed
between storing the request and sending the mail sends it after the restart. A 5xx
refusal of the recipient ends the job at once; a 4xx, and a vault.db busy during the
attempt, keep the retry schedule. Each outcome is counted on /metrics under a fixed
label. A job leased by one sender cannot be leased by another (a second serve) before
its lease ends."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from controller_vault.app import MAILER, STORE
from controller_vault.config import StaffSettings
from controller_vault.database import in_connection
from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import init_vault, load_vault_keys
from controller_vault.keystore import KeyStore
from controller_vault.metrics import MAIL_OUTCOMES, VaultMetrics
from controller_vault.staff.mailer import SmtpConfig
from controller_vault.staff_services import TranscriptMailer
from controller_vault.store import AuditRecord, VaultStore
from envelope import PartyKeys, encode_body, seal

from .conftest import Mailbox, RefusingMailbox, _free_port, smtp_server

pytestmark = pytest.mark.timeout(90)
ADDRESS = "visitor@example.net"


def _smtp(port: int) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, security="none",
                      from_addr="noreply@clinic.example", timeout_s=5)


async def _outcomes(store: Any) -> list[dict[str, Any]]:
    return [json.loads(e.detail) for e, _, _ in await store.audit_rows()
            if e.action == "transcript-email"]


async def _request(v: Any, engagement: str) -> None:
    visitor = PartyKeys.generate()
    result = await v.ingest([
        v.env(engagement, visitor, "prechat", {"email": ADDRESS}),
        v.env(engagement, visitor, "message", {"text": "my appointment"}),
        v.env(engagement, visitor, "transcript-request", {"email": ADDRESS})])
    assert result.stored == 3


async def test_a_failed_send_is_retried_when_the_server_is_back(make_staff_vault) -> None:
    port = _free_port()  # nothing listens yet: the mail server is down
    v = await make_staff_vault(StaffSettings(smtp=_smtp(port)))
    await _request(v, "eng-retry-0001")
    mailer, store = v.app[MAILER], v.app[STORE]
    await asyncio.wait_for(mailer.drain(), 30)
    assert mailer.sent == 0
    assert await _outcomes(store) == [{"outcome": "mail.send_failed", "retry_in_s": 60}]
    assert await store.due_mail_jobs(v.clock[0]) == []  # not due again before the delay

    mailbox = Mailbox()
    server = Controller(mailbox, hostname="127.0.0.1", port=port, ready_timeout=10,
                        auth_require_tls=False)
    server.start()
    try:
        v.clock[0] += 60
        await asyncio.wait_for(mailer.drain(), 30)
    finally:
        server.stop()
    assert mailer.sent == 1 and mailbox.envelopes[0][1] == [ADDRESS]
    assert (await _outcomes(store))[-1] == {"outcome": "sent"}
    assert await store.due_mail_jobs(v.clock[0] + 10**9) == []  # the job is gone
    assert all(ADDRESS not in repr(e) for e, _, _ in await store.audit_rows())


async def test_a_send_that_keeps_failing_is_given_up_after_the_last_delay(
        make_staff_vault) -> None:
    v = await make_staff_vault(StaffSettings(smtp=_smtp(_free_port())))
    await _request(v, "eng-retry-0002")
    mailer, store = v.app[MAILER], v.app[STORE]
    await asyncio.wait_for(mailer.drain(), 30)
    for delay in TranscriptMailer.RETRY_DELAYS_S:
        v.clock[0] += delay
        await asyncio.wait_for(mailer.drain(), 30)
    outcomes = await _outcomes(store)
    assert [o.get("retry_in_s") for o in outcomes[:-1]] == list(TranscriptMailer.RETRY_DELAYS_S)
    assert outcomes[-1] == {"outcome": "mail.gave_up"} and mailer.sent == 0
    assert await store.due_mail_jobs(v.clock[0] + 10**9) == []


_CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from controller_vault.ingest import Ingestor
    from controller_vault.keyfiles import load_vault_keys
    from controller_vault.keystore import KeyStore
    from controller_vault.store import VaultStore
    from envelope import PartyKeys, encode_body, seal

    async def main(state):
        keys = load_vault_keys(state)
        store = await VaultStore.open(os.path.join(state, "vault.db"), "clinic")
        keystore = await KeyStore.open(os.path.join(state, "keys.db"), keys.master_key)
        visitor = PartyKeys.generate()
        frames = [seal(encode_body(kind, body), sender=visitor, role="visitor",
                       account="clinic", engagement="eng-crash-0001", sequence=n,
                       kind=kind, recipients=[keys.current_key.public_bytes])
                  for n, (kind, body) in enumerate([
                      ("prechat", {"email": sys.argv[2]}),
                      ("message", {"text": "before the crash"}),
                      ("transcript-request", {"email": sys.argv[2]})], start=1)]
        result = await Ingestor(keys, store, keystore).ingest(frames, 1_800_000_000)
        assert result.stored == 3 and result.receipt is not None
        print("receipted", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # after the receipt, before any mail

    asyncio.run(main(sys.argv[1]))
""")


async def test_a_request_stored_before_a_crash_is_mailed_after_the_restart(
        tmp_path: pathlib.Path, smtp_plain: Any) -> None:
    state = tmp_path / "vault"
    init_vault(state, "clinic", now=1_800_000_000)
    repo = pathlib.Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", _CHILD, str(state), ADDRESS],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(repo)}, check=False)
    assert child.returncode == -signal.SIGKILL and "receipted" in child.stdout, child.stderr
    keys = load_vault_keys(state)
    store = await VaultStore.open(state / "vault.db", "clinic")
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    try:
        mailer = TranscriptMailer(store, keystore, _smtp(smtp_plain.port),
                                  clock=lambda: 1_800_000_100.0)
        assert await asyncio.wait_for(mailer.send_due(), 30) == 1
        assert mailer.sent == 1 and smtp_plain.mailbox.envelopes[0][1] == [ADDRESS]
        body = smtp_plain.mailbox.messages[0].get_body(("plain",)).get_content()
        assert "before the crash" in body
        assert await mailer.send_due() == 0  # sent once, not again
    finally:
        await store.close()
        await keystore.close()


async def test_a_send_whose_outcome_cannot_be_recorded_is_not_repeated_at_once(
        make_staff_vault) -> None:
    import sqlite3

    # The server takes the mail, and meanwhile another process holds vault.db's write
    # lock past the busy timeout, so the vault cannot record "sent". The job's lease
    # keeps it from being mailed again at once (and again, and again).
    class LockingMailbox(Mailbox):
        db: sqlite3.Connection | None = None

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if self.db is None:
                self.db = sqlite3.connect(state / "vault.db", check_same_thread=False,
                                          isolation_level=None)
                self.db.execute("BEGIN IMMEDIATE")
            return await super().handle_DATA(server, session, envelope)

    port = _free_port()
    v = await make_staff_vault(StaffSettings(smtp=_smtp(port)))
    state = v.state
    mailbox = LockingMailbox()
    server = Controller(mailbox, hostname="127.0.0.1", port=port, ready_timeout=10,
                        auth_require_tls=False)
    server.start()
    try:
        await _request(v, "eng-lease-0001")
        mailer, store = v.app[MAILER], v.app[STORE]
        await asyncio.wait_for(mailer.drain(), 30)
        assert len(mailbox.messages) == 1  # sent once, its outcome not recorded
        assert mailbox.db is not None
        mailbox.db.execute("ROLLBACK")
        mailbox.db.close()
        await asyncio.wait_for(mailer.drain(), 30)
        assert len(mailbox.messages) == 1  # leased: not due again yet
        v.clock[0] += TranscriptMailer.LEASE_S
        await asyncio.wait_for(mailer.drain(), 30)
    finally:
        server.stop()
    assert len(mailbox.messages) == 2  # at least once: one more send after the lease
    assert (await _outcomes(store))[-1] == {"outcome": "sent"}
    assert await store.due_mail_jobs(v.clock[0] + 10**9) == []


async def test_a_store_busy_during_an_attempt_keeps_the_job_for_a_retry(
        tmp_path: pathlib.Path, smtp_plain: Any) -> None:
    import sqlite3

    now = 1_800_000_000
    state = tmp_path / "vault"
    keys = init_vault(state, "clinic", now=now)
    store = await VaultStore.open(state / "vault.db", "clinic", busy_timeout_ms=100)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    visitor = PartyKeys.generate()
    frames = [seal(encode_body(kind, body), sender=visitor, role="visitor", account="clinic",
                   engagement="eng-busy-0001", sequence=n, kind=kind,
                   recipients=[keys.current_key.public_bytes])
              for n, (kind, body) in enumerate([("prechat", {"email": ADDRESS}),
                                                ("message", {"text": "while it was busy"}),
                                                ("transcript-request", {"email": ADDRESS})],
                                               start=1)]
    assert (await Ingestor(keys, store, keystore).ingest(frames, now)).stored == 3
    metrics = VaultMetrics()
    clock = [now]
    mailer = TranscriptMailer(store, keystore, _smtp(smtp_plain.port),
                              clock=lambda: float(clock[0]),
                              on_outcome=metrics.count_transcript_mail)
    # Another connection (a CLI command, a backup) holds vault.db's write lock past the
    # store's 100 ms busy timeout exactly while the attempt writes the read's audit entry,
    # and lets go before the outcome is recorded. The points are the attempt's own write
    # transactions, seen by a trace of the store's connection: no sleeps.
    locker = sqlite3.connect(state / "vault.db", isolation_level=None,
                             check_same_thread=False)
    begins: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            begins.append(sql)  # 1: the lease, 2: the read's audit entry, 3: the outcome
            if len(begins) == 2:
                locker.execute("BEGIN IMMEDIATE")
            elif len(begins) == 3:
                locker.execute("ROLLBACK")

    await in_connection(store._db, lambda conn: conn.set_trace_callback(trace))
    try:
        assert await asyncio.wait_for(mailer.send_due(), 30) == 1
    finally:
        await in_connection(store._db, lambda conn: conn.set_trace_callback(None))
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()

    def counted(outcome: str) -> float | None:
        return metrics.registry.get_sample_value("vault_transcript_mail_total",
                                                 {"outcome": outcome})

    try:
        assert len(begins) == 3  # the lock was held, and let go, where planned
        assert mailer.sent == 0 and smtp_plain.mailbox.envelopes == []
        # Kept for the next delay like a failed send, not ended with the store's code.
        assert await _outcomes(store) == [{"outcome": "vault.store_unavailable",
                                           "retry_in_s": 60}]
        assert await store.due_mail_jobs(now) == []
        assert len(await store.due_mail_jobs(now + 60)) == 1
        assert (counted("retry"), counted("internal_error")) == (1.0, 0.0)
        clock[0] += 60
        assert await asyncio.wait_for(mailer.send_due(), 30) == 1
        assert mailer.sent == 1 and smtp_plain.mailbox.envelopes[0][1] == [ADDRESS]
        body = smtp_plain.mailbox.messages[0].get_body(("plain",)).get_content()
        assert "while it was busy" in body
        assert (await _outcomes(store))[-1] == {"outcome": "sent"}
        assert counted("sent") == 1.0
        assert await store.due_mail_jobs(now + 10**9) == []  # the job is gone
    finally:
        await store.close()
        await keystore.close()


def _our_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    # mail.log is aiosmtpd's own logger (the test server's side), not the vault's.
    return [r.getMessage() for r in caplog.records if r.name != "mail.log"]


async def test_a_5xx_refusal_ends_the_job_at_once_without_a_retry(
        make_staff_vault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handler = RefusingMailbox(refuse="RCPT", reply="550 5.1.1 <{address}>: mailbox unavailable")
    with smtp_server(handler) as port:
        v = await make_staff_vault(StaffSettings(smtp=_smtp(port)))
        await _request(v, "eng-reject-0001")
        mailer, store = v.app[MAILER], v.app[STORE]
        await asyncio.wait_for(mailer.drain(), 30)
        assert handler.tries == 1
        # Past every delay of the schedule: nothing is due, nothing is sent again.
        v.clock[0] += sum(TranscriptMailer.RETRY_DELAYS_S) + 1
        await asyncio.wait_for(mailer.drain(), 30)
    assert handler.tries == 1 and handler.messages == []
    assert await _outcomes(store) == [{"outcome": "mail.rejected", "smtp_code": 550}]
    assert await store.due_mail_jobs(v.clock[0] + 10**9) == []  # the job is gone
    assert await store.next_mail_at() is None  # and no retry is scheduled
    assert (mailer.sent, mailer.rejected, mailer.failed_attempts) == (0, 1, 0)
    assert all(ADDRESS not in repr(e) for e, _, _ in await store.audit_rows())
    lines = _our_log_lines(caplog)
    assert any("mail.rejected (SMTP 550)" in line for line in lines)
    assert all(ADDRESS not in line for line in lines)


async def test_a_4xx_refusal_keeps_the_retry_schedule(
        make_staff_vault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handler = RefusingMailbox(refuse="RCPT", reply="451 4.3.0 <{address}>: try again later")
    with smtp_server(handler) as port:
        v = await make_staff_vault(StaffSettings(smtp=_smtp(port)))
        await _request(v, "eng-reject-0002")
        mailer, store = v.app[MAILER], v.app[STORE]
        await asyncio.wait_for(mailer.drain(), 30)
        assert handler.tries == 1
        assert await _outcomes(store) == [{"outcome": "mail.send_failed", "retry_in_s": 60}]
        assert await store.due_mail_jobs(v.clock[0]) == []  # not before the delay
        assert len(await store.due_mail_jobs(v.clock[0] + 60)) == 1  # kept for the retry
        v.clock[0] += 60
        await asyncio.wait_for(mailer.drain(), 30)
    assert handler.tries == 2 and handler.messages == []
    assert (await _outcomes(store))[-1] == {"outcome": "mail.send_failed", "retry_in_s": 300}
    assert (mailer.sent, mailer.rejected, mailer.failed_attempts) == (0, 0, 2)
    assert all(ADDRESS not in repr(e) for e, _, _ in await store.audit_rows())
    assert all(ADDRESS not in line for line in _our_log_lines(caplog))


async def _mail_counts(v: Any) -> dict[str, float]:
    """vault_transcript_mail_total by outcome, as the vault's /metrics serves it."""
    resp = await v.client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert ADDRESS not in text and "eng-metric" not in text  # no address nor id as a label
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "vault_transcript_mail" for s in f.samples
            if s.name == "vault_transcript_mail_total"}


async def test_mail_outcomes_are_counted_on_metrics_under_fixed_labels(
        make_staff_vault) -> None:
    port = _free_port()
    v = await make_staff_vault(StaffSettings(smtp=_smtp(port)))
    mailer = v.app[MAILER]
    # Every outcome is exported at 0 before the first mail, so an alert sees the first.
    assert await _mail_counts(v) == dict.fromkeys(MAIL_OUTCOMES, 0.0)
    mailbox = Mailbox()
    with smtp_server(mailbox, port):
        await _request(v, "eng-metric-0001")
        await asyncio.wait_for(mailer.drain(), 30)
    assert len(mailbox.messages) == 1
    assert await _mail_counts(v) == {**dict.fromkeys(MAIL_OUTCOMES, 0.0), "sent": 1.0}
    refusing = RefusingMailbox(refuse="RCPT")  # 550 to RCPT TO: rejected for good
    with smtp_server(refusing, port):
        await _request(v, "eng-metric-0002")
        await asyncio.wait_for(mailer.drain(), 30)
    assert refusing.tries == 1
    await _request(v, "eng-metric-0003")  # and nothing listens now: a retry
    await asyncio.wait_for(mailer.drain(), 30)
    assert await _mail_counts(v) == {**dict.fromkeys(MAIL_OUTCOMES, 0.0),
                                     "sent": 1.0, "rejected": 1.0, "retry": 1.0}


async def _two_senders(state: pathlib.Path) -> tuple[Any, Any, Any]:
    """A vault with one stored transcript request, its store opened twice (two senders,
    as two serves of one vault would be), and its key store."""
    keys = init_vault(state, "clinic", now=1_800_000_000)
    first = await VaultStore.open(state / "vault.db", "clinic")
    second = await VaultStore.open(state / "vault.db", "clinic")
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    visitor = PartyKeys.generate()
    frames = [seal(encode_body(kind, body), sender=visitor, role="visitor", account="clinic",
                   engagement="eng-lease-0002", sequence=n, kind=kind,
                   recipients=[keys.current_key.public_bytes])
              for n, (kind, body) in enumerate([("prechat", {"email": ADDRESS}),
                                                ("transcript-request", {"email": ADDRESS})],
                                               start=1)]
    assert (await Ingestor(keys, first, keystore).ingest(frames, 1_800_000_000)).stored == 2
    return first, second, keystore


async def test_a_leased_job_cannot_be_leased_again_before_its_lease_ends(
        tmp_path: pathlib.Path) -> None:
    now = 1_800_000_000
    first, second, keystore = await _two_senders(tmp_path / "vault")
    try:
        [job] = await first.due_mail_jobs(now)
        # The second sender read the job as due too, before the first leased it.
        assert [j.envelope_id for j in await second.due_mail_jobs(now)] == [job.envelope_id]
        assert await first.lease_mail_job(job.envelope_id, now, now + 600)
        assert not await second.lease_mail_job(job.envelope_id, now, now + 600)
        assert not await second.lease_mail_job(job.envelope_id, now + 599, now + 1199)
        assert not await first.lease_mail_job(job.envelope_id, now + 599, now + 1199)
        assert await second.due_mail_jobs(now + 599) == []
        # The lease ended (the first sender died after leasing): the job is due again.
        assert await second.lease_mail_job(job.envelope_id, now + 600, now + 1200)
        assert not await first.lease_mail_job(job.envelope_id, now + 600, now + 1200)
        await second.finish_mail_job(job.envelope_id, AuditRecord(
            "vault", "transcript-email", "visitor-request", job.engagement,
            {"outcome": "sent"}), now + 601)
        assert not await first.lease_mail_job(job.envelope_id, now + 10**6, now + 10**6)
    finally:
        for store in (first, second, keystore):
            await store.close()


async def test_two_senders_on_one_vault_mail_a_request_once(
        tmp_path: pathlib.Path, smtp_plain: Any) -> None:
    first, second, keystore = await _two_senders(tmp_path / "vault")
    try:
        mailers = [TranscriptMailer(store, keystore, _smtp(smtp_plain.port),
                                    clock=lambda: 1_800_000_100.0)  # the same second
                   for store in (first, second)]
        # Both read the job as due before either leases it; only one may send it.
        await asyncio.wait_for(asyncio.gather(*(m.send_due() for m in mailers)), 30)
        assert len(smtp_plain.mailbox.messages) == 1
        assert sorted(m.sent for m in mailers) == [0, 1]
    finally:
        for store in (first, second, keystore):
            await store.close()

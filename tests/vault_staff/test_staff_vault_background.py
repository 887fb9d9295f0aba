"""The vault's staff background work on the real app: the retention sweeper at an injected
time, transcript email to a real SMTP server, erasure notices delivered over the vault
link (and kept while it is down), and alerts raised to a real webhook."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nacl.utils
import pytest
from aiohttp import WSMsgType, web

from controller_vault.app import ALERTS, MAILER, STORE
from controller_vault.config import StaffSettings
from controller_vault.staff.alerts import AlertConfig
from controller_vault.staff.mailer import SmtpConfig
from controller_vault.staff.retention import CategoryAges, RetentionRules
from envelope import PartyKeys, b64e, verify_erasure_notice, verify_link_auth

NOW = 1_800_000_000
DAY = 86_400
pytestmark = pytest.mark.timeout(60)


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_retention_sweeper_erases_exactly_what_is_past_its_age(make_staff_vault):
    rules = RetentionRules(default=CategoryAges(transcripts_s=30 * DAY, prechat_s=10 * DAY))
    v = await make_staff_vault(StaffSettings(retention=rules))
    visitor = PartyKeys.generate()
    ages = {"eng-old-00001": 31, "eng-edge-0001": 30, "eng-new-00001": 1}
    for eng, days in ages.items():
        await v.ingest([v.env(eng, visitor, "message", {"text": f"hi {eng}"})],
                       at=NOW - days * DAY)
    # Only pre-chat data past its (shorter) age: its category goes, the engagement stays.
    await v.ingest([v.env("eng-new-00001", visitor, "prechat", {"name": "Pat"})],
                   at=NOW - DAY)
    await v.ingest([v.env("eng-mix-00001", visitor, "prechat", {"name": "Sam"}),
                    v.env("eng-mix-00001", visitor, "message", {"text": "kept"})],
                   at=NOW - 12 * DAY)
    resp = await v.client.get("/v1/retention/preview", headers=v.auth("configure"))
    preview = await resp.json()
    assert [(e["engagement_id"], e["whole"]) for e in preview["expired"]] == [
        ("eng-mix-00001", False), ("eng-old-00001", True)]
    assert "1 erased whole" in preview["text"]
    store = v.app[STORE]
    assert len(await store.envelopes_of("eng-old-00001")) == 1  # the preview erased nothing
    # Now the sweeper loop the app runs in the background (started here rather than at
    # app start-up, so the preview above saw the data), at the injected time.
    from controller_vault.app import _retention_loop

    task = asyncio.create_task(_retention_loop(v.app))
    try:
        async def swept() -> bool:
            # Wait for the whole sweep, not its first effect: under load the check
            # could otherwise land between the whole erasure and the partial one.
            mix = [r.kind for r in await store.envelopes_of("eng-mix-00001")]
            return (not await store.envelopes_of("eng-old-00001") and mix == ["message"]
                    and bool(await store.pending_notices()))

        await _wait_for(swept)
    finally:
        task.cancel()
    assert len(await store.envelopes_of("eng-edge-0001")) == 1
    assert len(await store.envelopes_of("eng-new-00001")) == 2
    assert [r.kind for r in await store.envelopes_of("eng-mix-00001")] == ["message"]
    pending = await store.pending_notices()
    notice = verify_erasure_notice(pending[-1].notice, v.keys.identity.public_bytes,
                                   account="clinic")
    assert notice.engagements == ("eng-old-00001",) and notice.rule == "retention"
    assert notice.at == NOW


async def test_transcript_email_reaches_the_smtp_server(make_staff_vault, smtp_plain, caplog):
    caplog.set_level(logging.DEBUG)
    smtp = SmtpConfig(host="127.0.0.1", port=smtp_plain.port, security="none",
                      from_addr="noreply@clinic.example")
    v = await make_staff_vault(StaffSettings(smtp=smtp))
    visitor = PartyKeys.generate()
    await v.ingest([v.env("eng-mail-0001", visitor, "prechat",
                          {"email": " Visitor@Example.NET"}),
                    v.env("eng-mail-0001", visitor, "message", {"text": "where is my order"}),
                    v.env("eng-mail-0001", visitor, "transcript-request",
                          {"email": "visitor@example.net"})])
    await asyncio.wait_for(v.app[MAILER].drain(), 20)
    assert v.app[MAILER].sent == 1
    msg = smtp_plain.mailbox.messages[0]
    assert smtp_plain.mailbox.envelopes[0][1] == ["visitor@example.net"]
    assert msg["To"] == "visitor@example.net"
    body = msg.get_body(("plain",)).get_content()
    assert "where is my order" in body and "eng-mail-0001" in msg["Subject"]
    audit = [e for e, _, _ in await v.app[STORE].audit_rows()
             if e.action == "transcript-email"]
    assert audit[-1].detail == '{"outcome":"sent"}' and audit[-1].target == "eng-mail-0001"
    assert all("visitor@example.net" not in repr(e) for e, _, _ in
               await v.app[STORE].audit_rows())
    # Our own loggers only: the test SMTP server (aiosmtpd, "mail.log") logs addresses.
    ours = " ".join(r.getMessage() for r in caplog.records
                    if r.name.startswith(("controller_vault", "aiohttp")))
    assert "transcript email" in ours
    assert "visitor@example.net" not in ours and "my order" not in ours


class ErasurePeer:
    """A relay's vault-link endpoint that records erasure notices (envelope/link.py)."""

    def __init__(self, identity_pk: bytes) -> None:
        self.identity_pk = identity_pk
        self.origin = ""
        self.notices: list[Any] = []
        self.accept = asyncio.Event()
        self.accept.set()

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        nonce = nacl.utils.random(32)
        await ws.send_json({"type": "challenge", "v": 1, "nonce": b64e(nonce),
                            "origin": self.origin})
        msg = await ws.receive(timeout=5)
        try:
            verify_link_auth(msg.json(), self.identity_pk, account="clinic", nonce=nonce,
                             origin=self.origin)
        except Exception:
            await ws.close(code=4401, message=b"link.auth_failed")
            return ws
        await ws.send_json({"type": "ready", "backlog": 0, "window": 64})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            doc = msg.json()
            if doc.get("type") == "erasure":
                notice = verify_erasure_notice(doc["notice"], self.identity_pk,
                                               account="clinic")
                self.notices.append(notice)
                await ws.send_json({"type": "erasure-recorded",
                                    "engagements": len(notice.engagements)})
        return ws


async def test_erasure_notice_is_kept_while_the_link_is_down_then_recorded(
        make_staff_vault, aiohttp_server):
    # The vault starts with a relay URL nobody answers yet: the link is down.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = await make_staff_vault(relay_url=f"http://127.0.0.1:{port}", backoff_initial_s=0.05,
                               backoff_max_s=0.2)
    visitor = PartyKeys.generate()
    await v.ingest([v.env("eng-gone-0001", visitor, "message", {"text": "bye"})])
    resp = await v.client.post("/v1/engagements/eng-gone-0001/erase", headers=v.auth("erase"))
    assert resp.status == 200
    store = v.app[STORE]
    assert len(await store.pending_notices()) == 1
    peer = ErasurePeer(v.keys.identity.public_bytes)
    app = web.Application()
    app.router.add_get("/v1/vault/link", peer.handler)
    await aiohttp_server(app, host="127.0.0.1", port=port)
    peer.origin = f"http://127.0.0.1:{port}"

    async def recorded() -> bool:
        return await store.notice_counts() == (0, 1)

    await _wait_for(recorded, 20)
    assert [n.engagements for n in peer.notices] == [("eng-gone-0001",)]
    assert peer.notices[0].rule == "request"
    await v.client.close()  # stop the link first, so the relay peer shuts down at once


async def _alert_webhook(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
    """A real webhook receiver on 127.0.0.1: its URL and the alerts it got."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    server = await aiohttp_server(app)
    return str(server.make_url("/alerts")), received


async def test_anomalies_and_bursts_raise_alerts_to_the_webhook(make_staff_vault,
                                                                aiohttp_server):
    url, received = await _alert_webhook(aiohttp_server)
    alerts = AlertConfig(webhook_url=url,
                         erasure_burst_threshold=2)
    v = await make_staff_vault(StaffSettings(alerts=alerts))
    visitor = PartyKeys.generate()
    frame = bytearray(v.env("eng-tamp-0001", visitor, "message", {"text": "x"}))
    frame[-50] ^= 1
    await v.ingest([bytes(frame)])
    for n in range(3):
        await v.ingest([v.env(f"eng-burst-{n:04d}", visitor, "message", {"text": "x"})])
        await v.client.post(f"/v1/engagements/eng-burst-{n:04d}/erase",
                            headers=v.auth("erase"))
    await asyncio.wait_for(v.app[ALERTS].drain(), 10)
    kinds = sorted(a["kind"] for a in received)
    assert kinds == ["erasure_burst", "tampered_envelope"]
    tampered = next(a for a in received if a["kind"] == "tampered_envelope")
    assert tampered["raised_at_unix"] == NOW and tampered["notify_deadline"]
    metrics = await (await v.client.get("/metrics")).text()
    assert 'vault_alerts_total{kind="tampered_envelope"} 1.0' in metrics


async def test_a_refused_link_authentication_raises_an_alert(make_staff_vault, aiohttp_server):
    url, received = await _alert_webhook(aiohttp_server)
    # A relay that has another identity paired for the account refuses our proof.
    peer = ErasurePeer(PartyKeys.generate().signing_public_bytes)
    relay = web.Application()
    relay.router.add_get("/v1/vault/link", peer.handler)
    relay_server = await aiohttp_server(relay)
    peer.origin = str(relay_server.make_url("/")).rstrip("/")
    v = await make_staff_vault(
        StaffSettings(alerts=AlertConfig(webhook_url=url)),
        relay_url=peer.origin, backoff_initial_s=0.05, backoff_max_s=0.2)

    async def alerted() -> bool:
        return any(a["kind"] == "link_auth_failed" for a in received)

    await _wait_for(alerted)
    await v.client.close()
    assert [a["kind"] for a in received] == ["link_auth_failed"]  # one per quiet period


async def test_the_service_checks_its_audit_log_before_signing_and_alerts(
        make_staff_vault, aiohttp_server):
    import sqlite3

    url, received = await _alert_webhook(aiohttp_server)
    v = await make_staff_vault(StaffSettings(alerts=AlertConfig(
        webhook_url=url)), checkpoint_every=1)
    signed = v.state / "audit-checkpoints.jsonl"

    def lines() -> int:
        return signed.read_text().count("\n") if signed.exists() else 0

    async def until(check: Any, what: str) -> None:
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(what)

    visitor = PartyKeys.generate()
    before = lines()
    await v.ingest([v.env("eng-audit-0001", visitor, "message", {"text": "x"})])
    await until(lambda: lines() > before, "an honest append is checked and signed")
    # Someone edits the newest entry in vault.db behind the service's back.
    db = sqlite3.connect(v.state / "vault.db")
    db.execute("UPDATE audit_log SET detail = '{\"stored\":0}' "
               "WHERE seq = (SELECT max(seq) FROM audit_log)")
    db.commit()
    db.close()
    at_tamper = lines()
    await v.ingest([v.env("eng-audit-0002", visitor, "message", {"text": "y"})])
    await until(lambda: any(a["kind"] == "audit_verification_failed" for a in received),
                "the alert")
    assert lines() == at_tamper  # nothing signed over the broken chain
    alert = next(a for a in received if a["kind"] == "audit_verification_failed")
    assert alert["code"] == "audit.changed"


async def test_after_a_restore_the_alert_is_raised_and_signing_goes_on(
        make_staff_vault, aiohttp_server):
    import json

    from controller_vault.app import _AuditSigner
    from controller_vault.audit import sign_checkpoint

    url, received = await _alert_webhook(aiohttp_server)
    v = await make_staff_vault(StaffSettings(alerts=AlertConfig(
        webhook_url=url)))
    store = v.app[STORE]
    seq, _ = await store.audit_head()
    # An older data store restored over a live one: the live checkpoint file still signs
    # entries the restored log no longer has (audit.truncated); the chain itself is sound.
    body, sig = sign_checkpoint(v.keys.identity, account="clinic", seq=seq + 50,
                                head="0" * 64, at=NOW)
    with (v.state / "audit-checkpoints.jsonl").open("a") as fh:
        fh.write(json.dumps({"body": body, "sig": sig}) + "\n")
    signer = _AuditSigner(v.app)
    await signer.start()
    await asyncio.wait_for(v.app[ALERTS].drain(), 10)
    assert [a["code"] for a in received] == ["audit.truncated"]
    assert signer.verified is not None and not signer.broken
    await v.ingest([v.env("eng-restored-01", PartyKeys.generate(), "message", {"text": "x"})])
    assert await signer.sign(NOW + 1) is not None  # the log after the restore is signed

"""Alerts to a real webhook server and a real SMTP server; ids only, never personal data."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from controller_vault.staff.alerts import (
    ALERT_KINDS,
    AlertConfig,
    AlertDispatcher,
    detect_burst,
    new_alert,
)
from controller_vault.staff.errors import AlertError, StaffConfigError
from controller_vault.staff.mailer import SmtpConfig

from .conftest import SmtpServer

NOW = 1_700_000_000
CANARY = "canary-7f3a@example.org"
SECRET = "webhook-shared-secret"


class Hook:
    """A webhook receiver on a real socket."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        return web.Response(status=self.status)


@pytest.fixture
async def hook(aiohttp_server: Any) -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/alerts", receiver.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield receiver, str(server.make_url("/alerts"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _smtp(server: SmtpServer) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=server.port, security="none",
                      from_addr="vault@clinic.example", timeout_s=10)


@pytest.mark.timeout(30)
async def test_alert_reaches_webhook_email_and_metric(
        hook: tuple[Hook, str], smtp_plain: SmtpServer, session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver, url = hook
    registry = CollectorRegistry()
    dispatcher = AlertDispatcher(
        AlertConfig(webhook_url=url, webhook_secret=SECRET, email_to=("dpo@clinic.example",)),
        registry=registry, session=session, smtp=_smtp(smtp_plain))
    alert = new_alert("tampered_envelope", "clinic", now=NOW, code="envelope.undecryptable",
                      engagement_ids=["eng-00000007"], key_ids=["0123456789abcdef01234567"])
    assert await dispatcher.deliver(alert) == {"webhook": True, "email": True}

    body = receiver.bodies[0]
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert receiver.headers[0]["X-Alert-Signature"] == f"sha256={mac}"
    payload = json.loads(body)
    assert payload["kind"] == "tampered_envelope" and payload["id"] == alert.alert_id
    assert payload["raised_at"] == "2023-11-14T22:13:20Z"
    assert payload["notify_deadline"] == "2023-11-17T22:13:20Z"
    assert payload["engagement_ids"] == ["eng-00000007"]
    assert set(payload) == {"type", "v", "id", "kind", "account", "raised_at", "raised_at_unix",
                            "notify_deadline", "summary", "count", "code", "engagement_ids",
                            "key_ids", "token_ids"}

    mail = smtp_plain.mailbox.messages[0]
    assert mail["To"] == "dpo@clinic.example"
    assert "tampered_envelope" in mail["Subject"]
    content = mail.get_content()
    assert alert.alert_id in content and "2023-11-17T22:13:20Z" in content
    assert registry.get_sample_value("vault_alerts_total",
                                     {"kind": "tampered_envelope"}) == 1.0
    assert alert.alert_id in caplog.text


@pytest.mark.timeout(30)
async def test_failed_delivery_is_counted_not_raised(session: aiohttp.ClientSession,
                                                     hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    receiver.status = 500
    registry = CollectorRegistry()
    dead_smtp = SmtpConfig(host="127.0.0.1", port=1, security="none",
                           from_addr="vault@clinic.example", timeout_s=2)
    dispatcher = AlertDispatcher(AlertConfig(webhook_url=url, email_to=("dpo@clinic.example",)),
                                 registry=registry, session=session, smtp=dead_smtp)
    result = await dispatcher.deliver(new_alert("link_auth_failed", "clinic", now=NOW))
    assert result == {"webhook": False, "email": False}
    for channel in ("webhook", "email"):
        assert registry.get_sample_value("vault_alert_delivery_failures_total",
                                         {"channel": channel}) == 1.0


def test_alerts_refuse_anything_that_is_not_an_id(caplog: pytest.LogCaptureFixture) -> None:
    for kwargs in ({"engagement_ids": [CANARY]}, {"key_ids": [CANARY]},
                   {"token_ids": [CANARY]}, {"code": CANARY}):
        with pytest.raises(AlertError) as err:
            new_alert("forged_envelope", "clinic", now=NOW, **kwargs)  # type: ignore[arg-type]
        assert CANARY not in str(err.value)
    with pytest.raises(AlertError):
        new_alert("forged_envelope", CANARY, now=NOW)
    with pytest.raises(AlertError):
        new_alert("something_else", "clinic", now=NOW)
    assert CANARY not in caplog.text


@pytest.mark.parametrize("kind", sorted(ALERT_KINDS))
def test_every_kind_has_a_payload_with_a_deadline(kind: str) -> None:
    payload = new_alert(kind, "clinic", now=NOW).to_payload()
    assert payload["raised_at_unix"] == NOW
    assert payload["notify_deadline"] == "2023-11-17T22:13:20Z"


def test_burst_window_is_a_pure_function() -> None:
    times: tuple[float, ...] = ()
    last = None
    alarms = []
    for t in [0, 10, 20, 30, 40, 50, 59, 70, 200, 210]:
        times, alarm = detect_burst(times, t, window_s=60, threshold=3, last_alert_at=last)
        if alarm:
            last = t
            alarms.append(t)
    # 4 events by t=30 cross the threshold; the window silences 40..89 (no event falls
    # in 90..199); by 200 the old events have left the window.
    assert alarms == [30]
    assert times == (200, 210)


@given(events=st.lists(st.integers(0, 1000), max_size=60), window=st.integers(1, 300),
       threshold=st.integers(1, 10))
def test_burst_counts_exactly_the_window(events: list[int], window: int, threshold: int) -> None:
    events.sort()
    times: tuple[float, ...] = ()
    for i, t in enumerate(events):
        times, alarm = detect_burst(times, t, window_s=window, threshold=threshold,
                                    last_alert_at=None)
        assert list(times) == [e for e in events[:i + 1] if t - window < e <= t]
        assert alarm == (len(times) > threshold)


@pytest.mark.timeout(30)
async def test_export_burst_raises_one_alert(hook: tuple[Hook, str],
                                             session: aiohttp.ClientSession) -> None:
    receiver, url = hook
    dispatcher = AlertDispatcher(AlertConfig(webhook_url=url, export_burst_threshold=3,
                                             burst_window_s=60),
                                 registry=CollectorRegistry(), session=session)
    raised = [await dispatcher.record("export", "clinic", now=NOW + i, token_id="0" * 16)
              for i in range(10)]
    alerts = [a for a in raised if a is not None]
    assert len(alerts) == 1 and alerts[0].kind == "export_burst" and alerts[0].count == 4
    assert [json.loads(b)["kind"] for b in receiver.bodies] == ["export_burst"]
    assert await dispatcher.record("erasure", "clinic", now=NOW) is None


@pytest.mark.parametrize("kwargs", [
    {"webhook_url": "ftp://x"}, {"email_to": ("not an address",)},
    {"burst_window_s": 0}, {"export_burst_threshold": 0},
])
def test_bad_alert_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(StaffConfigError) as err:
        AlertConfig(**kwargs)
    assert err.value.code == "config.bad_alerts"

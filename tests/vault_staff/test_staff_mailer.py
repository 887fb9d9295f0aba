"""Transcript email against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from controller_vault.staff.errors import MailError, MailRejected, StaffConfigError
from controller_vault.staff.mailer import SmtpConfig, check_address, send_transcript

from .conftest import SMTP_PASSWORD, SMTP_USER, RefusingMailbox, SmtpServer, smtp_server

VISITOR = "canary-visitor-7f3a@example.org"
TRANSCRIPT: dict[str, Any] = {
    "engagement_id": "eng-00000042", "account": "clinic", "started_at": 1_700_000_000,
    "ended_at": 1_700_000_600, "complete": True,
    "messages": [
        {"seq": 1, "role": "visitor", "ts": 1_700_000_010, "text": "Hello, I need a refill"},
        {"seq": 1, "role": "agent", "ts": 1_700_000_030, "text": "Sure <b>now</b>",
         "sender": "agent-7"},
    ],
}


def _config(server: SmtpServer, security: str, **extra: Any) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=server.port, security=security,
                      from_addr="noreply@clinic.example", timeout_s=10, **extra)


def _check_received(server: SmtpServer) -> None:
    assert len(server.mailbox.messages) == 1
    msg = server.mailbox.messages[0]
    assert msg["To"] == VISITOR and msg["From"] == "noreply@clinic.example"
    assert server.mailbox.envelopes[0] == ("noreply@clinic.example", [VISITOR])
    assert msg["Subject"] == "Your chat transcript eng-00000042"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert "Hello, I need a refill" in text.get_content()
    assert "agent (agent-7):" in text.get_content()
    assert "Sure &lt;b&gt;now&lt;/b&gt;" in html.get_content()


@pytest.mark.timeout(30)
async def test_transcript_email_over_plain_smtp(smtp_plain: SmtpServer) -> None:
    await send_transcript(_config(smtp_plain, "none"), VISITOR, TRANSCRIPT)
    _check_received(smtp_plain)


@pytest.mark.timeout(30)
async def test_transcript_email_over_starttls_with_login(smtp_starttls: SmtpServer) -> None:
    config = _config(smtp_starttls, "starttls", username=SMTP_USER, password=SMTP_PASSWORD,
                     ca_file=smtp_starttls.ca_file)
    await send_transcript(config, VISITOR, TRANSCRIPT)
    _check_received(smtp_starttls)
    assert smtp_starttls.mailbox.logins == [SMTP_USER]


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_transcript_email_over_implicit_tls(smtp_implicit_tls: SmtpServer) -> None:
    config = _config(smtp_implicit_tls, "tls", username=SMTP_USER, password=SMTP_PASSWORD,
                     ca_file=smtp_implicit_tls.ca_file)
    await send_transcript(config, VISITOR, TRANSCRIPT)
    _check_received(smtp_implicit_tls)


@pytest.mark.timeout(30)
async def test_untrusted_certificate_is_refused(smtp_starttls: SmtpServer) -> None:
    config = _config(smtp_starttls, "starttls", username=SMTP_USER, password=SMTP_PASSWORD)
    with pytest.raises(MailError) as err:
        await send_transcript(config, VISITOR, TRANSCRIPT)
    assert err.value.code == "mail.send_failed"
    assert smtp_starttls.mailbox.messages == []


@pytest.mark.timeout(30)
async def test_starttls_is_required_not_opportunistic(smtp_plain: SmtpServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MailError) as err:
        await send_transcript(_config(smtp_plain, "starttls"), VISITOR, TRANSCRIPT)
    assert err.value.code == "mail.send_failed"
    assert smtp_plain.mailbox.messages == []
    assert VISITOR not in err.value.message and VISITOR not in caplog.text


@pytest.mark.timeout(30)
async def test_wrong_password_fails_without_echoing_anything(
        smtp_starttls: SmtpServer) -> None:
    config = _config(smtp_starttls, "starttls", username=SMTP_USER, password="wrong",
                     ca_file=smtp_starttls.ca_file)
    with pytest.raises(MailError) as err:
        await send_transcript(config, VISITOR, TRANSCRIPT)
    assert "wrong" not in err.value.message and VISITOR not in err.value.message
    assert smtp_starttls.mailbox.messages == []
    # A 5xx to AUTH is the vault's configuration, not this message: retried, not final.
    assert err.value.code == "mail.send_failed" and not isinstance(err.value, MailRejected)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("refuse", "reply", "code", "smtp_code"), [
    ("RCPT", "550 5.1.1 <{address}>: mailbox unavailable", "mail.rejected", 550),
    ("RCPT", "553 5.1.3 <{address}>: bad destination address", "mail.rejected", 553),
    # The vault's sender refused: its setup, the same for every job, so retried (but a
    # message too large for the server, 552, is this message's own).
    ("MAIL", "553 5.1.8 <{address}>: sender address rejected", "mail.send_failed", None),
    ("MAIL", "552 5.3.4 message size exceeds fixed limit", "mail.rejected", 552),
    # x.7.x: relaying denied, SPF/DMARC: the vault's standing with the server, retried.
    ("RCPT", "554 5.7.1 <{address}>: Relay access denied", "mail.send_failed", None),
    ("RCPT", "550 5.7.26 unauthenticated mail for <{address}> is prohibited",
     "mail.send_failed", None),
    ("DATA", "554 5.6.0 message for <{address}> refused", "mail.rejected", 554),
    ("RCPT", "451 4.3.0 <{address}>: try again later", "mail.send_failed", None),
    ("DATA", "452 4.3.1 insufficient storage for <{address}>", "mail.send_failed", None),
    # "Authentication required" / "STARTTLS first": the vault's configuration.
    ("MAIL", "530 5.7.0 Authentication required", "mail.send_failed", None),
])
async def test_only_a_5xx_refusal_of_the_message_is_final(
        refuse: str, reply: str, code: str, smtp_code: int | None,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    handler = RefusingMailbox(refuse=refuse, reply=reply)
    with smtp_server(handler) as port:
        config = SmtpConfig(host="127.0.0.1", port=port, security="none",
                            from_addr="noreply@clinic.example", timeout_s=10)
        with pytest.raises(MailError) as err:
            await send_transcript(config, VISITOR, TRANSCRIPT)
    assert err.value.code == code and handler.tries == 1 and handler.messages == []
    assert getattr(err.value, "smtp_code", None) == smtp_code
    # The server's reply quotes the address; none of it reaches the error.
    assert VISITOR not in err.value.message and "noreply@" not in err.value.message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    ours = [r for r in caplog.records if r.name != "mail.log"]  # mail.log: the server's
    assert all(VISITOR not in r.getMessage() for r in ours)


@pytest.mark.timeout(30)
async def test_unreachable_server_is_a_stable_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = SmtpConfig(host="127.0.0.1", port=port, security="none",
                        from_addr="noreply@clinic.example", timeout_s=5)
    with pytest.raises(MailError) as err:
        await send_transcript(config, VISITOR, TRANSCRIPT)
    assert err.value.code == "mail.send_failed"


@pytest.mark.parametrize("address", [
    "a@b.example\r\nBcc: x@evil.example", "two@a.example, three@b.example",
    "Name <a@b.example>", "no-at-sign", "a@localhost", "x" * 65 + "@a.example", "",
])
def test_bad_recipients_are_refused(address: str) -> None:
    with pytest.raises(MailError) as err:
        check_address(address)
    assert (err.value.code, err.value.status) == ("mail.bad_recipient", 400)
    assert address not in err.value.message or address == ""


@pytest.mark.parametrize("kwargs", [
    {"security": "ssl"}, {"security": "none", "username": "u", "password": "p"},
    {"port": 0}, {"from_addr": "not an address"},
])
def test_bad_smtp_config(kwargs: dict[str, Any]) -> None:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 25, "security": "starttls",
                              "from_addr": "v@clinic.example", **kwargs}
    with pytest.raises(StaffConfigError) as err:
        SmtpConfig(**values)
    assert err.value.code == "config.bad_smtp"


def test_password_never_in_repr() -> None:
    config = SmtpConfig.from_config({"host": "h", "port": 587, "from_addr": "v@c.example",
                                     "username": "u", "password_file": "/x"},
                                    password=SMTP_PASSWORD)
    assert SMTP_PASSWORD not in repr(config)

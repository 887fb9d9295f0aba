"""Email through the controller's own SMTP server: transcripts to visitors, alerts to staff.

Config (TOML ``[smtp]``)::

    host = "mail.clinic.example"   port = 587
    security = "starttls"          # "starttls" | "tls" (implicit, port 465) | "none"
    username = "vault"             password_file = "/etc/controller-vault/smtp-password"
    from_addr = "noreply@clinic.example"
    ca_file = ""                   # extra CA bundle for a private mail server
    timeout_s = 20

smtplib runs in a worker thread (``asyncio.to_thread``) so a slow mail server never
blocks the event loop. Errors carry fixed messages: the recipient address and the
server's reply (which may echo it) never reach a log line or an error body.

Two kinds of failure: ``mail.rejected`` (MailRejected) when the server refuses this
message for good, a 5xx reply to RCPT TO or DATA (552 to MAIL FROM); ``mail.send_failed``
for everything that may pass (4xx replies, connection refused or reset, timeouts, TLS)
and for what is the vault's own setup, not the message (5xx to EHLO, STARTTLS, AUTH or
MAIL FROM, 530, x.7.x policy replies).

>>> SmtpConfig(host="127.0.0.1", port=25, security="none", from_addr="v@x.example").port
25
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from .errors import MailError, MailRejected, StaffConfigError
from .render import render_html, render_text

__all__ = [
    "SmtpConfig",
    "build_message",
    "build_transcript_message",
    "check_address",
    "send_message",
    "send_transcript",
]

_SECURITY = ("starttls", "tls", "none")
# Deliberately narrow: one mailbox, no display name, no comments, no quoted local part.
# CR and LF can never match, so no header injection through an address.
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MAX_ADDRESS = 254
# 530 is "authentication required" (RFC 4954) or "issue STARTTLS first": the server
# wants the vault to log in or encrypt, whatever the message. Like a 5xx to AUTH it is
# the vault's configuration, retried so that fixing [smtp] delivers the waiting mail.
_CONFIG_REPLIES = frozenset({530})
# An enhanced status code (RFC 3463) at the start of a reply: only these digits are read
# from the server's text, which may quote the address. Class 7 (x.7.x: security or
# policy, e.g. 5.7.1 "relaying denied", 5.7.26 "SPF/DMARC failed") is the vault's
# sending setup, the same for every message: retried like the 530 above.
_ENHANCED = re.compile(rb"\s*[245]\.(\d{1,3})\.\d{1,3}(?:\s|$)")


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach the controller's SMTP server."""

    host: str
    port: int
    from_addr: str
    security: str = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)   # never printed with the config
    ca_file: str = ""
    timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.security not in _SECURITY:
            raise StaffConfigError("smtp.security must be starttls, tls or none",
                                   code="config.bad_smtp")
        if not self.host or not 0 < self.port < 65536:
            raise StaffConfigError("smtp.host and smtp.port are required", code="config.bad_smtp")
        if self.security == "none" and (self.username or self.password):
            # Credentials over an unencrypted connection would hand the mail password
            # to anyone on the path; refuse the combination outright.
            raise StaffConfigError("smtp credentials need starttls or tls",
                                   code="config.bad_smtp")
        try:
            check_address(self.from_addr)
        except MailError as exc:
            raise StaffConfigError("smtp.from_addr is not an address",
                                   code="config.bad_smtp") from exc

    @classmethod
    def from_config(cls, table: Mapping[str, Any], *, password: str = "") -> SmtpConfig:
        """A config from a TOML ``[smtp]`` table; the password comes from its file."""
        known = {"host", "port", "from_addr", "security", "username", "password_file",
                 "ca_file", "timeout_s"}
        if set(table) - known:
            raise StaffConfigError("unknown smtp setting", code="config.bad_smtp")
        values = {k: v for k, v in table.items() if k != "password_file"}
        return cls(password=password, **values)

    def tls_context(self) -> ssl.SSLContext:
        """A verifying TLS context (system CAs, plus ``ca_file`` when set)."""
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context


def check_address(address: str) -> str:
    """``address`` if it is one plain mailbox; MailError (mail.bad_recipient) otherwise."""
    if (not isinstance(address, str) or len(address) > _MAX_ADDRESS
            or not _ADDRESS.fullmatch(address)):
        raise MailError("the email address is not acceptable", code="mail.bad_recipient",
                        status=400)
    return address


def build_message(config: SmtpConfig, to_addrs: Sequence[str], subject: str, text: str,
                  html: str | None = None) -> EmailMessage:
    """A text (and optional HTML) message from the configured sender."""
    msg = EmailMessage()
    msg["From"] = config.from_addr
    msg["To"] = ", ".join(check_address(a) for a in to_addrs)
    msg["Subject"] = subject.replace("\r", " ").replace("\n", " ")
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.from_addr.rsplit("@", 1)[1])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def build_transcript_message(config: SmtpConfig, to_addr: str,
                             transcript: Mapping[str, Any]) -> EmailMessage:
    """The visitor's transcript email: plain text plus the printable HTML page."""
    subject = f"Your chat transcript {transcript.get('engagement_id', '')}"
    return build_message(config, [to_addr], subject, render_text(transcript),
                         render_html(transcript))


def _send_sync(config: SmtpConfig, msg: EmailMessage) -> None:
    smtp: smtplib.SMTP
    if config.security == "tls":
        smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout_s,
                                context=config.tls_context())
    else:
        smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
    with smtp:
        smtp.ehlo()
        if config.security == "starttls":
            # STARTTLS is required, not opportunistic: a server (or a man in the middle)
            # that does not offer it gets nothing, rather than a transcript in the clear.
            if not smtp.has_extn("starttls"):
                raise MailError("the mail server does not offer STARTTLS",
                                code="mail.send_failed")
            smtp.starttls(context=config.tls_context())
            smtp.ehlo()
        if config.username:
            # A 5xx here (bad password, no AUTH offered) stays mail.send_failed: it is
            # the vault's configuration, and every job would fail alike until it is fixed.
            smtp.login(config.username, config.password)
        try:
            smtp.send_message(msg)
        except smtplib.SMTPException as exc:
            code = _permanent_refusal(exc)
            if code is not None:
                raise MailRejected(code) from None
            raise


def _permanent_refusal(exc: smtplib.SMTPException) -> int | None:
    """The 5xx reply code if the server refused this message for good, else None.

    Only refusals of this message's recipient or content end its job: a refusal of the
    vault's sender (MAIL FROM, but for 552: this message too large) or of its standing
    (an x.7.x policy reply) would refuse every job alike until the controller fixes the
    setup, so those are retried, and the waiting transcripts go out once it is fixed.
    """
    replies: list[tuple[int, bytes]]
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = [(int(code), _raw(text)) for code, text in exc.recipients.values()]
    elif isinstance(exc, smtplib.SMTPSenderRefused):
        if int(exc.smtp_code) != 552:
            return None
        replies = [(552, _raw(exc.smtp_error))]
    elif isinstance(exc, smtplib.SMTPDataError):
        replies = [(int(exc.smtp_code), _raw(exc.smtp_error))]
    else:
        return None  # a dropped connection, a refused EHLO: may pass
    # Permanent only if every recipient was refused permanently: one 4xx among them
    # means a retry can still deliver (smtplib raises only when all were refused).
    if replies and all(500 <= c < 600 and c not in _CONFIG_REPLIES and not _policy(text)
                       for c, text in replies):
        return replies[0][0]
    return None


def _raw(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "replace")


def _policy(reply: bytes) -> bool:
    """Whether the reply's enhanced status code is of class 7 (security or policy)."""
    m = _ENHANCED.match(reply)
    return m is not None and m.group(1) == b"7"


async def send_message(config: SmtpConfig, msg: EmailMessage) -> None:
    """Send ``msg``; MailRejected (mail.rejected) on a 5xx refusal, else MailError."""
    try:
        await asyncio.to_thread(_send_sync, config, msg)
    except MailError:
        raise
    except (smtplib.SMTPException, OSError) as exc:
        # The exception text can contain the server's reply, which may echo the
        # recipient; only its class name is kept.
        raise MailError(f"the mail server refused or failed ({type(exc).__name__})",
                        code="mail.send_failed") from None


async def send_transcript(config: SmtpConfig, to_addr: str,
                          transcript: Mapping[str, Any]) -> None:
    """Email one transcript to the visitor who asked for it."""
    await send_message(config, build_transcript_message(config, to_addr, transcript))

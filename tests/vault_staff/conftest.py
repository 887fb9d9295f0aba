"""Fixtures of the staff-side tests: a real SMTP server (aiosmtpd) on 127.0.0.1, with TLS."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import pathlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SMTP_USER, SMTP_PASSWORD = "vault", "s3cret-mail-password"


@dataclass
class Mailbox:
    """What the test SMTP server received."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        msg = message_from_bytes(raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
              and auth_data.password == SMTP_PASSWORD.encode())
        if ok:
            self.logins.append(SMTP_USER)
        return AuthResult(success=ok, handled=False)


@dataclass
class RefusingMailbox(Mailbox):
    """A server that answers ``reply`` to one command (MAIL, RCPT or DATA) of each message.

    ``{address}`` in the reply is replaced by the address the command named, as real
    servers echo it ("550 5.1.1 <x@y>: Recipient address rejected"): the vault must
    keep that text out of its logs and audit. ``tries`` counts MAIL commands: one per
    delivery attempt.
    """

    refuse: str = "RCPT"
    reply: str = "550 5.1.1 <{address}>: mailbox unavailable"
    tries: int = 0

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        self.tries += 1
        if self.refuse == "MAIL":
            return self.reply.format(address=address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.refuse == "RCPT":
            return self.reply.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse == "DATA":
            return self.reply.format(address=",".join(envelope.rcpt_tos))
        return await super().handle_DATA(server, session, envelope)


@contextlib.contextmanager
def smtp_server(handler: Mailbox, port: int | None = None) -> Iterator[int]:
    """Run a plain SMTP server with ``handler`` on 127.0.0.1 (``port`` or a free one)."""
    port = port or _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10,
                            auth_require_tls=False)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@dataclass
class SmtpServer:
    """A running test SMTP server."""

    port: int
    mailbox: Mailbox
    ca_file: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert doubles as the CA file) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = pathlib.Path(directory, "cert.pem"), pathlib.Path(directory, "key.pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _server_context(tls_files: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    return context


def _run(mode: str, tls_files: tuple[str, str]) -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = _free_port()
    kwargs: dict[str, Any] = {}
    if mode == "plain":
        kwargs.update(auth_require_tls=False)
    elif mode == "starttls":
        kwargs.update(tls_context=_server_context(tls_files), require_starttls=True,
                      authenticator=mailbox.authenticate, auth_required=True)
    else:
        # aiosmtpd does not count implicit TLS as TLS for its AUTH rule; the whole
        # connection is TLS here, so the rule is lifted for this server only.
        kwargs.update(ssl_context=_server_context(tls_files), auth_require_tls=False,
                      authenticator=mailbox.authenticate, auth_required=True)
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, ready_timeout=10,
                            **kwargs)
    controller.start()
    try:
        yield SmtpServer(port=port, mailbox=mailbox, ca_file=tls_files[0])
    finally:
        controller.stop()


@pytest.fixture
def smtp_plain(tls_files: tuple[str, str]) -> Iterator[SmtpServer]:
    """An SMTP server without TLS or authentication (a local relay on port 25)."""
    yield from _run("plain", tls_files)


@pytest.fixture
def smtp_starttls(tls_files: tuple[str, str]) -> Iterator[SmtpServer]:
    """An SMTP server that requires STARTTLS and AUTH (submission, port 587 style)."""
    yield from _run("starttls", tls_files)


@pytest.fixture
def smtp_implicit_tls(tls_files: tuple[str, str]) -> Iterator[SmtpServer]:
    """An SMTP server behind implicit TLS with AUTH (port 465 style)."""
    yield from _run("tls", tls_files)


# -- a real vault app (real SQLite files in tmp_path) for the integration tests ------

VAULT_NOW = 1_800_000_000
VAULT_ACCOUNT = "clinic"


@dataclass
class StaffVault:
    """The real vault app behind a test client, with envelope factories."""

    state: pathlib.Path
    app: Any
    client: Any
    keys: Any
    clock: list[int]
    tokens: dict[str, str] = field(default_factory=dict)
    seqs: dict[tuple[str, bytes], int] = field(default_factory=dict)

    def env(self, engagement: str, sender: Any, kind: str, body: dict[str, Any], *,
            role: str = "visitor") -> bytes:
        """One envelope of ``engagement`` sealed to the vault (next sequence of ``sender``)."""
        from envelope import encode_body, seal

        key = (engagement, sender.signing_public_bytes)
        self.seqs[key] = self.seqs.get(key, 0) + 1
        return seal(encode_body(kind, body), sender=sender, role=role, account=VAULT_ACCOUNT,
                    engagement=engagement, sequence=self.seqs[key], kind=kind,
                    recipients=[self.keys.current_key.public_bytes])

    async def ingest(self, frames: list[bytes], at: int | None = None) -> Any:
        """Ingest through the app's own Ingestor at ``at`` (default: the app clock)."""
        from controller_vault.app import INGESTOR

        return await self.app[INGESTOR].ingest(frames, self.clock[0] if at is None else at)

    def auth(self, scope: str, purpose: str | None = "ticket 42") -> dict[str, str]:
        """Headers of a request made with the token holding ``scope``."""
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"}
        if purpose is not None:
            headers["X-Purpose"] = purpose
        return headers

    def files(self) -> bytes:
        """Every byte of the vault's files (databases, WALs, key store, staff.db)."""
        return b"".join(p.read_bytes() for p in sorted(self.state.rglob("*")) if p.is_file())


@pytest.fixture
def make_staff_vault(tmp_path: pathlib.Path, aiohttp_client: Any) -> Any:
    """Factory: start the real vault app with the given staff settings and config fields."""

    async def start(staff: Any = None, **cfg_fields: Any) -> StaffVault:
        from controller_vault.app import create_app
        from controller_vault.config import StaffSettings, VaultConfig
        from controller_vault.keyfiles import init_vault
        from controller_vault.staff.access import STAFF_TOKENS
        from controller_vault.staff.tokens import SCOPES

        state = tmp_path / "vault"
        keys = init_vault(state, VAULT_ACCOUNT, now=VAULT_NOW)
        cfg_fields.setdefault("retention_sweep_s", 0.0)
        cfg = VaultConfig(account=VAULT_ACCOUNT, state_dir=str(state), **cfg_fields)
        clock = [VAULT_NOW]
        app = create_app(cfg, keys=keys, clock=lambda: float(clock[0]),
                         staff=staff or StaffSettings())
        client = await aiohttp_client(app)
        vault = StaffVault(state, app, client, keys, clock)
        for scope in sorted(SCOPES):
            vault.tokens[scope], _ = await app[STAFF_TOKENS].issue(
                f"staff-{scope}", [scope], now=VAULT_NOW)
        return vault

    return start

"""The vault link and `pair` over REAL TLS: a CA and a leaf certificate for 127.0.0.1 are
made here with cryptography, the real relay app (relay.app.create_app) serves https/wss
on 127.0.0.1, and the vault pairs and links against it with a CA file, the system store
only, a pinned certificate, or a wrong pin. Plus the config-load refusals (http:// to a
host across a network, malformed pins)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import pathlib
import random
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller_vault.config import VaultConfig, load_config, parse_cert_sha256
from controller_vault.errors import ConfigError, PairingError
from controller_vault.ingest import Ingestor
from controller_vault.keyfiles import VaultKeys, init_vault
from controller_vault.keystore import KeyStore
from controller_vault.link_client import VaultLink
from controller_vault.metrics import VaultMetrics
from controller_vault.pairing import publish_vault_key, relay_ssl
from controller_vault.store import VaultStore
from envelope import PartyKeys, encode_body, envelope_hash, parse_envelope, seal
from relay.state import STATE
from relay.store import OutboxEntry
from tests.support.procs import OperatorRelay

pytestmark = pytest.mark.timeout(60)

OPERATOR = "operator-token-for-tls-tests-0123456789"
ACCOUNT = "clinic"


@dataclass(frozen=True)
class Pki:
    """A test CA and a leaf certificate for 127.0.0.1 signed by it, as PEM files."""

    ca_file: str
    cert_file: str
    key_file: str
    leaf_sha256: str  # colon-separated upper-case hex, as `openssl x509 -fingerprint` prints


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _make_pki(directory: pathlib.Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test relay CA"))
          .issuer_name(_name("test relay CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {n: directory / n for n in ("ca.pem", "relay.pem", "relay.key")}
    paths["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["relay.pem"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["relay.key"].write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Pki(str(paths["ca.pem"]), str(paths["relay.pem"]), str(paths["relay.key"]),
               ":".join(digest[i:i + 2] for i in range(0, 64, 2)).upper())


@dataclass
class TlsRelay:
    """The real relay app behind TLS on 127.0.0.1, with the account and admin token."""

    url: str
    app: web.Application
    admin: str = ""

    async def backlog(self) -> int:
        """Entries in the account's outbox (the relay deletes them on a valid receipt)."""
        return (await self.app[STATE].store.outbox_stats(ACCOUNT)).entries


@dataclass
class Vault:
    """A freshly initialised vault on real SQLite files."""

    state: pathlib.Path
    keys: VaultKeys
    store: VaultStore
    keystore: KeyStore
    ingestor: Ingestor


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return _make_pki(tmp_path)


@pytest.fixture
async def tls_relay(tmp_path: pathlib.Path, pki: Pki) -> AsyncIterator[TlsRelay]:
    # The relay states its https origin in the link challenge: OperatorRelay binds the
    # port before the app is built.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.cert_file, pki.key_file)
    server = await OperatorRelay.start(
        tmp_path, OPERATOR, state_dir=tmp_path / "relay", ssl_context=server_ctx,
        client_ssl=ssl.create_default_context(cafile=pki.ca_file))
    relay = TlsRelay(server.url, server.app)
    try:
        relay.admin = await server.create_account(
            ACCOUNT, origins=["https://clinic.example"], mode="standard", retention_days=30)
        yield relay
    finally:
        await server.close()


@pytest.fixture
async def vault(tmp_path: pathlib.Path) -> AsyncIterator[Vault]:
    state = tmp_path / "vault"
    keys = init_vault(state, ACCOUNT, now=int(time.time()))
    store = await VaultStore.open(state / "vault.db", ACCOUNT)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    yield Vault(state, keys, store, keystore, Ingestor(keys, store, keystore))
    await store.close()
    await keystore.close()


async def _queue_envelope(relay: TlsRelay, vault: Vault) -> None:
    """Put one visitor message sealed to the vault into the relay's outbox."""
    env = seal(encode_body("message", {"text": "hello over tls"}), sender=PartyKeys.generate(),
               role="visitor", account=ACCOUNT, engagement="eng-00000001", sequence=1,
               kind="message", recipients=[vault.keys.current_key.public_bytes])
    await relay.app[STATE].store.append_outbox([OutboxEntry(
        ACCOUNT, 0, parse_envelope(env).header.envelope_id, "eng-00000001",
        envelope_hash(env), env, int(time.time()))])


def _link(vault: Vault, url: str, **tls: str) -> VaultLink:
    cfg = VaultConfig(account=ACCOUNT, state_dir=str(vault.state), relay_url=url,
                      batch_wait_ms=10, backoff_initial_s=0.05, backoff_max_s=0.2, **tls)
    return VaultLink(cfg, vault.keys, vault.ingestor, VaultMetrics(), rng=random.Random(3))


async def _delivered_over(link: VaultLink, relay: TlsRelay, vault: Vault) -> None:
    """Run the link until the envelope is stored and receipted (bounded)."""
    task = asyncio.create_task(link.run())
    try:
        async def delivered() -> None:
            while await relay.backlog() or not (await vault.store.stats()).envelopes:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(delivered(), 15)
        assert link.state == "ready"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (await vault.store.stats()).envelopes == 1 and await relay.backlog() == 0


async def _refused_by(link: VaultLink, relay: TlsRelay, vault: Vault) -> str:
    """Run the link for a few attempts; it must never get past TLS. Returns the close code."""
    task = asyncio.create_task(link.run())
    try:
        async def retried() -> None:
            while link.sessions < 3 or link.state != "backoff":
                await asyncio.sleep(0.01)

        await asyncio.wait_for(retried(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (await vault.store.stats()).envelopes == 0 and await relay.backlog() == 1
    return link.last_close_code


async def test_ca_file_pairs_links_and_delivers(tls_relay: TlsRelay, vault: Vault,
                                                pki: Pki) -> None:
    await publish_vault_key(tls_relay.url, tls_relay.admin, vault.keys, ca_file=pki.ca_file)
    await _queue_envelope(tls_relay, vault)
    await _delivered_over(_link(vault, tls_relay.url, relay_ca_file=pki.ca_file),
                          tls_relay, vault)


async def test_system_store_alone_refuses_the_private_ca(tls_relay: TlsRelay, vault: Vault,
                                                         pki: Pki) -> None:
    with pytest.raises(PairingError) as refused:
        await publish_vault_key(tls_relay.url, tls_relay.admin, vault.keys)
    assert refused.value.code == "pair.cert_untrusted"
    await publish_vault_key(tls_relay.url, tls_relay.admin, vault.keys, ca_file=pki.ca_file)
    await _queue_envelope(tls_relay, vault)
    code = await _refused_by(_link(vault, tls_relay.url), tls_relay, vault)
    assert code == "ClientConnectorCertificateError"


async def test_pinned_certificate_works_without_a_ca_file(tls_relay: TlsRelay, vault: Vault,
                                                          pki: Pki) -> None:
    await publish_vault_key(tls_relay.url, tls_relay.admin, vault.keys,
                            cert_sha256=pki.leaf_sha256)
    await _queue_envelope(tls_relay, vault)
    # The bare lower-case form works as well as openssl's colon form.
    bare = pki.leaf_sha256.replace(":", "").lower()
    await _delivered_over(_link(vault, tls_relay.url, relay_cert_sha256=bare),
                          tls_relay, vault)


async def test_wrong_pin_is_refused_even_for_a_certificate_the_ca_vouches_for(
        tls_relay: TlsRelay, vault: Vault, pki: Pki) -> None:
    wrong = hashlib.sha256(b"another certificate").hexdigest()
    with pytest.raises(PairingError) as refused:
        await publish_vault_key(tls_relay.url, tls_relay.admin, vault.keys, cert_sha256=wrong)
    assert refused.value.code == "pair.cert_mismatch"
    await publish_vault_key(tls_relay.url, tls_relay.admin, vault.keys, ca_file=pki.ca_file)
    await _queue_envelope(tls_relay, vault)
    code = await _refused_by(_link(vault, tls_relay.url, relay_cert_sha256=wrong),
                             tls_relay, vault)
    assert code == "ServerFingerprintMismatch"


def _load(tmp_path: pathlib.Path, **env: str) -> VaultConfig:
    base = {"VAULT_ACCOUNT": ACCOUNT, "VAULT_STATE_DIR": str(tmp_path)}
    return load_config(None, env=base | {f"VAULT_{k.upper()}": v for k, v in env.items()})


@pytest.mark.parametrize("url", ["http://relay.example", "http://10.0.0.5:8440",
                                 "http://127.0.0.1.relay.example", "ftp://127.0.0.1",
                                 "https://", "https://[::1", "https://relay.example:99999"])
def test_clear_text_or_malformed_relay_url_is_refused_at_load(tmp_path: pathlib.Path,
                                                              url: str) -> None:
    with pytest.raises(ConfigError, match="relay_url"):
        _load(tmp_path, relay_url=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8440", "http://localhost:8440",
                                 "http://[::1]:8440", "https://relay.example"])
def test_https_or_loopback_http_is_accepted(tmp_path: pathlib.Path, url: str) -> None:
    assert _load(tmp_path, relay_url=url).relay_url == url


async def test_pair_refuses_clear_text_before_sending_the_token(vault: Vault) -> None:
    with pytest.raises(PairingError) as refused:
        await publish_vault_key("http://relay.example", "admin-token", vault.keys)
    assert refused.value.code == "pair.insecure_url"


def test_pin_is_validated_at_load(tmp_path: pathlib.Path, pki: Pki) -> None:
    cfg = _load(tmp_path, relay_url="https://relay.example", relay_cert_sha256=pki.leaf_sha256)
    assert len(parse_cert_sha256(cfg.relay_cert_sha256)) == 32
    assert isinstance(relay_ssl(None, cfg.relay_cert_sha256), aiohttp.Fingerprint)
    for bad in ("abc", "zz" * 32, "ab" * 20):  # the last is SHA-1 sized
        with pytest.raises(ConfigError, match="relay_cert_sha256"):
            _load(tmp_path, relay_cert_sha256=bad)
    with pytest.raises(ConfigError, match="not both"):
        _load(tmp_path, relay_cert_sha256=pki.leaf_sha256, relay_ca_file=pki.ca_file)


async def test_pair_command_reads_the_pin_from_config(tls_relay: TlsRelay, vault: Vault,
                                                      pki: Pki, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from controller_vault.__main__ import main

    def pair(pin: str) -> int:
        monkeypatch.setenv("VAULT_RELAY_CERT_SHA256", pin)
        return main(["pair", "--relay", tls_relay.url, "--account", ACCOUNT,
                     "--token", tls_relay.admin, "--state-dir", str(vault.state)])

    # The CLI runs its own event loop, so it goes to a thread; the relay serves from this one.
    assert await asyncio.wait_for(asyncio.to_thread(pair, "00" * 32), 20) == 1
    assert "pair.cert_mismatch" in capsys.readouterr().err
    assert await asyncio.wait_for(asyncio.to_thread(pair, pki.leaf_sha256), 20) == 0
    assert "paired account clinic" in capsys.readouterr().out
    # A bad setting: 78 (EX_CONFIG), as every configuration error exits.
    assert await asyncio.wait_for(asyncio.to_thread(pair, "not-a-pin"), 20) == 78
    assert "relay_cert_sha256" in capsys.readouterr().err

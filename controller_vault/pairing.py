"""Talking to the relay's admin API: publish the vault key (pairing, rotation) and agent
certificates. Only public keys and signed statements travel; the admin token is sent
as a bearer header and never logged.

:func:`relay_ssl` is the one place that decides how the relay's certificate is checked,
for the vault link and for these calls alike.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from envelope import EnvelopeError, b64d, b64e

from .config import check_relay_url, parse_cert_sha256
from .errors import ConfigError, PairingError
from .keyfiles import VaultKeys

__all__ = ["fetch_relay_signing_key", "publish_agent_certificate", "publish_vault_key",
           "relay_ssl"]


def relay_ssl(ca_file: str | None = None,
              cert_sha256: str | None = None) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The ``ssl=`` argument for every connection to the relay: a pin, a CA file, or
    the system store."""
    if cert_sha256:
        # Pinning the relay's own leaf certificate stops a rogue or compelled CA, or a
        # TLS-intercepting proxy on the controller's network whose CA the system store
        # trusts, from impersonating the relay to the vault: only the exact certificate
        # the controller copied from the relay operator is accepted.
        return aiohttp.Fingerprint(parse_cert_sha256(cert_sha256))
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True  # the system store, with hostname checking


async def _send(method: str, url: str, token: str, payload: dict[str, Any] | None,
                ca_file: str | None, cert_sha256: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        check_relay_url(url)  # never send the admin token in clear text across a network
    except ConfigError as exc:
        raise PairingError(exc.message, code="pair.insecure_url") from None
    tls = relay_ssl(ca_file, cert_sha256)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                method, url, json=payload, headers=headers, ssl=tls) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            if resp.status >= 400:
                code = "pair.http_error"
                if isinstance(body, dict) and isinstance(body.get("error"), dict):
                    code = str(body["error"].get("code", code))[:64]
                raise PairingError(f"relay answered {resp.status} ({code}) to {method} {url}",
                                   code=code)
            return body if isinstance(body, dict) else {}
    except aiohttp.ServerFingerprintMismatch:
        raise PairingError(f"the relay at {url} presented a certificate other than the "
                           "pinned relay_cert_sha256", code="pair.cert_mismatch") from None
    except aiohttp.ClientConnectorCertificateError:
        raise PairingError(f"the relay at {url} presented a certificate that does not "
                           "verify (set relay_ca_file or relay_cert_sha256?)",
                           code="pair.cert_untrusted") from None
    except aiohttp.ClientError as exc:
        raise PairingError(f"cannot reach the relay at {url}: {exc.__class__.__name__}",
                           code="pair.unreachable") from None


async def publish_vault_key(relay_url: str, token: str, keys: VaultKeys, *,
                            ca_file: str | None = None,
                            cert_sha256: str | None = None) -> dict[str, Any]:
    """PUT the identity key and current key statement (pairing; rotation republishes)."""
    url = f"{relay_url.rstrip('/')}/v1/accounts/{keys.account}/vault"
    return await _send("PUT", url, token, {"identity_key": b64e(keys.identity.public_bytes),
                                           "key_statement": keys.current_statement}, ca_file,
                       cert_sha256)


async def publish_agent_certificate(relay_url: str, token: str, account: str,
                                    certificate: dict[str, str], *,
                                    ca_file: str | None = None,
                                    cert_sha256: str | None = None) -> dict[str, Any]:
    """POST an agent certificate so the relay can hand it to clients."""
    url = f"{relay_url.rstrip('/')}/v1/accounts/{account}/agent-certificates"
    return await _send("POST", url, token, {"certificate": certificate}, ca_file,
                       cert_sha256)


async def fetch_relay_signing_key(relay_url: str, token: str, account: str, *,
                                  ca_file: str | None = None,
                                  cert_sha256: str | None = None) -> bytes | None:
    """The relay's signing public key from GET .../keys, or None if it publishes none."""
    # Read over the same authenticated TLS channel the pairing uses, at the moment the
    # controller deliberately pairs: the vault then refuses relay-role envelopes signed
    # by any other key (a third party sealing "connection-info" or "offload" to it).
    url = f"{relay_url.rstrip('/')}/v1/accounts/{account}/keys"
    body = await _send("GET", url, token, None, ca_file, cert_sha256)
    value = body.get("relay_signing_key")
    if value is None:
        return None
    try:
        return b64d(value, length=32)
    except EnvelopeError:
        raise PairingError("the relay's relay_signing_key is not a 32-byte base64url key",
                           code="pair.bad_relay_key") from None

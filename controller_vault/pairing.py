"""Talking to the relay's admin API: publish the vault key (pairing, rotation) and agent
certificates. Only public keys and signed statements travel; the admin token is sent
as a bearer header and never logged."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from envelope import b64e

from .errors import PairingError
from .keyfiles import VaultKeys

__all__ = ["publish_agent_certificate", "publish_vault_key"]


def _ssl(ca_file: str | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


async def _send(method: str, url: str, token: str, payload: dict[str, Any],
                ca_file: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                method, url, json=payload, headers=headers, ssl=_ssl(ca_file)) as resp:
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
    except aiohttp.ClientError as exc:
        raise PairingError(f"cannot reach the relay at {url}: {exc.__class__.__name__}",
                           code="pair.unreachable") from None


async def publish_vault_key(relay_url: str, token: str, keys: VaultKeys, *,
                            ca_file: str | None = None) -> dict[str, Any]:
    """PUT the identity key and current key statement (pairing; rotation republishes)."""
    url = f"{relay_url.rstrip('/')}/v1/accounts/{keys.account}/vault"
    return await _send("PUT", url, token, {"identity_key": b64e(keys.identity.public_bytes),
                                           "key_statement": keys.current_statement}, ca_file)


async def publish_agent_certificate(relay_url: str, token: str, account: str,
                                    certificate: dict[str, str], *,
                                    ca_file: str | None = None) -> dict[str, Any]:
    """POST an agent certificate so the relay can hand it to clients."""
    url = f"{relay_url.rstrip('/')}/v1/accounts/{account}/agent-certificates"
    return await _send("POST", url, token, {"certificate": certificate}, ca_file)

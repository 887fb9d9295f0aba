"""The vault link's handshake and refusals (protocol: envelope/link.py; the session that
follows is relay/vault_link.py).

The relay sends a fresh challenge naming its ``public_origin``; the vault answers with
its account and a signature by its identity key. What each check stops is in the table
at the top of relay/vault_link.py (fresh nonce, signed origin, paired key, auth
timeout). Every refusal is a :class:`LinkClosed` carrying a stable code, sent to the
vault as an error frame and as the close reason by :func:`close_link`.

Features: the auth frame may name link features (``features``, unsigned; see
envelope/link.py). The link uses those this relay also supports and has switched on
(``outbox-batch`` while ``link_batch_frames`` is true); a vault that names none, like
every vault before features existed, gets the link exactly as before. A ``features``
value that does not parse closes the link (``link.bad_frame``), after authentication.
"""

from __future__ import annotations

import contextlib
import json

import nacl.utils
from aiohttp import WSMsgType, web

from envelope import EnvelopeError, b64e, link_features, verify_link_auth
from envelope.limits import ACCOUNT_PATTERN
from envelope.link import BATCH_FEATURE, CLOSE_CODES

from .state import RelayState

__all__ = ["LINK_CLOSE_MESSAGES", "LinkClosed", "authenticate_vault", "close_link"]

#: The message sent with each stable close code (fixed text, never input).
LINK_CLOSE_MESSAGES = {
    "link.bad_frame": "unparseable or unknown frame",
    "link.auth_failed": "link authentication failed",
    "link.not_paired": "the account has no paired vault",
    "link.auth_timeout": "no auth frame in time",
    "link.superseded": "a newer link for the account took over",
    "link.bad_receipt": "receipt, reject or notice does not verify",
    "going-away": "relay shutting down",
}


class LinkClosed(Exception):
    """The link is refused or ended; ``code`` is the stable reason."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def close_link(ws: web.WebSocketResponse, code: str, message: str) -> None:
    """Send the error frame and close with the stable code as reason."""
    with contextlib.suppress(Exception):
        if not ws.closed:
            await ws.send_json({"type": "error", "code": code, "message": message})
            await ws.close(code=CLOSE_CODES.get(code, 4400), message=code.encode())


async def authenticate_vault(st: RelayState, ws: web.WebSocketResponse
                             ) -> tuple[str, bytes, frozenset[str]]:
    """Challenge the vault; return its account, paired identity key and the features the
    link will use, or raise LinkClosed."""
    nonce = nacl.utils.random(32)
    origin = st.config.public_origin
    await ws.send_json({"type": "challenge", "v": 1, "nonce": b64e(nonce), "origin": origin})
    try:
        msg = await ws.receive(timeout=st.config.link_auth_timeout_seconds)
    except TimeoutError:
        raise LinkClosed("link.auth_timeout") from None
    if msg.type != WSMsgType.TEXT or len(msg.data) > 4096:
        raise LinkClosed("link.bad_frame")
    try:
        frame = json.loads(msg.data)
    except (ValueError, RecursionError):
        raise LinkClosed("link.bad_frame") from None
    account = frame.get("account") if isinstance(frame, dict) else None
    if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account):
        raise LinkClosed("link.bad_frame")
    acct = await st.store.get_account(account)
    if acct is None or acct.identity_key is None:
        raise LinkClosed("link.not_paired")
    try:
        verify_link_auth(frame, acct.identity_key, account=account, nonce=nonce, origin=origin)
    except EnvelopeError:
        raise LinkClosed("link.auth_failed") from None
    try:
        named = link_features(frame)
    except EnvelopeError:
        raise LinkClosed("link.bad_frame") from None
    usable = {BATCH_FEATURE} if st.config.link_batch_frames else set()
    return account, acct.identity_key, named & usable

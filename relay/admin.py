"""The admin API under ``/v1``: accounts, tokens, pairing, certificates, mode, reports.

Authorization: ``Authorization: Bearer TOKEN``. The operator token (from config or
file) may do everything; an account-admin token only its own account (a token of
another account gets ``auth.foreign_account``: tenant isolation); agent tokens only
open the agent chat socket. Tokens are random, stored as a BLAKE2b hash (a database
leak yields no usable token), and the operator token is compared with
``hmac.compare_digest`` (no timing oracle).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from envelope import (
    EnvelopeError,
    b64d,
    b64e,
    verify_agent_certificate,
    verify_vault_key_statement,
)
from envelope.limits import ACCOUNT_PATTERN, AGENT_PATTERN, ENGAGEMENT_PATTERN, KEY_ID_PATTERN

from .errors import BadRequest, Conflict, Forbidden, NotFound, RelayError, TooLarge, Unauthorized
from .logs import log_event
from .records import record_of_processing, records_csv
from .state import STATE, RelayState
from .store import Account, AgentCertificateRow, TokenRecord

__all__ = ["error_middleware", "hash_token", "issue_token", "require_admin", "require_operator",
           "routes"]

routes = web.RouteTableDef()
_MAX_BODY = 64 * 1024


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.blake2b(token.encode(), digest_size=32, person=b"cr-relay-token").hexdigest()


async def issue_token(st: RelayState, *, kind: str, account: str, agent: str | None) -> str:
    """Make a random token, store its hash, return the token (shown once)."""
    token = f"cr{kind[0]}_" + secrets.token_urlsafe(32)
    await st.store.add_token(hash_token(token), TokenRecord(kind, account, agent),
                             int(st.clock()))
    return token


def _json_error(code: str, message: str, status: int) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


#: Set on a handler that turns every failure into its own answer (the chat websockets:
#: an error frame and a close code); error_middleware then stays out of its way.
ANSWERS_ITS_ERRORS = "answers_its_errors"


@web.middleware
def error_middleware(request: web.Request,
                     handler: Any) -> Awaitable[web.StreamResponse]:
    """Turn every refusal into ``{"error": {"code", "message"}}`` and count it."""
    if getattr(request.match_info.handler, ANSWERS_ITS_ERRORS, False):
        # A plain function returning the handler's own awaitable: an awaiting middleware
        # frame would live as long as each chat socket does (about 0.4 KiB per idle
        # visitor with what it holds; bench/README.md, idle memory).
        return handler(request)  # type: ignore[no-any-return]
    return _json_errors(request, handler)


async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    st = request.app[STATE]
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except RelayError as exc:
        st.metrics.http_refused.labels(exc.code).inc()
        return _json_error(exc.code, exc.message, exc.status)
    except EnvelopeError as exc:
        st.metrics.http_refused.labels(exc.code).inc()
        return _json_error(exc.code, exc.message, exc.status)
    except web.HTTPNotFound:
        st.metrics.http_refused.labels("not_found").inc()
        return _json_error("not_found", "no such route", 404)
    except web.HTTPMethodNotAllowed:
        st.metrics.http_refused.labels("method_not_allowed").inc()
        return _json_error("method_not_allowed", "method not allowed", 405)
    except web.HTTPRequestEntityTooLarge:
        st.metrics.http_refused.labels("request.too_large").inc()
        return _json_error("request.too_large", "request body too large", 413)
    except web.HTTPException:
        raise
    except Exception as exc:
        # A stable 500 instead of aiohttp's error page and its "Error handling request
        # from <peer>" traceback; only the exception type is logged (its text may quote
        # input).
        st.metrics.http_refused.labels("internal.error").inc()
        log_event(st.logger, logging.ERROR, "http.internal_error", exc_type=type(exc).__name__)
        return _json_error("internal.error", "internal error", 500)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise TooLarge("request body too large")
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise TooLarge("request body too large")
    try:
        obj = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("body is not JSON") from exc
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    return obj


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or len(header) > 512:
        raise Unauthorized("missing bearer token")
    return header[7:].strip()


def _is_operator(st: RelayState, token: str) -> bool:
    return hmac.compare_digest(token.encode(), st.operator_token.encode())


def require_operator(request: web.Request) -> None:
    """Raise unless the request carries the operator token."""
    if not _is_operator(request.app[STATE], _bearer(request)):
        raise Unauthorized("operator token required")


async def require_admin(request: web.Request, account: str) -> str:
    """Operator or this account's admin; returns the actor kind."""
    st, token = request.app[STATE], _bearer(request)
    if _is_operator(st, token):
        return "operator"
    record = await st.store.find_token(hash_token(token))
    if record is None:
        raise Unauthorized("unknown token")
    if record.kind != "admin":
        raise Forbidden("not an admin token")
    if record.account != account:
        raise Forbidden("token is for another account", code="auth.foreign_account")
    return "account-admin"


async def _account(request: web.Request) -> Account:
    acct = await request.app[STATE].store.get_account(request.match_info["account"])
    if acct is None:
        raise NotFound("no such account")
    return acct


async def _admin_account(request: web.Request) -> tuple[Account, str]:
    # Authorize before looking the account up, so a stranger cannot probe which ids exist.
    actor = await require_admin(request, request.match_info["account"])
    return await _account(request), actor


@routes.post("/v1/accounts")
async def create_account(request: web.Request) -> web.Response:
    """Create an account (operator)."""
    require_operator(request)
    st, body = request.app[STATE], await _body(request)
    account, origins = body.get("account"), body.get("origins", [])
    mode, retention = body.get("mode", "standard"), body.get("retention_days", 30)
    if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account):
        raise BadRequest("account id out of pattern", code="request.bad_field")
    if not isinstance(origins, list) or not all(isinstance(o, str) and len(o) < 256
                                                for o in origins) or len(origins) > 50:
        raise BadRequest("origins must be a list of origins", code="request.bad_field")
    if mode != "standard":
        raise BadRequest("accounts start in standard mode; pair a vault, then toggle",
                         code="request.bad_field")
    if type(retention) is not int or not 1 <= retention <= 3650:
        raise BadRequest("retention_days must be 1..3650", code="request.bad_field")
    created = await st.store.create_account(Account(account, mode, tuple(origins), retention,
                                                    int(st.clock())))
    if not created:
        raise Conflict("account exists", code="account.exists")
    return web.json_response({"account": account, "mode": mode, "origins": origins,
                              "retention_days": retention}, status=201)


@routes.get("/v1/accounts/{account}")
async def get_account(request: web.Request) -> web.Response:
    """An account's configuration (admin)."""
    acct, _ = await _admin_account(request)
    return web.json_response({"account": acct.account, "mode": acct.mode,
                              "origins": list(acct.origins),
                              "retention_days": acct.retention_days, "paired": acct.paired,
                              "vault_key_id": acct.vault_key_id})


@routes.post("/v1/accounts/{account}/admin-tokens")
async def create_admin_token(request: web.Request) -> web.Response:
    """Issue an account-admin token (operator)."""
    require_operator(request)
    acct = await _account(request)
    token = await issue_token(request.app[STATE], kind="admin", account=acct.account, agent=None)
    return web.json_response({"token": token}, status=201)


@routes.put("/v1/accounts/{account}/vault")
async def pair_vault(request: web.Request) -> web.Response:
    """Pair a vault: verify the key statement under the identity key, then store both."""
    acct, actor = await _admin_account(request)
    st, body = request.app[STATE], await _body(request)
    identity = b64d(body.get("identity_key"), length=32)
    statement = body.get("key_statement")
    verified = verify_vault_key_statement(statement, identity, account=acct.account,
                                          now=int(st.clock()))
    if acct.identity_key is not None and acct.identity_key != identity and actor != "operator":
        # Swapping the trust anchor would let whoever holds an admin token read future
        # chats; only the operator may re-pair (and clients pinning the old fingerprint
        # will refuse the new one anyway).
        raise Conflict("a different identity key is already paired",
                       code="vault.identity_mismatch")
    # Rotation must move forward: replaying an older (still valid) statement would
    # bring back a retired vault key.
    if acct.identity_key == identity and acct.key_statement is not None \
            and verified.not_before < _stored_not_before(acct.key_statement):
        raise Conflict("statement is older than the stored one", code="vault.stale_statement")
    assert isinstance(statement, dict)
    await st.store.set_vault(acct.account, identity, statement, verified.key_id,
                             verified.public_key)
    if st.hub is not None:
        st.hub.account_changed(acct.account)
    link = st.links.current(acct.account)
    if link is not None and identity != link.identity_key:
        # A link authenticated by the old identity must not keep receipting.
        await link.close("link.superseded", "the account was paired with another vault")
    return web.json_response({"account": acct.account, "vault_key_id": verified.key_id})


def _stored_not_before(statement: dict[str, str]) -> int:
    # The stored statement was verified on upload; only its window start is read here
    # (re-verifying would fail once it expired, blocking the very rotation that fixes it).
    return int(json.loads(b64d(statement["body"]))["nbf"])


@routes.post("/v1/accounts/{account}/agent-certificates")
async def add_agent_certificate(request: web.Request) -> web.Response:
    """Upload an agent certificate, verified against the paired identity key."""
    acct, _ = await _admin_account(request)
    st, body = request.app[STATE], await _body(request)
    if acct.identity_key is None:
        raise Conflict("pair a vault first", code="mode.not_paired")
    cert = verify_agent_certificate(body.get("certificate"), acct.identity_key,
                                    account=acct.account, now=int(st.clock()))
    wire = body["certificate"]
    await st.store.add_agent_certificate(
        AgentCertificateRow(acct.account, cert.encryption_key_id, cert.agent, wire),
        int(st.clock()))
    return web.json_response({"agent": cert.agent, "key_id": cert.encryption_key_id},
                             status=201)


@routes.delete("/v1/accounts/{account}/agent-certificates/{key_id}")
async def revoke_agent_certificate(request: web.Request) -> web.Response:
    """Revoke an agent certificate and close that agent device's live sockets."""
    acct, _ = await _admin_account(request)
    kid = request.match_info["key_id"]
    if not KEY_ID_PATTERN.fullmatch(kid):
        raise BadRequest("key id out of pattern", code="request.bad_field")
    st = request.app[STATE]
    # A lost or stolen agent device: the relay stops offering it the account's chats now
    # (its sockets close; a reconnect finds no certificate and gets auth.forbidden).
    # Idempotent: revoking twice answers revoked=false the second time.
    revoked = await st.store.delete_agent_certificate(acct.account, kid)
    closed = st.hub.revoke_agent_key(acct.account, kid) if st.hub is not None else 0
    return web.json_response({"key_id": kid, "revoked": revoked, "sockets_closed": closed})


@routes.post("/v1/accounts/{account}/agent-tokens")
async def create_agent_token(request: web.Request) -> web.Response:
    """Issue the token an agent device connects with."""
    acct, _ = await _admin_account(request)
    agent = (await _body(request)).get("agent")
    if not isinstance(agent, str) or not AGENT_PATTERN.fullmatch(agent):
        raise BadRequest("agent pseudonym out of pattern", code="request.bad_field")
    token = await issue_token(request.app[STATE], kind="agent", account=acct.account,
                              agent=agent)
    return web.json_response({"token": token, "agent": agent}, status=201)


@routes.get("/v1/accounts/{account}/keys")
async def public_keys(request: web.Request) -> web.Response:
    """Public: identity key, key statement, agent certificates, relay signing key."""
    acct = await _account(request)
    st = request.app[STATE]
    certs = await st.store.agent_certificates(acct.account)
    return web.json_response({
        "account": acct.account, "mode": acct.mode,
        # The vault pins this Ed25519 key: it verifies connection-info and offload
        # envelopes signed by the relay with it.
        "relay_signing_key": b64e(st.keyring.relay_keys.signing_public_bytes),
        "identity_key": b64e(acct.identity_key) if acct.identity_key else None,
        "key_statement": acct.key_statement,
        "agent_certificates": [c.certificate for c in certs]})


@routes.put("/v1/accounts/{account}/mode")
async def set_mode(request: web.Request) -> web.Response:
    """Toggle compliance mode; ON needs a pairing, OFF needs confirm=true."""
    acct, actor = await _admin_account(request)
    st, body = request.app[STATE], await _body(request)
    mode = body.get("mode")
    if mode not in ("compliance", "standard"):
        raise BadRequest("mode must be compliance or standard", code="request.bad_field")
    if mode == "compliance" and not acct.paired:
        raise Conflict("compliance mode needs a paired vault (PUT .../vault first)",
                       code="mode.not_paired")
    if mode == "standard" and acct.mode == "compliance" and body.get("confirm") is not True:
        raise Conflict("turning compliance off needs confirm=true",
                       code="mode.confirm_required")
    if mode != acct.mode:
        await st.store.set_mode(acct.account, mode, actor, int(st.clock()))
        if st.hub is not None:
            st.hub.account_changed(acct.account)
    reply: dict[str, Any] = {"account": acct.account, "mode": mode}
    if mode == "compliance" and st.offload is not None:
        # Every transcript stored so far goes to the vault and then leaves the relay;
        # planned durably here, so a restart resumes it. Re-sending ON re-plans
        # transcripts stored meanwhile (none, unless the account was switched back).
        await st.offload.start(acct.account, st.clock())
        reply["offload"] = await st.offload.progress(acct.account)
    return web.json_response(reply)


@routes.get("/v1/accounts/{account}/offload")
async def offload_progress(request: web.Request) -> web.Response:
    """Progress of the compliance-toggle offload (engagements by state)."""
    acct, _ = await _admin_account(request)
    st = request.app[STATE]
    progress = {"total": 0, "complete": True} if st.offload is None else \
        await st.offload.progress(acct.account)
    return web.json_response({"account": acct.account, "mode": acct.mode, **progress})


@routes.get("/v1/accounts/{account}/record-of-processing")
async def get_record_of_processing(request: web.Request) -> web.Response:
    """The Art. 30 record for the account, generated from its configuration."""
    acct, _ = await _admin_account(request)
    st = request.app[STATE]
    return web.json_response(record_of_processing(
        acct, controller_name=st.config.controller_name,
        processor_origin=st.config.public_origin,
        granularity=st.config.record_granularity_seconds))


@routes.get("/v1/accounts/{account}/engagements")
async def list_engagements(request: web.Request) -> web.Response:
    """Engagement records as JSON, or CSV with ``?format=csv``."""
    acct, _ = await _admin_account(request)
    records = await request.app[STATE].store.list_engagements(acct.account)
    if request.query.get("format") == "csv":
        return web.Response(text=records_csv(records), content_type="text/csv")
    return web.json_response({"engagements": [r.as_json() for r in records]})


def _standard_only(acct: Account) -> None:
    # Once compliance is on, nothing stored before the toggle may be read back (or its
    # keys changed) through the relay while the offload runs: those transcripts leave
    # for the vault and are purged here. Stops an admin token (or whoever stole one)
    # from copying them out of the processor after the controller moved them.
    if acct.mode == "compliance":
        raise Conflict("transcripts are not served in compliance mode; the vault has them",
                       code="mode.compliance")


def _engagement(request: web.Request) -> str:
    eng = request.match_info["engagement"]
    if not ENGAGEMENT_PATTERN.fullmatch(eng):
        raise BadRequest("engagement id out of pattern", code="request.bad_field")
    return eng


@routes.get("/v1/accounts/{account}/engagements/{engagement}/transcript")
async def get_transcript(request: web.Request) -> web.Response:
    """A standard-mode transcript, decrypted for the account admin."""
    acct, _ = await _admin_account(request)
    _standard_only(acct)
    items = await request.app[STATE].cipher.read(acct.account, _engagement(request))
    return web.json_response({"engagement": request.match_info["engagement"], "items": items})


@routes.delete("/v1/accounts/{account}/engagements/{engagement}/transcript")
async def delete_transcript(request: web.Request) -> web.Response:
    """Delete one standard-mode transcript now."""
    acct, _ = await _admin_account(request)
    _standard_only(acct)
    n = await request.app[STATE].store.delete_transcripts(acct.account,
                                                          engagement=_engagement(request))
    return web.json_response({"deleted": n})


@routes.delete("/v1/accounts/{account}/transcripts")
async def delete_all_transcripts(request: web.Request) -> web.Response:
    """Delete every standard-mode transcript of the account now."""
    acct, _ = await _admin_account(request)
    _standard_only(acct)
    return web.json_response({"deleted": await request.app[STATE].store.delete_transcripts(
        acct.account)})


@routes.post("/v1/accounts/{account}/data-keys/rotate")
async def rotate_data_key(request: web.Request) -> web.Response:
    """Start a new transcript data key for the account (old ones stay for reading)."""
    acct, _ = await _admin_account(request)
    _standard_only(acct)
    st = request.app[STATE]
    key_id, _key = await st.cipher.rotate_data_key(acct.account, int(st.clock()))
    return web.json_response({"key_id": key_id}, status=201)


@routes.get("/v1/accounts/{account}/outbox")
async def outbox_status(request: web.Request) -> web.Response:
    """The account's outbox backlog (count, bytes, oldest age)."""
    acct, _ = await _admin_account(request)
    st = request.app[STATE]
    stats = await st.store.outbox_stats(acct.account)
    age = None if stats.oldest_created_at is None else int(st.clock()) - stats.oldest_created_at
    return web.json_response({"entries": stats.entries, "bytes": stats.total_bytes,
                              "oldest_age_seconds": age})


@routes.get("/v1/accounts/{account}/mode-changes")
async def list_mode_changes(request: web.Request) -> web.Response:
    """Recorded mode toggles (who, when)."""
    acct, _ = await _admin_account(request)
    changes = await request.app[STATE].store.mode_changes(acct.account)
    return web.json_response({"changes": [c.__dict__ for c in changes]})

"""The staff API under ``/v1``: transcripts, subject access, erasure, retention, audit.

Every route is wrapped by ``staff.access.require_scope`` (token, scope, purpose, then
an audit entry with actor and purpose, before the handler runs). Subject identifiers
travel only in JSON request bodies, never in URLs (URLs end up in proxy access logs).

    route                                               scope      purpose
    GET  /v1/engagements?since&until&agent&limit        read       -
    POST /v1/engagements/search   {"email"|...}         read       required
    GET  /v1/engagements/{engagement_id}                read       required
    GET  /v1/engagements/{engagement_id}/transcript.html read      required
    POST /v1/subjects/export      {"email"|..., "filename"?}  export  required
    POST /v1/engagements/{engagement_id}/erase          erase      optional
    POST /v1/subjects/erase       {"email"|...}         erase      optional
    GET  /v1/retention/preview                          configure  -
    GET  /v1/audit/verify                               audit      -

Errors (besides those of ``require_scope``): 400 ``request.bad_json``,
``request.bad_identifier``, ``request.bad_engagement_id``, ``request.bad_query``,
``export.bad_filename``; 404 ``engagement.not_found``; 410 ``engagement.erased``;
413 ``request.too_large``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from envelope.limits import ENGAGEMENT_PATTERN

from . import appkeys as a
from .atrest import blind_token
from .checkpoints import verify_audit
from .erasure import erase_and_notify, read_engagement
from .errors import DataKeyDestroyed, VaultError
from .staff.access import require_scope, staff_identity, staff_purpose
from .staff.export import ExportHeader, content_disposition, export_filename, stream_bundle
from .staff.render import CONTENT_SECURITY_POLICY, render_html
from .staff.retention import format_dry_run
from .staff_services import expired_engagements
from .store import AuditRecord
from .transcripts import build_export_record, build_transcript

__all__ = [
    "MAX_REQUEST_BYTES",
    "STAFF_ROUTES",
    "add_staff_routes",
    "audit_verify",
    "erase_engagement",
    "erase_subject",
    "export_subject",
    "get_transcript",
    "get_transcript_html",
    "list_engagements",
    "retention_preview",
    "search_engagements",
    "subject_token",
]

MAX_REQUEST_BYTES = 16 * 1024
_IDENTIFIERS = ("email", "phone", "visitor_id")
_MAX_IDENTIFIER = 320


def _err(code: str, message: str, status: int) -> VaultError:
    err = VaultError(message, code=code)
    err.status = status
    return err


async def _body(request: web.Request) -> dict[str, Any]:
    # Read at most the limit plus one byte: an oversized body is refused without
    # buffering it (memory exhaustion through one request).
    raw = await request.content.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise _err("request.too_large", "the request body is too large", 413)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _err("request.bad_json", "the request body is not JSON", 400) from None
    if not isinstance(doc, dict):
        raise _err("request.bad_json", "the request body must be a JSON object", 400)
    return doc


def subject_token(index_key: bytes, doc: dict[str, Any]) -> tuple[str, bytes]:
    """``(identifier kind, blind-index token)`` of the one identifier in a request body."""
    given = [k for k in _IDENTIFIERS if k in doc]
    value = doc.get(given[0]) if len(given) == 1 else None
    # The message never repeats the value: it may be a subject's email address.
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_IDENTIFIER \
            or (given[0] == "email" and "@" not in value):
        raise _err("request.bad_identifier",
                   "give exactly one of email, phone, visitor_id as a string", 400)
    field = "visitor_id" if given[0] == "visitor_id" else given[0]
    return given[0], blind_token(index_key, field, value)


def _engagement_id(request: web.Request) -> str:
    eid = request.match_info["engagement_id"]
    if not ENGAGEMENT_PATTERN.fullmatch(eid):
        raise _err("request.bad_engagement_id", "not an engagement id", 400)
    return eid


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 15:
        raise _err("request.bad_query", f"{name} must be a UNIX time or count", 400)
    return int(raw)


def _now(request: web.Request) -> int:
    return int(request.app[a.CLOCK]())


@require_scope("read")
async def list_engagements(request: web.Request) -> web.Response:
    """List engagements by start date and agent, incomplete ones marked."""
    agent = request.query.get("agent")
    if agent is not None and not (0 < len(agent) <= 64):
        raise _err("request.bad_query", "agent must be a pseudonym", 400)
    limit = min(_int_query(request, "limit") or 200, 1000)
    found = await request.app[a.STORE].list_engagements(
        since=_int_query(request, "since"), until=_int_query(request, "until"),
        agent=agent, limit=limit, after=_cursor(request.query.get("after")))
    # Keyset paging: a full page names where the next one starts (stable under inserts).
    nxt = f"{found[-1].first_at}.{found[-1].engagement}" if len(found) == limit else None
    return web.json_response({"engagements": [s.to_json() for s in found], "next": nxt})


def _cursor(raw: str | None) -> tuple[int, str] | None:
    if raw is None:
        return None
    start, _, engagement = raw.partition(".")
    if not start.isdigit() or len(start) > 15 or not ENGAGEMENT_PATTERN.fullmatch(engagement):
        raise _err("request.bad_query", "after must be the next value of a previous page", 400)
    return int(start), engagement


@require_scope("read", purpose=True)
async def search_engagements(request: web.Request) -> web.Response:
    """Find a data subject's engagements through the blind index."""
    _, token = subject_token(request.app[a.KEYS].index_key, await _body(request))
    found = await request.app[a.STORE].list_engagements(token=token, limit=1000)
    return web.json_response({"engagements": [s.to_json() for s in found]})


async def _transcript(request: web.Request) -> dict[str, Any]:
    eid = _engagement_id(request)
    store, keystore = request.app[a.STORE], request.app[a.KEYSTORE]
    summary = await store.engagement_summary(eid)
    if summary is None:
        raise _err("engagement.not_found", "no such engagement", 404)
    if summary.erased_at is not None:
        raise _err("engagement.erased", "the engagement was erased", 410)
    try:
        rows = await read_engagement(store, keystore, eid, actor=staff_identity(request).actor,
                                     purpose=staff_purpose(request) or "-", now=_now(request))
    except DataKeyDestroyed:
        raise _err("engagement.erased", "the engagement was erased", 410) from None
    return build_transcript(eid, store.account, summary.first_at, None,
                            summary.complete is True, rows, await store.agent_names())


@require_scope("read", purpose=True)
async def get_transcript(request: web.Request) -> web.Response:
    """One transcript as JSON."""
    return web.json_response(await _transcript(request))


@require_scope("read", purpose=True)
async def get_transcript_html(request: web.Request) -> web.Response:
    """One transcript as a printable HTML page (scripts forbidden by CSP)."""
    page = render_html(await _transcript(request))
    return web.Response(text=page, content_type="text/html", headers={
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


@require_scope("export", purpose=True)
async def export_subject(request: web.Request) -> web.StreamResponse:
    """Stream everything held about one data subject as the documented JSON bundle."""
    app = request.app
    doc = await _body(request)
    kind, token = subject_token(app[a.KEYS].index_key, doc)
    requested = doc.get("filename")
    if requested is not None and not isinstance(requested, str):
        raise _err("export.bad_filename", "the export file name is not acceptable", 400)
    store, keystore, keys, now = app[a.STORE], app[a.KEYSTORE], app[a.KEYS], _now(request)
    identity, purpose = staff_identity(request), staff_purpose(request) or "-"
    header = ExportHeader.new(account=keys.account,
                              identity_fingerprint=keys.identity.fingerprint,
                              identifier_kind=kind, blind_index=token.hex(), now=now)
    name = export_filename(requested, account=keys.account, export_id=header.export_id,
                           generated_at=now)
    engagements = await store.engagements_for_token(token)
    agents = await store.agent_names()
    await store.append_audit([AuditRecord(identity.actor, "export", purpose,
                                          header.export_id,
                                          {"engagements": len(engagements),
                                           "token_id": identity.token_id})], now)
    if a.ALERTS in app:
        app[a.ALERTS].record("export", identity.token_id)

    async def records() -> AsyncIterator[dict[str, Any]]:
        for eid in engagements:
            summary = await store.engagement_summary(eid)
            if summary is None or summary.erased_at is not None:
                continue
            try:
                rows = await read_engagement(store, keystore, eid, actor=identity.actor,
                                             purpose=purpose, now=now)
            except DataKeyDestroyed:
                continue  # key destroyed by an interrupted erasure: nothing readable
            yield build_export_record(eid, keys.account, summary.first_at,
                                      summary.complete is True, rows, agents,
                                      [header.blind_index])

    chunks = stream_bundle(header, records())
    # Build the head and the first engagement before sending headers, so a refusal
    # there is a JSON error, not a truncated download.
    first = [await chunks.__anext__(), await chunks.__anext__()]
    resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                       "Content-Disposition": content_disposition(name),
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    for chunk in first:
        await resp.write(chunk)
    async for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def _erase(request: web.Request, engagements: list[str], rule: str) -> web.Response:
    app = request.app
    identity = staff_identity(request)
    purpose = (request.headers.get("X-Purpose") or "").strip()[:200] or "erasure-request"
    if any(ord(c) < 32 for c in purpose):
        raise _err("request.bad_purpose", "the purpose must be printable", 400)
    outcome = await erase_and_notify(app[a.STORE], app[a.KEYSTORE], app[a.KEYS], engagements,
                                     actor=identity.actor, purpose=purpose, rule=rule,
                                     now=_now(request))
    if a.NOTICES in app:
        app[a.NOTICES].wake()
    if a.ALERTS in app:
        app[a.ALERTS].record("erasure", identity.token_id)
        if not outcome.complete:
            app[a.ALERTS].raise_kind("erasure_incomplete_checkpoint",
                                     "vault.erasure_incomplete_checkpoint",
                                     outcome.engagements)
    return web.json_response(outcome.to_json())


@require_scope("erase")
async def erase_engagement(request: web.Request) -> web.Response:
    """Crypto-shred one engagement; answer with the signed erasure receipt."""
    eid = _engagement_id(request)
    if await request.app[a.STORE].engagement_summary(eid) is None:
        raise _err("engagement.not_found", "no such engagement", 404)
    return await _erase(request, [eid], "request")


@require_scope("erase")
async def erase_subject(request: web.Request) -> web.Response:
    """Crypto-shred every engagement of a data subject found through the blind index."""
    _, token = subject_token(request.app[a.KEYS].index_key, await _body(request))
    engagements = await request.app[a.STORE].engagements_for_token(token)
    return await _erase(request, engagements, "subject")


@require_scope("configure")
async def retention_preview(request: web.Request) -> web.Response:
    """What the retention sweeper would erase now (dry run)."""
    expired = await expired_engagements(request.app[a.STORE],
                                        request.app[a.SETTINGS].retention, _now(request))
    return web.json_response({
        "expired": [{"engagement_id": e.engagement_id, "categories": list(e.categories),
                     "whole": e.whole, "age_s": e.age_s} for e in expired],
        "text": format_dry_run(expired)})


@require_scope("audit")
async def audit_verify(request: web.Request) -> web.Response:
    """Verify the audit chain and its signed checkpoints; alert when it does not."""
    app = request.app
    problems = await verify_audit(app[a.STORE], app[a.CONFIG].state_path)
    if problems and a.ALERTS in app:
        app[a.ALERTS].raise_kind("audit_verification_failed", problems[0].code)
    return web.json_response({"ok": not problems, "problems": [
        {"code": p.code, "seq": p.seq, "message": p.message} for p in problems]})


#: (method, path, handler): the route table the app mounts and the tests walk.
STAFF_ROUTES = (
    ("GET", "/v1/engagements", list_engagements),
    ("POST", "/v1/engagements/search", search_engagements),
    ("GET", "/v1/engagements/{engagement_id}", get_transcript),
    ("GET", "/v1/engagements/{engagement_id}/transcript.html", get_transcript_html),
    ("POST", "/v1/subjects/export", export_subject),
    ("POST", "/v1/engagements/{engagement_id}/erase", erase_engagement),
    ("POST", "/v1/subjects/erase", erase_subject),
    ("GET", "/v1/retention/preview", retention_preview),
    ("GET", "/v1/audit/verify", audit_verify),
)


def add_staff_routes(app: web.Application) -> None:
    """Mount every staff route on the vault app."""
    for method, path, handler in STAFF_ROUTES:
        app.router.add_route(method, path, handler)

"""Scope checks for the staff API: ``require_scope(scope)`` wraps an aiohttp handler.

    request                                    answer
    no Authorization: Bearer header            401 {"error":{"code":"auth.missing_token"}}
    unknown, wrong, revoked or expired token   401 auth.invalid_token
    valid token without the route's scope      403 auth.scope_denied
    purpose route, no X-Purpose / ?purpose=    400 request.purpose_required
    purpose longer than 200 or with controls   400 request.bad_purpose

The checks run before the handler sees the request, in this order, so the answer to a
refused request never depends on the path or body: a caller without the scope cannot
tell whether the engagement or data subject it named exists. After the checks pass,
the ``STAFF_AUDIT`` hook (if set) records actor, scope, route and purpose *before* the
handler runs; if the audit write fails, the request fails (no unaudited read).

>>> from aiohttp import web
>>> @require_scope("read", purpose=True)
... async def transcript(request: web.Request) -> web.Response:
...     return web.json_response({"actor": staff_identity(request).actor})
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from aiohttp import web

from .errors import AuthError, PurposeError, StaffError
from .tokens import SCOPES, StaffIdentity, StaffTokens

__all__ = [
    "STAFF_AUDIT",
    "STAFF_CLOCK",
    "STAFF_TOKENS",
    "AccessRecord",
    "require_scope",
    "staff_error_middleware",
    "staff_identity",
    "staff_purpose",
]

MAX_PURPOSE_CHARS = 200
# Typed request keys where aiohttp has them (3.12+); plain strings on older releases,
# which pyproject still allows.
_IDENTITY: Any = (web.RequestKey("staff_identity", StaffIdentity)
                  if hasattr(web, "RequestKey") else "staff_identity")
_PURPOSE: Any = (web.RequestKey("staff_purpose", str)
                 if hasattr(web, "RequestKey") else "staff_purpose")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AccessRecord:
    """What the audit log gets for every authorised staff request."""

    actor: str
    token_id: str
    scope: str
    method: str
    route: str          # the route template (e.g. /v1/engagements/{id}), never raw input
    purpose: str | None


STAFF_TOKENS = web.AppKey("staff_tokens", StaffTokens)
STAFF_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("staff_clock")
STAFF_AUDIT: web.AppKey[Callable[[AccessRecord], Awaitable[None]]] = web.AppKey("staff_audit")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _purpose(request: web.Request) -> str:
    raw = request.headers.get("X-Purpose") or request.query.get("purpose") or ""
    purpose = raw.strip()
    if not purpose:
        raise PurposeError("a purpose is required for this request (X-Purpose or ?purpose=)")
    if len(purpose) > MAX_PURPOSE_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in purpose):
        # Control characters could forge lines in a text rendering of the audit log.
        raise PurposeError("the purpose must be at most 200 printable characters",
                           code="request.bad_purpose")
    return purpose


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "?"


def require_scope(scope: str, *, purpose: bool = False) -> Callable[[Handler], Handler]:
    """Decorate a handler so it runs only for a staff token holding ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                tokens = request.app[STAFF_TOKENS]
                now = int(request.app.get(STAFF_CLOCK, time.time)())
                token = _bearer(request)
                if token is None:
                    raise AuthError("a staff token is required (Authorization: Bearer ...)")
                identity = await tokens.verify(token, now=now)
                identity.require(scope)
                stated = _purpose(request) if purpose else None
            except StaffError as err:
                return web.json_response(err.to_json(), status=err.status)
            request[_IDENTITY] = identity
            request[_PURPOSE] = stated
            audit = request.app.get(STAFF_AUDIT)
            if audit is not None:
                await audit(AccessRecord(actor=identity.actor, token_id=identity.token_id,
                                         scope=scope, method=request.method,
                                         route=_route(request), purpose=stated))
            return await handler(request)

        # Read by tests that walk the app's routes to prove none is left unguarded.
        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded

    return decorate


def staff_identity(request: web.Request) -> StaffIdentity:
    """The verified caller of a handler wrapped by :func:`require_scope`."""
    identity = request.get(_IDENTITY)
    if not isinstance(identity, StaffIdentity):
        raise RuntimeError("handler is not wrapped by require_scope")
    return identity


def staff_purpose(request: web.Request) -> str | None:
    """The stated purpose of the request (None on routes that do not ask for one)."""
    value = request.get(_PURPOSE)
    return value if isinstance(value, str) else None


@web.middleware
async def staff_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn a StaffError raised by a handler into its JSON error body and status."""
    try:
        return await handler(request)
    except StaffError as err:
        return web.json_response(err.to_json(), status=err.status)

"""The vault's HTTP access log: method, route template, status and duration only.

aiohttp's default access log writes the peer address, the User-Agent, the Referer and
the raw request line. On the vault those are a staff member's IP and browser (personal
data of the controller's own staff) and the full URL, whose ``?purpose=`` is free text
and whose path holds engagement ids: all of it would land in journald, outside the
audit log's rules. :class:`RouteOnlyAccessLogger` logs none of it; the staff audit log
is where who-read-what is recorded, hash-chained.

>>> RouteOnlyAccessLogger.__name__
'RouteOnlyAccessLogger'
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["ACCESS_LOGGER_NAME", "RouteOnlyAccessLogger", "app_runner"]

ACCESS_LOGGER_NAME = "controller_vault.access"


def _route_template(request: web.BaseRequest) -> str:
    # The resource's canonical form ("/v1/engagements/{engagement_id}"), never the
    # raw path or query: those carry ids and the free-text purpose.
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


class RouteOnlyAccessLogger(AbstractAccessLogger):
    """Access lines with method, route template, status and duration only."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time_taken: float) -> None:
        """Write one access line (no address, header, raw path or query)."""
        logging.getLogger(ACCESS_LOGGER_NAME).info(
            "http %s %s %d %.1fms", request.method[:16], _route_template(request),
            response.status, time_taken * 1000)


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner ``serve`` uses: the app with the route-only access log."""
    return web.AppRunner(app, access_log_class=RouteOnlyAccessLogger)

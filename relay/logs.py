"""Structured JSON-line logs with ids and codes only, and an access log without IPs.

aiohttp's default access log writes the peer address and the User-Agent: both are
personal data (GDPR Recital 30). :class:`NoPersonalDataAccessLogger` logs the route
template (not the raw path or query, which may hold tokens), the method, the status
and the duration. :func:`log_event` drops any field whose name is on a deny list, so
a careless call cannot write an address or a user agent.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["JsonLineFormatter", "NoPersonalDataAccessLogger", "configure_logging", "log_event"]

LOGGER_NAME = "relay"
_DENY = frozenset({"ip", "peer", "remote", "user_agent", "ua", "text", "visitor_id", "email",
                   "name", "phone", "token", "origin_header", "body"})


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "event": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in _DENY})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: an exception message may quote input.
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, separators=(",", ":"), default=str)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with id/code fields; personal-looking field names are dropped."""
    logger.log(level, event, extra={"fields": {k: v for k, v in fields.items()
                                               if k not in _DENY}})


def configure_logging(level: str, log_file: str | None) -> logging.Logger:
    """Attach JSON-line handlers (stderr, and ``log_file`` when given) to the relay logger."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_relay_handler", False):
            logger.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        pathlib.Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(JsonLineFormatter())
        handler._relay_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    return logger


class NoPersonalDataAccessLogger(AbstractAccessLogger):
    """Access log lines with route template, method, status and duration only."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time_taken: float) -> None:
        """Write one access line."""
        route = "unmatched"
        match_info = getattr(request, "match_info", None)
        if match_info is not None and match_info.route is not None:
            resource = match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
        log_event(logging.getLogger(LOGGER_NAME), logging.INFO, "http.access",
                  method=request.method, route=route, status=response.status,
                  ms=round(time_taken * 1000, 1), at=int(time.time()))

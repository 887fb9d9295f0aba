"""Structured JSON-line logs with ids and codes only, and an access log without IPs.

aiohttp's default access log writes the peer address and the User-Agent: both are
personal data (GDPR Recital 30). :class:`NoPersonalDataAccessLogger` logs the route
template (not the raw path or query, which may hold tokens), the method, the status
and the duration. :func:`log_event` drops any field whose name is on a deny list, so
a careless call cannot write an address or a user agent. :class:`PeerScrubber` sits
on aiohttp's own loggers (installed by :func:`configure_logging`): aiohttp writes
"Error handling request from <peer>" with a traceback whose text may quote input.
The ``aiosqlite`` logger is kept at INFO or above (its DEBUG lines carry SQL arguments).
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["AIOHTTP_LOGGERS", "JsonLineFormatter", "NoPersonalDataAccessLogger", "PeerScrubber",
           "configure_logging", "log_event"]

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


AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.websocket",
                   "aiohttp.internal", "aiohttp.client")
_ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}\b")
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime"}


class PeerScrubber(logging.Filter):
    """Strip peer addresses, arguments, tracebacks and extras from aiohttp's log records.

    Stops a visitor's IP (personal data, GDPR Recital 30) reaching the logs through
    aiohttp's own lines: the format string is kept (addresses in it masked), its
    arguments are dropped unformatted, and an exception is reduced to its type name
    (an exception text may quote a header such as X-Forwarded-For).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; always let it through."""
        message = _ADDRESS.sub("<addr>", str(record.msg))
        if record.exc_info and record.exc_info[0] is not None:
            message += f" [{record.exc_info[0].__name__}]"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        for name in [k for k in vars(record) if k not in _RECORD_FIELDS]:
            delattr(record, name)  # access-log extras carry remote_address and the like
        return True


def _install_scrubber() -> None:
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, PeerScrubber) for f in logger.filters):
            logger.addFilter(PeerScrubber())


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
    # aiosqlite logs every call at DEBUG with its arguments ("executing <partial ...>"):
    # SQL parameters such as token hashes and envelope or transcript ciphertext. Pinned
    # at INFO or above whatever log_level says, so a DEBUG run (or a host that sends
    # the root logger everything) cannot copy stored secrets into log files.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logger.level))
    _install_scrubber()
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

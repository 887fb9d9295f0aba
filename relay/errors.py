"""Errors of the relay: one base, a stable code and an HTTP status on each.

    RelayError                       code                         status
    ├── BadRequest                   request.malformed            400
    │                                request.bad_field
    ├── Unauthorized                 auth.bad_token               401
    ├── Forbidden                    auth.forbidden               403
    │                                auth.foreign_account
    ├── NotFound                     not_found                    404
    ├── Conflict                     account.exists               409
    │                                vault.identity_mismatch
    │                                mode.not_paired
    │                                mode.confirm_required
    │                                mode.compliance
    ├── TooLarge                     request.too_large            413
    └── SchemaNewer                  store.schema_newer           503

``SchemaNewer`` is raised at start, never to a client: the state database was written
by a newer relay (``relay serve`` prints it and exits 78, which relay.service does not
restart on, leaving the file untouched).

Messages are fixed strings plus ids: never request contents, so they are safe to
log and to send back. The middleware in :mod:`relay.admin` turns them into
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

__all__ = ["BadRequest", "Conflict", "Forbidden", "NotFound", "RelayError", "SchemaNewer",
           "TooLarge", "Unauthorized"]


class RelayError(Exception):
    """Base of the relay's errors; ``code`` is stable, ``status`` the HTTP status."""

    code = "relay.error"
    status = 500

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or self.code)

    @property
    def message(self) -> str:
        """The fixed, non-personal message."""
        return str(self.args[0])


class BadRequest(RelayError):
    """The request does not parse or a field is out of range."""

    code = "request.malformed"
    status = 400


class Unauthorized(RelayError):
    """No token, or a token that matches nothing."""

    code = "auth.bad_token"
    status = 401


class Forbidden(RelayError):
    """A valid token without the right to this resource."""

    code = "auth.forbidden"
    status = 403


class NotFound(RelayError):
    """No such account, engagement or route."""

    code = "not_found"
    status = 404


class Conflict(RelayError):
    """The request contradicts the stored state."""

    code = "conflict"
    status = 409


class TooLarge(RelayError):
    """The request body exceeds its limit."""

    code = "request.too_large"
    status = 413


class SchemaNewer(RelayError):
    """The state database's schema is newer than any schema file this relay knows."""

    code = "store.schema_newer"
    status = 503

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"database schema {found} is newer than this relay ({known}): run"
                         " the newer relay, or restore a backup made by this version")

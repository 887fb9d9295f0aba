"""Typed errors of the staff side, each with a stable code and an HTTP status hint.

The shape (``code``, ``status``, ``message``) is the vault's error shape, so the
integration can make :class:`StaffError` a subclass of the vault's base error and
one middleware turns both into ``{"error": {"code", "message"}}``. Messages are fixed
strings: never the token, the purpose, an address, a file name or a transcript.

    StaffError                   code                              status
    ├── AuthError                auth.missing_token,               401
    │                            auth.invalid_token
    ├── ScopeDenied              auth.scope_denied                 403
    ├── PurposeError             request.purpose_required,         400
    │                            request.bad_purpose
    ├── StaffConfigError         config.bad_redaction_rule,        500
    │                            config.bad_retention_rule,
    │                            config.bad_smtp, config.bad_alerts,
    │                            config.staff_db_version
    ├── TokenStoreUnavailable    staff.store_unavailable           503
    ├── ExportNameError          export.bad_filename               400
    ├── ExportError              export.bad_engagement,            500
    │                            export.foreign_engagement, export.duplicate_engagement
    ├── MailError                mail.bad_recipient (400), mail.send_failed (502)
    │   └── MailRejected         mail.rejected (502): a permanent (5xx) refusal
    └── AlertError               alert.bad_reference               500
"""

from __future__ import annotations

__all__ = [
    "AlertError",
    "AuthError",
    "ExportError",
    "ExportNameError",
    "MailError",
    "MailRejected",
    "PurposeError",
    "ScopeDenied",
    "StaffConfigError",
    "StaffError",
    "TokenStoreUnavailable",
]


class StaffError(Exception):
    """Base of every staff-side error; ``code`` is stable, ``status`` an HTTP hint."""

    code: str = "staff.error"
    status: int = 500

    def __init__(self, message: str = "", *, code: str | None = None,
                 status: int | None = None) -> None:
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        super().__init__(message or self.code)

    @property
    def message(self) -> str:
        """The human-readable message (fixed text, no personal data)."""
        return str(self.args[0]) if self.args else self.code

    def to_json(self) -> dict[str, dict[str, str]]:
        """The JSON error body every staff route answers with."""
        return {"error": {"code": self.code, "message": self.message}}


class AuthError(StaffError):
    """No usable staff token: missing, malformed, unknown, expired or revoked."""

    code = "auth.missing_token"
    status = 401


class ScopeDenied(StaffError):
    """The token is valid but lacks the scope the route needs."""

    code = "auth.scope_denied"
    status = 403


class PurposeError(StaffError):
    """A read of a transcript or an export was asked for without a usable purpose."""

    code = "request.purpose_required"
    status = 400


class StaffConfigError(StaffError):
    """A staff-side setting (redaction, retention, SMTP, alerts) is invalid."""

    code = "config.invalid"
    status = 500


class TokenStoreUnavailable(StaffError):
    """staff.db cannot be opened, read or written (not a database, corrupt, locked); the
    message names the file and the SQLite error class (or "locked") only."""

    code = "staff.store_unavailable"
    status = 503


class ExportNameError(StaffError):
    """A requested export file name is unsafe (path tricks, NUL, too long)."""

    code = "export.bad_filename"
    status = 400


class ExportError(StaffError):
    """The store handed the export writer an engagement it must not write."""

    code = "export.bad_engagement"
    status = 500


class MailError(StaffError):
    """A transcript or alert email could not be built or sent."""

    code = "mail.send_failed"
    status = 502


class MailRejected(MailError):
    """The mail server refused this message for good (a 5xx reply to MAIL, RCPT or DATA).

    ``smtp_code`` is the numeric reply code only: the reply text may quote the address.
    """

    code = "mail.rejected"

    def __init__(self, smtp_code: int) -> None:
        super().__init__(f"the mail server refused the message (SMTP {smtp_code})")
        self.smtp_code = smtp_code


class AlertError(StaffError):
    """An alert was built with something that is not an id (personal data guard)."""

    code = "alert.bad_reference"
    status = 500

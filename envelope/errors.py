"""Typed errors of the envelope library.

Every failure the library reports is an :class:`EnvelopeError` carrying a stable
``code`` (safe to put in a log line, a metric label or an error frame) and an HTTP
status hint. Nothing else escapes the public functions: no ``KeyError``, no base64
``ValueError``, no ``UnicodeDecodeError``, no ``nacl`` exception.

    EnvelopeError                      code                          status
    ├── MalformedError                 envelope.malformed            400
    │   └── HeaderFieldError           envelope.bad_header_field     400
    ├── LimitExceeded                  envelope.too_large            413
    ├── UnsupportedVersion             envelope.unsupported_version  400
    ├── RecipientError                 envelope.missing_vault_recipient,
    │                                  envelope.duplicate_recipient,
    │                                  envelope.too_many_recipients  400
    ├── BindingError                   envelope.wrong_account,
    │                                  envelope.wrong_engagement,
    │                                  envelope.wrong_sequence       400
    ├── DecryptionError                envelope.undecryptable        400
    ├── StatementError                 statement.invalid,
    │                                  statement.expired,
    │                                  statement.wrong_account,
    │                                  statement.unsupported_version 400
    ├── ReceiptError                   receipt.invalid               400
    └── LinkAuthError                  link.auth_failed              401

DecryptionError is deliberately opaque: it never says whether the signature, the
sealed key, the AEAD tag or the padding was wrong, so a prober learns nothing from
which check failed (padding/MAC oracle attacks).
"""

from __future__ import annotations

__all__ = [
    "BindingError",
    "DecryptionError",
    "EnvelopeError",
    "HeaderFieldError",
    "LimitExceeded",
    "LinkAuthError",
    "MalformedError",
    "ReceiptError",
    "RecipientError",
    "StatementError",
    "UnsupportedVersion",
]


class EnvelopeError(Exception):
    """Base of every error this library raises; ``code`` is stable, ``status`` an HTTP hint."""

    code: str = "envelope.error"
    status: int = 400

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        # The message is written by this library from fixed strings and ids only,
        # never from input contents, so it is safe to log.
        super().__init__(message or self.code)

    @property
    def message(self) -> str:
        """The human-readable message (contains no personal data)."""
        return str(self.args[0]) if self.args else self.code


class MalformedError(EnvelopeError):
    """The bytes do not parse as the expected structure."""

    code = "envelope.malformed"


class HeaderFieldError(MalformedError):
    """A header field is missing, of the wrong type, or outside its pattern or range."""

    code = "envelope.bad_header_field"


class LimitExceeded(EnvelopeError):
    """An input exceeds one of the size limits in :mod:`envelope.limits`."""

    code = "envelope.too_large"
    status = 413


class UnsupportedVersion(EnvelopeError):
    """The version byte or field names a version this library does not speak."""

    code = "envelope.unsupported_version"


class RecipientError(EnvelopeError):
    """The recipient list is unacceptable (vault missing, duplicates, too many)."""

    code = "envelope.missing_vault_recipient"


class BindingError(EnvelopeError):
    """The envelope is valid but bound to another account, engagement or position."""

    code = "envelope.wrong_account"


class DecryptionError(EnvelopeError):
    """The envelope could not be opened. Deliberately says nothing about why."""

    code = "envelope.undecryptable"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__("envelope could not be opened")


class StatementError(EnvelopeError):
    """A key statement or agent certificate is not acceptable."""

    code = "statement.invalid"


class ReceiptError(EnvelopeError):
    """A delivery receipt does not verify."""

    code = "receipt.invalid"


class LinkAuthError(EnvelopeError):
    """A vault-link challenge response does not verify."""

    code = "link.auth_failed"
    status = 401

"""Typed errors of the controller vault.

Every failure the vault reports is a :class:`VaultError` with a stable ``code`` (safe
for a log line, a metric label, a JSON error body or a CLI exit message) and an HTTP
status hint. Messages are written from fixed strings, ids and file paths only: never
from envelope contents, so personal data cannot reach a log through an error.

    VaultError                   code                              status
    ├── ConfigError              vault.config                      500
    ├── KeyFileError             vault.key_file                    500
    ├── VaultExists              vault.exists                      409
    ├── AlreadyServing           vault.already_serving             409
    ├── StoreUnavailable         vault.store_unavailable           503
    ├── SchemaNewer              vault.schema_newer                503
    ├── DataKeyDestroyed         vault.data_key_destroyed          410
    ├── IngestRejected           envelope.* (passed through) or    400
    │                            vault.not_recipient, vault.role_not_allowed,
    │                            vault.visitor_key_mismatch, vault.agent_not_certified,
    │                            vault.bad_body, vault.envelope_id_conflict,
    │                            vault.sequence_reused, vault.bad_frame
    ├── AuditError               audit.changed, audit.deleted, audit.reordered,
    │                            audit.truncated, audit.bad_checkpoint      500
    └── PairingError             pair.http_error, pair.unreachable          502
"""

from __future__ import annotations

__all__ = [
    "AlreadyServing",
    "AuditError",
    "ConfigError",
    "DataKeyDestroyed",
    "IngestRejected",
    "KeyFileError",
    "PairingError",
    "SchemaNewer",
    "StoreUnavailable",
    "VaultError",
    "VaultExists",
]


class VaultError(Exception):
    """Base of every vault error; ``code`` is stable, ``status`` an HTTP hint."""

    code: str = "vault.error"
    status: int = 500

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or self.code)

    @property
    def message(self) -> str:
        """The human-readable message (ids and paths only, no personal data)."""
        return str(self.args[0]) if self.args else self.code


class ConfigError(VaultError):
    """The configuration file or an environment override is invalid."""

    code = "vault.config"


class KeyFileError(VaultError):
    """A key file is missing, unreadable, corrupt or has unsafe permissions."""

    code = "vault.key_file"


class VaultExists(VaultError):
    """``init`` found an existing vault and refused to overwrite it."""

    code = "vault.exists"
    status = 409


class AlreadyServing(VaultError):
    """Another ``controller-vault serve`` holds this state directory's serve.lock."""

    code = "vault.already_serving"
    status = 409


class StoreUnavailable(VaultError):
    """The database is locked, full or failing: nothing was written, no receipt is given."""

    code = "vault.store_unavailable"
    status = 503


class SchemaNewer(VaultError):
    """A store was written by a newer vault (its schema is above every file this code
    knows): it is refused at open, unchanged, by serve and every CLI command."""

    code = "vault.schema_newer"
    status = 503

    def __init__(self, name: str, found: int, known: int) -> None:
        super().__init__(f"{name}: database schema {found} is newer than this vault ({known}):"
                         " run the newer vault, or restore a backup made by this version")


class DataKeyDestroyed(VaultError):
    """The engagement's data key was destroyed (erased): its data cannot be read."""

    code = "vault.data_key_destroyed"
    status = 410


class IngestRejected(VaultError):
    """One envelope was refused; ``code`` says why in a stable word."""

    code = "vault.rejected"
    status = 400


class AuditError(VaultError):
    """The audit log does not verify; the message says at which entry."""

    code = "audit.changed"


class PairingError(VaultError):
    """The relay refused or could not be reached during pairing or publishing."""

    code = "pair.http_error"
    status = 502

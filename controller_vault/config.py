"""Vault configuration: a frozen dataclass read from a TOML ``[vault]`` table plus
``VAULT_<FIELD>`` environment overrides.

>>> cfg = load_config(None, env={"VAULT_ACCOUNT": "clinic", "VAULT_STATE_DIR": "/tmp/v"})
>>> (cfg.account, cfg.port)
('clinic', 8470)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from envelope.limits import ACCOUNT_PATTERN

from .errors import ConfigError
from .staff.alerts import AlertConfig
from .staff.errors import StaffError
from .staff.mailer import SmtpConfig
from .staff.redaction import RedactionRules
from .staff.retention import RetentionRules

__all__ = ["StaffSettings", "VaultConfig", "check_relay_url", "config_help", "load_config",
           "load_staff_settings", "parse_cert_sha256"]


def _f(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class VaultConfig:
    """Every setting of the vault, with its default and one line of help."""

    account: str = _f("", "account id at the relay this vault serves (required)")
    state_dir: str = _f("", "directory holding the secrets, databases and audit files (required)")
    relay_url: str = _f("", "relay base URL to dial for the vault link; empty = no link")
    host: str = _f("127.0.0.1", "address of the staff API (the controller's own network)")
    port: int = _f(8470, "port of the staff API")
    passphrase_file: str = _f("", "file holding the passphrase that protects the secret files")
    relay_ca_file: str = _f("", "CA bundle to verify the relay's TLS certificate (default: system)")
    relay_cert_sha256: str = _f("", "SHA-256 fingerprint of the relay's leaf certificate, hex, "
                                "colons allowed; when set, the link and `pair` accept only "
                                "that certificate (replaces CA checks; excludes relay_ca_file)")
    batch_max: int = _f(256, "most envelopes committed in one group commit")
    batch_wait_ms: int = _f(20, "how long the link waits to fill a batch before committing")
    link_batch_frames: bool = _f(True, "tell the relay this vault accepts several outbox "
                                 "entries per websocket frame (fewer, larger frames); "
                                 "false = one frame per entry")
    busy_timeout_ms: int = _f(2000, "how long a write waits on a locked database before failing")
    checkpoint_every: int = _f(100, "sign an audit checkpoint after this many new audit entries")
    checkpoint_interval_s: float = _f(300.0, "sign an audit checkpoint at least this often "
                                      "when the log has grown")
    backoff_initial_s: float = _f(0.5, "first reconnect delay of the vault link (jittered)")
    backoff_max_s: float = _f(60.0, "longest reconnect delay of the vault link")
    watchdog_interval_s: float = _f(10.0, "systemd WATCHDOG=1 interval when $NOTIFY_SOCKET is set")
    retention_sweep_s: float = _f(3600.0, "how often the retention sweeper erases what is past "
                                  "its age ([retention] table); 0 = never")
    config_file: str = _f("", "the TOML file read; its [redaction], [retention], [smtp] and "
                          "[alerts] tables configure the staff side (set by --config)")

    @property
    def state_path(self) -> pathlib.Path:
        """``state_dir`` as a path."""
        return pathlib.Path(self.state_dir)


def config_help() -> dict[str, str]:
    """Field name -> help line (the docs test checks every field is documented)."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(VaultConfig)}


def parse_cert_sha256(text: str) -> bytes:
    """The 32 bytes of a SHA-256 certificate fingerprint written in hex (colons allowed)."""
    digits = text.strip().replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ConfigError("config field relay_cert_sha256 must be a SHA-256 fingerprint: "
                          "64 hex digits, colons allowed (openssl x509 -noout -fingerprint "
                          "-sha256 -in relay.pem)")
    return bytes.fromhex(digits)


_LOOPBACK_NAMES = {"localhost"}


def check_relay_url(url: str) -> None:
    """Refuse anything but https://, or http:// to this machine (local tests and demo)."""
    # A typo ("http://relay.example") would otherwise send the link handshake, the
    # admin token of `pair` and every envelope's metadata in clear text to whoever is
    # on the path; plain HTTP is allowed only where no network is crossed.
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        host = ""
    if not host or parts.scheme not in ("http", "https"):
        raise ConfigError("config field relay_url must be an https:// URL with a host")
    if parts.scheme == "https":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    if not loopback:
        raise ConfigError(f"config field relay_url must use https:// for host {host}; "
                          "http:// is allowed only for 127.0.0.1, ::1 or localhost")


def _coerce(name: str, typ: Any, value: Any) -> Any:
    try:
        if typ in ("bool", bool):
            if isinstance(value, bool):
                return value
            words = {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}
            return words[str(value).strip().lower()]
        if typ in ("int", int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ in ("float", float):
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"config field {name} has the wrong type") from None


def load_config(path: str | os.PathLike[str] | None,
                env: Mapping[str, str] | None = None) -> VaultConfig:
    """Read the TOML file (if any), apply ``VAULT_*`` overrides, validate."""
    values: dict[str, Any] = {}
    fields = {f.name: f.type for f in dataclasses.fields(VaultConfig)}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        table = doc.get("vault", {})
        if not isinstance(table, dict):
            raise ConfigError("config [vault] must be a table")
        unknown = set(table) - set(fields)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(sorted(unknown))}")
        values.update(table)
        values["config_file"] = str(path)
    env = os.environ if env is None else env
    for name in fields:
        key = f"VAULT_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values = {k: _coerce(k, fields[k], v) for k, v in values.items()}
    cfg = VaultConfig(**values)
    if not ACCOUNT_PATTERN.fullmatch(cfg.account):
        raise ConfigError("config field account is missing or out of pattern")
    if not cfg.state_dir:
        raise ConfigError("config field state_dir is required")
    if not 1 <= cfg.batch_max <= 1024:
        raise ConfigError("config field batch_max must be 1..1024 (receipt item limit)")
    if cfg.relay_url:
        check_relay_url(cfg.relay_url)
    if cfg.relay_cert_sha256:
        parse_cert_sha256(cfg.relay_cert_sha256)
        if cfg.relay_ca_file:
            # aiohttp checks either a CA chain or a pin, never both: say which one wins
            # rather than silently ignoring one of them.
            raise ConfigError("set relay_ca_file or relay_cert_sha256, not both "
                              "(a pinned certificate replaces CA verification)")
    return cfg


@dataclass(frozen=True)
class StaffSettings:
    """The staff side's tables of the TOML file, parsed and checked at start-up."""

    redaction: RedactionRules = field(default_factory=RedactionRules)
    retention: RetentionRules = field(default_factory=RetentionRules)
    smtp: SmtpConfig | None = None
    alerts: AlertConfig = field(default_factory=AlertConfig)


def load_staff_settings(path: str | os.PathLike[str] | None) -> StaffSettings:
    """Read ``[redaction]``, ``[retention]``, ``[smtp]`` and ``[alerts]`` (all optional)."""
    if not path:
        return StaffSettings()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        raise ConfigError(f"cannot read config file {path}") from None
    try:
        smtp = None
        if "smtp" in doc:
            table = dict(doc["smtp"])
            password = ""
            if table.get("password_file"):
                password = pathlib.Path(table["password_file"]).read_text().strip()
            smtp = SmtpConfig.from_config(table, password=password)
        alerts = dict(doc.get("alerts", {}))
        if "email_to" in alerts:
            alerts["email_to"] = tuple(alerts["email_to"])
        return StaffSettings(redaction=RedactionRules.from_config(doc.get("redaction", {})),
                             retention=RetentionRules.from_config(doc.get("retention", {})),
                             smtp=smtp, alerts=AlertConfig(**alerts))
    except StaffError as exc:
        raise ConfigError(f"{exc.code}: {exc.message}") from None
    except (TypeError, OSError):
        raise ConfigError("a staff setting ([smtp], [alerts]) is invalid") from None

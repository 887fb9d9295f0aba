"""Relay configuration: a frozen dataclass, a TOML ``[relay]`` table, ``RELAY_<FIELD>`` overrides.

Every field has a default and one line of help (``FIELD_HELP``); a test fails when a
field is missing from it. Secrets are never fields: they are read from files (mode
0600 in the state directory) or from ``$CREDENTIALS_DIRECTORY`` (systemd credentials).

>>> cfg = load_config(None, env={"RELAY_PORT": "9000"})
>>> cfg.port
9000
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FIELD_HELP", "ConfigError", "RelayConfig", "load_config", "read_operator_token"]


class ConfigError(Exception):
    """The configuration is unusable; the message names the field (never a secret)."""


@dataclass(frozen=True)
class RelayConfig:
    """Every setting of the relay, with embedded defaults."""

    host: str = "127.0.0.1"
    port: int = 8440
    state_dir: str = "./state"
    public_origin: str = "http://127.0.0.1:8440"
    operator_token_file: str = ""
    log_level: str = "INFO"
    log_file: str = ""
    trusted_proxies: tuple[str, ...] = ()
    record_granularity_seconds: int = 60
    outbox_max_age_seconds: int = 7 * 86400
    outbox_max_bytes: int = 512 * 1024 * 1024
    outbox_account_max_bytes: int = 64 * 1024 * 1024
    link_window: int = 256
    link_batch_frames: bool = True
    link_auth_timeout_seconds: float = 10.0
    group_commit_max_batch: int = 256
    max_frame_bytes: int = 128 * 1024
    connections_per_ip_per_minute: int = 120
    max_engagements_per_account: int = 1000
    idle_timeout_seconds: float = 300.0
    heartbeat_seconds: float = 30.0
    resume_grace_seconds: float = 120.0
    queue_timeout_seconds: float = 600.0
    resume_buffer_frames: int = 5000
    resume_buffer_bytes: int = 2 * 1024 * 1024
    # Visitors behind one NAT (a hospital ward, an office) share an address: 50 stops
    # one client from taking an account's whole queue without refusing such a crowd.
    max_engagements_per_address: int = 50
    sweep_interval_seconds: float = 3600.0
    controller_name: str = "the account holder"
    extra_origins: tuple[str, ...] = field(default_factory=tuple)
    event_loop: str = "auto"
    gc_young_threshold: int = 10_000


FIELD_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port to listen on",
    "state_dir": "directory for the database, the relay keys and (optionally) the log file",
    "public_origin": "origin clients and the vault dial (the vault link signs it)",
    "operator_token_file": "file holding the operator token (else $CREDENTIALS_DIRECTORY/"
                           "operator_token, else state_dir/operator_token)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_file": "write JSON-line logs here as well as to stderr (relative to state_dir)",
    "trusted_proxies": "peer addresses whose X-Forwarded-For is believed (reverse proxy)",
    "record_granularity_seconds": "engagement record times are rounded down to this",
    "outbox_max_age_seconds": "an account whose oldest undelivered envelope is older than this"
                              " gets no new compliance engagements (nothing is dropped)",
    "outbox_max_bytes": "outbox total size above which new envelopes are refused",
    "outbox_account_max_bytes": "an account's outbox size at which its new compliance"
                                " engagements are refused (outbox.backpressure)",
    "link_window": "outbox entries in flight to a vault link before a receipt is needed",
    "link_batch_frames": "send several outbox entries per websocket frame (up to 1 MiB) to a"
                         " vault that says it accepts them; false: one frame per entry",
    "link_auth_timeout_seconds": "a vault link that does not authenticate in this time is closed",
    "group_commit_max_batch": "most writes committed in one transaction",
    "max_frame_bytes": "largest websocket frame accepted",
    "connections_per_ip_per_minute": "websocket connections per client address per minute",
    "max_engagements_per_account": "concurrent live engagements per account",
    "idle_timeout_seconds": "close a chat socket silent for this long",
    "heartbeat_seconds": "websocket ping interval",
    "resume_grace_seconds": "how long a dropped party may resume before it is gone",
    "queue_timeout_seconds": "queued engagement not accepted in this time is missed",
    "resume_buffer_frames": "deliveries kept per party for resume",
    "resume_buffer_bytes": "bytes of messages kept per party per engagement for resume; a"
                           " party that is away gets no more (engagement.buffer_full)",
    "max_engagements_per_address": "live (queued or assigned) engagements one client address"
                                   " may hold (rate.engagements_per_address)",
    "sweep_interval_seconds": "how often the retention sweeper runs",
    "controller_name": "default controller name in records of processing",
    "extra_origins": "origins allowed for every account (development)",
    "event_loop": "auto (uvloop when installed: the `fast` extra) or asyncio",
    "gc_young_threshold": "`relay serve`: allocations between Python's young-generation"
                          " collections (Python's default is 700; 0 keeps Python's"
                          " settings). Higher keeps per-message objects from surviving"
                          " into the old generation, whose full collections stopped the"
                          " event loop ~0.4 s each at 10,000 sockets",
}

_TUPLE_FIELDS = {"trusted_proxies", "extra_origins"}


def _coerce(name: str, typ: Any, value: Any) -> Any:
    try:
        if name in _TUPLE_FIELDS:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if typ in (bool, "bool"):
            return _boolean(value)
        if typ in (int, "int"):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ in (float, "float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config field {name} has the wrong type") from exc


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def load_config(
    path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> RelayConfig:
    """Defaults, then the TOML file's ``[relay]`` table, then ``RELAY_*`` env, then overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in dataclasses.fields(RelayConfig)}
    if path is not None:
        try:
            data = tomllib.loads(pathlib.Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        table = data.get("relay", {})
        unknown = set(table) - set(types)
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        values.update(table)
    for name in types:
        key = f"RELAY_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = RelayConfig(**{k: _coerce(k, types[k], v) for k, v in values.items()})
    if cfg.gc_young_threshold < 0:
        raise ConfigError("gc_young_threshold must be 0 (Python's settings) or more")
    return cfg


def read_operator_token(config: RelayConfig, *, env: Mapping[str, str] | None = None) -> str:
    """The operator token from the configured file, systemd credentials or the state dir."""
    env = os.environ if env is None else env
    candidates = []
    if config.operator_token_file:
        candidates.append(pathlib.Path(config.operator_token_file))
    if env.get("CREDENTIALS_DIRECTORY"):
        candidates.append(pathlib.Path(env["CREDENTIALS_DIRECTORY"]) / "operator_token")
    candidates.append(pathlib.Path(config.state_dir) / "operator_token")
    for path in candidates:
        if path.is_file():
            token = path.read_text().strip()
            if len(token) < 16:
                raise ConfigError(f"operator token in {path} is shorter than 16 characters")
            return token
    raise ConfigError("no operator token: set operator_token_file or run `relay init`")

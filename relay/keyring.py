"""The relay's own secrets: the master key (wraps transcript data keys) and the relay
signing key (signs ``connection-info`` envelopes).

Each secret is a 32-byte file with mode 0600 in the state directory, created on first
start, or read from ``$CREDENTIALS_DIRECTORY`` (systemd credentials) when that holds a
file of the same name. A group- or world-readable secret file stops startup: another
local user could read it (key theft on a shared host).
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass

import nacl.utils

from envelope import PartyKeys

from .config import ConfigError

__all__ = ["RelayKeyring", "load_keyring", "read_secret_file"]

MASTER_KEY_FILE = "master.key"
SIGNING_KEY_FILE = "relay_signing.key"


def read_secret_file(path: pathlib.Path, *, create: bool) -> bytes:
    """Read (or create) a 32-byte secret file with mode 0600."""
    if not path.exists():
        if not create:
            raise ConfigError(f"secret file {path} is missing")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(nacl.utils.random(32))
            fh.flush()
            os.fsync(fh.fileno())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"secret file {path} is readable by others; chmod 600 it")
    data = path.read_bytes()
    if len(data) != 32:
        raise ConfigError(f"secret file {path} must hold exactly 32 bytes")
    return data


@dataclass(frozen=True)
class RelayKeyring:
    """The master key and the relay's party keys for sealing connection info."""

    master_key: bytes
    relay_keys: PartyKeys


def load_keyring(state_dir: str | os.PathLike[str], *,
                 env: Mapping[str, str] | None = None) -> RelayKeyring:
    """Load the relay's secrets, preferring systemd credentials, creating missing files."""
    env = os.environ if env is None else env
    root = pathlib.Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    creds = pathlib.Path(env["CREDENTIALS_DIRECTORY"]) if env.get("CREDENTIALS_DIRECTORY") \
        else None

    def secret(name: str) -> bytes:
        if creds is not None and (creds / name).is_file():
            data = (creds / name).read_bytes()
            if len(data) != 32:
                raise ConfigError(f"credential {name} must hold exactly 32 bytes")
            return data
        return read_secret_file(root / name, create=True)

    seed = secret(SIGNING_KEY_FILE)
    # The relay's X25519 key is derived from the same seed file; nobody seals to it.
    relay_keys = PartyKeys.from_secrets(nacl.utils.random(32), seed)
    return RelayKeyring(master_key=secret(MASTER_KEY_FILE), relay_keys=relay_keys)

"""The app's typed state, declared in one place behind ``web.AppKey``s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .atrest import TranscriptCipher
from .config import RelayConfig
from .keyring import RelayKeyring
from .links import LinkRegistry
from .metrics import RelayMetrics
from .sqlite_store import SqliteStore

if TYPE_CHECKING:
    from .hub import ChatHub
    from .offload import Offloader

__all__ = ["STATE", "RelayState"]


@dataclass
class RelayState:
    """Everything a handler needs; built by :func:`relay.app.create_app`."""

    config: RelayConfig
    store: SqliteStore
    metrics: RelayMetrics
    keyring: RelayKeyring
    cipher: TranscriptCipher
    logger: logging.Logger
    operator_token: str
    clock: Callable[[], float]
    hub: ChatHub | None = None
    offload: Offloader | None = None
    links: LinkRegistry = field(default_factory=LinkRegistry)
    ready: bool = False
    # A retention sweep deleted transcripts but its WAL checkpoint was blocked: the old
    # page images are still in the -wal file, so the next sweep must fold it again.
    sweep_checkpoint_pending: bool = False
    background: list[object] = field(default_factory=list)


STATE: web.AppKey[RelayState] = web.AppKey("relay_state", RelayState)

"""The vault app's typed state keys, declared together (``app.py`` and the staff API
both read them; keeping them here breaks what would be an import cycle)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from .config import StaffSettings, VaultConfig
from .ingest import Ingestor
from .keyfiles import VaultKeys
from .keystore import KeyStore
from .link_client import VaultLink
from .metrics import VaultMetrics
from .staff_services import AlertRaiser, NoticePump, TranscriptMailer
from .store import VaultStore

__all__ = ["ALERTS", "CLOCK", "CONFIG", "INGESTOR", "KEYS", "KEYSTORE", "LINK", "MAILER",
           "METRICS", "NOTICES", "SETTINGS", "STORE"]

CONFIG = web.AppKey("config", VaultConfig)
KEYS = web.AppKey("keys", VaultKeys)
STORE = web.AppKey("store", VaultStore)
KEYSTORE = web.AppKey("keystore", KeyStore)
INGESTOR = web.AppKey("ingestor", Ingestor)
METRICS = web.AppKey("metrics", VaultMetrics)
LINK = web.AppKey("link", VaultLink)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
SETTINGS = web.AppKey("staff_settings", StaffSettings)
ALERTS = web.AppKey("alerts", AlertRaiser)
NOTICES = web.AppKey("erasure_notices", NoticePump)
MAILER = web.AppKey("transcript_mailer", TranscriptMailer)

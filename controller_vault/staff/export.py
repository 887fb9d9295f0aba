"""The subject-access export bundle (GDPR Art. 15 and 20): a streamed, documented JSON file.

Format ``compliance-relay.subject-export`` v1, described by
``docs/export-bundle.schema.json``::

    {"format": "compliance-relay.subject-export", "version": 1,
     "export_id": HEX32, "generated_at": "2024-01-01T00:00:00Z", "generated_at_unix": INT,
     "vault": {"account": ACCOUNT, "identity_fingerprint": "crfp1-..."},
     "subject": {"identifier_kind": "email" | "phone" | "visitor_id", "blind_index": HEX},
     "engagements": [ENGAGEMENT, ...],            # streamed one by one
     "summary": {"engagements": N, "messages": N, "prechat": N, "consent": N,
                 "surveys": N, "connection_info": N}}

The subject's identifier is *not* written in the clear in the header: the bundle is a
file that sits in download folders, ticket systems and mail, and its header is what
previews and indexers show. The keyed blind index records which query produced it
(only this vault can recompute it), and the identifier itself is in the subject's own
pre-chat answers inside, where they gave it. An empty result ("we hold nothing about
you") is then also safe to keep on file.

The writer takes engagements from the store as an async iterator of dicts, checks each
strictly (known fields only, right account, tagged by the store as matching this
subject's blind index, no duplicates) and yields bytes as it goes, so a download starts
at once and memory stays flat. Times inside engagements are UNIX seconds (UTC).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from envelope.limits import ACCOUNT_PATTERN, ENGAGEMENT_PATTERN

from .errors import ExportError, ExportNameError

__all__ = [
    "BUNDLE_FORMAT",
    "ExportHeader",
    "content_disposition",
    "export_filename",
    "stream_bundle",
]

BUNDLE_FORMAT = "compliance-relay.subject-export"
IDENTIFIER_KINDS = frozenset({"email", "phone", "visitor_id"})
MAX_FILENAME = 128
_HEX = re.compile(r"[0-9a-f]{32,128}")
_FINGERPRINT = re.compile(r"crfp1-[a-z2-7]{32}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Windows device names: a file called "nul.json" or "con" is a device there, not a file.
_DEVICE = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")

_STR, _INT, _STRMAP, _OPT_STR, _ROLE, _ANSWER = "str", "int", "strmap", "str?", "role", "answer"
_ENUMS = {_ROLE: frozenset({"visitor", "agent", "bot", "relay", "vault"}),
          _ANSWER: frozenset({"granted", "declined"})}
_RECORDS: dict[str, dict[str, tuple[str, bool]]] = {
    "messages": {"seq": (_INT, True), "role": (_ROLE, True), "ts": (_INT, True),
                 "text": (_STR, True), "sender": (_OPT_STR, False)},
    "prechat": {"ts": (_INT, True), "name": (_STR, False), "email": (_STR, False),
                "phone": (_STR, False), "answers": (_STRMAP, False)},
    "consent": {"ts": (_INT, True), "text_version": (_STR, True), "answer": (_ANSWER, True)},
    "surveys": {"ts": (_INT, True), "answers": (_STRMAP, True)},
    "connection_info": {"ts": (_INT, True), "ip": (_STR, False), "user_agent": (_STR, False),
                        "page_url": (_STR, False), "referrer": (_STR, False),
                        "visitor_id": (_STR, False)},
}
_TOP = {"engagement_id", "account", "started_at", "ended_at", "complete",
        "subject_blind_indexes", *_RECORDS}


def _utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ExportHeader:
    """What the bundle says about itself before the engagements."""

    export_id: str
    account: str
    identity_fingerprint: str
    identifier_kind: str
    blind_index: str
    generated_at: int

    def __post_init__(self) -> None:
        ok = (_HEX.fullmatch(self.export_id) and ACCOUNT_PATTERN.fullmatch(self.account)
              and _FINGERPRINT.fullmatch(self.identity_fingerprint)
              and self.identifier_kind in IDENTIFIER_KINDS and _HEX.fullmatch(self.blind_index)
              and type(self.generated_at) is int)
        if not ok:
            raise ExportError("bad export header", code="export.bad_header")

    @classmethod
    def new(cls, *, account: str, identity_fingerprint: str, identifier_kind: str,
            blind_index: str, now: int) -> ExportHeader:
        """A header with a fresh random export id."""
        return cls(export_id=secrets.token_hex(16), account=account,
                   identity_fingerprint=identity_fingerprint, identifier_kind=identifier_kind,
                   blind_index=blind_index, generated_at=now)


def _typed(kind: str, value: object) -> bool:
    if kind == _INT:
        return type(value) is int and 0 <= value < 2**53
    if kind == _STR:
        return isinstance(value, str)
    if kind == _OPT_STR:
        return value is None or isinstance(value, str)
    if kind in _ENUMS:
        return value in _ENUMS[kind]
    if kind == _STRMAP:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return False


def _record(kind: str, item: object) -> dict[str, Any]:
    fields = _RECORDS[kind]
    if not isinstance(item, Mapping) or not set(item) <= set(fields):
        raise ExportError(f"a {kind} record has unknown fields")
    for name, (typ, required) in fields.items():
        if (required and name not in item) or (name in item and not _typed(typ, item[name])):
            raise ExportError(f"a {kind} record has a missing or mistyped field")
    return dict(item)


def _engagement(header: ExportHeader, eng: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(eng, Mapping) or not set(eng) <= _TOP:
        raise ExportError("an engagement has unknown fields")
    eid = eng.get("engagement_id")
    if not isinstance(eid, str) or not ENGAGEMENT_PATTERN.fullmatch(eid):
        raise ExportError("an engagement has a bad id")
    if eng.get("account") != header.account:
        # Tenant isolation: a store bug must not put another account's data in the file.
        raise ExportError(f"engagement {eid} belongs to another account",
                          code="export.foreign_engagement")
    if header.blind_index not in (eng.get("subject_blind_indexes") or ()):
        # Only engagements the store found through this subject's blind index may be
        # written: a join that returned too much fails loudly instead of leaking.
        raise ExportError(f"engagement {eid} is not tagged with this subject",
                          code="export.foreign_engagement")
    if not (_typed(_INT, eng.get("started_at")) and isinstance(eng.get("complete"), bool)
            and (eng.get("ended_at") is None or _typed(_INT, eng.get("ended_at")))):
        raise ExportError(f"engagement {eid} has bad times or completeness")
    out: dict[str, Any] = {"engagement_id": eid, "account": header.account,
                           "started_at": eng["started_at"], "ended_at": eng.get("ended_at"),
                           "complete": eng["complete"]}
    for kind in _RECORDS:
        items = eng.get(kind, [])
        if not isinstance(items, list):
            raise ExportError(f"engagement {eid} has a bad {kind} list")
        out[kind] = [_record(kind, item) for item in items]
    return out


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def stream_bundle(header: ExportHeader, engagements: AsyncIterable[Mapping[str, Any]],
                        *, on_engagement: Callable[[int], None] | None = None,
                        ) -> AsyncIterator[bytes]:
    """Yield the bundle as UTF-8 JSON chunks: the head, one chunk per engagement, the tail."""
    head = {"format": BUNDLE_FORMAT, "version": 1, "export_id": header.export_id,
            "generated_at": _utc(header.generated_at),
            "generated_at_unix": header.generated_at,
            "vault": {"account": header.account,
                      "identity_fingerprint": header.identity_fingerprint},
            "subject": {"identifier_kind": header.identifier_kind,
                        "blind_index": header.blind_index}}
    yield _dumps(head)[:-1] + b',"engagements":['
    seen: set[str] = set()
    totals = dict.fromkeys(("engagements", *_RECORDS), 0)
    async for raw in engagements:
        eng = _engagement(header, raw)
        if eng["engagement_id"] in seen:
            raise ExportError("an engagement was given twice", code="export.duplicate_engagement")
        seen.add(eng["engagement_id"])
        totals["engagements"] += 1
        for kind in _RECORDS:
            totals[kind] += len(eng[kind])
        yield (b"," if len(seen) > 1 else b"") + _dumps(eng)
        if on_engagement is not None:
            on_engagement(len(seen))
    yield b'],"summary":' + _dumps(totals) + b"}\n"


def export_filename(requested: str | None, *, account: str, export_id: str,
                    generated_at: int) -> str:
    """A safe file name for an export: the default, or ``requested`` if it is harmless."""
    if requested is None:
        stamp = dt.datetime.fromtimestamp(generated_at, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"subject-export-{account}-{stamp}-{export_id[:12]}.json"
    # Each refusal stops a path trick: traversal (".."), directories or absolute paths
    # ("/", "\\", "C:"), NUL truncation in C-level file APIs, hidden files, device
    # names, and names long enough to overflow a file system's limit. A trailing dot
    # would become ".." once ".json" is appended (and Windows strips trailing dots).
    if (not isinstance(requested, str) or not requested or len(requested) > MAX_FILENAME
            or "\x00" in requested or "/" in requested or "\\" in requested
            or ".." in requested or requested.endswith(".")
            or not _SAFE_NAME.fullmatch(requested)
            or _DEVICE.fullmatch(requested)):
        raise ExportNameError("the export file name is not acceptable")
    name = requested if requested.endswith(".json") else requested + ".json"
    if len(name) > MAX_FILENAME:
        raise ExportNameError("the export file name is not acceptable")
    return name


def content_disposition(filename: str) -> str:
    """The Content-Disposition header value for a name from :func:`export_filename`."""
    return f'attachment; filename="{filename}"'

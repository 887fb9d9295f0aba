"""Turning an engagement's opened rows into the staff transcript and the export record.

Pure functions: the rows come from :func:`~controller_vault.erasure.read_engagement`
(which audits the read), the result goes to ``staff.render`` (JSON/HTML/email) or to
``staff.export.stream_bundle``. History hand-offs are copies of messages the vault
already holds (sealed again for a new agent), so they are not repeated; offloaded
standard-mode messages are numbered after the live ones.

>>> from controller_vault.erasure import OpenedRow
>>> rows = [OpenedRow("A" * 22, "k", "visitor", 1, "message", 5, b'{"text":"hi"}')]
>>> build_transcript("eng-00000001", "clinic", 5, None, True, rows, {})["messages"][0]["text"]
'hi'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .erasure import OpenedRow

__all__ = ["build_export_record", "build_transcript"]

_CHAT_ROLES = ("visitor", "agent", "bot")


def _body(row: OpenedRow) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(row.body.decode("utf-8"))
    return doc


def _messages(rows: Sequence[OpenedRow], agents: Mapping[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        if row.kind == "message":
            msg: dict[str, Any] = {"seq": row.seq, "role": row.role, "ts": row.received_at,
                                   "text": _body(row)["text"]}
            if row.sender_key_id in agents:
                msg["sender"] = agents[row.sender_key_id]
            out.append(msg)
    offset = max((m["seq"] for m in out), default=0)
    for row in rows:
        if row.kind == "offload":
            for n, item in enumerate(_body(row)["messages"], start=1):
                role = item["role"] if item["role"] in _CHAT_ROLES else "visitor"
                out.append({"seq": offset + n, "role": role, "ts": item["ts"],
                            "text": item["text"]})
            offset += len(_body(row)["messages"])
    return out


def _ended_at(rows: Sequence[OpenedRow]) -> int | None:
    ends = [r.received_at for r in rows if r.kind == "end"]
    return max(ends) if ends else None


def build_transcript(engagement: str, account: str, started_at: int, ended_at: int | None,
                     complete: bool, rows: Sequence[OpenedRow],
                     agents: Mapping[str, str]) -> dict[str, Any]:
    """The transcript JSON of ``staff.render`` (messages, merged pre-chat, completeness)."""
    prechat: dict[str, Any] = {}
    for row in rows:
        if row.kind == "prechat":
            body = _body(row)
            answers = {**prechat.get("answers", {}), **body.pop("answers", {})}
            prechat.update(body)
            if answers:
                prechat["answers"] = answers
    out: dict[str, Any] = {"engagement_id": engagement, "account": account,
                           "started_at": started_at,
                           "ended_at": ended_at if ended_at is not None else _ended_at(rows),
                           "complete": complete, "incomplete": not complete,
                           "messages": _messages(rows, agents)}
    if prechat:
        out["prechat"] = prechat
    return out


def build_export_record(engagement: str, account: str, started_at: int, complete: bool,
                        rows: Sequence[OpenedRow], agents: Mapping[str, str],
                        blind_indexes: Sequence[str]) -> dict[str, Any]:
    """One engagement in the export bundle's documented shape (staff/export.py)."""
    prechat, consent, surveys, conn = [], [], [], []
    for row in rows:
        if row.kind == "prechat":
            prechat.append({"ts": row.received_at, **_body(row)})
        elif row.kind == "consent":
            consent.append({"ts": row.received_at, **_body(row)})
        elif row.kind == "survey":
            surveys.append({"ts": row.received_at, **_body(row)})
        elif row.kind == "connection-info":
            conn.append({"ts": row.received_at, **_body(row)})
    return {"engagement_id": engagement, "account": account, "started_at": started_at,
            "ended_at": _ended_at(rows), "complete": complete,
            "subject_blind_indexes": list(blind_indexes),
            "messages": _messages(rows, agents), "prechat": prechat, "consent": consent,
            "surveys": surveys, "connection_info": conn}

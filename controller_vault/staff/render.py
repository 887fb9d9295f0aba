"""Readable transcripts: JSON transcript in, printable HTML page or plain text out.

The transcript JSON (what the vault's transcript route returns and the mailer sends)::

    {"engagement_id": ENG, "account": ACCOUNT,
     "started_at": UNIX, "ended_at": UNIX | null, "complete": bool,
     "messages": [{"seq": int, "role": "visitor"|"agent"|"bot", "ts": UNIX,
                   "text": str, "sender": str?}],          # sender: agent pseudonym
     "prechat": {"name"?, "email"?, "phone"?, "answers"?: {str: str}}?}

Every value is escaped with ``html.escape(..., quote=True)`` where it is written, and
the page carries a Content-Security-Policy that forbids scripts, so a visitor who types
``<script>`` or ``"><img onerror=...>`` into a chat cannot run code in the staff
member's browser or mail client (stored cross-site scripting).

>>> "&lt;b&gt;" in render_html({"engagement_id": "eng-00000001", "account": "clinic",
...     "started_at": 0, "ended_at": None, "complete": False,
...     "messages": [{"seq": 1, "role": "visitor", "ts": 0, "text": "<b>"}]})
True
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["CONTENT_SECURITY_POLICY", "render_html", "render_text"]

#: Also sent as a header by the route that serves the page.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; "
                           "img-src 'none'; base-uri 'none'; form-action 'none'")

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;max-width:46em;margin:2em auto;color:#111}
h1{font-size:1.3em}table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left}
.msg{margin:.5em 0;padding:.4em .6em;border-left:3px solid #999;break-inside:avoid}
.visitor{border-color:#2a6}.agent,.bot{border-color:#26a}.meta{color:#555;font-size:.85em}
.text{white-space:pre-wrap;overflow-wrap:anywhere}.warn{background:#fe9;padding:.5em}
@media print{body{margin:0}.msg{border-left-width:2px}}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(ts: object) -> str:
    if type(ts) is not int:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _who(message: Mapping[str, Any]) -> str:
    role = str(message.get("role", "?"))
    sender = message.get("sender")
    return f"{role} ({sender})" if sender else role


def _prechat_rows(prechat: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [(k, str(prechat[k])) for k in ("name", "email", "phone") if k in prechat]
    answers = prechat.get("answers") or {}
    rows += [(str(k), str(v)) for k, v in answers.items()]
    return rows


def render_html(transcript: Mapping[str, Any]) -> str:
    """A self-contained, printable HTML page of one transcript (every value escaped)."""
    eng = transcript.get("engagement_id", "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>Transcript {_e(eng)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Transcript {_e(eng)}</h1>",
        '<table class="meta">',
        f"<tr><th>Account</th><td>{_e(transcript.get('account', ''))}</td></tr>",
        f"<tr><th>Started</th><td>{_e(_when(transcript.get('started_at')))}</td></tr>",
        f"<tr><th>Ended</th><td>{_e(_when(transcript.get('ended_at')))}</td></tr>",
        "</table>",
    ]
    if not transcript.get("complete", False):
        parts.append('<p class="warn">This engagement is incomplete: the vault has not '
                     "received every message or its end record.</p>")
    prechat = transcript.get("prechat")
    if isinstance(prechat, Mapping) and prechat:
        parts.append("<h2>Pre-chat form</h2><table>")
        parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _prechat_rows(prechat)]
        parts.append("</table>")
    parts.append("<h2>Messages</h2>")
    for message in transcript.get("messages", []):
        role = str(message.get("role", ""))
        css = role if role in ("visitor", "agent", "bot") else "other"
        parts.append(
            f'<div class="msg {css}"><div class="meta">#{_e(message.get("seq", ""))} '
            f"{_e(_who(message))} &middot; {_e(_when(message.get('ts')))}</div>"
            f'<div class="text">{_e(message.get("text", ""))}</div></div>')
    parts.append("</body></html>")
    return "\n".join(parts)


def render_text(transcript: Mapping[str, Any]) -> str:
    """The same transcript as plain text (for the text/plain part of an email)."""
    lines = [f"Transcript {transcript.get('engagement_id', '')}",
             f"Started: {_when(transcript.get('started_at'))}",
             f"Ended:   {_when(transcript.get('ended_at'))}"]
    if not transcript.get("complete", False):
        lines.append("Note: this engagement is incomplete.")
    prechat = transcript.get("prechat")
    if isinstance(prechat, Mapping) and prechat:
        lines.append("")
        lines += [f"{k}: {v}" for k, v in _prechat_rows(prechat)]
    lines.append("")
    for message in transcript.get("messages", []):
        text = str(message.get("text", "")).replace("\r", "")
        lines.append(f"[{_when(message.get('ts'))}] {_who(message)}:")
        lines += [f"  {line}" for line in text.split("\n")]
    return "\n".join(lines) + "\n"

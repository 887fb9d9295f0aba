"""Transcript rendering: every value is escaped, the page can run nothing."""

from __future__ import annotations

from html import unescape
from html.parser import HTMLParser
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller_vault.staff.render import CONTENT_SECURITY_POLICY, render_html, render_text

PAYLOADS = [
    "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</div></body><iframe>",
    "<svg/onload=alert(1)>", "javascript:alert(1)", "' onmouseover='alert(1)", "&lt;x&gt;",
    "<!-- --><style>body{display:none}</style>", "<meta http-equiv=refresh content=0;url=x>",
]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "table", "tr",
                "th", "td", "p", "div"}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _transcript(value: str) -> dict[str, Any]:
    return {"engagement_id": value, "account": value, "started_at": 1_700_000_000,
            "ended_at": None, "complete": False,
            "prechat": {"name": value, "email": value, "answers": {value: value}},
            "messages": [{"seq": 1, "role": value, "ts": 1_700_000_001, "text": value,
                          "sender": value},
                         {"seq": 2, "role": "agent", "ts": 1_700_000_002, "text": value}]}


def _parse(page: str) -> _Collector:
    parser = _Collector()
    parser.feed(page)
    parser.close()
    return parser


def _assert_inert(page: str) -> None:
    parsed = _parse(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS
    for _tag, attrs in parsed.tags:
        for name, _value in attrs:
            assert name in {"lang", "charset", "http-equiv", "content", "name", "class"}
    metas = [dict(a) for t, a in parsed.tags if t == "meta"]
    assert {"http-equiv": "Content-Security-Policy",
            "content": CONTENT_SECURITY_POLICY} in metas
    assert sum(1 for t, _ in parsed.tags if t == "meta") == 3


def test_injection_payloads_render_as_text() -> None:
    for payload in PAYLOADS:
        page = render_html(_transcript(payload))
        _assert_inert(page)
        assert payload not in page or payload == "javascript:alert(1)"
        assert payload in "".join(_parse(page).text)


@settings(max_examples=150, deadline=None)
@given(value=st.text(max_size=80))
def test_any_text_renders_inert_and_intact(value: str) -> None:
    page = render_html(_transcript(value))
    _assert_inert(page)
    if value.strip():
        assert value.replace("\r", "") in unescape("".join(_parse(page).text)).replace("\r", "")


def test_incomplete_engagements_are_marked() -> None:
    base = _transcript("x")
    assert "incomplete" in render_html(base) and "incomplete" in render_text(base)
    base["complete"] = True
    assert "incomplete" not in render_html(base) and "incomplete" not in render_text(base)


def test_text_rendering_reads_like_a_transcript() -> None:
    transcript = {"engagement_id": "eng-00000001", "complete": True,
                  "started_at": 0, "ended_at": 60,
                  "messages": [{"seq": 1, "role": "visitor", "ts": 1, "text": "hi\nthere"},
                               {"seq": 1, "role": "agent", "ts": 2, "text": "hello",
                                "sender": "agent-7"}]}
    assert render_text(transcript).splitlines()[4:] == [
        "[1970-01-01 00:00:01 UTC] visitor:", "  hi", "  there",
        "[1970-01-01 00:00:02 UTC] agent (agent-7):", "  hello"]

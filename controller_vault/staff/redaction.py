"""Redaction of transcript text at ingest: masks what must never be stored.

The vault calls :func:`redact` on every piece of free text it opens (message text,
history hand-offs, survey answers) *before* the first write, so the original of a
masked value is never on disk, in the WAL or in a backup. Rules are a frozen
:class:`RedactionRules`; the function is pure (text in, text and counts out).

    rule            what it masks                                       count key
    card_numbers    13-19 digits, optionally grouped by single spaces   card
                    or dashes, that pass the Luhn check
    us_ssn          AAA-GG-SSSS / AAA GG SSSS with the SSA's invalid    us_ssn
                    areas, groups and serials excluded
    uk_nino         two prefix letters (HMRC's excluded ones refused),  uk_nino
                    six digits, suffix A-D; spaces allowed
    national_ids    controller-configured regexes (generic national id) national_id
    dates_of_birth  full dates: 31/12/1985, 12-31-1985, 1985-12-31,     dob
                    31.12.1985, 31 Dec 1985, December 31, 1985
    custom          (name, regex) pairs from config                     custom:<name>

The Luhn check is what keeps ordinary numbers (order numbers, phone numbers,
amounts) from being masked: a random 16-digit number passes it one time in ten, a
card number always. Bare nine-digit runs are not taken as SSNs for the same reason.

>>> redact("card 4111 1111 1111 1111, order 1234567890123", RedactionRules())
('card [redacted:card], order 1234567890123', {'card': 1})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import StaffConfigError

__all__ = ["RedactionRules", "luhn_valid", "redact", "redact_body"]

# A digit run grouped by single spaces or dashes. Lookarounds stop it starting or
# ending inside a longer number (so a 25-digit reference is one run, not a card).
_DIGIT_RUN = re.compile(r"(?<![\d])\d+(?:[ -]\d+)*(?![\d])")
_CARD_MIN, _CARD_MAX = 13, 19

# SSA rules: area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_US_SSN = re.compile(
    r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
# HMRC: first letter not D F I Q U V; second not D F I O Q U V; prefixes BG GB KN NK
# NT TN ZZ are not allocated.
_UK_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])", re.IGNORECASE)

_MONTHS = ("january|february|march|april|may|june|july|august|september|october|"
           "november|december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec")
_D = r"(?:0?[1-9]|[12]\d|3[01])"
_M = r"(?:0?[1-9]|1[0-2])"
_Y = r"(?:19|20)\d\d"
_DOB_FORMS = (
    rf"{_D}([/.-]){_M}\1{_Y}",            # 31/12/1985, 31.12.1985, 31-12-1985
    rf"{_M}([/.-]){_D}\2{_Y}",            # 12/31/1985 (US order)
    rf"{_Y}-{_M}-{_D}",                   # 1985-12-31 (ISO 8601)
    rf"{_D}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?,?\s+{_Y}",   # 31 Dec 1985, 1st March 1985
    rf"(?:{_MONTHS})\.?\s+{_D}(?:st|nd|rd|th)?,?\s+{_Y}",   # December 31, 1985
)
_DOB = re.compile(r"(?<![\w/.-])(?:" + "|".join(_DOB_FORMS) + r")(?![\w/-]|\.\d)",
                  re.IGNORECASE)
# Words that say a date is a birth date, for ``dob_require_context``.
_DOB_CONTEXT = re.compile(r"\b(?:born|birth|dob|d\.o\.b|birthday|geboren|né|née)\b",
                          re.IGNORECASE)
_CONTEXT_CHARS = 40
# Exact pre-checks: every built-in rule needs digits (a card 13, an SSN 9, a NINO 6, a
# date 5 with a 19xx/20xx year), so text with fewer skips that rule's scan. Most chat
# text has none: the scans were 200 us per KiB of it, a third of the vault's ingest.
_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = b"0123456789"
_YEAR = re.compile(r"(?:19|20)\d\d")
_CUSTOM_NAME = re.compile(r"[a-z0-9_-]{1,32}")


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn (mod 10) check."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise StaffConfigError(f"a {what} pattern does not compile",
                               code="config.bad_redaction_rule") from exc
    if compiled.search("") is not None:
        # A pattern matching the empty string would insert masks between every character.
        raise StaffConfigError(f"a {what} pattern matches the empty string",
                               code="config.bad_redaction_rule")
    return compiled


@dataclass(frozen=True)
class RedactionRules:
    """Which redaction rules run at ingest, and the mask they write."""

    card_numbers: bool = field(default=True, metadata={
        "help": "mask payment card numbers that pass the Luhn check"})
    us_ssn: bool = field(default=True, metadata={"help": "mask US social security numbers"})
    uk_nino: bool = field(default=True, metadata={
        "help": "mask UK national insurance numbers"})
    national_ids: tuple[str, ...] = field(default=(), metadata={
        "help": "extra regexes for national id numbers of other countries"})
    dates_of_birth: bool = field(default=True, metadata={
        "help": "mask full calendar dates (day, month and year) as possible dates of birth"})
    dob_require_context: bool = field(default=False, metadata={
        "help": "mask a date only when a word like 'born' or 'DOB' precedes it"})
    custom: tuple[tuple[str, str], ...] = field(default=(), metadata={
        "help": "(name, regex) pairs masked as [redacted:<name>]"})
    mask: str = field(default="[redacted:{kind}]", metadata={
        "help": "replacement text; {kind} is the rule's count key"})
    _national: tuple[re.Pattern[str], ...] = field(
        default=(), init=False, repr=False, compare=False)
    _custom: tuple[tuple[str, re.Pattern[str]], ...] = field(
        default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(c.isdigit() for c in self.mask.replace("{kind}", "")):
            # A digit in the mask could join a neighbouring number into a new match.
            raise StaffConfigError("mask must not contain digits",
                                   code="config.bad_redaction_rule")
        compiled = tuple(_compile(p, "national id") for p in self.national_ids)
        custom: list[tuple[str, re.Pattern[str]]] = []
        for pair in self.custom:
            if len(pair) != 2 or not _CUSTOM_NAME.fullmatch(str(pair[0])):
                raise StaffConfigError("custom rule names are 1-32 of a-z 0-9 _ -",
                                       code="config.bad_redaction_rule")
            custom.append((f"custom:{pair[0]}", _compile(pair[1], "custom")))
        object.__setattr__(self, "_national", compiled)
        object.__setattr__(self, "_custom", tuple(custom))

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> RedactionRules:
        """Rules from a TOML ``[redaction]`` table (unknown keys are an error)."""
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = set(table) - known
        if unknown:
            raise StaffConfigError("unknown redaction setting", code="config.bad_redaction_rule")
        values = dict(table)
        if "national_ids" in values:
            values["national_ids"] = tuple(values["national_ids"])
        if "custom" in values:
            raw = values["custom"]
            pairs = raw.items() if isinstance(raw, Mapping) else raw
            values["custom"] = tuple((str(k), str(v)) for k, v in pairs)
        return cls(**values)


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Spans of Luhn-valid card numbers, including grouped forms inside longer runs."""
    spans: list[tuple[int, int]] = []
    for run in _DIGIT_RUN.finditer(text):
        # Groups with their offsets; a card may be a contiguous slice of the groups
        # ("ref 12 4111 1111 1111 1111"), but never a slice of one group, so an
        # ungrouped long number is taken whole or not at all.
        groups = [(m.start() + run.start(), m.end() + run.start())
                  for m in re.finditer(r"\d+", run.group())]
        i = 0
        while i < len(groups):
            # Only slices of at most 19 digits are candidates, which bounds the work
            # per group: a text of many short numbers costs linear time, not quadratic.
            candidates, digits = [], ""
            for j in range(i, len(groups)):
                digits += text[groups[j][0]:groups[j][1]]
                if len(digits) > _CARD_MAX:
                    break
                candidates.append((j, digits))
            found = None
            for j, digits in reversed(candidates):
                if len(digits) >= _CARD_MIN and luhn_valid(digits):
                    found = j
                    break
            if found is None:
                i += 1
            else:
                spans.append((groups[i][0], groups[found][1]))
                i = found + 1
    return spans


def _replace_spans(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(mask)
        last = end
    out.append(text[last:])
    return "".join(out)


def _sub(pattern: re.Pattern[str], mask: str, text: str) -> tuple[str, int]:
    # A function replacement, so a backslash in a configured mask is never a group reference.
    return pattern.subn(lambda _m: mask, text)


def _has_context(text: str, start: int) -> bool:
    return _DOB_CONTEXT.search(text, max(0, start - _CONTEXT_CHARS), start) is not None


def _digit_count(text: str) -> int:
    # What the rules' \d can match. In ASCII text that is exactly 0-9, counted in one
    # C pass (0.6 us per KiB against 4.8 for the regex); other text may hold other
    # Unicode digits, which \d matches too, so the regex counts those.
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw) - len(raw.translate(None, _ASCII_DIGITS))
    return len(_DIGIT.findall(text))


def redact(text: str, rules: RedactionRules) -> tuple[str, dict[str, int]]:
    """Mask every match of ``rules`` in ``text``; return the new text and counts per rule."""
    counts: dict[str, int] = {}

    def bump(kind: str, n: int) -> None:
        if n:
            counts[kind] = counts.get(kind, 0) + n

    def mask_for(kind: str) -> str:
        return rules.mask.replace("{kind}", kind)

    digits = _digit_count(text)
    if rules.card_numbers and digits >= _CARD_MIN:
        spans = _card_spans(text)
        text = _replace_spans(text, spans, mask_for("card"))
        bump("card", len(spans))
    if rules.us_ssn and digits >= 9:
        text, n = _sub(_US_SSN, mask_for("us_ssn"), text)
        bump("us_ssn", n)
    if rules.uk_nino and digits >= 6:
        text, n = _sub(_UK_NINO, mask_for("uk_nino"), text)
        bump("uk_nino", n)
    for pattern in rules._national:
        text, n = _sub(pattern, mask_for("national_id"), text)
        bump("national_id", n)
    if rules.dates_of_birth and digits >= 5 and _YEAR.search(text):
        spans = [m.span() for m in _DOB.finditer(text)
                 if not rules.dob_require_context or _has_context(text, m.start())]
        text = _replace_spans(text, spans, mask_for("dob"))
        bump("dob", len(spans))
    for kind, pattern in rules._custom:
        text, n = _sub(pattern, mask_for(kind), text)
        bump(kind, n)
    return text, counts


def redact_body(kind: str, body: dict[str, Any],
                rules: RedactionRules) -> tuple[dict[str, Any], dict[str, int]]:
    """A copy of an opened envelope body with every free-text field redacted.

    Subject identifiers (pre-chat email and phone, visitor id, transcript-request
    email) are left alone: they feed the blind index and are not free text.
    """
    counts: dict[str, int] = {}

    def clean(text: str) -> str:
        out, found = redact(text, rules)
        for key, n in found.items():
            counts[key] = counts.get(key, 0) + n
        return out

    out = dict(body)
    if kind == "message":
        out["text"] = clean(body["text"])
    elif kind in ("history-handoff", "offload"):
        field_name = "items" if kind == "history-handoff" else "messages"
        out[field_name] = [{**item, "text": clean(item["text"])} for item in body[field_name]]
    elif kind in ("survey", "prechat") and isinstance(body.get("answers"), dict):
        out["answers"] = {k: clean(v) for k, v in body["answers"].items()}
    if kind == "prechat" and isinstance(body.get("name"), str):
        out["name"] = clean(body["name"])
    return out, counts

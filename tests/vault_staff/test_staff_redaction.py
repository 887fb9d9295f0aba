"""Redaction at ingest: cards (Luhn), SSN, NINO, dates of birth, custom rules."""

from __future__ import annotations

import pathlib
import random
import sqlite3
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller_vault.staff.errors import StaffConfigError
from controller_vault.staff.redaction import RedactionRules, luhn_valid, redact

RULES = RedactionRules()


def _luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass Luhn."""
    for d in "0123456789":
        if luhn_valid(body + d):
            return body + d
    raise AssertionError("unreachable")


def _group(number: str, sep: str, size: int) -> str:
    return sep.join(number[i:i + size] for i in range(0, len(number), size))


@pytest.mark.parametrize("card", [
    "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
    "5555 5555 5555 4444", "3782 822463 10005", "6011000990139424",
    "4000 0566 5566 5556",
])
def test_known_test_cards_are_masked(card: str) -> None:
    out, counts = redact(f"my card is {card}, thanks", RULES)
    assert out == "my card is [redacted:card], thanks"
    assert counts == {"card": 1}


@pytest.mark.parametrize("text", [
    "order 4111111111111112 shipped",          # fails Luhn by one
    "call +44 20 7946 0958 or 0049 30 1234567",
    "total 1234.56 EUR, invoice 2024-000123",
    "tracking 1Z999AA10123456784",
    "reference 1234567890123456789012345",     # too long to be a card
    "version 3.14.159 build 20240101",
])
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    assert redact(text, RULES) == (text, {})


def test_card_inside_a_longer_grouped_run_is_found() -> None:
    out, _ = redact("ref 12 4111 1111 1111 1111", RULES)
    assert out == "ref 12 [redacted:card]"


@settings(max_examples=200, deadline=None)
@given(body=st.text("0123456789", min_size=12, max_size=18),
       sep=st.sampled_from(["", " ", "-"]), size=st.sampled_from([4, 5, 6]),
       before=st.text(st.characters(blacklist_categories=("Nd",)), max_size=20),
       after=st.text(st.characters(blacklist_categories=("Nd",)), max_size=20))
def test_every_luhn_valid_card_is_masked(body: str, sep: str, size: int,
                                         before: str, after: str) -> None:
    number = _luhn_complete(body)
    out, counts = redact(f"{before} {_group(number, sep, size)} {after}",
                         RedactionRules(dates_of_birth=False, us_ssn=False))
    assert counts.get("card") == 1
    assert number not in out.replace(" ", "").replace("-", "")


@settings(max_examples=300, deadline=None)
@given(number=st.text("0123456789", min_size=13, max_size=19),
       sep=st.sampled_from(["", " ", "-"]))
def test_no_false_positive_on_numbers_failing_luhn(number: str, sep: str) -> None:
    if luhn_valid(number):
        number = number[:-1] + str((int(number[-1]) + 1) % 10)
    text = f"order {_group(number, sep, 4)} done"
    # With 4-digit groups a contiguous slice of groups could still be a valid card;
    # that is a real card-shaped number, so only the whole-number case is asserted.
    if sep == "" or not any(
            luhn_valid(number[a:b])
            for a in range(0, len(number), 4) for b in range(a + 13, len(number) + 1)
            if b == len(number) or b % 4 == 0):
        assert redact(text, RedactionRules(dates_of_birth=False))[1] == {}


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Nd",)), max_size=200))
def test_text_without_digits_is_unchanged(text: str) -> None:
    assert redact(text, RULES) == (text, {})


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
@example(text="card \u0664\u0661\u0661\u0661 1111 1111 1111 1111")  # Arabic-Indic digits
@example(text="4111 1111 1111 1111")
def test_the_digit_pre_check_counts_what_the_rules_can_match(text: str) -> None:
    # The pre-check decides which scans run: it must count exactly the \d the rules see,
    # Unicode digits included (its ASCII shortcut is only taken for ASCII text).
    from controller_vault.staff.redaction import _DIGIT, _digit_count

    assert _digit_count(text) == len(_DIGIT.findall(text))
    assert _digit_count(text + "12") == len(_DIGIT.findall(text)) + 2


@pytest.mark.parametrize(("text", "kind"), [
    ("ssn 123-45-6789.", "us_ssn"), ("ssn 123 45 6789", "us_ssn"),
    ("nino AB123456C", "uk_nino"), ("nino ab 12 34 56 c", "uk_nino"),
    ("born 31/12/1985", "dob"), ("born 12/31/1985", "dob"), ("dob 1985-12-31", "dob"),
    ("born 31.12.1985", "dob"), ("born 31 Dec 1985", "dob"), ("born December 31, 1985", "dob"),
    ("born 1st March 1985", "dob"),
])
def test_identity_numbers_and_dates_are_masked(text: str, kind: str) -> None:
    out, counts = redact(text, RULES)
    assert counts == {kind: 1}
    assert f"[redacted:{kind}]" in out
    assert not any(c.isdigit() for c in out)


@pytest.mark.parametrize("text", [
    "ssn 000-12-3456", "ssn 666-12-3456", "ssn 900-12-3456", "ssn 123-00-4567",
    "ssn 123-45-0000", "nine digits 123456789", "nino QQ123456C", "nino GB123456A",
    "date 32/01/1985", "month 13/13/1985", "year 12/03/1885",
])
def test_invalid_identity_numbers_and_dates_are_not_masked(text: str) -> None:
    assert redact(text, RULES) == (text, {})


def test_dob_context_mode_masks_only_birth_dates() -> None:
    rules = RedactionRules(dob_require_context=True)
    out, counts = redact("appointment 12/03/2024; I was born on 01.02.1980", rules)
    assert out == "appointment 12/03/2024; I was born on [redacted:dob]"
    assert counts == {"dob": 1}


def test_custom_and_national_id_rules() -> None:
    rules = RedactionRules(national_ids=(r"\b\d{2}[A-Z]{2}\d{5}\b",),
                           custom=(("patient", r"P-\d{6}"),))
    out, counts = redact("id 12AB34567 patient P-123456 and P-654321", rules)
    assert out == "id [redacted:national_id] patient [redacted:custom:patient] and " \
                  "[redacted:custom:patient]"
    assert counts == {"national_id": 1, "custom:patient": 2}


def test_from_config_table() -> None:
    rules = RedactionRules.from_config({"uk_nino": False, "custom": {"mrn": r"MRN\d{7}"},
                                        "national_ids": [r"X\d{8}"]})
    assert redact("MRN1234567 X12345678 AB123456C", rules)[0] == \
        "[redacted:custom:mrn] [redacted:national_id] AB123456C"


@pytest.mark.parametrize("table", [
    {"custom": {"bad": "("}}, {"custom": {"empty": "a*"}}, {"custom": {"Bad Name": "x"}},
    {"national_ids": ["["]}, {"mask": "[x1]"}, {"unknown_rule": True},
])
def test_bad_config_has_a_stable_code(table: dict[str, object]) -> None:
    with pytest.raises(StaffConfigError) as err:
        RedactionRules.from_config(table)
    assert err.value.code == "config.bad_redaction_rule"


def test_large_input_stays_fast() -> None:
    rng = random.Random(7)
    text = " ".join(str(rng.randrange(10**6)) for _ in range(3000))[:16384]
    start = time.perf_counter()
    redact(text, RULES)
    assert time.perf_counter() - start < 1.0


def test_redacted_card_is_absent_from_a_sqlite_file(tmp_path: pathlib.Path) -> None:
    """The ingest contract: only redact()'s output is written, so no file holds the card."""
    db = tmp_path / "vault.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE messages (text TEXT)")
    for card in ("4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"):
        text, _ = redact(f"please charge {card} today", RULES)
        conn.execute("INSERT INTO messages VALUES (?)", (text,))
    conn.commit()
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    conn.close()
    for digits in (b"4111111111111111", b"4111 1111 1111 1111", b"5555555555554444",
                   b"5555-5555-5555-4444", b"378282246310005", b"1111"):
        assert digits not in blobs
    assert b"[redacted:card]" in blobs


def _reference(text: str, rules: RedactionRules) -> tuple[str, dict[str, int]]:
    """Every built-in rule scanned unconditionally (redact skips scans by digit count)."""
    from controller_vault.staff import redaction as r

    counts: dict[str, int] = {}
    spans = r._card_spans(text)
    text = r._replace_spans(text, spans, "[redacted:card]")
    counts["card"] = len(spans)
    text, counts["us_ssn"] = r._sub(r._US_SSN, "[redacted:us_ssn]", text)
    text, counts["uk_nino"] = r._sub(r._UK_NINO, "[redacted:uk_nino]", text)
    spans = [m.span() for m in r._DOB.finditer(text)]
    text = r._replace_spans(text, spans, "[redacted:dob]")
    counts["dob"] = len(spans)
    return text, {k: n for k, n in counts.items() if n}


_PIECES = st.sampled_from([
    "4111", "1111", "4", "1", " ", "-", "/", ".", "12", "31", "1985", "2001", "000",
    "AB", "QQ", "C", "Dec", "December", "born", "x", "ssn", "0", "9", "\n"])


@settings(max_examples=300)
@given(st.lists(_PIECES, max_size=40).map("".join))
@example("AB123112C")          # a NINO with exactly its 6 digits
@example("078-05-1120")        # an SSN with exactly its 9 digits
@example("born 1 Dec 1985")    # a date with exactly 5 digits
@example("4222222222222")      # a 13-digit card number (Luhn-valid)
def test_the_digit_pre_checks_never_change_what_is_masked(text: str) -> None:
    assert redact(text, RedactionRules()) == _reference(text, RedactionRules())

"""Retention rules with an injected clock: exactly the engagements past their age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller_vault.staff.errors import StaffConfigError
from controller_vault.staff.retention import (
    CategoryAges,
    RetainedEngagement,
    RetentionRules,
    format_dry_run,
    select_expired,
)

DAY = 86_400
NOW = 1_700_000_000
ALL = frozenset({"transcripts", "prechat", "connection-info"})


def _eng(n: int, days_old: float, account: str = "clinic",
         categories: frozenset[str] = ALL) -> RetainedEngagement:
    return RetainedEngagement(f"eng-{n:08d}", account, NOW - int(days_old * DAY), categories)


def test_exactly_the_engagements_past_the_age() -> None:
    rules = RetentionRules.from_config({"transcripts_days": 30, "prechat_days": 30,
                                        "connection_info_days": 30})
    engs = [_eng(1, 29.9), _eng(2, 30), _eng(3, 30 + 1 / DAY), _eng(4, 400)]
    chosen = select_expired(engs, rules, now=NOW)
    assert [e.engagement_id for e in chosen] == ["eng-00000003", "eng-00000004"]
    assert all(e.whole for e in chosen)


def test_categories_expire_separately() -> None:
    rules = RetentionRules.from_config({"transcripts_days": 365, "prechat_days": 90,
                                        "connection_info_days": 7})
    chosen = select_expired([_eng(1, 8), _eng(2, 100), _eng(3, 366), _eng(4, 6)],
                            rules, now=NOW)
    assert [(e.engagement_id, e.categories, e.whole) for e in chosen] == [
        ("eng-00000001", ("connection-info",), False),
        ("eng-00000002", ("connection-info", "prechat"), False),
        ("eng-00000003", ("connection-info", "prechat", "transcripts"), True),
    ]


def test_engagement_holding_only_expired_categories_goes_whole() -> None:
    rules = RetentionRules.from_config({"connection_info_days": 7})
    chosen = select_expired([_eng(1, 8, categories=frozenset({"connection-info"}))],
                            rules, now=NOW)
    assert chosen[0].whole


def test_per_account_overrides_field_by_field() -> None:
    rules = RetentionRules.from_config({
        "transcripts_days": 365, "prechat_days": 90,
        "accounts": {"clinic-b": {"transcripts_days": 10}}})
    assert rules.ages_for("clinic-b") == CategoryAges(10 * DAY, 90 * DAY, None)
    chosen = select_expired([_eng(1, 20, "clinic"), _eng(2, 20, "clinic-b")], rules, now=NOW)
    assert [(e.engagement_id, e.categories) for e in chosen] == [
        ("eng-00000002", ("transcripts",))]


def test_no_rules_keep_everything() -> None:
    assert select_expired([_eng(1, 10_000)], RetentionRules(), now=NOW) == []


@given(age_days=st.integers(1, 3650), offsets=st.lists(st.integers(0, 4000 * DAY), max_size=30))
def test_selection_matches_the_definition(age_days: int, offsets: list[int]) -> None:
    rules = RetentionRules(default=CategoryAges(transcripts_s=age_days * DAY))
    engs = [RetainedEngagement(f"eng-{i:08d}", "clinic", NOW - off, frozenset({"transcripts"}))
            for i, off in enumerate(offsets)]
    chosen = {e.engagement_id for e in select_expired(engs, rules, now=NOW)}
    assert chosen == {e.engagement_id for e in engs
                      if NOW - e.last_activity_at > age_days * DAY}


def test_dry_run_lists_ids_and_ages_only() -> None:
    rules = RetentionRules.from_config({"transcripts_days": 30, "connection_info_days": 1})
    text = format_dry_run(select_expired([_eng(1, 45), _eng(2, 2)], rules, now=NOW))
    lines = text.splitlines()
    assert lines[1].split()[:3] == ["eng-00000001", "clinic", "45.0"]
    assert "connection-info, transcripts" in lines[1]
    assert "connection-info" in lines[2] and "whole" not in lines[2]
    assert lines[-1] == "2 engagement(s) affected, 0 erased whole, 2 partly"


@pytest.mark.parametrize("table", [
    {"transcripts_days": 0}, {"transcripts_days": -1}, {"transcripts_days": "30"},
    {"transcripts_days": 1.5}, {"unknown": 1}, {"accounts": {"Bad Account": {}}},
    {"accounts": {"clinic": {"accounts": {}}}}, {"accounts": []},
])
def test_bad_retention_config(table: dict[str, object]) -> None:
    with pytest.raises(StaffConfigError) as err:
        RetentionRules.from_config(table)
    assert err.value.code == "config.bad_retention_rule"

"""Retention by age, as pure rules: which engagements (or parts of them) are past their age.

Config (TOML ``[retention]``; ages in days, absent = kept until erased on request)::

    transcripts_days = 365          # messages, hand-offs, surveys, end records
    prechat_days = 90               # pre-chat answers and consent records
    connection_info_days = 30       # IP address, user agent, page URL, visitor id
    [retention.accounts.clinic-b]   # per account: overrides field by field
    transcripts_days = 180

An engagement's age is counted from its last activity (its end, or its last envelope
if it never ended), so a long conversation is not cut while it runs. A category is
expired when ``now - last_activity > max age`` (strictly older). When every category
the engagement holds is expired, the whole engagement goes (crypto-shredding its data
key); otherwise only the expired categories' records are deleted.

>>> rules = RetentionRules(default=CategoryAges(transcripts_s=10))
>>> [e.engagement_id for e in select_expired(
...     [RetainedEngagement("eng-00000001", "clinic", 0, frozenset({"transcripts"}))],
...     rules, now=11)]
['eng-00000001']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from envelope.limits import ACCOUNT_PATTERN

from .errors import StaffConfigError

__all__ = [
    "CATEGORIES",
    "CategoryAges",
    "Expired",
    "RetainedEngagement",
    "RetentionRules",
    "format_dry_run",
    "select_expired",
]

#: Data categories and the envelope kinds stored under each.
CATEGORIES: Mapping[str, frozenset[str]] = MappingProxyType({
    "transcripts": frozenset({"message", "history-handoff", "survey", "end", "offload",
                              "transcript-request"}),
    "prechat": frozenset({"prechat", "consent"}),
    "connection-info": frozenset({"connection-info"}),
})
_DAY = 86_400
_CONFIG_KEYS = {"transcripts_days": "transcripts_s", "prechat_days": "prechat_s",
                "connection_info_days": "connection_info_s"}


@dataclass(frozen=True)
class CategoryAges:
    """Maximum age in seconds per category; None keeps that category indefinitely."""

    transcripts_s: int | None = None
    prechat_s: int | None = None
    connection_info_s: int | None = None

    def max_age(self, category: str) -> int | None:
        """The maximum age of ``category`` in seconds, or None."""
        value: int | None = getattr(self, category.replace("-", "_") + "_s")
        return value


@dataclass(frozen=True)
class RetentionRules:
    """The default ages and per-account overrides."""

    default: CategoryAges = field(default_factory=CategoryAges)
    per_account: Mapping[str, CategoryAges] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_account", MappingProxyType(dict(self.per_account)))

    def ages_for(self, account: str) -> CategoryAges:
        """The effective ages of ``account``."""
        return self.per_account.get(account, self.default)

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> RetentionRules:
        """Rules from a TOML ``[retention]`` table (ages in days)."""
        default = _ages(table, CategoryAges(), allow_accounts=True)
        accounts = table.get("accounts", {})
        if not isinstance(accounts, Mapping):
            raise StaffConfigError("retention.accounts must be a table",
                                   code="config.bad_retention_rule")
        per: dict[str, CategoryAges] = {}
        for account, sub in accounts.items():
            if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account) \
                    or not isinstance(sub, Mapping):
                raise StaffConfigError("retention.accounts has a bad entry",
                                       code="config.bad_retention_rule")
            per[account] = _ages(sub, default, allow_accounts=False)
        return cls(default=default, per_account=per)


def _ages(table: Mapping[str, Any], base: CategoryAges, *, allow_accounts: bool) -> CategoryAges:
    allowed = set(_CONFIG_KEYS) | ({"accounts"} if allow_accounts else set())
    if set(table) - allowed:
        raise StaffConfigError("unknown retention setting", code="config.bad_retention_rule")
    values = {f.name: getattr(base, f.name) for f in fields(CategoryAges)}
    for key, attr in _CONFIG_KEYS.items():
        if key in table:
            days = table[key]
            if type(days) is not int or days <= 0:
                raise StaffConfigError("retention ages are positive whole days",
                                       code="config.bad_retention_rule")
            values[attr] = days * _DAY
    return CategoryAges(**values)


@dataclass(frozen=True)
class RetainedEngagement:
    """What the store tells the rules about one engagement (ids and times only)."""

    engagement_id: str
    account: str
    last_activity_at: int
    categories: frozenset[str]


@dataclass(frozen=True)
class Expired:
    """An engagement with expired categories; ``whole`` means erase the engagement."""

    engagement_id: str
    account: str
    categories: tuple[str, ...]
    whole: bool
    age_s: int


def select_expired(engagements: Iterable[RetainedEngagement], rules: RetentionRules,
                   now: int) -> list[Expired]:
    """The engagements (and categories) older than their maximum age at ``now``."""
    out: list[Expired] = []
    for eng in engagements:
        ages = rules.ages_for(eng.account)
        age = now - eng.last_activity_at
        expired = []
        for category in sorted(eng.categories):
            limit = ages.max_age(category) if category in CATEGORIES else None
            if limit is not None and age > limit:
                expired.append(category)
        if expired:
            out.append(Expired(engagement_id=eng.engagement_id, account=eng.account,
                               categories=tuple(expired),
                               whole=set(expired) == set(eng.categories), age_s=age))
    return out


def format_dry_run(expired: Iterable[Expired]) -> str:
    """A plain-text table of what a sweep would erase (ids and ages only)."""
    rows = list(expired)
    lines = [f"{'engagement':<28} {'account':<20} {'age (days)':>10}  erases"]
    for item in rows:
        what = "whole engagement" if item.whole else ", ".join(item.categories)
        lines.append(f"{item.engagement_id:<28} {item.account:<20} "
                     f"{item.age_s / _DAY:>10.1f}  {what}")
    whole = sum(1 for item in rows if item.whole)
    lines.append(f"{len(rows)} engagement(s) affected, {whole} erased whole, "
                 f"{len(rows) - whole} partly")
    return "\n".join(lines)

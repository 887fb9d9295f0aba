"""Engagement ids the relay mints are safe to type into a command line."""

from __future__ import annotations

from envelope.limits import ENGAGEMENT_PATTERN
from relay.chat import new_engagement_id


def test_minted_engagement_ids_never_start_with_a_dash_or_underscore() -> None:
    # token_urlsafe alone starts with "-" or "_" once in 32 draws: 4,000 draws would
    # all but surely show one if the redraw were missing.
    ids = [new_engagement_id() for _ in range(4000)]
    assert all(i[0].isalnum() and ENGAGEMENT_PATTERN.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids) and {len(i) for i in ids} == {16}

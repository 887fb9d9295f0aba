"""The retention sweeper: deletes standard-mode transcripts past their account's age,
and outbox entries past the configured outbox age. ``now`` is an argument, so tests
run it with an injected clock.
"""

from __future__ import annotations

import logging

from .logs import log_event
from .state import RelayState

__all__ = ["retention_cutoff", "sweep_once"]


def retention_cutoff(now: float, retention_days: int) -> int:
    """Items created before this unix time are past retention."""
    return int(now) - retention_days * 86400


async def sweep_once(st: RelayState, *, now: float) -> int:
    """One sweep over every account; return transcript items deleted."""
    deleted = 0
    for acct in await st.store.list_accounts():
        deleted += await st.store.delete_transcripts(
            acct.account, before=retention_cutoff(now, acct.retention_days))
    expired = await st.store.expire_outbox(int(now) - st.config.outbox_max_age_seconds)
    if deleted or expired:
        await st.store.checkpoint()
    st.metrics.sweeper_runs.inc()
    st.metrics.transcripts_swept.inc(deleted)
    st.metrics.outbox_expired.inc(expired)
    log_event(st.logger, logging.INFO, "sweeper.run", deleted=deleted, outbox_expired=expired)
    return deleted

"""The retention sweeper: deletes standard-mode transcripts past their account's age.
``now`` is an argument, so tests run it with an injected clock.

The outbox is never swept: its entries were acknowledged to their senders, and
dropping them would lose data the relay promised to deliver. Its age and size bounds
instead refuse new compliance-mode engagements (backpressure, see relay.chat).
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
    if deleted or st.sweep_checkpoint_pending:
        # Deleted rows leave page images in the -wal file until a checkpoint copies the
        # zeroed pages back (secure_delete) and truncates it: a copy of the state dir
        # taken meanwhile would still hold expired transcripts. A reader can block it, so
        # the result is checked and the next sweep retries until it completes.
        st.sweep_checkpoint_pending = True  # stays set if the checkpoint itself raises
        st.sweep_checkpoint_pending = not await st.store.checkpoint()
        if st.sweep_checkpoint_pending:
            st.metrics.wal_checkpoint_incomplete.inc()
            log_event(st.logger, logging.WARNING, "sweeper.checkpoint_pending")
    if st.offload is not None:
        await st.offload.fold_wal()  # retries an offload purge's pending checkpoint
    st.metrics.sweeper_runs.inc()
    st.metrics.transcripts_swept.inc(deleted)
    log_event(st.logger, logging.INFO, "sweeper.run", deleted=deleted)
    return deleted

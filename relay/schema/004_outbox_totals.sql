-- Relay schema version 4: each account's outbox size kept beside its sequence counter.
-- The vault link reports the backlog with every receipt and the hub reads the total
-- every tick; counting and summing the outbox for each was a scan of every queued
-- envelope (most of the relay's reader thread under load). The writes that insert or
-- delete outbox rows update these in the same statement or transaction (relay/
-- group_commit.py, sqlite_store.py, sqlite_link_store.py; triggers did the same at
-- three times the insert cost). An outbox row is only inserted after its account's
-- counter row exists: its sequence is taken from it in the same transaction.
ALTER TABLE outbox_counters ADD COLUMN entries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox_counters ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE outbox_counters SET
    entries = (SELECT count(*) FROM outbox o WHERE o.account = outbox_counters.account),
    bytes = (SELECT coalesce(sum(length(o.data)), 0) FROM outbox o
             WHERE o.account = outbox_counters.account);

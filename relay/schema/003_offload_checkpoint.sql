-- Relay schema version 3: an offload purge whose WAL checkpoint has not completed.
-- A purged transcript's old page images stay in the -wal file until a TRUNCATE
-- checkpoint succeeds (a reader holding a snapshot makes it fail); the flag keeps the
-- engagement "purged, checkpoint pending" so the sweeper retries, across restarts too.
ALTER TABLE offload ADD COLUMN checkpoint_pending INTEGER NOT NULL DEFAULT 0;

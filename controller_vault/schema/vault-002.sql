-- vault.db schema v2: the durable queue of signed erasure notices for the relay.
-- A notice holds engagement ids, a time and a rule only (non-personal). It is written
-- in the same transaction as the erasure, so none is lost while the link is down.
CREATE TABLE erasure_notices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    notice      TEXT NOT NULL,      -- canonical JSON {"body","sig"} signed by the identity
    created_at  INTEGER NOT NULL,
    recorded_at INTEGER             -- when the relay answered erasure-recorded
);
CREATE INDEX erasure_notices_pending ON erasure_notices (recorded_at, id);

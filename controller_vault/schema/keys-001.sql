-- keys.db schema v1: per-engagement data keys wrapped by the master key.
-- Deleting a row here is what makes an engagement's data unreadable everywhere.
CREATE TABLE data_keys (
    engagement  TEXT PRIMARY KEY,
    nonce       BLOB NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

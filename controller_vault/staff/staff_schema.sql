-- staff.db schema v1: staff tokens (hashes only, never the plaintext token).
PRAGMA user_version = 1;

CREATE TABLE IF NOT EXISTS staff_tokens (
    token_id    TEXT PRIMARY KEY CHECK (length(token_id) = 16),
    token_hash  TEXT NOT NULL CHECK (length(token_hash) = 64),
    actor       TEXT NOT NULL,
    scopes      TEXT NOT NULL,          -- comma-separated, sorted
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
) STRICT;

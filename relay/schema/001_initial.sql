-- Relay schema version 1. Nothing in here may hold personal data of a
-- compliance-mode account: ids, counts, times, key material of the controller
-- (public), hashed tokens, and ciphertext (outbox envelopes, encrypted transcripts).
CREATE TABLE accounts (
    account         TEXT PRIMARY KEY,
    mode            TEXT NOT NULL CHECK (mode IN ('standard', 'compliance')),
    origins         TEXT NOT NULL,            -- JSON list of allowed widget origins
    retention_days  INTEGER NOT NULL,
    identity_key    BLOB,                     -- paired vault identity (Ed25519 public)
    key_statement   TEXT,                     -- JSON {"body","sig"} as uploaded
    vault_key_id    TEXT,
    vault_key       BLOB,                     -- X25519 public key from the statement
    created_at      INTEGER NOT NULL
) STRICT;

CREATE TABLE mode_changes (
    id       INTEGER PRIMARY KEY,
    account  TEXT NOT NULL REFERENCES accounts(account),
    mode     TEXT NOT NULL,
    actor    TEXT NOT NULL,                   -- "operator" or "account-admin"
    at       INTEGER NOT NULL
) STRICT;

CREATE TABLE tokens (
    token_hash  TEXT PRIMARY KEY,             -- BLAKE2b of the token; the token is never stored
    kind        TEXT NOT NULL CHECK (kind IN ('admin', 'agent')),
    account     TEXT NOT NULL REFERENCES accounts(account),
    agent       TEXT,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE agent_certificates (
    account      TEXT NOT NULL REFERENCES accounts(account),
    key_id       TEXT NOT NULL,
    agent        TEXT NOT NULL,
    certificate  TEXT NOT NULL,               -- JSON {"body","sig"} as uploaded
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account, key_id)
) STRICT;

CREATE TABLE engagements (
    engagement        TEXT PRIMARY KEY,
    account           TEXT NOT NULL,
    mode              TEXT NOT NULL,
    started_at        INTEGER NOT NULL,       -- rounded to the record granularity
    ended_at          INTEGER,
    queue_wait_s      INTEGER,
    first_response_s  INTEGER,
    visitor_messages  INTEGER NOT NULL DEFAULT 0,
    agent_messages    INTEGER NOT NULL DEFAULT 0,
    visitor_bytes     INTEGER NOT NULL DEFAULT 0,
    agent_bytes       INTEGER NOT NULL DEFAULT 0,
    agent             TEXT,                   -- pseudonym
    transfers         INTEGER NOT NULL DEFAULT 0,
    outcome           TEXT NOT NULL,
    receipts          INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX engagements_by_account ON engagements(account, started_at);

CREATE TABLE outbox_counters (
    account   TEXT PRIMARY KEY,
    next_seq  INTEGER NOT NULL                -- never reused, even after deletes
) STRICT;

CREATE TABLE outbox (
    account        TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    envelope_id    TEXT NOT NULL,
    engagement     TEXT NOT NULL,
    envelope_hash  TEXT NOT NULL,
    data           BLOB NOT NULL,             -- envelope bytes exactly as received
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (account, seq)
) STRICT;
CREATE UNIQUE INDEX outbox_by_envelope ON outbox(account, envelope_id);

CREATE TABLE data_keys (
    account     TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    wrapped     BLOB NOT NULL,                -- AES-GCM under the relay master key
    created_at  INTEGER NOT NULL,
    active      INTEGER NOT NULL,
    PRIMARY KEY (account, key_id)
) STRICT;

CREATE TABLE transcripts (
    id          INTEGER PRIMARY KEY,
    account     TEXT NOT NULL,
    engagement  TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    sealed      BLOB NOT NULL,                -- nonce + AES-GCM ciphertext
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX transcripts_by_engagement ON transcripts(account, engagement, id);
CREATE INDEX transcripts_by_age ON transcripts(account, created_at);

-- vault.db schema v1. Personal data exists here only as ciphertext under a
-- per-engagement data key (held in keys.db) or as a keyed hash (subject_index).
CREATE TABLE engagements (
    engagement   TEXT PRIMARY KEY,
    account      TEXT NOT NULL,
    first_at     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL,
    visitor_key  BLOB,              -- pinned first visitor signing key (pseudonymous)
    end_final    TEXT,              -- JSON {sender key id: last seq} from the end frame
    complete     INTEGER,           -- NULL open, 1 complete, 0 gaps
    missing      INTEGER NOT NULL DEFAULT 0,
    erased_at    INTEGER,           -- tombstone: redelivery after erasure stores nothing
    erase_rule   TEXT
);
CREATE TABLE engagement_senders (
    engagement    TEXT NOT NULL,
    sender_key_id TEXT NOT NULL,
    role          TEXT NOT NULL,
    PRIMARY KEY (engagement, sender_key_id)
);
CREATE TABLE envelopes (
    envelope_id   TEXT PRIMARY KEY,
    engagement    TEXT NOT NULL,
    hash          TEXT NOT NULL,
    sender_key_id TEXT NOT NULL,
    role          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    received_at   INTEGER NOT NULL,
    vault_key_id  TEXT NOT NULL,
    ciphertext    BLOB NOT NULL,
    UNIQUE (engagement, sender_key_id, seq)
);
CREATE INDEX envelopes_by_engagement ON envelopes (engagement, received_at);
CREATE TABLE subject_index (
    token       BLOB NOT NULL,
    engagement  TEXT NOT NULL,
    PRIMARY KEY (token, engagement)
);
CREATE INDEX subject_index_by_engagement ON subject_index (engagement);
CREATE TABLE agent_certificates (
    sig_key_id  TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    enc_key_id  TEXT NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    certificate TEXT NOT NULL,
    issued_at   INTEGER NOT NULL
);
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    purpose   TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq   INTEGER PRIMARY KEY,
    body  TEXT NOT NULL,
    sig   TEXT NOT NULL
);

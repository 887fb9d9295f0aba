-- Relay schema version 2: what the vault link and the compliance toggle keep.
-- Still nothing personal: ids, hashes, counts, stable codes and times.

-- One row per verified receipt that deleted outbox entries of an engagement: the
-- receipt hash is the relay's evidence that the vault took custody.
CREATE TABLE engagement_receipts (
    account       TEXT NOT NULL,
    engagement    TEXT NOT NULL,
    receipt_hash  TEXT NOT NULL,
    envelopes     INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    PRIMARY KEY (account, engagement, receipt_hash)
) STRICT;

-- Entries the vault refused (reject frame): the ciphertext is gone, only the code stays.
CREATE TABLE engagement_rejections (
    id          INTEGER PRIMARY KEY,
    account     TEXT NOT NULL,
    engagement  TEXT NOT NULL,
    code        TEXT NOT NULL,
    at          INTEGER NOT NULL
) STRICT;
CREATE INDEX engagement_rejections_by_engagement ON engagement_rejections(account, engagement);

-- Verified erasure notices from the paired vault (non-personal evidence).
CREATE TABLE engagement_erasures (
    account      TEXT NOT NULL,
    engagement   TEXT NOT NULL,
    rule         TEXT NOT NULL,
    erased_at    INTEGER NOT NULL,
    notice_hash  TEXT NOT NULL,
    PRIMARY KEY (account, engagement)
) STRICT;

-- Compliance toggle ON: one row per standard-mode transcript to move to the vault.
-- state: pending (not sealed yet) -> queued (offload envelopes in the outbox)
--        -> done (receipted, transcript rows deleted), or rejected (the vault refused
--        an offload envelope: the transcript stays, encrypted, and is reported).
CREATE TABLE offload (
    account     TEXT NOT NULL,
    engagement  TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'queued', 'done', 'rejected')),
    planned_at  INTEGER NOT NULL,
    PRIMARY KEY (account, engagement)
) STRICT;

-- The offload envelopes of each engagement still waiting for their receipt.
CREATE TABLE offload_envelopes (
    account      TEXT NOT NULL,
    engagement   TEXT NOT NULL,
    envelope_id  TEXT NOT NULL,
    PRIMARY KEY (account, envelope_id)
) STRICT;
CREATE INDEX offload_envelopes_by_engagement ON offload_envelopes(account, engagement);

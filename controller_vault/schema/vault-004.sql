-- vault.db schema v4: transcript emails as durable jobs (and an index for list paging).
-- A job is written in the same transaction as the visitor's transcript-request envelope,
-- so a crash between storing the request and sending the mail no longer loses it; a
-- failed send is retried with backoff. The row holds ids and counters only: the address
-- stays inside the sealed request envelope, and erasing the envelope (erasure,
-- retention) drops the job with it.
-- Requests stored before this version are not re-sent.
CREATE TABLE mail_jobs (
    envelope_id TEXT PRIMARY KEY REFERENCES envelopes (envelope_id) ON DELETE CASCADE,
    engagement  TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX mail_jobs_due ON mail_jobs (next_at);
-- The staff list pages by (start time, id): each page is an index range, not a scan.
CREATE INDEX engagements_by_start ON engagements (first_at, engagement);

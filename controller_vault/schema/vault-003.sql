-- vault.db schema v3: the relay's signing public key, pinned so that only the relay
-- this vault paired with may send relay-role envelopes (connection-info, offload).
-- source 'pair': recorded by `controller-vault pair` from the relay's /keys answer
-- (enforced); 'tofu': the first key seen on the link (a change raises an alert).
CREATE TABLE relay_signing_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    public_key  BLOB NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('pair', 'tofu')),
    recorded_at INTEGER NOT NULL
);

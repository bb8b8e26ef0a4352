-- Per-customer data keys that seal personal fields on the log (privacy/src/keys.rs). A key is
-- stored only wrapped by the master key, which lives outside the database. Forgetting a
-- customer destroys their keys: the wrapped bytes are removed and the row stays as a
-- tombstone (when, which key), so a key import cannot bring it back.
CREATE SCHEMA IF NOT EXISTS privacy;

CREATE TABLE privacy.data_keys (
    key_id        uuid        PRIMARY KEY,
    customer_id   text        NOT NULL,
    wrap_nonce    bytea,
    wrapped_key   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((destroyed_at IS NULL) = (wrapped_key IS NOT NULL AND wrap_nonce IS NOT NULL))
);

-- At most one live key per customer: the one new orders are sealed with.
CREATE UNIQUE INDEX data_keys_live ON privacy.data_keys (customer_id) WHERE destroyed_at IS NULL;
CREATE INDEX data_keys_customer ON privacy.data_keys (customer_id);

-- API keys for integrations (issue 13): `orderflow api-keys create|list|revoke`, checked by
-- the HTTP API (access::api_keys owns every statement on this table). Only an HMAC-SHA256 of
-- the secret under the server's pepper is stored: the key itself is shown once, at creation.
CREATE TABLE api_keys (
    -- The public part of the key (`ofk_<id>_<secret>`): 16 lowercase hex digits.
    id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('customer', 'service', 'operator', 'analyst')),
    -- The customer a customer key acts for; none for the other roles.
    customer_id   text CHECK ((role = 'customer') = (customer_id IS NOT NULL)),
    -- HMAC-SHA256(pepper, id ':' secret): 32 bytes.
    secret_hmac   bytea NOT NULL CHECK (length(secret_hmac) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Updated at most once a minute per key (a conditional UPDATE), not on every request.
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

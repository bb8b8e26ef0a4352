-- The HTTP API's idempotency records (issue 13). One row per order accepted through
-- `POST /v1/orders`, written in the same transaction as its `OrderCreated` in
-- `pipeline.outbox` (step `api`): an accepted order is never lost, and the order id (given, or
-- derived from the caller's Idempotency-Key) is the key. A repeat with the same body gets the
-- stored answer again; the same key with another body is refused (409).
CREATE SCHEMA api;

CREATE TABLE api.idempotency (
    order_id         text        PRIMARY KEY,
    -- Who sent it, and the Idempotency-Key header if one was given.
    principal        text        NOT NULL,
    idempotency_key  text,
    -- SHA-256 of the canonical JSON of the accepted document.
    request_hash     bytea       NOT NULL,
    -- The accepted document (canonical JSON), shown by GET until the read models have it.
    request          jsonb       NOT NULL,
    customer_id      text        NOT NULL,
    -- The answer given, replayed on a repeat.
    status           smallint    NOT NULL,
    response         jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

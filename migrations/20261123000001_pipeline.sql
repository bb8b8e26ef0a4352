-- Plumbing shared by every saga step and projection: inboxes, outboxes, stored offsets and
-- records that could not be processed. Nothing here is domain state.
CREATE SCHEMA IF NOT EXISTS pipeline;

-- One row per event a step has applied. The primary key is the idempotency guard: a second
-- insert of the same (step, event_id) means "already processed".
CREATE TABLE pipeline.inbox (
    step          text        NOT NULL,
    event_id      uuid        NOT NULL,
    event_type    text        NOT NULL,
    order_id      text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (step, event_id)
);

-- Records to produce, written in the same transaction as the state change that caused them,
-- then published to Kafka and marked: reply events on the order log, and dead letters on a
-- consumer's dead-letter topic. `payload` is the exact record value, `headers` its headers.
CREATE TABLE pipeline.outbox (
    id            bigserial   PRIMARY KEY,
    step          text        NOT NULL,
    -- The event id of a reply, or the dead letter's id: stable across re-runs, so a repeat
    -- insert is absorbed.
    event_id      uuid        NOT NULL,
    event_type    text        NOT NULL,
    order_id      text        NOT NULL,
    topic         text        NOT NULL,
    -- Record key; NULL means the order id.
    record_key    bytea,
    payload       bytea,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    UNIQUE (step, event_id)
);
CREATE INDEX outbox_unpublished ON pipeline.outbox (step, id) WHERE published_at IS NULL;

-- Records a consumer dead-lettered (undecodable bytes, invalid orders, business-rule
-- violations, retries exhausted), with their position, bytes, error class and the history of
-- every failed attempt. The same record goes to the consumer's dead-letter topic through the
-- outbox; `orderflow dlq` reads this table and redrives from it.
CREATE TABLE pipeline.dead_letters (
    id               uuid        PRIMARY KEY,
    consumer         text        NOT NULL,
    topic            text        NOT NULL,
    partition        integer     NOT NULL,
    "offset"         bigint      NOT NULL,
    record_key       bytea,
    payload          bytea,
    dlq_topic        text        NOT NULL,
    error_class      text        NOT NULL CHECK (error_class IN ('permanent', 'retries_exhausted')),
    error_kind       text        NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL,
    history          jsonb       NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    redriven_at      timestamptz,
    redrive_outcome  text,
    UNIQUE (consumer, topic, partition, "offset")
);
CREATE INDEX dead_letters_open ON pipeline.dead_letters (consumer, topic, partition, "offset") WHERE redriven_at IS NULL;

-- Consumer positions kept in Postgres, written in the same transaction as the rows they
-- produced (projections). `next_offset` is the first offset not yet applied.
CREATE TABLE pipeline.consumer_offsets (
    consumer      text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    next_offset   bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Orders a step has parked: the first event failed with a retryable error and waits for its
-- next attempt; the order's later events wait behind it, in `seq` order, so none overtakes
-- it, while other orders of the partition flow on. Rows are consumed records: the partition's
-- offsets move past them, and a restart finds them here.
CREATE TABLE pipeline.parked (
    seq              bigserial   PRIMARY KEY,
    step             text        NOT NULL,
    order_id         text        NOT NULL,
    topic            text        NOT NULL,
    partition        integer     NOT NULL,
    "offset"         bigint      NOT NULL,
    record_key       bytea,
    payload          bytea       NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    history          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    first_failed_at  timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    parked_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (step, topic, partition, "offset")
);
CREATE INDEX parked_order ON pipeline.parked (step, order_id, seq);

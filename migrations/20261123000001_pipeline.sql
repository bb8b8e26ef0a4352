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

-- Reply events written in the same transaction as the state change that caused them, then
-- published to Kafka and marked. `payload` is the exact record value (Avro single-object).
CREATE TABLE pipeline.outbox (
    id            bigserial   PRIMARY KEY,
    step          text        NOT NULL,
    event_id      uuid        NOT NULL,
    event_type    text        NOT NULL,
    order_id      text        NOT NULL,
    topic         text        NOT NULL,
    payload       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    UNIQUE (step, event_id)
);
CREATE INDEX outbox_unpublished ON pipeline.outbox (step, id) WHERE published_at IS NULL;

-- Records a consumer could not use (undecodable bytes, invalid orders, rule violations),
-- kept with their position, bytes and reason so that nothing is silently dropped.
CREATE TABLE pipeline.rejected_records (
    id            bigserial   PRIMARY KEY,
    consumer      text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    record_key    bytea,
    payload       bytea,
    error_kind    text        NOT NULL,
    error         text        NOT NULL,
    rejected_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, topic, partition, "offset")
);

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

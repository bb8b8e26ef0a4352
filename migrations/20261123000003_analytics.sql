-- Read models for analysts, kept by the projection consumer.
CREATE SCHEMA IF NOT EXISTS analytics;

-- One row per order, folded from its events.
CREATE TABLE analytics.orders (
    order_id         text        PRIMARY KEY,
    customer_id      text        NOT NULL,
    status           text        NOT NULL,
    total_minor      bigint      NOT NULL,
    currency         text        NOT NULL,
    line_count       integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    cancelled_at     timestamptz,
    cancel_reason    text,
    last_event_type  text        NOT NULL,
    last_event_at    timestamptz NOT NULL
);
CREATE INDEX orders_status ON analytics.orders (status);
CREATE INDEX orders_customer ON analytics.orders (customer_id);
CREATE INDEX orders_created ON analytics.orders (created_at);

-- Every event of every order, in log order: the order's timeline.
CREATE TABLE analytics.order_events (
    event_id        uuid        PRIMARY KEY,
    order_id        text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    detail          jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX order_events_order ON analytics.order_events (order_id, partition, "offset");
CREATE INDEX order_events_type_time ON analytics.order_events (event_type, occurred_at);

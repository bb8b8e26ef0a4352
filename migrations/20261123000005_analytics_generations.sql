-- Read models in generations.
--
-- Every read model of one fold of the log lives in one physical schema, `analytics_g<N>` (a
-- generation). Analysts query stable views in `analytics` that point at the live generation;
-- `orderflow replay` builds a new generation beside it, verifies it and moves every view in one
-- transaction. The projector writes the live generation, and its offsets live in that
-- generation's `positions` table, in the same transaction as the rows.
--
-- This migration replaces the first read models (analytics.orders and analytics.order_events as
-- tables) with generation 1, created empty: the projector folds the log again from its start.

CREATE SCHEMA analytics_meta;

CREATE TABLE analytics_meta.generations (
    generation   integer     PRIMARY KEY,
    schema_name  text        NOT NULL UNIQUE,
    -- live: built to serve analysts; point_in_time: built with --until, never served.
    purpose      text        NOT NULL CHECK (purpose IN ('live', 'point_in_time')),
    -- building → live → retired, or building → failed (kept for inspection),
    -- building → ready (point-in-time).
    state        text        NOT NULL CHECK (state IN ('building', 'ready', 'live', 'retired', 'failed')),
    until_spec   text,
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    switched_at  timestamptz,
    retired_at   timestamptz
);
CREATE SEQUENCE analytics_meta.generation_seq OWNED BY analytics_meta.generations.generation;

-- Exactly one row: the generation the projector writes and the analysts' views show. A switch
-- locks this row, so no projector batch runs while the views move.
CREATE TABLE analytics_meta.live (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  integer NOT NULL REFERENCES analytics_meta.generations (generation)
);

-- The read models' tables, created in schema `target`. The one definition of their shape: the
-- migration uses it for generation 1 and `orderflow replay` for every later one.
CREATE FUNCTION analytics_meta.create_models(target text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA %I', target);

    -- One row per order: where it is and when each step finished.
    EXECUTE format($sql$
        CREATE TABLE %1$I.orders (
            order_id               text        PRIMARY KEY,
            customer_id            text        NOT NULL,
            status                 text        NOT NULL,
            currency               text        NOT NULL,
            total_minor            bigint      NOT NULL,
            line_count             integer     NOT NULL,
            units                  bigint      NOT NULL,
            ship_country           text        NOT NULL,
            created_at             timestamptz NOT NULL,
            reserved_at            timestamptz,
            paid_at                timestamptz,
            shipment_scheduled_at  timestamptz,
            carrier                text,
            completed_at           timestamptz,
            cancelled_at           timestamptz,
            cancel_reason          text,
            event_count            integer     NOT NULL,
            last_event_type        text        NOT NULL,
            last_event_at          timestamptz NOT NULL
        );
        CREATE INDEX ON %1$I.orders (status);
        CREATE INDEX ON %1$I.orders (customer_id, created_at);
        CREATE INDEX ON %1$I.orders (created_at);
        CREATE INDEX ON %1$I.orders (completed_at) WHERE completed_at IS NOT NULL;
        CREATE INDEX ON %1$I.orders (cancel_reason, cancelled_at) WHERE cancelled_at IS NOT NULL;
    $sql$, target);

    -- The lines of each order as placed.
    EXECUTE format($sql$
        CREATE TABLE %1$I.order_lines (
            order_id          text        NOT NULL,
            line_no           integer     NOT NULL,
            sku               text        NOT NULL,
            quantity          integer     NOT NULL,
            unit_price_minor  bigint      NOT NULL,
            line_total_minor  bigint      NOT NULL,
            currency          text        NOT NULL,
            created_at        timestamptz NOT NULL,
            PRIMARY KEY (order_id, line_no)
        );
        CREATE INDEX ON %1$I.order_lines (sku, created_at);
    $sql$, target);

    -- Every event of every order, with its log position: the order's timeline.
    EXECUTE format($sql$
        CREATE TABLE %1$I.order_events (
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
        CREATE INDEX ON %1$I.order_events (order_id, partition, "offset");
        CREATE INDEX ON %1$I.order_events (event_type, occurred_at);
    $sql$, target);

    -- Per customer and currency.
    EXECUTE format($sql$
        CREATE TABLE %1$I.customer_summary (
            customer_id       text        NOT NULL,
            currency          text        NOT NULL,
            orders_placed     bigint      NOT NULL,
            orders_completed  bigint      NOT NULL,
            orders_cancelled  bigint      NOT NULL,
            payment_declines  bigint      NOT NULL,
            revenue_minor     bigint      NOT NULL,
            first_order_at    timestamptz,
            last_order_at     timestamptz,
            PRIMARY KEY (customer_id, currency)
        );
        CREATE INDEX ON %1$I.customer_summary (revenue_minor DESC);
    $sql$, target);

    -- Per UTC day and currency; each count on the day its event happened.
    EXECUTE format($sql$
        CREATE TABLE %1$I.daily_sales (
            day               date   NOT NULL,
            currency          text   NOT NULL,
            orders_placed     bigint NOT NULL,
            orders_completed  bigint NOT NULL,
            orders_cancelled  bigint NOT NULL,
            revenue_minor     bigint NOT NULL,
            PRIMARY KEY (day, currency)
        );
    $sql$, target);

    -- Per UTC day, sku and currency: units ordered (day placed), units sold and revenue (day
    -- completed).
    EXECUTE format($sql$
        CREATE TABLE %1$I.sku_daily_sales (
            day            date   NOT NULL,
            sku            text   NOT NULL,
            currency       text   NOT NULL,
            units_ordered  bigint NOT NULL,
            units_sold     bigint NOT NULL,
            revenue_minor  bigint NOT NULL,
            PRIMARY KEY (day, sku, currency)
        );
        CREATE INDEX ON %1$I.sku_daily_sales (sku, day);
    $sql$, target);

    -- Per UTC day of cancellation, reason and currency.
    EXECUTE format($sql$
        CREATE TABLE %1$I.cancellations_daily (
            day               date   NOT NULL,
            reason            text   NOT NULL,
            currency          text   NOT NULL,
            orders_cancelled  bigint NOT NULL,
            value_minor       bigint NOT NULL,
            PRIMARY KEY (day, reason, currency)
        );
    $sql$, target);

    -- Per order and saga step: from the event that asked for the step to the step's reply
    -- (or the saga's timeout). Open while the reply is awaited.
    EXECUTE format($sql$
        CREATE TABLE %1$I.saga_step_durations (
            order_id     text        NOT NULL,
            step         text        NOT NULL,
            started_at   timestamptz NOT NULL,
            ended_at     timestamptz,
            outcome      text,
            duration_ms  double precision GENERATED ALWAYS AS
                         (extract(epoch FROM ended_at - started_at) * 1000) STORED,
            PRIMARY KEY (order_id, step)
        );
        CREATE INDEX ON %1$I.saga_step_durations (step, started_at);
    $sql$, target);

    -- How far this generation has applied the log: written in the same transaction as the rows.
    EXECUTE format($sql$
        CREATE TABLE %1$I.positions (
            topic           text        NOT NULL,
            partition       integer     NOT NULL,
            next_offset     bigint      NOT NULL,
            last_event_at   timestamptz,
            events_applied  bigint      NOT NULL DEFAULT 0,
            updated_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, partition)
        );
    $sql$, target);
END
$fn$;

-- Point the analysts' views at generation schema `target`. Run inside the switching
-- transaction: every view moves at its commit, or none does.
CREATE FUNCTION analytics_meta.point_views(target text, gen integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    model text;
BEGIN
    FOREACH model IN ARRAY ARRAY['orders', 'order_lines', 'order_events', 'customer_summary',
                                 'daily_sales', 'sku_daily_sales', 'cancellations_daily',
                                 'saga_step_durations']
    LOOP
        EXECUTE format('CREATE OR REPLACE VIEW analytics.%I AS SELECT * FROM %I.%I', model, target, model);
    END LOOP;
    -- Freshness: per read model and partition, every record before next_offset is applied.
    EXECUTE format($sql$
        CREATE OR REPLACE VIEW analytics.watermarks AS
        SELECT m.model, %2$s AS generation, p.topic, p.partition,
               p.next_offset, p.next_offset - 1 AS last_applied_offset,
               p.last_event_at, p.events_applied, p.updated_at
        FROM %1$I.positions p
        CROSS JOIN (VALUES ('orders'), ('order_lines'), ('order_events'), ('customer_summary'),
                           ('daily_sales'), ('sku_daily_sales'), ('cancellations_daily'),
                           ('saga_step_durations')) AS m(model)
    $sql$, target, gen);
END
$fn$;

-- Replace the first read models.
DROP TABLE analytics.orders;
DROP TABLE analytics.order_events;
-- The projector's offsets now live in each generation's `positions`.
DROP TABLE pipeline.consumer_offsets;

SELECT analytics_meta.create_models('analytics_g1');
INSERT INTO analytics_meta.generations (generation, schema_name, purpose, state, note, switched_at)
VALUES (1, 'analytics_g1', 'live', 'live', 'created by migration', now());
SELECT setval('analytics_meta.generation_seq', 1);
INSERT INTO analytics_meta.live (generation) VALUES (1);
SELECT analytics_meta.point_views('analytics_g1', 1);

-- Analysts: a role that can read the views in `analytics` and nothing else. Grant it to login
-- roles (`GRANT orderflow_analyst TO alice`). Roles are cluster-wide, so several orderflow
-- databases on one server share it.
DO $do$
BEGIN
    CREATE ROLE orderflow_analyst NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$do$;
GRANT USAGE ON SCHEMA analytics TO orderflow_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO orderflow_analyst;

-- Pages of `GET /v1/orders` without a filter walk `orders` by the keyset (created_at,
-- order_id). An index on (created_at) alone returns the rows in created_at order only: ties
-- are sorted afterwards (an incremental sort), and the row comparison of the cursor cannot
-- bound the scan on order_id. An index on the whole key answers a page as one index range
-- read in order, stopping at LIMIT. It replaces the (created_at) index, which it covers.
--
-- Every generation schema that exists gets it now; `create_models`, the one definition of the
-- models' shape, creates it in every later generation (`orderflow replay`). A bulk rebuild
-- drops and rebuilds the secondary indexes create_models made, so it keeps this one too.

DO $do$
DECLARE
    target text;
BEGIN
    FOR target IN SELECT schema_name FROM analytics_meta.generations
                  WHERE to_regclass(format('%I.orders', schema_name)) IS NOT NULL
    LOOP
        EXECUTE format('CREATE INDEX IF NOT EXISTS orders_created_at_order_id_idx ON %I.orders (created_at, order_id)', target);
        EXECUTE format('DROP INDEX IF EXISTS %I.orders_created_at_idx', target);
    END LOOP;
END
$do$;

-- The models' tables, as in 20261123000005 with the page index above.
CREATE OR REPLACE FUNCTION analytics_meta.create_models(target text) RETURNS void
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
        CREATE INDEX ON %1$I.orders (created_at, order_id);
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

-- State owned by the saga steps. Each step writes only its own schema.
CREATE SCHEMA IF NOT EXISTS inventory;
CREATE SCHEMA IF NOT EXISTS payment;
CREATE SCHEMA IF NOT EXISTS shipping;
CREATE SCHEMA IF NOT EXISTS saga;

-- Stock per sku: `available` can be reserved, `reserved` is held for orders.
CREATE TABLE inventory.stock (
    sku         text        PRIMARY KEY,
    available   bigint      NOT NULL CHECK (available >= 0),
    reserved    bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per order the inventory step has decided on.
CREATE TABLE inventory.reservations (
    order_id        text        PRIMARY KEY,
    reservation_id  uuid        NOT NULL UNIQUE,
    status          text        NOT NULL CHECK (status IN ('reserved', 'rejected', 'released')),
    items           jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Customers the simulated payment provider declines.
CREATE TABLE payment.blocked_customers (
    customer_id  text        PRIMARY KEY,
    note         text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- What the payment step knows of each order, from OrderCreated: whom to charge, how much.
CREATE TABLE payment.orders (
    order_id      text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    amount_minor  bigint      NOT NULL,
    currency      text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per order the payment step has decided on; `status` is its current state.
CREATE TABLE payment.payments (
    payment_id          uuid        PRIMARY KEY,
    order_id            text        NOT NULL UNIQUE,
    customer_id         text        NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor >= 0),
    currency            text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('authorized', 'declined', 'voided')),
    decline_reason      text,
    provider_reference  text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Append-only ledger of every money movement the payment step asked the provider for.
CREATE TABLE payment.ledger (
    id            bigserial   PRIMARY KEY,
    payment_id    uuid        NOT NULL REFERENCES payment.payments (payment_id),
    order_id      text        NOT NULL,
    entry         text        NOT NULL CHECK (entry IN ('authorization', 'decline', 'void')),
    amount_minor  bigint      NOT NULL,
    currency      text        NOT NULL,
    caused_by     uuid        NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_order ON payment.ledger (order_id);

-- Where each order goes, from OrderCreated.
CREATE TABLE shipping.orders (
    order_id     text        PRIMARY KEY,
    address      jsonb       NOT NULL,
    country      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shipping.shipments (
    order_id         text        PRIMARY KEY,
    shipment_id      uuid        NOT NULL UNIQUE,
    carrier          text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('scheduled', 'failed')),
    tracking_number  text,
    failure_reason   text,
    country          text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- The order saga's state per order: where it is, what it waits for, what it saw last.
CREATE TABLE saga.orders (
    order_id         text        PRIMARY KEY,
    state            text        NOT NULL,
    awaiting         text,
    customer_id      text        NOT NULL,
    total_minor      bigint      NOT NULL,
    currency         text        NOT NULL,
    cancel_reason    text,
    cancel_detail    text,
    -- Compensations still awaited before the order can be cancelled.
    pending          text[]      NOT NULL DEFAULT '{}',
    last_event_type  text        NOT NULL,
    last_event_id    uuid        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_orders_open ON saga.orders (state) WHERE state NOT IN ('completed', 'cancelled');

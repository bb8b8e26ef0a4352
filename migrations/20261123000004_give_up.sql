-- Giving an order up: customer cancellations and saga step deadlines.

-- Orders a step has seen given up (OrderCancellationAccepted or SagaStepTimedOut): the step
-- undid what it held for the order and refuses any work asked of it afterwards.
CREATE TABLE inventory.abandoned_orders (
    order_id         text        PRIMARY KEY,
    reason           text        NOT NULL,
    marker_event_id  uuid        NOT NULL,
    abandoned_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payment.abandoned_orders (LIKE inventory.abandoned_orders INCLUDING ALL);
CREATE TABLE shipping.abandoned_orders (LIKE inventory.abandoned_orders INCLUDING ALL);

-- A scheduled shipment can be called off when its order is given up.
ALTER TABLE shipping.shipments DROP CONSTRAINT shipments_status_check;
ALTER TABLE shipping.shipments
    ADD CONSTRAINT shipments_status_check CHECK (status IN ('scheduled', 'failed', 'cancelled'));

-- Deadlines. `deadline` is set while the saga waits for a step (awaiting_inventory,
-- awaiting_payment, awaiting_shipment): the time of the event that started the wait plus the
-- step's configured timeout. `attempts` counts the deadlines the order has missed.
ALTER TABLE saga.orders
    ADD COLUMN correlation_id  uuid,
    ADD COLUMN deadline        timestamptz,
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_event_at   timestamptz;
CREATE INDEX saga_orders_deadline ON saga.orders (deadline) WHERE deadline IS NOT NULL;

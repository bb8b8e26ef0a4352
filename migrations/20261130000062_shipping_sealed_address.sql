-- The shipping step keeps an order's address as the log carries it (consumers/src/shipping.rs):
-- the sealed copy of a sealed order (privacy::personal::sealed_to_json, opened in memory only
-- when the carrier is asked), the clear address of an order never sealed, or NULL once erased
-- (the customer's key was destroyed, or `orderflow customers forget` scrubbed it). The
-- customer id lets a forget find the customer's rows; rows written before this migration get
-- it from the payment step's copy of the same OrderCreated.
ALTER TABLE shipping.orders ALTER COLUMN address DROP NOT NULL;
ALTER TABLE shipping.orders ADD COLUMN customer_id text;
UPDATE shipping.orders s SET customer_id = p.customer_id
FROM payment.orders p WHERE p.order_id = s.order_id AND s.customer_id IS NULL;
CREATE INDEX shipping_orders_customer ON shipping.orders (customer_id);

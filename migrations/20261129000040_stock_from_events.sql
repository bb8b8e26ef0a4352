-- Stock and customer blocks change only by events on the order log (StockAdjusted,
-- CustomerBlocked, CustomerUnblocked), applied by the inventory and payment steps.
--
-- An adjustment is a fact and is applied whatever the level: taking away units that orders
-- have reserved meanwhile leaves `available` below zero (no reservation succeeds until
-- deliveries bring it back above what an order asks). Refusing it instead would make the
-- level depend on the order in which adjustments and reservations met, which a restore
-- cannot reproduce.
ALTER TABLE inventory.stock DROP CONSTRAINT IF EXISTS stock_available_check;

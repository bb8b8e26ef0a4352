-- `stock set` (CLI and POST /v1/stock) adds the adjustments appended but not yet applied to
-- the level it reads (consumers::commands::expected_levels). Outbox rows stay after they are
-- published, so without this partial index that lookup read the whole outbox.
CREATE INDEX outbox_stock_adjustments ON pipeline.outbox (order_id) WHERE event_type = 'StockAdjusted';

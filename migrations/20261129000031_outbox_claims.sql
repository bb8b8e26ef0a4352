-- A claim on an outbox row while one process publishes it (`platform::outbox::publish_claimed`):
-- until `claimed_until` no other publisher (another API server's relay, say) sends the row, so
-- several processes publishing one outbox put each row on the log once. A claim lasts a little
-- longer than the producer's delivery timeout; a claimant that died leaves it to expire, and the
-- relay publishes the row then. NULL: unclaimed. Nullable without a default: adding it rewrites
-- nothing.
ALTER TABLE pipeline.outbox ADD COLUMN claimed_until timestamptz;

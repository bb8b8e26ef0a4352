-- The trace context (W3C traceparent / tracestate, as a JSON object) of the span that decided
-- an outbox row's event, written with the row and copied into the record's headers when the
-- row is published, by whichever process publishes it. NULL when the deciding process did not
-- export traces: the record then carries no context and its consumers start a new trace.
ALTER TABLE pipeline.outbox ADD COLUMN trace_context jsonb;

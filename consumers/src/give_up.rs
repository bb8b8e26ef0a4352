//! What every step does when the saga gives an order up (see `saga::machine`): the saga's
//! marker event (`OrderCancellationAccepted` or `SagaStepTimedOut`) makes the step undo what
//! it holds for the order and note the order as abandoned in its own schema, so that work
//! asked of it later in the order's history is refused with a decline-style reply.

use events::{Event, EventBody, EventType};
use sqlx::PgConnection;

/// The reason a refusal carries: the order was given up before the step could act.
pub const REFUSED: &str = "order_abandoned";

/// The marker event types, which every step wants.
pub fn is_marker(event_type: EventType) -> bool {
    matches!(
        event_type,
        EventType::OrderCancellationAccepted | EventType::SagaStepTimedOut
    )
}

/// The stable reason code of a marker, written on the step's compensation events.
pub fn reason(body: &EventBody) -> Option<&'static str> {
    match body {
        EventBody::OrderCancellationAccepted(_) => Some("order_cancelled"),
        EventBody::SagaStepTimedOut(_) => Some("step_timed_out"),
        _ => None,
    }
}

/// Note in `<schema>.abandoned_orders` that the order was given up. Idempotent.
pub async fn record(
    tx: &mut PgConnection,
    schema: &'static str,
    marker: &Event,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {schema}.abandoned_orders (order_id, reason, marker_event_id) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO NOTHING"
    ))
    .bind(&marker.meta.order_id)
    .bind(reason)
    .bind(marker.meta.event_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Why the order was given up, if the step has seen its marker.
pub async fn abandoned(
    tx: &mut PgConnection,
    schema: &'static str,
    order_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT reason FROM {schema}.abandoned_orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await
}

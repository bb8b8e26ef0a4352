//! What every step does when the saga gives an order up (see `saga::machine`): the saga's
//! marker event (`OrderCancellationAccepted` or `SagaStepTimedOut`) makes the step undo what
//! it holds for the order and note the order as abandoned in its own schema, so that work
//! asked of it later in the order's history is refused with a decline-style reply.

use std::collections::HashMap;

use events::{Event, EventBody, EventType};
use sqlx::PgConnection;
use uuid::Uuid;

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

/// The given-up orders of one batch, as a step's decider sees them: those noted before (loaded)
/// and those whose marker the batch holds (stored with [`Abandoned::store`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Abandoned {
    reasons: HashMap<String, String>,
    noted: Vec<(String, String, Uuid)>,
}

impl Abandoned {
    /// The orders of `orders` noted in `<schema>.abandoned_orders`, in one query.
    pub async fn load(
        conn: &mut PgConnection,
        schema: &'static str,
        orders: &[&str],
    ) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT order_id, reason FROM {schema}.abandoned_orders WHERE order_id = ANY($1)"
        ))
        .bind(orders)
        .fetch_all(&mut *conn)
        .await?;
        Ok(Abandoned {
            reasons: rows.into_iter().collect(),
            noted: Vec::new(),
        })
    }

    /// Why the order was given up, if the step has seen its marker.
    pub fn reason(&self, order_id: &str) -> Option<&str> {
        self.reasons.get(order_id).map(String::as_str)
    }

    /// Note that `marker` gave its order up for `reason`; the first marker stands.
    pub fn note(&mut self, marker: &Event, reason: &str) {
        let order_id = &marker.meta.order_id;
        if self.reasons.contains_key(order_id) {
            return;
        }
        self.reasons.insert(order_id.clone(), reason.to_string());
        self.noted
            .push((order_id.clone(), reason.to_string(), marker.meta.event_id));
    }

    /// Insert the orders noted since loading, in one statement.
    pub async fn store(
        &self,
        tx: &mut PgConnection,
        schema: &'static str,
    ) -> Result<(), sqlx::Error> {
        if self.noted.is_empty() {
            return Ok(());
        }
        let orders: Vec<&str> = self.noted.iter().map(|n| n.0.as_str()).collect();
        let reasons: Vec<&str> = self.noted.iter().map(|n| n.1.as_str()).collect();
        let markers: Vec<Uuid> = self.noted.iter().map(|n| n.2).collect();
        sqlx::query(&format!(
            "INSERT INTO {schema}.abandoned_orders (order_id, reason, marker_event_id)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[])
             ON CONFLICT (order_id) DO NOTHING"
        ))
        .bind(&orders)
        .bind(&reasons)
        .bind(&markers)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

//! The order saga: follows each order through the steps and ends it with `OrderCompleted` or
//! `OrderCancelled`. Its decisions are the pure function [`machine::decide`]; this module only
//! loads and stores the per-order state in `saga.orders` around it.

pub mod machine;

use async_trait::async_trait;
use events::{Event, EventBody, EventType, OrderCancelled, OrderCompleted};
use sqlx::PgConnection;

use crate::{HandlerError, Step};
use machine::{decide, Command, SagaState, Transition};

pub const NAME: &str = "saga";

pub struct OrderSaga;

#[async_trait]
impl Step for OrderSaga {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        // Everything but its own terminal events.
        !matches!(
            event_type,
            EventType::OrderCompleted | EventType::OrderCancelled
        )
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let order_id = &event.meta.order_id;
        let row: Option<(String, Vec<String>, Option<String>, Option<String>, i64, String)> = sqlx::query_as(
            "SELECT state, pending, cancel_reason, cancel_detail, total_minor, currency FROM saga.orders
             WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let current = match &row {
            None => None,
            Some((state, pending, reason, detail, _, _)) => Some(
                SagaState::from_row(state, pending, reason.as_deref(), detail.as_deref())
                    .map_err(|e| HandlerError::Rule(format!("order {order_id}: {e}")))?,
            ),
        };
        let transition = match decide(current.as_ref(), &event.body) {
            Ok(transition) => transition,
            Err(ignored) => {
                tracing::info!(%order_id, event_type = %event.event_type(), reason = %ignored, "saga ignored event");
                return Ok(Vec::new());
            }
        };
        store(tx, event, row.is_none(), &transition).await?;
        let (total_minor, currency) = match (&row, &event.body) {
            (Some((_, _, _, _, total, currency)), _) => (*total, currency.clone()),
            (None, EventBody::OrderCreated(order)) => (order.total_minor(), order.currency.clone()),
            (None, _) => (0, String::new()),
        };
        Ok(transition
            .commands
            .into_iter()
            .map(|command| match command {
                Command::Complete => EventBody::OrderCompleted(OrderCompleted {
                    total_minor,
                    currency: currency.clone(),
                }),
                Command::Cancel { reason, detail } => {
                    EventBody::OrderCancelled(OrderCancelled { reason, detail })
                }
            })
            .collect())
    }
}

async fn store(
    tx: &mut PgConnection,
    event: &Event,
    is_new: bool,
    transition: &Transition,
) -> Result<(), sqlx::Error> {
    let state = &transition.next;
    let pending: Vec<&str> = state.pending().iter().map(|c| c.as_str()).collect();
    let (reason, detail) = state.cancellation();
    if is_new {
        let EventBody::OrderCreated(order) = &event.body else {
            // decide() only starts a saga from OrderCreated.
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO saga.orders (order_id, state, awaiting, customer_id, total_minor, currency, pending,
                                      last_event_type, last_event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&event.meta.order_id)
        .bind(state.name())
        .bind(state.awaiting())
        .bind(&order.customer_id)
        .bind(order.total_minor())
        .bind(&order.currency)
        .bind(&pending)
        .bind(event.event_type().as_str())
        .bind(event.meta.event_id)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "UPDATE saga.orders SET state = $2, awaiting = $3, pending = $4, cancel_reason = $5, cancel_detail = $6,
                                    last_event_type = $7, last_event_id = $8, updated_at = now()
             WHERE order_id = $1",
        )
        .bind(&event.meta.order_id)
        .bind(state.name())
        .bind(state.awaiting())
        .bind(&pending)
        .bind(reason)
        .bind(detail)
        .bind(event.event_type().as_str())
        .bind(event.meta.event_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

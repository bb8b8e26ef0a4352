//! The order saga: follows each order through the steps and ends it with `OrderCompleted` or
//! `OrderCancelled`. Its decisions are the pure function [`machine::decide`]; this module only
//! loads and stores the per-order state in `saga.orders` around it, for a whole batch at once:
//! one locking read, decisions in memory, one upsert.

pub mod machine;

use std::collections::HashMap;

use async_trait::async_trait;
use events::{Event, EventBody, EventType, OrderCancelled, OrderCompleted};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{HandlerError, Step};
use machine::{decide, Command, SagaState};

pub const NAME: &str = "saga";

pub struct OrderSaga;

/// One order's saga row, as loaded and as it will be stored.
struct Entry {
    state: SagaState,
    customer_id: String,
    total_minor: i64,
    currency: String,
    last_event_type: &'static str,
    last_event_id: Uuid,
    changed: bool,
}

type Row = (
    String,
    String,
    Vec<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
    String,
    String,
    Uuid,
);

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
        let mut replies = self
            .handle_batch(tx, &[event])
            .await
            .map_err(|(_, error)| error)?;
        Ok(replies.pop().unwrap_or_default())
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Vec<EventBody>>, (usize, HandlerError)> {
        let mut order_ids: Vec<&str> = events.iter().map(|e| e.meta.order_id.as_str()).collect();
        order_ids.sort_unstable();
        order_ids.dedup();
        // Sorted ids, so that concurrent members lock rows in the same order.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT order_id, state, pending, cancel_reason, cancel_detail, customer_id, total_minor, currency,
                    last_event_type, last_event_id
             FROM saga.orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
        )
        .bind(&order_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| (0, e.into()))?;
        let mut entries: HashMap<String, Entry> = HashMap::with_capacity(order_ids.len());
        for (
            order_id,
            state,
            pending,
            reason,
            detail,
            customer_id,
            total_minor,
            currency,
            _,
            last_event_id,
        ) in rows
        {
            let state = SagaState::from_row(&state, &pending, reason.as_deref(), detail.as_deref())
                .map_err(|e| (0, HandlerError::Rule(format!("order {order_id}: {e}"))))?;
            entries.insert(
                order_id,
                Entry {
                    state,
                    customer_id,
                    total_minor,
                    currency,
                    last_event_type: "",
                    last_event_id,
                    changed: false,
                },
            );
        }

        let mut replies = Vec::with_capacity(events.len());
        for event in events {
            let order_id = &event.meta.order_id;
            let transition = match decide(entries.get(order_id).map(|e| &e.state), &event.body) {
                Ok(transition) => transition,
                Err(ignored) => {
                    tracing::info!(%order_id, event_type = %event.event_type(), reason = %ignored, "saga ignored event");
                    replies.push(Vec::new());
                    continue;
                }
            };
            let entry = match (entries.get_mut(order_id), &event.body) {
                (Some(entry), _) => entry,
                (None, EventBody::OrderCreated(order)) => {
                    entries.entry(order_id.clone()).or_insert(Entry {
                        state: SagaState::AwaitingInventory,
                        customer_id: order.customer_id.clone(),
                        total_minor: order.total_minor(),
                        currency: order.currency.clone(),
                        last_event_type: "",
                        last_event_id: event.meta.event_id,
                        changed: true,
                    })
                }
                // decide() starts a saga only from OrderCreated.
                (None, _) => {
                    replies.push(Vec::new());
                    continue;
                }
            };
            entry.state = transition.next;
            entry.last_event_type = event.event_type().as_str();
            entry.last_event_id = event.meta.event_id;
            entry.changed = true;
            replies.push(
                transition
                    .commands
                    .into_iter()
                    .map(|command| match command {
                        Command::Complete => EventBody::OrderCompleted(OrderCompleted {
                            total_minor: entry.total_minor,
                            currency: entry.currency.clone(),
                        }),
                        Command::Cancel { reason, detail } => {
                            EventBody::OrderCancelled(OrderCancelled { reason, detail })
                        }
                    })
                    .collect(),
            );
        }
        store(tx, &entries).await.map_err(|e| (0, e.into()))?;
        Ok(replies)
    }
}

async fn store(tx: &mut PgConnection, entries: &HashMap<String, Entry>) -> Result<(), sqlx::Error> {
    let changed: Vec<(&String, &Entry)> = entries.iter().filter(|(_, e)| e.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = changed.iter().map(|(id, _)| id.as_str()).collect();
    let states: Vec<&str> = changed.iter().map(|(_, e)| e.state.name()).collect();
    let awaiting: Vec<Option<&str>> = changed.iter().map(|(_, e)| e.state.awaiting()).collect();
    // Postgres arrays cannot nest ragged arrays, so pending compensations travel as one
    // comma-separated string per row.
    let pending: Vec<String> = changed
        .iter()
        .map(|(_, e)| {
            e.state
                .pending()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let reasons: Vec<Option<&str>> = changed
        .iter()
        .map(|(_, e)| e.state.cancellation().0)
        .collect();
    let details: Vec<Option<&str>> = changed
        .iter()
        .map(|(_, e)| e.state.cancellation().1)
        .collect();
    let customers: Vec<&str> = changed
        .iter()
        .map(|(_, e)| e.customer_id.as_str())
        .collect();
    let totals: Vec<i64> = changed.iter().map(|(_, e)| e.total_minor).collect();
    let currencies: Vec<&str> = changed.iter().map(|(_, e)| e.currency.as_str()).collect();
    let types: Vec<&str> = changed.iter().map(|(_, e)| e.last_event_type).collect();
    let event_ids: Vec<Uuid> = changed.iter().map(|(_, e)| e.last_event_id).collect();
    sqlx::query(
        "INSERT INTO saga.orders (order_id, state, awaiting, pending, cancel_reason, cancel_detail, customer_id,
                                  total_minor, currency, last_event_type, last_event_id)
         SELECT id, st, aw, COALESCE(string_to_array(NULLIF(pe, ''), ','), '{}'), re, de, cu, tot, cur, ty, ev
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::bigint[], $9::text[], $10::text[], $11::uuid[])
              AS x(id, st, aw, pe, re, de, cu, tot, cur, ty, ev)
         ON CONFLICT (order_id) DO UPDATE SET
             state = EXCLUDED.state, awaiting = EXCLUDED.awaiting,
             pending = EXCLUDED.pending, cancel_reason = EXCLUDED.cancel_reason,
             cancel_detail = EXCLUDED.cancel_detail, last_event_type = EXCLUDED.last_event_type,
             last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&awaiting)
    .bind(&pending)
    .bind(&reasons)
    .bind(&details)
    .bind(&customers)
    .bind(&totals)
    .bind(&currencies)
    .bind(&types)
    .bind(&event_ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

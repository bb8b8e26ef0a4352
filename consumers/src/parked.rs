//! `pipeline.parked`: the records held behind a parked order, in log order (see
//! [`crate::parking`] for the policy). The engine reads and writes it through
//! [`parked_orders`] and [`hold`]; the releaser owns the rest; [`per_step`] is what operators
//! see of it (`orderflow status`, the parked gauges).

use std::collections::HashSet;

use platform::deadletter::FailedAttempt;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgConnection;

/// Which of `orders` are parked for `step`.
pub async fn parked_orders<'a>(
    tx: &mut PgConnection,
    step: &str,
    orders: impl Iterator<Item = &'a str>,
) -> Result<HashSet<String>, sqlx::Error> {
    let mut orders: Vec<&str> = orders.collect();
    if orders.is_empty() {
        return Ok(HashSet::new());
    }
    orders.sort_unstable();
    orders.dedup();
    let parked: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT order_id FROM pipeline.parked WHERE step = $1 AND order_id = ANY($2)",
    )
    .bind(step)
    .bind(&orders)
    .fetch_all(&mut *tx)
    .await?;
    Ok(parked.into_iter().collect())
}

/// What one step holds parked: orders, and records held (the failed one and those behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parked {
    pub orders: i64,
    pub records: i64,
}

/// Parked orders and held records per step (only steps that hold some). The table holds only
/// what waits for a retry, and the grouping reads it in `parked_order` index order.
pub async fn per_step(conn: &mut PgConnection) -> Result<Vec<(String, Parked)>, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT step, count(DISTINCT order_id), count(*) FROM pipeline.parked
         GROUP BY step ORDER BY step",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(step, orders, records)| (step, Parked { orders, records }))
        .collect())
}

/// A parked order as operators list it (`GET /v1/parked`): its head record (the one that
/// failed and is retried first) and how many records it holds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedOrder {
    pub step: String,
    pub order_id: String,
    /// Records held: the failed one and those behind it.
    pub records: i64,
    /// Failed attempts at the head record.
    pub attempts: i32,
    pub first_failed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub parked_at: chrono::DateTime<chrono::Utc>,
    /// The last failed attempt's error, as the step recorded it.
    pub last_error: Option<String>,
}

/// At most `limit` parked orders of `step` (all steps when `None`) in (step, order id) order,
/// after `after` (keyset pagination).
pub async fn orders(
    conn: &mut PgConnection,
    step: Option<&str>,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<ParkedOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.step, h.order_id, c.records, h.attempts, h.first_failed_at, h.next_attempt_at,
                h.parked_at, h.history -> -1 ->> 'error' AS last_error
         FROM (SELECT DISTINCT ON (step, order_id) step, order_id, attempts, first_failed_at,
                      next_attempt_at, parked_at, history
               FROM pipeline.parked
               WHERE ($1::text IS NULL OR step = $1)
                 AND ($2::text IS NULL OR (step, order_id) > ($2, $3))
               ORDER BY step, order_id, seq
               LIMIT $4) h
         CROSS JOIN LATERAL (SELECT count(*) AS records FROM pipeline.parked p
                             WHERE p.step = h.step AND p.order_id = h.order_id) c
         ORDER BY h.step, h.order_id",
    )
    .bind(step)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Store `message` behind the order's other held events. `history` is non-empty for the event
/// that failed (it is retried first), empty for events held behind it.
pub async fn hold(
    tx: &mut PgConnection,
    step: &str,
    order_id: &str,
    message: &OwnedMessage,
    history: &[FailedAttempt],
) -> Result<(), sqlx::Error> {
    let first_failed_at = history.first().map(|a| a.at);
    tracing::info!(step, %order_id, partition = message.partition(), offset = message.offset(), "event held: order parked");
    sqlx::query(
        "INSERT INTO pipeline.parked (step, order_id, topic, partition, \"offset\", record_key, payload, attempts, history,
                                      first_failed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (step, topic, partition, \"offset\") DO NOTHING",
    )
    .bind(step)
    .bind(order_id)
    .bind(message.topic())
    .bind(message.partition())
    .bind(message.offset())
    .bind(message.key())
    .bind(message.payload().unwrap_or_default())
    .bind(i32::try_from(history.len()).unwrap_or(i32::MAX))
    .bind(serde_json::to_value(history).unwrap_or_default())
    .bind(first_failed_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

//! The API's own table, `api.idempotency` (migration `20261129000002_api_idempotency.sql`):
//! written only by [`accept`], in the transaction that puts the order's `OrderCreated` into
//! the outbox, and read back for repeats and for orders the read models do not have yet.

use chrono::{DateTime, Utc};
use events::{Event, EventBody};
use platform::outbox::{OutboxRecord, OutboxRow};
use privacy::KeyRing;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

/// The outbox step of the API's rows; the API's relay publishes them.
pub const OUTBOX_STEP: &str = "api";

/// An accepted order as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub order_id: String,
    pub request_hash: Vec<u8>,
    pub request: serde_json::Value,
    pub customer_id: String,
    pub status: u16,
    pub response: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// What [`accept`] did.
#[derive(Debug)]
pub enum Outcome {
    /// Newly accepted: the record and the outbox rows are committed.
    New(Accepted, Vec<OutboxRow>),
    /// The order id was accepted before; the stored record (compare its hash).
    Existing(Accepted),
}

/// The record of a new order to write with its command.
pub struct NewRecord<'a> {
    pub order_id: &'a str,
    pub principal: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a [u8],
    pub request: &'a serde_json::Value,
    pub customer_id: &'a str,
    pub status: u16,
    pub response: &'a serde_json::Value,
}

/// Why [`accept`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The data keys cannot be read (a wrong master key).
    #[error(transparent)]
    Keys(#[from] privacy::KeyError),
    /// The order could not be sealed or encoded (a bug: it was validated).
    #[error("{0}")]
    Command(String),
}

/// In one transaction: the idempotency record and `event` (an `OrderCreated`) into the outbox
/// for `topic`, its personal fields first sealed with the customer's data key when `sealing`
/// is given (the customer's first key is issued and stored in the same transaction); or, when
/// the order id is already recorded, the stored record and nothing written. A concurrent
/// request for the same id waits on the primary key and then sees the first one's record.
pub async fn accept(
    pool: &PgPool,
    record: NewRecord<'_>,
    mut event: Event,
    topic: &str,
    sealing: Option<&KeyRing>,
) -> Result<Outcome, AcceptError> {
    let mut tx = pool.begin().await?;
    let inserted: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO api.idempotency
             (order_id, principal, idempotency_key, request_hash, request, customer_id, status, response)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (order_id) DO NOTHING
         RETURNING created_at",
    )
    .bind(record.order_id)
    .bind(record.principal)
    .bind(record.idempotency_key)
    .bind(record.request_hash)
    .bind(record.request)
    .bind(record.customer_id)
    .bind(record.status as i16)
    .bind(record.response)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(created_at) = inserted else {
        tx.rollback().await?;
        let existing = find(&mut *pool.acquire().await?, record.order_id).await?;
        // The row exists (the insert conflicted on it) and rows are never deleted.
        return Ok(existing
            .map(Outcome::Existing)
            .ok_or(sqlx::Error::RowNotFound)?);
    };
    if let (Some(ring), EventBody::OrderCreated(order)) = (sealing, &mut event.body) {
        let customer = order.customer_id.as_str();
        KeyRing::lock_customers(&mut tx, &[customer]).await?;
        let key = match ring.live(&mut tx, &[customer]).await?.remove(customer) {
            Some(key) => key,
            None => {
                let new = ring.issue(customer);
                KeyRing::insert(&mut tx, std::slice::from_ref(&new)).await?;
                new.key
            }
        };
        privacy::seal(order, &event.meta.order_id, &key)
            .map_err(|e| AcceptError::Command(e.to_string()))?;
    }
    let command = outbox_record(&event, topic).map_err(AcceptError::Command)?;
    let rows = insert_traced(&mut tx, "create", command).await?;
    tx.commit().await?;
    Ok(Outcome::New(
        Accepted {
            order_id: record.order_id.to_string(),
            request_hash: record.request_hash.to_vec(),
            request: record.request.clone(),
            customer_id: record.customer_id.to_string(),
            status: record.status,
            response: record.response.clone(),
            created_at,
        },
        rows,
    ))
}

/// A row of `api.idempotency` as [`find`] reads it.
type StoredRecord = (
    String,
    Vec<u8>,
    serde_json::Value,
    String,
    i16,
    serde_json::Value,
    DateTime<Utc>,
);

/// The record of `order_id`, if it was accepted through the API.
pub async fn find(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Option<Accepted>, sqlx::Error> {
    let row: Option<StoredRecord> = sqlx::query_as(
        "SELECT order_id, request_hash, request, customer_id, status, response, created_at
         FROM api.idempotency WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(
        |(order_id, request_hash, request, customer_id, status, response, created_at)| Accepted {
            order_id,
            request_hash,
            request,
            customer_id,
            status: status as u16,
            response,
            created_at,
        },
    ))
}

/// The outbox row that appends `event` to `topic`, keyed by its order id.
pub fn outbox_record(event: &Event, topic: &str) -> Result<OutboxRecord, String> {
    let payload =
        events::encode(event).map_err(|e| format!("encoding {}: {e}", event.meta.event_id))?;
    let event_type = event.event_type().as_str().to_string();
    Ok(OutboxRecord {
        event_id: event.meta.event_id,
        event_type: event_type.clone(),
        order_id: event.meta.order_id.clone(),
        topic: topic.to_string(),
        key: None,
        payload: Some(payload),
        headers: vec![
            ("event_type".into(), event_type),
            ("event_id".into(), event.meta.event_id.to_string()),
        ],
    })
}

/// Write `command` (a cancellation request) to the outbox in a transaction of its own.
pub async fn enqueue(pool: &PgPool, command: OutboxRecord) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = insert_traced(&mut tx, "request", command).await?;
    tx.commit().await?;
    Ok(rows)
}

/// `command` into the outbox under a producer span of its own, so the row carries trace context
/// (`platform::outbox::insert` stores the current span's) and the order's trace starts here,
/// as it does at `orderflow publish`. Nothing is built when trace export is off.
async fn insert_traced(
    tx: &mut PgConnection,
    action: &str,
    command: OutboxRecord,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let span = platform::trace::event_span(action, "api", &command.order_id, &command.event_type);
    platform::outbox::insert(tx, OUTBOX_STEP, vec![command])
        .instrument(span)
        .await
}

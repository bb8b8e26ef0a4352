//! The transactional outbox: reply events are written in the batch's transaction, published
//! after it commits, then marked as published. Rows left unpublished by a crash are published
//! again by [`relay`], by whichever member of the step runs it.

use std::time::Duration;

use anyhow::Context;
use events::Event;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A reply event ready to be written: its bytes are final once encoded.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub order_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Encode `events` and insert them in one statement. Returns the rows with their ids.
pub async fn insert(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    events: &[Event],
) -> anyhow::Result<Vec<OutboxRow>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut orders = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.meta.event_id);
        types.push(event.event_type().as_str().to_string());
        orders.push(event.meta.order_id.clone());
        payloads.push(events::encode(event).with_context(|| {
            format!(
                "encoding reply {} for order {}",
                event.event_type(),
                event.meta.order_id
            )
        })?);
    }
    // ON CONFLICT: a step that re-handles an event after a partial failure produces the same
    // reply ids; the first row stays.
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO pipeline.outbox (step, event_id, event_type, order_id, topic, payload)
         SELECT $1, e.id, e.ty, e.ord, $2, e.payload
         FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::bytea[]) AS e(id, ty, ord, payload)
         ON CONFLICT (step, event_id) DO NOTHING
         RETURNING id, event_id",
    )
    .bind(step)
    .bind(topic)
    .bind(&ids)
    .bind(&types)
    .bind(&orders)
    .bind(&payloads)
    .fetch_all(&mut *tx)
    .await
    .context("writing outbox rows")?;
    let by_event: std::collections::HashMap<Uuid, i64> =
        rows.into_iter().map(|(id, ev)| (ev, id)).collect();
    let mut out = Vec::with_capacity(by_event.len());
    for (i, event_id) in ids.into_iter().enumerate() {
        if let Some(id) = by_event.get(&event_id) {
            out.push(OutboxRow {
                id: *id,
                event_id,
                event_type: types[i].clone(),
                order_id: orders[i].clone(),
                topic: topic.to_string(),
                payload: payloads[i].clone(),
            });
        }
    }
    Ok(out)
}

/// Send `rows` in order, wait for every acknowledgement, then mark them published. The
/// idempotent producer keeps their order per partition; an error leaves the rows unpublished
/// for the relay.
pub async fn publish(
    pool: &PgPool,
    producer: &FutureProducer,
    rows: &[OutboxRow],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let sends = rows.iter().map(|row| {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_type",
                value: Some(row.event_type.as_bytes()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(row.event_id.to_string().as_bytes()),
            });
        let record = FutureRecord::to(&row.topic)
            .key(row.order_id.as_bytes())
            .payload(&row.payload)
            .headers(headers);
        // Timeout::Never while queueing: the producer's own message.timeout.ms bounds delivery.
        producer.send(record, rdkafka::util::Timeout::Never)
    });
    let results = futures::future::join_all(sends).await;
    for (row, result) in rows.iter().zip(results) {
        if let Err((error, _)) = result {
            anyhow::bail!(
                "publishing outbox row {} (event {}) failed: {error}",
                row.id,
                row.event_id
            );
        }
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("UPDATE pipeline.outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(pool)
        .await
        .context("marking outbox rows published")?;
    Ok(())
}

/// Publish this step's rows that stayed unpublished for longer than `older_than` (a member
/// crashed between its commit and its publish). Returns how many were published.
pub async fn relay(
    pool: &PgPool,
    producer: &FutureProducer,
    step: &str,
    older_than: Duration,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let rows: Vec<(i64, Uuid, String, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, event_id, event_type, order_id, topic, payload FROM pipeline.outbox
             WHERE step = $1 AND published_at IS NULL
               AND created_at < now() - make_interval(secs => $2)
             ORDER BY id LIMIT 1000",
        )
        .bind(step)
        .bind(older_than.as_secs_f64())
        .fetch_all(pool)
        .await
        .context("reading unpublished outbox rows")?;
        if rows.is_empty() {
            return Ok(total);
        }
        let rows: Vec<OutboxRow> = rows
            .into_iter()
            .map(
                |(id, event_id, event_type, order_id, topic, payload)| OutboxRow {
                    id,
                    event_id,
                    event_type,
                    order_id,
                    topic,
                    payload,
                },
            )
            .collect();
        publish(pool, producer, &rows).await?;
        total += rows.len();
        tracing::info!(step, count = rows.len(), "relayed unpublished outbox rows");
    }
}

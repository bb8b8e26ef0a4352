//! The transactional outbox: records to produce (reply events, dead letters) are written in the
//! consumer's batch transaction, published after it commits, then marked as published. Rows a
//! crash left unpublished are published again by [`relay`], by whichever member runs it.
//!
//! Several processes may publish one step's rows (the API's servers, a step's members): a
//! row is claimed before it is sent so that it goes to the log once. [`relay`] holds the
//! step's relay lock (one relay of a step at a time, rows in id order) and locks its rows
//! `FOR UPDATE SKIP LOCKED` in the transaction that marks them published; [`publish_claimed`]
//! (the rows a request just wrote) leases its rows for a bounded time (`claimed_until`)
//! without holding a connection while the broker answers. A row locked or leased by one
//! publisher is skipped by the others. Only a process that dies (or a lease that runs out)
//! between sending and marking leaves a row that is sent again — consumers deduplicate by
//! event id, so a repeat is harmless, only wasted.
//!
//! The outbox deals in bytes; it never encodes or decodes an event.
//!
//! Each row keeps the trace context of the span that decided it (`trace_context`, NULL when
//! traces are not exported) and its record is published with it in its headers, so the
//! consumers of the record continue the order's trace ([`crate::trace`]).

use std::time::Duration;

use anyhow::Context;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::kafka::Producer;
use crate::trace::Carrier;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Stable across re-runs of the same work, so a repeat insert is absorbed.
    pub event_id: Uuid,
    pub event_type: String,
    pub order_id: String,
    pub topic: String,
    /// The record key; `None` means the order id.
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

/// A record as stored, with its row id.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub record: OutboxRecord,
    /// The trace context the record is published with.
    pub trace: Option<Carrier>,
}

fn headers_json(headers: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect(),
    )
}

fn headers_from_json(value: &serde_json::Value) -> Vec<(String, String)> {
    value
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|pair| {
                    Some((
                        pair.get(0)?.as_str()?.to_string(),
                        pair.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Insert `records` in one statement, each with the trace context of the current span;
/// returns the rows that were new (a record whose `(step, event_id)` is already there is
/// skipped).
pub async fn insert(
    tx: &mut PgConnection,
    step: &str,
    records: Vec<OutboxRecord>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let current = Carrier::current();
    let traces = vec![current; records.len()];
    insert_traced(tx, step, records, traces).await
}

/// [`insert`], each record with its own trace context (`traces[i]` for `records[i]`): the
/// engine decides a batch's events together, each under the span of the record it handled.
pub async fn insert_traced(
    tx: &mut PgConnection,
    step: &str,
    records: Vec<OutboxRecord>,
    traces: Vec<Option<Carrier>>,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    debug_assert_eq!(records.len(), traces.len());
    let trace_json: Vec<Option<serde_json::Value>> = traces
        .iter()
        .map(|t| t.as_ref().map(Carrier::to_json))
        .collect();
    let ids: Vec<Uuid> = records.iter().map(|r| r.event_id).collect();
    let types: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
    let orders: Vec<&str> = records.iter().map(|r| r.order_id.as_str()).collect();
    let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<Option<&[u8]>> = records.iter().map(|r| r.payload.as_deref()).collect();
    let headers: Vec<serde_json::Value> =
        records.iter().map(|r| headers_json(&r.headers)).collect();
    let inserted: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO pipeline.outbox (step, event_id, event_type, order_id, topic, record_key, payload, headers, trace_context)
         SELECT $1, e.id, e.ty, e.ord, e.topic, e.k, e.p, e.h, e.t
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::jsonb[], $9::jsonb[])
              AS e(id, ty, ord, topic, k, p, h, t)
         ON CONFLICT (step, event_id) DO NOTHING
         RETURNING id, event_id",
    )
    .bind(step)
    .bind(&ids)
    .bind(&types)
    .bind(&orders)
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .bind(&trace_json)
    .fetch_all(&mut *tx)
    .await?;
    let by_event: std::collections::HashMap<Uuid, i64> =
        inserted.into_iter().map(|(id, ev)| (ev, id)).collect();
    Ok(records
        .into_iter()
        .zip(traces)
        .filter_map(|(record, trace)| {
            by_event.get(&record.event_id).map(|id| OutboxRow {
                id: *id,
                record,
                trace,
            })
        })
        .collect())
}

/// Send `rows` in order, wait for every acknowledgement, then mark them published. The
/// idempotent producer keeps their order per partition; an error leaves the rows unpublished
/// for the relay.
pub async fn publish(pool: &PgPool, producer: &Producer, rows: &[OutboxRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    send(producer, rows).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut conn = pool
        .acquire()
        .await
        .context("marking outbox rows published")?;
    mark_published(&mut conn, &ids)
        .await
        .context("marking outbox rows published")?;
    Ok(())
}

/// [`publish`] for rows other processes may be publishing too (the API's servers): the rows
/// still unpublished and neither locked by a [`relay`] nor leased by another publisher are
/// leased for `lease` (longer than the producer's delivery timeout), sent and marked
/// published; the others are left to whoever holds them. Returns how many this call sent. A
/// failed send gives its lease back, for the relay.
pub async fn publish_claimed(
    pool: &PgPool,
    producer: &Producer,
    rows: &[OutboxRow],
    lease: Duration,
) -> anyhow::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let claimed: Vec<i64> = sqlx::query_scalar(
        "UPDATE pipeline.outbox SET claimed_until = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM pipeline.outbox
                      WHERE id = ANY($1) AND published_at IS NULL
                        AND (claimed_until IS NULL OR claimed_until < now())
                      FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .persistent(false)
    .bind(&ids)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
    .context("claiming outbox rows")?;
    let mine: Vec<OutboxRow> = rows
        .iter()
        .filter(|r| claimed.contains(&r.id))
        .cloned()
        .collect();
    if mine.is_empty() {
        return Ok(0);
    }
    let mine_ids: Vec<i64> = mine.iter().map(|r| r.id).collect();
    if let Err(error) = send(producer, &mine).await {
        // Best effort: a lease not given back runs out by itself.
        let _ = sqlx::query("UPDATE pipeline.outbox SET claimed_until = NULL WHERE id = ANY($1)")
            .persistent(false)
            .bind(&mine_ids)
            .execute(pool)
            .await;
        return Err(error);
    }
    let mut conn = pool
        .acquire()
        .await
        .context("marking outbox rows published")?;
    mark_published(&mut conn, &mine_ids)
        .await
        .context("marking outbox rows published")?;
    Ok(mine.len())
}

/// Send `rows` in order and wait for every acknowledgement (the first failure is the error).
async fn send(producer: &Producer, rows: &[OutboxRow]) -> anyhow::Result<()> {
    let sends = rows.iter().map(|row| {
        let r = &row.record;
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in &r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        if let Some(trace) = &row.trace {
            headers = trace.write(headers);
        }
        let key: &[u8] = r.key.as_deref().unwrap_or(r.order_id.as_bytes());
        let mut record = FutureRecord::to(&r.topic).key(key).headers(headers);
        if let Some(payload) = &r.payload {
            record = record.payload(payload);
        }
        // Timeout::Never while queueing: the producer's own message.timeout.ms bounds delivery.
        producer.send(record, rdkafka::util::Timeout::Never)
    });
    let results = futures::future::join_all(sends).await;
    for (row, result) in rows.iter().zip(results) {
        if let Err((error, _)) = result {
            anyhow::bail!(
                "publishing outbox row {} ({} to {}) failed: {error}",
                row.id,
                row.record.event_type,
                row.record.topic
            );
        }
    }
    Ok(())
}

/// Mark outbox rows as published (by the caller, or found already on the log by a restore).
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // Planned per call: a generic plan cached while the outbox was small would keep scanning
    // it whole as it grows.
    sqlx::query("UPDATE pipeline.outbox SET published_at = now() WHERE id = ANY($1)")
        .persistent(false)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A step's outbox rows not yet published: how many, and how long the oldest has waited.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpublished {
    pub step: String,
    pub rows: i64,
    pub oldest_age_secs: f64,
}

/// Unpublished rows per step (only steps that have some), for `orderflow status` and the
/// outbox gauges. Reads the partial index `outbox_unpublished` (unpublished rows only), so it
/// costs the size of the backlog, not of the outbox.
pub async fn unpublished(conn: &mut PgConnection) -> Result<Vec<Unpublished>, sqlx::Error> {
    let rows: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT step, count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM pipeline.outbox WHERE published_at IS NULL GROUP BY step ORDER BY step",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(step, rows, age)| Unpublished {
            step,
            rows,
            oldest_age_secs: age.max(0.0),
        })
        .collect())
}

type StoredRow = (
    i64,
    Uuid,
    String,
    String,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    serde_json::Value,
    Option<serde_json::Value>,
);

/// Publish `step`'s rows that stayed unpublished for longer than `older_than` (a member
/// crashed between its commit and its publish). Returns how many this call published.
///
/// One relay of a step at a time: each round takes the step's advisory lock for its
/// transaction (a second relay waits for the first, then finds what is left), locks its rows
/// `FOR UPDATE SKIP LOCKED` (skipping rows leased by a [`publish_claimed`]), sends them and
/// marks them published before it commits. The round holds a connection while the broker
/// answers (one per relay).
pub async fn relay(
    pool: &PgPool,
    producer: &Producer,
    step: &str,
    older_than: Duration,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = pool
            .begin()
            .await
            .context("reading unpublished outbox rows")?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('orderflow.outbox.relay.' || $1, 0))",
        )
        .bind(step)
        .execute(&mut *tx)
        .await
        .context("taking the outbox relay lock")?;
        let rows: Vec<StoredRow> = sqlx::query_as(
            "SELECT id, event_id, event_type, order_id, topic, record_key, payload, headers, trace_context
             FROM pipeline.outbox
             WHERE step = $1 AND published_at IS NULL
               AND created_at < now() - make_interval(secs => $2)
               AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY id LIMIT 1000
             FOR UPDATE SKIP LOCKED",
        )
        .bind(step)
        .bind(older_than.as_secs_f64())
        .fetch_all(&mut *tx)
        .await
        .context("reading unpublished outbox rows")?;
        if rows.is_empty() {
            return Ok(total);
        }
        let rows: Vec<OutboxRow> = rows
            .into_iter()
            .map(
                |(id, event_id, event_type, order_id, topic, key, payload, headers, trace)| {
                    OutboxRow {
                        id,
                        trace: trace.as_ref().and_then(Carrier::from_json),
                        record: OutboxRecord {
                            event_id,
                            event_type,
                            order_id,
                            topic,
                            key,
                            payload,
                            headers: headers_from_json(&headers),
                        },
                    }
                },
            )
            .collect();
        send(producer, &rows).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        mark_published(&mut tx, &ids)
            .await
            .context("marking outbox rows published")?;
        tx.commit().await.context("marking outbox rows published")?;
        total += rows.len();
        tracing::info!(step, count = rows.len(), "relayed unpublished outbox rows");
    }
}

//! The projector: a consumer group member that applies bounded batches of the log to the read
//! models, one Postgres transaction per batch holding the rows and the next offsets.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use events::Event;
use platform::deadletter::{self, DeadLetter, ErrorClass, FailedAttempt, RecordPosition};
use platform::outbox::OutboxRow;
use platform::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fold::{self, Folded};
use crate::offsets::{self, DbOffsets};
use crate::NAME;

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProjectionOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

pub struct Projector {
    pool: PgPool,
    consumer: StreamConsumer<DbOffsets>,
    /// Sends dead letters only; projections produce nothing else.
    producer: FutureProducer,
    group: String,
    settings: Settings,
}

impl Projector {
    /// Join the projections' consumer group. Must be called inside a multi-threaded tokio
    /// runtime: the assignment callback looks up offsets synchronously.
    pub fn new(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let group = settings.group_id(NAME);
        let client_id = format!("orderflow-{NAME}-{}", std::process::id());
        let context = DbOffsets::new(
            pool.clone(),
            NAME.to_string(),
            tokio::runtime::Handle::current(),
        );
        let consumer: StreamConsumer<DbOffsets> =
            platform::kafka::consumer_config(&settings.kafka, &group, &client_id)
                .create_with_context(context)
                .with_context(|| format!("creating consumer for group {group}"))?;
        consumer
            .subscribe(&[settings.kafka.topic.as_str()])
            .with_context(|| format!("subscribing {group} to {}", settings.kafka.topic))?;
        let producer = platform::kafka::producer(&settings.kafka, &client_id)?;
        Ok(Projector {
            pool,
            consumer,
            producer,
            group,
            settings: settings.clone(),
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(topic = %self.settings.kafka.topic, "projector started");
        platform::outbox::relay(&self.pool, &self.producer, NAME, Duration::ZERO).await?;
        let max_wait = Duration::from_millis(self.settings.consumer.batch_max_wait_ms);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(
                self.settings.consumer.retry_delay_ms_min,
            ))
            .with_max_delay(Duration::from_millis(
                self.settings.consumer.retry_delay_ms_max,
            ))
            .with_jitter()
            // A database outage pauses the projection; it never skips records.
            .without_max_times();
        loop {
            let batch = platform::kafka::poll_batch(
                &self.consumer,
                self.settings.consumer.batch_max_events,
                max_wait,
                &shutdown,
            )
            .await;
            if !batch.is_empty() {
                let attempt = || apply_batch(&self.pool, &self.group, &batch);
                let (outcome, dead) = attempt
                    .retry(backoff)
                    .when(|error: &anyhow::Error| is_retryable(error) && !shutdown.is_cancelled())
                    .notify(|error, delay| tracing::warn!(%error, ?delay, "projection batch failed; retrying"))
                    .await
                    .context("projection cannot apply a batch")?;
                tracing::debug!(?outcome, "projection batch applied");
                let publish = || platform::outbox::publish(&self.pool, &self.producer, &dead);
                publish
                    .retry(backoff)
                    .notify(|error, delay| tracing::warn!(%error, ?delay, "publishing dead letters failed; retrying"))
                    .await
                    .context("publishing dead letters")?;
                // A hint only: the stored offsets in Postgres are what assignment uses.
                platform::kafka::commit_offsets(
                    &self.consumer,
                    &platform::kafka::next_offsets(&batch),
                );
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!("projector stopped; leaving the group");
        Ok(())
    }
}

fn is_retryable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .is_some_and(platform::db::is_retryable)
}

/// Apply one batch: timeline rows, order rows, offsets, in one transaction. Events already in
/// `order_events` (a re-delivery) change nothing.
pub async fn apply_batch(
    pool: &PgPool,
    group: &str,
    batch: &[OwnedMessage],
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut outcome = ProjectionOutcome::default();
    let mut dead = Vec::new();
    let mut tx = pool.begin().await?;
    let mut decoded: Vec<(&OwnedMessage, Event)> = Vec::with_capacity(batch.len());
    for message in batch {
        let result = match message.payload() {
            None => Err("record has no value".to_string()),
            Some(payload) => events::decode(payload).map_err(|e| e.to_string()),
        };
        match result {
            Ok(event) => decoded.push((message, event)),
            Err(reason) => {
                // Undecodable records are the only failure a projection dead-letters: everything
                // that decodes can be folded.
                let position = RecordPosition {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                };
                let history = vec![FailedAttempt {
                    at: Utc::now(),
                    class: ErrorClass::Permanent,
                    kind: "decode".into(),
                    error: reason,
                }];
                let letter = DeadLetter {
                    consumer: NAME,
                    group,
                    position,
                    key: message.key(),
                    payload: message.payload(),
                    history,
                };
                dead.extend(deadletter::dead_letter(&mut tx, letter).await?);
                outcome.rejected += 1;
            }
        }
    }
    let fresh = insert_timeline(&mut tx, &decoded).await?;
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
    let new_events: Vec<&Event> = decoded
        .iter()
        .map(|(_, event)| event)
        .filter(|event| fresh.contains(&event.meta.event_id) && seen.insert(event.meta.event_id))
        .collect();
    outcome.applied = new_events.len();
    outcome.duplicates = decoded.len() - new_events.len();
    let folded = fold::fold(new_events.iter().copied());
    write_orders(&mut tx, &folded).await?;
    offsets::store(&mut tx, NAME, &platform::kafka::next_offsets(batch)).await?;
    tx.commit().await?;
    Ok((outcome, dead))
}

/// Insert the timeline rows; returns the ids that were new.
async fn insert_timeline(
    tx: &mut PgConnection,
    decoded: &[(&OwnedMessage, Event)],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if decoded.is_empty() {
        return Ok(HashSet::new());
    }
    let n = decoded.len();
    let (mut ids, mut orders, mut types, mut versions, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut correlations, mut causations, mut topics, mut partitions, mut offsets, mut details) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (message, event) in decoded {
        ids.push(event.meta.event_id);
        orders.push(event.meta.order_id.as_str());
        types.push(event.event_type().as_str());
        versions.push(i32::try_from(event.event_type().current_version()).unwrap_or(i32::MAX));
        times.push(event.meta.occurred_at);
        correlations.push(event.meta.correlation_id);
        causations.push(event.meta.causation_id);
        topics.push(message.topic());
        partitions.push(message.partition());
        offsets.push(message.offset());
        details.push(fold::detail(&event.body));
    }
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO analytics.order_events
           (event_id, order_id, event_type, schema_version, occurred_at, correlation_id, causation_id,
            topic, partition, \"offset\", detail)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::uuid[],
                              $7::uuid[], $8::text[], $9::int[], $10::bigint[], $11::jsonb[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&types)
    .bind(&versions)
    .bind(&times)
    .bind(&correlations)
    .bind(&causations)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&details)
    .fetch_all(&mut *tx)
    .await?;
    Ok(fresh.into_iter().collect())
}

async fn write_orders(tx: &mut PgConnection, folded: &Folded) -> Result<(), sqlx::Error> {
    if !folded.created.is_empty() {
        let rows: Vec<&fold::OrderRow> = folded.created.values().collect();
        let col =
            |f: fn(&fold::OrderRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<String>>();
        // An order id already present (a second OrderCreated with a new event id) keeps its row.
        sqlx::query(
            "INSERT INTO analytics.orders (order_id, customer_id, status, total_minor, currency, line_count, created_at,
                                           completed_at, cancelled_at, cancel_reason, last_event_type, last_event_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[],
                                  $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[],
                                  $12::timestamptz[])
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(col(|r| r.order_id.clone()))
        .bind(col(|r| r.customer_id.clone()))
        .bind(col(|r| r.status.clone()))
        .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<_>>())
        .bind(col(|r| r.currency.clone()))
        .bind(rows.iter().map(|r| r.line_count).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.completed_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.cancelled_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.cancel_reason.clone()).collect::<Vec<_>>())
        .bind(col(|r| r.last_event_type.clone()))
        .bind(rows.iter().map(|r| r.last_event_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !folded.patches.is_empty() {
        let ids: Vec<&str> = folded.patches.keys().map(String::as_str).collect();
        let patches: Vec<&fold::OrderPatch> = folded.patches.values().collect();
        // Terminal statuses and first completion / cancellation times never change.
        sqlx::query(
            "UPDATE analytics.orders AS o SET
                 status = CASE WHEN o.status IN ('completed', 'cancelled') THEN o.status ELSE COALESCE(p.status, o.status) END,
                 completed_at = CASE WHEN o.completed_at IS NULL AND o.cancelled_at IS NULL THEN p.completed_at ELSE o.completed_at END,
                 cancelled_at = CASE WHEN o.completed_at IS NULL AND o.cancelled_at IS NULL THEN p.cancelled_at ELSE o.cancelled_at END,
                 cancel_reason = CASE WHEN o.completed_at IS NULL AND o.cancelled_at IS NULL THEN p.cancel_reason ELSE o.cancel_reason END,
                 last_event_type = p.last_event_type,
                 last_event_at = p.last_event_at
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::timestamptz[])
                  AS p(order_id, status, completed_at, cancelled_at, cancel_reason, last_event_type, last_event_at)
             WHERE o.order_id = p.order_id",
        )
        .bind(&ids)
        .bind(patches.iter().map(|p| p.status.clone()).collect::<Vec<_>>())
        .bind(patches.iter().map(|p| p.completed_at).collect::<Vec<_>>())
        .bind(patches.iter().map(|p| p.cancelled_at).collect::<Vec<_>>())
        .bind(patches.iter().map(|p| p.cancel_reason.clone()).collect::<Vec<_>>())
        .bind(patches.iter().map(|p| p.last_event_type.clone()).collect::<Vec<_>>())
        .bind(patches.iter().map(|p| p.last_event_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

//! The projector: a consumer group member that applies bounded batches of the log to the read
//! models, one Postgres transaction per batch holding the rows and the next offsets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use events::Event;
use platform::deadletter::{self, DeadLetter, ErrorClass, FailedAttempt};
use platform::outbox::OutboxRow;
use platform::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fold::{self, EventRow, Fold, LogPosition};
use crate::generations;
use crate::offsets::DbOffsets;
use crate::store::{self, Advance, Target};
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

/// Apply one batch to the live generation: the live row is share-locked for the transaction,
/// so a switch (which locks it exclusively) never interleaves with a batch.
pub async fn apply_batch(
    pool: &PgPool,
    group: &str,
    batch: &[OwnedMessage],
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut tx = pool.begin().await?;
    let live = generations::live(&mut tx, true).await?;
    let result = apply_records(&mut tx, &live.target()?, batch, Some(group)).await?;
    tx.commit().await?;
    Ok(result)
}

/// Set an undecodable record aside for the projections group `group`: the dead-letter row and
/// its outbox record (returned, to publish).
pub async fn dead_letter_undecodable(
    tx: &mut PgConnection,
    group: &str,
    message: &OwnedMessage,
    reason: String,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    let history = vec![FailedAttempt {
        at: Utc::now(),
        class: ErrorClass::Permanent,
        kind: "decode".into(),
        error: reason,
    }];
    deadletter::dead_letter(&mut *tx, DeadLetter::of(NAME, group, message, history)).await
}

/// Apply records to `target` inside the caller's transaction: timeline rows, every read model,
/// positions. Records before the target's stored position and events already in its timeline
/// change nothing. Undecodable records are dead-lettered when `dead_letter_group` is given
/// (the live projector) and only counted otherwise (a rebuild: the live one already set them
/// aside); either way the position moves past them.
pub async fn apply_records(
    tx: &mut PgConnection,
    target: &Target,
    batch: &[OwnedMessage],
    dead_letter_group: Option<&str>,
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut outcome = ProjectionOutcome::default();
    let mut dead = Vec::new();
    let stored: HashMap<(String, i32), i64> = store::positions(tx, target, false)
        .await?
        .into_iter()
        .map(|p| ((p.topic, p.partition), p.next_offset))
        .collect();
    let pending: Vec<&OwnedMessage> = batch
        .iter()
        .filter(|m| {
            stored
                .get(&(m.topic().to_string(), m.partition()))
                .is_none_or(|next| m.offset() >= *next)
        })
        .collect();
    outcome.duplicates += batch.len() - pending.len();
    let mut decoded: Vec<(&OwnedMessage, Event)> = Vec::with_capacity(pending.len());
    for message in pending.iter().copied() {
        let result = match message.payload() {
            None => Err("record has no value".to_string()),
            Some(payload) => events::decode(payload).map_err(|e| e.to_string()),
        };
        match result {
            Ok(event) => decoded.push((message, event)),
            Err(reason) => {
                outcome.rejected += 1;
                let Some(group) = dead_letter_group else {
                    continue;
                };
                // Undecodable records are the only failure a projection dead-letters:
                // everything that decodes can be folded.
                dead.extend(dead_letter_undecodable(tx, group, message, reason).await?);
            }
        }
    }
    let rows: Vec<EventRow> = decoded
        .iter()
        .map(|(message, event)| {
            fold::timeline_row(
                event,
                &LogPosition {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                },
            )
        })
        .collect();
    let fresh = store::insert_events(tx, target, &rows).await?;
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
    let new_events: Vec<&(&OwnedMessage, Event)> = decoded
        .iter()
        .filter(|(_, event)| {
            fresh.contains(&event.meta.event_id) && seen.insert(event.meta.event_id)
        })
        .collect();
    outcome.applied = new_events.len();
    outcome.duplicates += decoded.len() - new_events.len();
    let mut order_ids: Vec<&str> = new_events
        .iter()
        .map(|(_, event)| event.meta.order_id.as_str())
        .collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let (orders, lines, steps) = store::load(tx, target, &order_ids).await?;
    let mut folding = Fold::resume(orders, lines, steps);
    for (_, event) in &new_events {
        folding.apply(event);
    }
    store::write(tx, target, &folding.into_changes()).await?;
    store::advance(tx, target, &advances(&pending, &new_events)).await?;
    Ok((outcome, dead))
}

/// Per partition of `records`: the next offset, the latest event time and how many new events
/// were applied.
fn advances(records: &[&OwnedMessage], applied: &[&(&OwnedMessage, Event)]) -> Vec<Advance> {
    let mut per_partition: BTreeMap<(&str, i32), Advance> = BTreeMap::new();
    for message in records {
        let entry = per_partition
            .entry((message.topic(), message.partition()))
            .or_insert_with(|| Advance {
                topic: message.topic().to_string(),
                partition: message.partition(),
                next_offset: 0,
                last_event_at: None,
                events_applied: 0,
            });
        entry.next_offset = entry.next_offset.max(message.offset() + 1);
    }
    for (message, event) in applied {
        if let Some(entry) = per_partition.get_mut(&(message.topic(), message.partition())) {
            entry.events_applied += 1;
            entry.last_event_at = entry.last_event_at.max(Some(event.meta.occurred_at));
        }
    }
    per_partition.into_values().collect()
}

//! The step runner: one consumer group member that turns batches of records into exactly-once
//! effects.
//!
//! For each bounded batch, in one Postgres transaction: the ids of the wanted events go into
//! the step's inbox (a repeat is skipped), the handler applies each new event and its replies
//! go into the outbox; undecodable records and permanent handler failures are set aside in
//! `pipeline.rejected_records` with their position and reason. After the commit the outbox
//! rows are published and marked, and only then are the batch's offsets committed. A crash at
//! any point re-delivers the batch and the inbox absorbs what was already applied.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use events::Event;
use platform::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::outbox::{self, OutboxRow};
use crate::{HandlerError, Step};

/// A deliberate failure for crash tests: the runner stops as if the process died there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Stop right after the Postgres commit: no publish, no offset commit.
    CrashAfterDbCommit,
    /// Stop after publishing the outbox, before committing offsets.
    CrashBeforeOffsetCommit,
}

#[derive(Debug, Clone, Default)]
pub struct RunnerOptions {
    /// Injected once, on the first batch that carries a wanted event.
    pub fault: Option<Fault>,
}

/// What one batch did, for logs, metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub ignored: usize,
    pub rejected: usize,
    pub replies: usize,
}

pub struct StepRunner {
    step: Arc<dyn Step>,
    pool: PgPool,
    producer: FutureProducer,
    consumer: StreamConsumer,
    settings: Settings,
    options: RunnerOptions,
}

impl StepRunner {
    /// Join the step's consumer group on the order log.
    pub fn new(
        step: Arc<dyn Step>,
        settings: &Settings,
        pool: PgPool,
        options: RunnerOptions,
    ) -> anyhow::Result<Self> {
        let group = settings.group_id(step.name());
        let client_id = format!("orderflow-{}-{}", step.name(), std::process::id());
        let consumer: StreamConsumer =
            platform::kafka::consumer_config(&settings.kafka, &group, &client_id)
                .create()
                .with_context(|| format!("creating consumer for group {group}"))?;
        consumer
            .subscribe(&[settings.kafka.topic.as_str()])
            .with_context(|| format!("subscribing {group} to {}", settings.kafka.topic))?;
        let producer = platform::kafka::producer(&settings.kafka, &client_id)?;
        Ok(StepRunner {
            step,
            pool,
            producer,
            consumer,
            settings: settings.clone(),
            options,
        })
    }

    /// Consume until `shutdown` is cancelled; the batch in hand is finished and committed first.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let name = self.step.name();
        tracing::info!(step = name, topic = %self.settings.kafka.topic, "step started");
        // Rows a crashed predecessor committed but never published go out first.
        outbox::relay(&self.pool, &self.producer, name, Duration::ZERO).await?;
        let relay_after = Duration::from_millis(self.settings.consumer.outbox_relay_after_ms);
        let mut last_relay = Instant::now();
        let max_wait = Duration::from_millis(self.settings.consumer.batch_max_wait_ms);
        loop {
            let batch = platform::kafka::poll_batch(
                &self.consumer,
                self.settings.consumer.batch_max_events,
                max_wait,
                &shutdown,
            )
            .await;
            if !batch.is_empty() {
                let rows = self.apply_with_retry(&batch, &shutdown).await?;
                if self.take_fault(Fault::CrashAfterDbCommit, &rows) {
                    anyhow::bail!("injected fault: crashed after the database commit");
                }
                // Until the replies are acknowledged the offsets must not move: retry forever
                // (with backoff) rather than lose a reply. The rows stay in the outbox meanwhile.
                let publish = || outbox::publish(&self.pool, &self.producer, &rows);
                publish
                    .retry(self.backoff())
                    .notify(|error, delay| tracing::warn!(step = name, %error, ?delay, "publishing replies failed; retrying"))
                    .await
                    .context("publishing replies")?;
                if self.take_fault(Fault::CrashBeforeOffsetCommit, &rows) {
                    anyhow::bail!("injected fault: crashed before the offset commit");
                }
                platform::kafka::commit_offsets(
                    &self.consumer,
                    &platform::kafka::next_offsets(&batch),
                );
            }
            if last_relay.elapsed() >= relay_after {
                if let Err(error) =
                    outbox::relay(&self.pool, &self.producer, name, relay_after).await
                {
                    tracing::warn!(step = name, %error, "outbox relay failed; will try again");
                }
                last_relay = Instant::now();
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!(step = name, "step stopped; leaving the group");
        Ok(())
    }

    fn take_fault(&mut self, fault: Fault, rows: &[OutboxRow]) -> bool {
        if self.options.fault == Some(fault) && !rows.is_empty() {
            self.options.fault = None;
            return true;
        }
        false
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(
                self.settings.consumer.retry_delay_ms_min,
            ))
            .with_max_delay(Duration::from_millis(
                self.settings.consumer.retry_delay_ms_max,
            ))
            .with_jitter()
            // Unbounded attempts: a database outage pauses the step, it never skips records.
            .without_max_times()
    }

    /// Apply the batch in one transaction, retrying the whole batch on retryable errors until
    /// it succeeds or shutdown is requested.
    async fn apply_with_retry(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<OutboxRow>> {
        let name = self.step.name();
        let attempt = || async {
            apply_batch(
                self.step.as_ref(),
                &self.pool,
                &self.settings.kafka.topic,
                batch,
            )
            .await
        };
        let result = attempt
            .retry(self.backoff())
            .when(|error: &BatchError| error.retryable() && !shutdown.is_cancelled())
            .notify(|error, delay| tracing::warn!(step = name, %error, ?delay, "batch failed; retrying"))
            .await;
        match result {
            Ok((outcome, rows)) => {
                tracing::debug!(step = name, ?outcome, "batch applied");
                Ok(rows)
            }
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("step {name} cannot apply a batch")))
            }
        }
    }
}

/// Why a whole batch failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl BatchError {
    fn retryable(&self) -> bool {
        match self {
            BatchError::Handler(error) => error.is_retryable(),
            BatchError::Other(error) => error
                .chain()
                .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
                .is_some_and(platform::db::is_retryable),
        }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::Handler(HandlerError::Database(error))
    }
}

/// Apply a batch in one transaction. A handler that fails permanently makes the attempt roll
/// back; the batch is then applied again with that record set aside instead of handled, so a
/// bad record costs one extra attempt and never a per-event savepoint.
pub async fn apply_batch(
    step: &dyn Step,
    pool: &PgPool,
    topic: &str,
    batch: &[OwnedMessage],
) -> Result<(BatchOutcome, Vec<OutboxRow>), BatchError> {
    let mut excluded: HashMap<(i32, i64), (&'static str, String)> = HashMap::new();
    loop {
        match attempt_batch(step, pool, topic, batch, &excluded).await? {
            Attempt::Applied(outcome, rows) => return Ok((outcome, rows)),
            Attempt::Poisoned {
                partition,
                offset,
                kind,
                reason,
            } => {
                // Each attempt excludes one more record, so this loop ends within batch.len() rounds.
                excluded.insert((partition, offset), (kind, reason));
            }
        }
    }
}

enum Attempt {
    Applied(BatchOutcome, Vec<OutboxRow>),
    Poisoned {
        partition: i32,
        offset: i64,
        kind: &'static str,
        reason: String,
    },
}

async fn attempt_batch(
    step: &dyn Step,
    pool: &PgPool,
    topic: &str,
    batch: &[OwnedMessage],
    excluded: &HashMap<(i32, i64), (&'static str, String)>,
) -> Result<Attempt, BatchError> {
    let name = step.name();
    let mut outcome = BatchOutcome::default();
    let mut wanted: Vec<(&OwnedMessage, Event)> = Vec::with_capacity(batch.len());
    let mut tx = pool.begin().await?;
    for message in batch {
        let Some(payload) = message.payload() else {
            reject(&mut tx, name, message, "decode", "record has no value").await?;
            outcome.rejected += 1;
            continue;
        };
        match events::decode(payload) {
            Ok(event) if step.wants(event.event_type()) => wanted.push((message, event)),
            Ok(_) => outcome.ignored += 1,
            Err(error) => {
                reject(&mut tx, name, message, "decode", &error.to_string()).await?;
                outcome.rejected += 1;
            }
        }
    }

    // Excluded records go into the inbox too: a re-delivery finds them processed (set aside).
    let fresh = record_in_inbox(&mut tx, name, &wanted).await?;
    let mut handled: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
    let mut to_handle: Vec<(&OwnedMessage, &Event)> = Vec::with_capacity(fresh.len());
    for (message, event) in &wanted {
        let id = event.meta.event_id;
        if !fresh.contains(&id) || !handled.insert(id) {
            tracing::debug!(step = name, event_id = %id, "duplicate delivery skipped");
            outcome.duplicates += 1;
        } else if let Some((kind, reason)) = excluded.get(&(message.partition(), message.offset()))
        {
            reject(&mut tx, name, message, kind, reason).await?;
            outcome.rejected += 1;
        } else {
            to_handle.push((message, event));
        }
    }
    let events: Vec<&Event> = to_handle.iter().map(|(_, event)| *event).collect();
    let bodies = match step.handle_batch(&mut tx, &events).await {
        Ok(bodies) => bodies,
        Err((_, error)) if error.is_retryable() => return Err(error.into()),
        Err((index, error)) => {
            let (message, event) = to_handle[index];
            tracing::warn!(step = name, order_id = %event.meta.order_id, %error, "handler failed permanently; re-applying the batch without it");
            return Ok(Attempt::Poisoned {
                partition: message.partition(),
                offset: message.offset(),
                kind: error.kind(),
                reason: error.to_string(),
            });
        }
    };
    let now = Utc::now();
    let mut replies: Vec<Event> = Vec::new();
    for (event, bodies) in events.iter().zip(bodies) {
        outcome.applied += 1;
        for (i, body) in bodies.into_iter().enumerate() {
            let reply_id = events::reply_event_id(event.meta.event_id, &format!("{name}/{i}"));
            replies.push(Event::caused_by(event, reply_id, now, body));
        }
    }
    let rows = outbox::insert(&mut tx, name, topic, &replies).await?;
    outcome.replies = rows.len();
    tx.commit().await?;
    Ok(Attempt::Applied(outcome, rows))
}

/// Insert the wanted events' ids into the inbox in one statement; returns the ids that were
/// not there yet (the ones to handle).
async fn record_in_inbox(
    tx: &mut PgConnection,
    step: &str,
    wanted: &[(&OwnedMessage, Event)],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if wanted.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ids = Vec::with_capacity(wanted.len());
    let mut types = Vec::with_capacity(wanted.len());
    let mut orders = Vec::with_capacity(wanted.len());
    let mut topics = Vec::with_capacity(wanted.len());
    let mut partitions = Vec::with_capacity(wanted.len());
    let mut offsets = Vec::with_capacity(wanted.len());
    for (message, event) in wanted {
        ids.push(event.meta.event_id);
        types.push(event.event_type().as_str());
        orders.push(event.meta.order_id.as_str());
        topics.push(message.topic());
        partitions.push(message.partition());
        offsets.push(message.offset());
    }
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO pipeline.inbox (step, event_id, event_type, order_id, topic, partition, \"offset\")
         SELECT $1, e.id, e.ty, e.ord, e.topic, e.part, e.off
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[], $7::bigint[])
              AS e(id, ty, ord, topic, part, off)
         ON CONFLICT (step, event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(step)
    .bind(&ids)
    .bind(&types)
    .bind(&orders)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(&mut *tx)
    .await?;
    Ok(fresh.into_iter().collect())
}

async fn reject(
    tx: &mut PgConnection,
    consumer: &str,
    message: &OwnedMessage,
    kind: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let position = platform::db::RecordPosition {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
    };
    platform::db::set_aside(
        tx,
        consumer,
        position,
        message.key(),
        message.payload(),
        kind,
        reason,
    )
    .await
}

//! The projector: a consumer group member that applies bounded batches of the log to the live
//! read models, one Postgres transaction per batch holding the rows and the next offsets.
//!
//! Reading is pipelined with writing: a reader task polls the next batch and decodes it while
//! the current one is written ([`apply`]), with one decoded batch at most waiting. Batches are
//! `consumer.batch_max_events` records, and up to [`CATCH_UP_BATCH_MAX_EVENTS`] while the
//! projector is behind (the previous batch came back full), so a cold start catches up in
//! fewer, larger transactions. A batch is written by up to [`WRITERS`] transactions at once,
//! each with whole partitions and their positions, so Postgres works on more than one core.
//!
//! Measured as the component `projector` ([`ComponentMetrics`]): records consumed by the
//! reader, batch sizes, each part's apply and commit, the batch from its poll to the offset
//! commit, and `orderflow_order_terminal_seconds` for every order a committed batch ended
//! (event times: its `OrderCreated` to its terminal event).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use metrics::Histogram;
use platform::config::{ConsumerSettings, KafkaSettings};
use platform::kafka_stats::Assignment;
use platform::metrics::names::ORDER_TERMINAL;
use platform::metrics::{ComponentMetrics, FailureKind};
use platform::outbox::OutboxRow;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::{self, Decoded};
pub use crate::apply::{dead_letter_undecodable, ProjectionOutcome};
use crate::changes;
use crate::generations;
use crate::offsets::DbOffsets;
use crate::NAME;

/// Records per batch while the projector is behind. Bounded: this batch, the one decoded ahead
/// and the one being polled are all the projector holds (about 10 MB at this size).
pub const CATCH_UP_BATCH_MAX_EVENTS: usize = 10_000;

/// Decoded batches waiting for the writer: one, so that reading and decoding overlap writing.
const READ_AHEAD_BATCHES: usize = 1;

/// Transactions writing one batch at once, each on its own connection with its own partitions.
/// Postgres runs a transaction on one core; two let it use a second one while the first waits
/// for a row lock, a flush or the client. Their orders never meet (an order is in one
/// partition); the aggregates they share are upserted in key order, so they wait for each
/// other there but never deadlock.
pub const WRITERS: usize = 2;

pub struct Projector {
    pool: PgPool,
    consumer: StreamConsumer<DbOffsets>,
    /// Sends dead letters only; projections produce nothing else.
    producer: platform::kafka::Producer,
    group: String,
    topic: String,
    batching: ConsumerSettings,
    metrics: ComponentMetrics,
    completed: Histogram,
    cancelled: Histogram,
}

/// The `component` label of the projector's metrics (its group and `--only` name is
/// `projections`).
pub const METRICS_COMPONENT: &str = "projector";

impl Projector {
    /// Join the projections' consumer group on the order log (`kafka`); batches and retry
    /// delays as `batching` bounds them. Must be called inside a multi-threaded tokio runtime:
    /// the assignment callback looks up offsets synchronously.
    pub fn new(
        kafka: &KafkaSettings,
        batching: &ConsumerSettings,
        pool: PgPool,
    ) -> anyhow::Result<Self> {
        let group = kafka.group_id(NAME);
        let client_id = format!("orderflow-{NAME}-{}", std::process::id());
        let context = DbOffsets::new(
            pool.clone(),
            NAME.to_string(),
            &client_id,
            tokio::runtime::Handle::current(),
        );
        let consumer: StreamConsumer<DbOffsets> =
            platform::kafka::consumer_config(kafka, &group, &client_id)
                .create_with_context(context)
                .with_context(|| format!("creating consumer for group {group}"))?;
        consumer
            .subscribe(&[kafka.topic.as_str()])
            .with_context(|| format!("subscribing {group} to {}", kafka.topic))?;
        let producer = platform::kafka::producer(kafka, &client_id)?;
        Ok(Projector {
            pool,
            consumer,
            producer,
            group,
            topic: kafka.topic.clone(),
            batching: batching.clone(),
            metrics: ComponentMetrics::new(METRICS_COMPONENT),
            completed: metrics::histogram!(ORDER_TERMINAL, "outcome" => "completed"),
            cancelled: metrics::histogram!(ORDER_TERMINAL, "outcome" => "cancelled"),
        })
    }

    /// Whether the group has given the projector its partitions (readiness).
    pub fn assignment(&self) -> Assignment {
        self.consumer.context().member.assignment.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(topic = %self.topic, "projector started");
        let relayed =
            platform::outbox::relay(&self.pool, &self.producer, NAME, Duration::ZERO).await?;
        self.metrics.published.increment(relayed as u64);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.batching.retry_delay_ms_min))
            .with_max_delay(Duration::from_millis(self.batching.retry_delay_ms_max))
            .with_jitter()
            // A database outage pauses the projection; it never skips records.
            .without_max_times();
        let consumer = Arc::new(self.consumer);
        let (ready, mut batches) = mpsc::channel(READ_AHEAD_BATCHES);
        // Stops the reader however this function ends.
        let reading = shutdown.child_token();
        let _stop_reading = reading.clone().drop_guard();
        let reader = tokio::spawn(read(
            Arc::clone(&consumer),
            self.batching.clone(),
            reading.clone(),
            ready,
            self.metrics.clone(),
        ));
        // `None` once the reader stopped: on shutdown, or because it failed.
        while let Some((polled, batch)) = batches.recv().await {
            let records = batch.len();
            let next_offsets = platform::kafka::next_offsets(batch.messages());
            let (span, projected) = trace_batch(&batch);
            let parts = batch.split(WRITERS);
            let applied = parts.iter().map(|part| async {
                let attempt = || apply_measured(&self.pool, &self.group, part, &self.metrics);
                attempt
                    .retry(backoff)
                    .when(|error: &anyhow::Error| is_retryable(error) && !shutdown.is_cancelled())
                    .notify(|error, delay| {
                        self.metrics.failure(FailureKind::Unavailable).increment(1);
                        tracing::warn!(%error, ?delay, "projection batch failed; retrying")
                    })
                    .await
                    .inspect_err(|error| {
                        let kind = if is_retryable(error) {
                            FailureKind::Unavailable
                        } else {
                            FailureKind::Permanent
                        };
                        self.metrics.failure(kind).increment(1);
                    })
            });
            let mut dead = Vec::new();
            for (outcome, dead_letters) in futures::future::try_join_all(applied)
                .instrument(span)
                .await
                .context("projection cannot apply a batch")?
            {
                tracing::debug!(?outcome, records, "projection batch applied");
                record(&self.metrics, [&self.completed, &self.cancelled], &outcome);
                dead.extend(dead_letters);
            }
            // The records are in the read models: their spans end with the commit.
            drop(projected);
            let publish = || platform::outbox::publish(&self.pool, &self.producer, &dead);
            publish
                .retry(backoff)
                .notify(|error, delay| tracing::warn!(%error, ?delay, "publishing dead letters failed; retrying"))
                .await
                .context("publishing dead letters")?;
            self.metrics.published.increment(dead.len() as u64);
            // A hint only: the stored offsets in Postgres are what assignment uses.
            let committing = Instant::now();
            platform::kafka::commit_offsets(&consumer, &next_offsets);
            self.metrics.commit_offsets.record(committing.elapsed());
            self.metrics.batch_duration.record(polled.elapsed());
            if shutdown.is_cancelled() {
                break;
            }
        }
        // A batch read ahead and not applied is read again from the stored positions.
        reading.cancel();
        drop(batches);
        reader.await.context("the projector's reader panicked")??;
        tracing::info!("projector stopped; leaving the group");
        Ok(())
    }
}

/// A committed part's counts, and the orders it ended into `terminal` (completed, cancelled).
fn record(metrics: &ComponentMetrics, terminal: [&Histogram; 2], outcome: &ProjectionOutcome) {
    metrics.applied.increment(outcome.applied as u64);
    metrics.duplicate.increment(outcome.duplicates as u64);
    metrics.dead_lettered.increment(outcome.rejected as u64);
    // A projection rejects only records that do not decode.
    metrics
        .failure(FailureKind::Poison)
        .increment(outcome.rejected as u64);
    let [completed, cancelled] = terminal;
    for (ended, age) in &outcome.terminal {
        let seconds = age.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        match *ended {
            "cancelled" => cancelled.record(seconds),
            _ => completed.record(seconds),
        }
    }
}

/// Poll and decode batches until `reading` is cancelled or the writer is gone.
async fn read(
    consumer: Arc<StreamConsumer<DbOffsets>>,
    batching: ConsumerSettings,
    reading: CancellationToken,
    ready: mpsc::Sender<(Instant, Decoded)>,
    metrics: ComponentMetrics,
) -> anyhow::Result<()> {
    let max_wait = Duration::from_millis(batching.batch_max_wait_ms);
    let live_max = batching.batch_max_events.max(1);
    let catch_up_max = CATCH_UP_BATCH_MAX_EVENTS.max(live_max);
    let mut max = live_max;
    while !reading.is_cancelled() {
        let messages = platform::kafka::poll_batch(&consumer, max, max_wait, &reading).await;
        if messages.is_empty() {
            max = live_max;
            continue;
        }
        let polled = Instant::now();
        metrics.consumed.increment(messages.len() as u64);
        metrics.batch_records.record(messages.len() as f64);
        max = if messages.len() >= max {
            catch_up_max
        } else {
            live_max
        };
        // Decoding is CPU work; keep it off the runtime's workers.
        let batch = tokio::task::spawn_blocking(move || Decoded::decode(messages))
            .await
            .context("decoding a batch panicked")?;
        if ready.send((polled, batch)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// With traces exported: the batch's span, and a `projected` span per record continuing the
/// trace the record carries (its order's), open until the batch is committed.
fn trace_batch(batch: &Decoded) -> (tracing::Span, Vec<tracing::Span>) {
    if !platform::trace::enabled() {
        return (tracing::Span::none(), Vec::new());
    }
    let messages = batch.messages();
    let span =
        platform::trace::batch_span(NAME, messages.len(), messages.iter().map(|m| m.headers()));
    let projected = messages
        .iter()
        .map(|message| {
            let order_id = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .unwrap_or_default();
            let event_type = message
                .payload()
                .and_then(events::peek_type)
                .map_or("undecodable", |t| t.as_str());
            let facts = platform::trace::RecordFacts {
                order_id,
                event_type,
                partition: message.partition(),
                offset: message.offset(),
            };
            platform::trace::consumer_span("projected", NAME, facts, message.headers(), &span)
        })
        .collect();
    (span, projected)
}

fn is_retryable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .is_some_and(platform::db::is_retryable)
}

/// [`apply_batch`], its apply and its commit timed into `metrics`.
async fn apply_measured(
    pool: &PgPool,
    group: &str,
    batch: &Decoded,
    metrics: &ComponentMetrics,
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut tx = platform::db::begin(pool).await?;
    let started = Instant::now();
    let live = generations::live(&mut tx, true).await?;
    let result = apply::apply(&mut tx, &live.target()?, batch, Some(group)).await?;
    changes::notify(&mut tx, &changed(&result.0)).await?;
    metrics.handler_duration.record(started.elapsed());
    let committing = Instant::now();
    tx.commit().await?;
    metrics.commit_database.record(committing.elapsed());
    Ok(result)
}

/// Apply one batch to the live generation: the live row is share-locked for the transaction,
/// so a switch (which locks it exclusively) never interleaves with a batch.
pub async fn apply_batch(
    pool: &PgPool,
    group: &str,
    batch: &Decoded,
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut tx = pool.begin().await?;
    let live = generations::live(&mut tx, true).await?;
    let result = apply::apply(&mut tx, &live.target()?, batch, Some(group)).await?;
    changes::notify(&mut tx, &changed(&result.0)).await?;
    tx.commit().await?;
    Ok(result)
}

/// The orders a batch changed, to announce with its commit (`Prefer: wait` listens).
fn changed(outcome: &ProjectionOutcome) -> Vec<&str> {
    outcome.changed_orders.iter().map(String::as_str).collect()
}

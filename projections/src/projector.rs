//! The projector: a consumer group member that applies bounded batches of the log to the live
//! read models, one Postgres transaction per batch holding the rows and the next offsets.
//!
//! Reading is pipelined with writing: a reader task polls the next batch and decodes it while
//! the current one is written ([`apply`]), with one decoded batch at most waiting. Batches are
//! `consumer.batch_max_events` records, and up to [`CATCH_UP_BATCH_MAX_EVENTS`] while the
//! projector is behind (the previous batch came back full), so a cold start catches up in
//! fewer, larger transactions. A batch is written by up to [`WRITERS`] transactions at once,
//! each with whole partitions and their positions, so Postgres works on more than one core.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use platform::config::{ConsumerSettings, KafkaSettings};
use platform::outbox::OutboxRow;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Decoded};
pub use crate::apply::{dead_letter_undecodable, ProjectionOutcome};
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
    producer: FutureProducer,
    group: String,
    topic: String,
    batching: ConsumerSettings,
}

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
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(topic = %self.topic, "projector started");
        platform::outbox::relay(&self.pool, &self.producer, NAME, Duration::ZERO).await?;
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
        ));
        // `None` once the reader stopped: on shutdown, or because it failed.
        while let Some(batch) = batches.recv().await {
            let records = batch.len();
            let next_offsets = platform::kafka::next_offsets(batch.messages());
            let parts = batch.split(WRITERS);
            let applied = parts.iter().map(|part| async {
                let attempt = || apply_batch(&self.pool, &self.group, part);
                attempt
                    .retry(backoff)
                    .when(|error: &anyhow::Error| {
                        is_retryable(error) && !shutdown.is_cancelled()
                    })
                    .notify(|error, delay| tracing::warn!(%error, ?delay, "projection batch failed; retrying"))
                    .await
            });
            let mut dead = Vec::new();
            for (outcome, dead_letters) in futures::future::try_join_all(applied)
                .await
                .context("projection cannot apply a batch")?
            {
                tracing::debug!(?outcome, records, "projection batch applied");
                dead.extend(dead_letters);
            }
            let publish = || platform::outbox::publish(&self.pool, &self.producer, &dead);
            publish
                .retry(backoff)
                .notify(|error, delay| tracing::warn!(%error, ?delay, "publishing dead letters failed; retrying"))
                .await
                .context("publishing dead letters")?;
            // A hint only: the stored offsets in Postgres are what assignment uses.
            platform::kafka::commit_offsets(&consumer, &next_offsets);
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

/// Poll and decode batches until `reading` is cancelled or the writer is gone.
async fn read(
    consumer: Arc<StreamConsumer<DbOffsets>>,
    batching: ConsumerSettings,
    reading: CancellationToken,
    ready: mpsc::Sender<Decoded>,
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
        max = if messages.len() >= max {
            catch_up_max
        } else {
            live_max
        };
        // Decoding is CPU work; keep it off the runtime's workers.
        let batch = tokio::task::spawn_blocking(move || Decoded::decode(messages))
            .await
            .context("decoding a batch panicked")?;
        if ready.send(batch).await.is_err() {
            break;
        }
    }
    Ok(())
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
    batch: &Decoded,
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut tx = pool.begin().await?;
    let live = generations::live(&mut tx, true).await?;
    let result = apply::apply(&mut tx, &live.target()?, batch, Some(group)).await?;
    tx.commit().await?;
    Ok(result)
}

//! The live mode of the engine: one consumer group member that polls bounded batches of the
//! order log and hands each to [`engine::apply_with_retry`], then publishes the batch's outbox
//! rows and only then commits its offsets. Between batches it releases parked orders whose
//! next attempt is due ([`crate::parking`]) and relays outbox rows a crashed member left.
//!
//! Every batch is measured on the way ([`ComponentMetrics`], handles made once): records
//! consumed, its size and duration from poll to offset commit, the outcome's counts once
//! committed, the rows published, the offset commit's time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::Retryable;
use platform::config::{ConsumerSettings, KafkaSettings};
use platform::kafka::Producer;
use platform::kafka_stats::{Assignment, Member};
use platform::metrics::ComponentMetrics;
use platform::outbox::{self, OutboxRow};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::engine::{apply_with_retry, identity, unbounded_backoff, Identity};
use crate::Step;

/// How often a member looks for parked orders whose next attempt is due.
const PARKED_POLL: Duration = Duration::from_millis(200);
/// How often a step commits its consumer's positions again between batches (see
/// `platform::kafka::commit_positions`).
const POSITIONS_COMMIT_EVERY: Duration = Duration::from_secs(5);

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
    /// Injected once, on the first batch that produces a record.
    pub fault: Option<Fault>,
}

pub struct StepRunner {
    step: Arc<dyn Step>,
    identity: Identity,
    pool: PgPool,
    producer: Producer,
    consumer: StreamConsumer<Member>,
    batching: ConsumerSettings,
    options: RunnerOptions,
    metrics: ComponentMetrics,
}

impl StepRunner {
    /// Join the step's consumer group on the order log (`kafka`); batches and retries as
    /// `batching` bounds them.
    pub fn new(
        step: Arc<dyn Step>,
        kafka: &KafkaSettings,
        batching: &ConsumerSettings,
        pool: PgPool,
        options: RunnerOptions,
    ) -> anyhow::Result<Self> {
        let identity = identity(step.as_ref(), kafka);
        let name = identity.name;
        let client_id = format!("orderflow-{}-{}", identity.name, std::process::id());
        let consumer = platform::kafka::group_member(kafka, &identity.group, &client_id)?;
        consumer
            .subscribe(&[identity.source.as_str()])
            .with_context(|| format!("subscribing {} to {}", identity.group, identity.source))?;
        let producer = platform::kafka::producer(kafka, &client_id)?;
        Ok(StepRunner {
            step,
            identity,
            pool,
            producer,
            consumer,
            batching: batching.clone(),
            options,
            metrics: ComponentMetrics::new(name),
        })
    }

    /// Whether the group has given this member its partitions (readiness).
    pub fn assignment(&self) -> Assignment {
        self.consumer.context().assignment.clone()
    }

    /// Consume until `shutdown` is cancelled; the batch in hand is finished and committed first.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let name = self.identity.name;
        tracing::info!(step = name, topic = %self.identity.source, "step started");
        // Rows a crashed predecessor committed but never published go out first.
        let relayed = outbox::relay(&self.pool, &self.producer, name, Duration::ZERO).await?;
        self.metrics.published.increment(relayed as u64);
        let relay_after = Duration::from_millis(self.batching.outbox_relay_after_ms);
        let mut last_relay = Instant::now();
        let mut last_release = Instant::now();
        let mut last_positions_commit = Instant::now();
        let max_wait = Duration::from_millis(self.batching.batch_max_wait_ms);
        let policy = self.batching.retry_policy(name);
        loop {
            let batch = platform::kafka::poll_batch(
                &self.consumer,
                self.batching.batch_max_events,
                max_wait,
                &shutdown,
            )
            .await;
            if !batch.is_empty() {
                let started = Instant::now();
                self.metrics.consumed.increment(batch.len() as u64);
                self.metrics.batch_records.record(batch.len() as f64);
                // With traces exported, the batch's span (linked to its records' contexts);
                // each handled record's span is opened by the engine under it.
                let span = platform::trace::batch_span(
                    name,
                    batch.len(),
                    batch.iter().map(|m| m.headers()),
                );
                let (outcome, rows) = apply_with_retry(
                    self.step.as_ref(),
                    &self.identity,
                    &self.pool,
                    &batch,
                    policy,
                    &shutdown,
                    &self.metrics,
                )
                .instrument(span.clone())
                .await?;
                outcome.record(&self.metrics);
                tracing::debug!(step = name, ?outcome, "batch applied");
                if self.take_fault(Fault::CrashAfterDbCommit, &rows) {
                    anyhow::bail!("injected fault: crashed after the database commit");
                }
                // Until the records are acknowledged the offsets must not move: retry forever
                // (with backoff) rather than lose one. The rows stay in the outbox meanwhile.
                let publish = || outbox::publish(&self.pool, &self.producer, &rows);
                publish
                    .retry(unbounded_backoff(policy))
                    .notify(|error, delay| tracing::warn!(step = name, %error, ?delay, "publishing failed; retrying"))
                    .instrument(span)
                    .await
                    .context("publishing replies")?;
                self.metrics.published.increment(rows.len() as u64);
                if self.take_fault(Fault::CrashBeforeOffsetCommit, &rows) {
                    anyhow::bail!("injected fault: crashed before the offset commit");
                }
                let committing = Instant::now();
                platform::kafka::commit_offsets(
                    &self.consumer,
                    &platform::kafka::next_offsets(&batch),
                );
                self.metrics.commit_offsets.record(committing.elapsed());
                self.metrics.batch_duration.record(started.elapsed());
            }
            if last_release.elapsed() >= PARKED_POLL {
                match crate::parking::release_due(
                    self.step.as_ref(),
                    &self.identity,
                    &self.pool,
                    &self.producer,
                    policy,
                    &self.metrics,
                )
                .await
                {
                    Ok(0) => {}
                    Ok(count) => {
                        tracing::info!(step = name, count, "released held events of parked orders")
                    }
                    Err(error) => tracing::warn!(
                        step = name,
                        error = format!("{error:#}"),
                        "releasing parked orders failed; will try again"
                    ),
                }
                last_release = Instant::now();
            }
            if last_relay.elapsed() >= relay_after {
                match outbox::relay(&self.pool, &self.producer, name, relay_after).await {
                    Ok(relayed) => self.metrics.published.increment(relayed as u64),
                    Err(error) => {
                        tracing::warn!(step = name, %error, "outbox relay failed; will try again")
                    }
                }
                last_relay = Instant::now();
            }
            // Every record polled so far is handled: commit the positions again now and then,
            // so that a batch commit lost to a moving coordinator does not leave an idle
            // partition lagging for ever (the three-broker crash test saw one).
            if last_positions_commit.elapsed() >= POSITIONS_COMMIT_EVERY {
                platform::kafka::commit_positions(&self.consumer);
                last_positions_commit = Instant::now();
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
}

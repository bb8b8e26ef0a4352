//! The batch engine: the one way records become exactly-once effects, in every mode — live
//! consumption ([`crate::runner`]), the parking releaser ([`crate::parking`]), redrive and dry
//! run ([`crate::redrive`]) and restore ([`crate::restore`]).
//!
//! For each bounded batch: the questions its records raise for the step's ports (payment
//! provider, carrier) are asked first, outside any transaction ([`Step::prepare`]). Then, in
//! one Postgres transaction: the ids of the wanted events go into the step's inbox (a repeat
//! is skipped); the step loads the state of the batch's orders, decides every new event in
//! memory and stores what changed ([`Step::apply`]); the replies go into the outbox; records
//! that cannot be applied are dead-lettered (table and dead-letter topic, through the same
//! outbox) or held behind their parked order. The caller commits, publishes the outbox rows,
//! and only then commits the batch's offsets. A crash at any point re-delivers the batch and
//! the inbox absorbs what was already applied.
//!
//! Failures are classified once, here ([`disposition`]): a permanent one dead-letters its
//! record on the first attempt; a retryable one parks the record's order (the releaser retries
//! it with backoff until the step's retry budget is spent; an open circuit breaker spends
//! none). Every failure of a batch is known after one attempt: the next one sets them all
//! aside. A failure that names no record (the database is down) is retried without limit:
//! nothing can be recorded until it is back.

use std::collections::{HashMap, HashSet};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use events::Event;
use platform::config::RetryPolicy;
use platform::deadletter::{self, DeadLetter, ErrorClass, FailedAttempt};
use platform::metrics::{ComponentMetrics, FailureKind};
use platform::outbox::{self, OutboxRecord, OutboxRow};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use platform::config::KafkaSettings;

use crate::step::{ApplyError, Source};
use crate::{HandlerError, Step};

/// What one batch did, for logs, metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub ignored: usize,
    pub dead_lettered: usize,
    /// Records held because their order is parked (or parked by this batch).
    pub parked: usize,
    /// Orders this batch parked (a retryable failure of one of their records).
    pub newly_parked: usize,
    /// Records that did not decode (dead-lettered on sight; counted in `dead_lettered` too).
    pub poison: usize,
    pub replies: usize,
}

impl BatchOutcome {
    /// Add this committed batch to the component's counters.
    pub fn record(&self, metrics: &ComponentMetrics) {
        metrics.applied.increment(self.applied as u64);
        metrics.duplicate.increment(self.duplicates as u64);
        metrics.ignored.increment(self.ignored as u64);
        metrics.dead_lettered.increment(self.dead_lettered as u64);
        metrics.parked.increment(self.newly_parked as u64);
        metrics
            .failure(FailureKind::Poison)
            .increment(self.poison as u64);
    }
}

/// Names a step runs under: its component name (inbox, outbox, dead letters), its group, the
/// topic it consumes (`source`) and the topic its replies go to (`topic`, the order log).
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: &'static str,
    pub group: String,
    pub source: String,
    pub topic: String,
}

/// The names `step` runs under on the log, intake topic and group prefix of `kafka`.
pub fn identity(step: &dyn Step, kafka: &KafkaSettings) -> Identity {
    Identity {
        name: step.name(),
        group: kafka.group_id(step.name()),
        source: match step.source() {
            Source::Log => kafka.topic.clone(),
            Source::Intake => kafka.intake_topic.clone(),
        },
        topic: kafka.topic.clone(),
    }
}

pub fn unbounded_backoff(policy: RetryPolicy) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(policy.delay_min)
        .with_max_delay(policy.delay_max)
        .with_jitter()
        .without_max_times()
}

/// Why an attempt at a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Deciding these records failed, each at its position (partition, offset); the batch's
    /// other records were fine.
    #[error("{}", describe(.0))]
    Records(Vec<((i32, i64), HandlerError)>),
    /// Infrastructure failed outside any one record (database unreachable, a bug).
    #[error("{0:#}")]
    Batch(#[from] anyhow::Error),
}

fn describe(failures: &[((i32, i64), HandlerError)]) -> String {
    failures
        .iter()
        .map(|((partition, offset), error)| {
            format!("handling the record at partition {partition} offset {offset}: {error}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl BatchError {
    fn retryable(&self) -> bool {
        match self {
            BatchError::Records(failures) => failures.iter().all(|(_, e)| e.is_retryable()),
            BatchError::Batch(error) => error
                .chain()
                .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
                .is_some_and(platform::db::is_retryable),
        }
    }
}

/// One failed attempt at a record, as its history records it. Every mode classifies here.
pub fn failed_attempt(error: &HandlerError) -> FailedAttempt {
    FailedAttempt {
        at: Utc::now(),
        class: if error.is_retryable() {
            ErrorClass::Retryable
        } else {
            ErrorClass::Permanent
        },
        kind: error.kind().into(),
        error: error.to_string(),
    }
}

/// What the policy does with a record whose handling failed: a permanent failure is
/// dead-lettered at once; a retryable one parks its order.
pub fn disposition(error: &HandlerError) -> Disposition {
    let attempt = failed_attempt(error);
    if error.is_retryable() {
        Disposition::Park(vec![attempt])
    } else {
        Disposition::DeadLetter(vec![attempt])
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::Batch(anyhow::Error::new(error))
    }
}

/// What the next attempt does with a record instead of handling it.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Dead-letter it with these failed attempts.
    DeadLetter(Vec<FailedAttempt>),
    /// Park its order, with this first failed attempt; later events of the order wait behind.
    Park(Vec<FailedAttempt>),
}

/// Records to treat specially in the next attempt, by (partition, offset).
pub type Excluded = HashMap<(i32, i64), Disposition>;

/// Whether an attempt consumes fresh records (and holds those of parked orders), releases one
/// parked record (which is, by definition, of a parked order), or redrives a dead letter
/// (closed first, in the same transaction, so that failing again reopens it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Consume,
    Release,
    Redrive { letter: Uuid, dry_run: bool },
}

/// The failure kind `orderflow_batch_failures_total` counts a record's failure as.
pub fn failure_kind(error: &HandlerError) -> FailureKind {
    match error {
        HandlerError::Unavailable { .. } => FailureKind::Unavailable,
        error if error.is_retryable() => FailureKind::Retryable,
        _ => FailureKind::Permanent,
    }
}

/// Apply `batch`; returns the outcome and the committed outbox rows. A record whose handler
/// fails permanently is dead-lettered; one that fails with a retryable error parks its order
/// (the [`crate::parking`] releaser retries it with backoff). Failures that name no record
/// are retried here without limit. Every attempt's duration (ports and decisions), the commit's
/// and every failure go to `metrics`; the committed outcome's counts are the caller's to add.
pub async fn apply_with_retry(
    step: &dyn Step,
    identity: &Identity,
    pool: &PgPool,
    batch: &[OwnedMessage],
    policy: RetryPolicy,
    shutdown: &CancellationToken,
    metrics: &ComponentMetrics,
) -> anyhow::Result<(BatchOutcome, Vec<OutboxRow>)> {
    let name = identity.name;
    let mut excluded: Excluded = HashMap::new();
    let mut infra_delays = unbounded_backoff(policy).build();
    loop {
        let started = std::time::Instant::now();
        let attempted = attempt(step, identity, pool, batch, &excluded, Mode::Consume).await;
        metrics.handler_duration.record(started.elapsed());
        let error = match attempted {
            Ok(Attempted { tx, outcome, rows }) => {
                let committing = std::time::Instant::now();
                let committed = tx.commit().await;
                metrics.commit_database.record(committing.elapsed());
                match committed {
                    Ok(()) => return Ok((outcome, rows)),
                    Err(e) => BatchError::from(e),
                }
            }
            Err(e) => e,
        };
        match error {
            BatchError::Records(failures) => {
                for (position, error) in failures {
                    metrics.failure(failure_kind(&error)).increment(1);
                    let disposition = disposition(&error);
                    match &disposition {
                        Disposition::DeadLetter(_) => {
                            tracing::warn!(step = name, ?position, %error, "permanent failure; dead-lettering the record")
                        }
                        Disposition::Park(_) => {
                            tracing::warn!(step = name, ?position, %error, "retryable failure; parking the order")
                        }
                    }
                    excluded.insert(position, disposition);
                }
            }
            error if error.retryable() => {
                metrics.failure(FailureKind::Unavailable).increment(1);
                if shutdown.is_cancelled() {
                    return Err(anyhow::Error::new(error).context(format!(
                        "step {name} stopped while its database was failing"
                    )));
                }
                let delay = infra_delays.next().unwrap_or(policy.delay_max);
                tracing::warn!(step = name, %error, ?delay, "batch failed; retrying");
                tokio::time::sleep(delay).await;
            }
            error => {
                metrics.failure(FailureKind::Permanent).increment(1);
                return Err(
                    anyhow::Error::new(error).context(format!("step {name} cannot apply a batch"))
                );
            }
        }
    }
}

/// An applied batch in its open transaction: the caller adds what its mode needs, then
/// commits (or rolls back, for a dry run).
pub struct Attempted {
    pub tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub outcome: BatchOutcome,
    pub rows: Vec<OutboxRow>,
}

/// Times a batch is tried again because an answer it needs was not asked before its
/// transaction (the state moved in between); then the records fail as retryable.
const ANSWER_ROUNDS: usize = 3;

/// The engine's one way to apply a batch, in every mode: ask the questions its records raise
/// outside any transaction ([`Step::prepare`]), then open a transaction and apply it
/// ([`attempt_batch`]). Returns the open transaction.
pub async fn attempt(
    step: &dyn Step,
    identity: &Identity,
    pool: &PgPool,
    batch: &[OwnedMessage],
    excluded: &Excluded,
    mode: Mode,
) -> Result<Attempted, BatchError> {
    let sorted = sort(step, batch);
    // A dry run calls no one: a decision that needs an answer fails as unanswered.
    let asks = !matches!(mode, Mode::Redrive { dry_run: true, .. });
    let mut round = 0;
    loop {
        round += 1;
        if asks {
            ask_first(step, identity, pool, &sorted, excluded, mode).await?;
        }
        let mut tx = platform::db::begin(pool).await?;
        match attempt_batch(step, identity, &mut tx, &sorted, excluded, mode).await {
            Ok((outcome, rows)) => return Ok(Attempted { tx, outcome, rows }),
            Err(BatchError::Records(failures))
                if asks
                    && round < ANSWER_ROUNDS
                    && failures
                        .iter()
                        .any(|(_, e)| matches!(e, HandlerError::Unanswered(_))) =>
            {
                tracing::debug!(
                    step = identity.name,
                    "answers missing after prepare; asking again"
                );
            }
            Err(error) => return Err(error),
        }
    }
}

/// A batch's records as a step sees them: decoded if the step wants their type (read from
/// the header without decoding), counted if not, set aside with the reason if undecodable.
pub struct Sorted<'a> {
    pub wanted: Vec<(&'a OwnedMessage, Event)>,
    pub undecodable: Vec<(&'a OwnedMessage, String)>,
    pub ignored: usize,
}

/// Decode what `step` wants of `batch`, once per attempt.
pub fn sort<'a>(step: &dyn Step, batch: &'a [OwnedMessage]) -> Sorted<'a> {
    let mut sorted = Sorted {
        wanted: Vec::with_capacity(batch.len()),
        undecodable: Vec::new(),
        ignored: 0,
    };
    for message in batch {
        let Some(payload) = message.payload() else {
            sorted
                .undecodable
                .push((message, "record has no value".to_string()));
            continue;
        };
        if events::peek_type(payload).is_some_and(|t| !step.wants(t)) {
            sorted.ignored += 1;
            continue;
        }
        match events::decode(payload) {
            Ok(event) if step.wants(event.event_type()) => sorted.wanted.push((message, event)),
            Ok(_) => sorted.ignored += 1,
            Err(error) => sorted.undecodable.push((message, error.to_string())),
        }
    }
    sorted
}

/// Ask the step's ports what the batch's records (those it would handle) need to know.
async fn ask_first(
    step: &dyn Step,
    identity: &Identity,
    pool: &PgPool,
    sorted: &Sorted<'_>,
    excluded: &Excluded,
    mode: Mode,
) -> Result<(), BatchError> {
    let events: Vec<&Event> = sorted
        .wanted
        .iter()
        .filter(|(m, _)| !excluded.contains_key(&(m.partition(), m.offset())))
        .map(|(_, e)| e)
        .collect();
    if !events.iter().any(|e| step.may_ask(e)) {
        return Ok(());
    }
    let parked = match mode {
        Mode::Consume => {
            let mut conn = platform::db::acquire(pool).await?;
            crate::parked::parked_orders(
                &mut conn,
                identity.name,
                events.iter().map(|e| e.meta.order_id.as_str()),
            )
            .await?
        }
        Mode::Release | Mode::Redrive { .. } => HashSet::new(),
    };
    let events: Vec<&Event> = events
        .into_iter()
        .filter(|e| !parked.contains(&e.meta.order_id))
        .collect();
    let calls = step
        .prepare(pool, &events)
        .await
        .map_err(|error| match error {
            HandlerError::Database(e) => BatchError::from(e),
            other => BatchError::Batch(anyhow::Error::new(other)),
        })?;
    if calls > 0 {
        tracing::debug!(step = identity.name, calls, "asked the step's ports");
    }
    Ok(())
}

/// One attempt at a batch inside `tx`; the caller commits or rolls back.
pub async fn attempt_batch(
    step: &dyn Step,
    identity: &Identity,
    tx: &mut PgConnection,
    sorted: &Sorted<'_>,
    excluded: &Excluded,
    mode: Mode,
) -> Result<(BatchOutcome, Vec<OutboxRow>), BatchError> {
    let name = identity.name;
    let mut outcome = BatchOutcome {
        ignored: sorted.ignored,
        ..BatchOutcome::default()
    };
    let mut to_outbox: Vec<OutboxRecord> = Vec::new();
    let mut dead_rows: Vec<OutboxRow> = Vec::new();
    // A redriven letter is closed before anything is tried, so that failing again (even
    // undecoding again, just below) reopens it with the attempt appended.
    if let Mode::Redrive { letter, .. } = mode {
        platform::deadletter::mark_redriven(tx, letter).await?;
    }
    for (message, reason) in &sorted.undecodable {
        let history = vec![FailedAttempt {
            at: Utc::now(),
            class: ErrorClass::Permanent,
            kind: "decode".into(),
            error: reason.clone(),
        }];
        dead_rows.extend(dead_letter(tx, identity, message, history).await?);
        outcome.dead_lettered += 1;
        outcome.poison += 1;
    }
    let wanted = &sorted.wanted;

    // Orders already parked hold every later event of theirs, in log order.
    let mut parked: HashSet<String> = match mode {
        Mode::Consume => {
            crate::parked::parked_orders(
                tx,
                name,
                wanted.iter().map(|(_, e)| e.meta.order_id.as_str()),
            )
            .await?
        }
        Mode::Release => HashSet::new(),
        Mode::Redrive { .. } => HashSet::new(),
    };
    // Dead-lettered and held records stay out of the inbox, so that they can still be applied.
    let mut to_handle: Vec<(&OwnedMessage, &Event)> = Vec::with_capacity(wanted.len());
    for (message, event) in wanted {
        let order_id = &event.meta.order_id;
        match excluded.get(&(message.partition(), message.offset())) {
            Some(Disposition::DeadLetter(history)) => {
                dead_rows.extend(dead_letter(tx, identity, message, history.clone()).await?);
                outcome.dead_lettered += 1;
            }
            Some(Disposition::Park(history)) => {
                crate::parked::hold(tx, name, order_id, message, history).await?;
                if parked.insert(order_id.clone()) {
                    outcome.newly_parked += 1;
                }
                outcome.parked += 1;
            }
            None if parked.contains(order_id) => {
                crate::parked::hold(tx, name, order_id, message, &[]).await?;
                outcome.parked += 1;
            }
            None => to_handle.push((message, event)),
        }
    }
    let fresh = record_in_inbox(tx, name, &to_handle).await?;
    let mut handled: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
    to_handle.retain(|(_, event)| {
        let id = event.meta.event_id;
        let keep = fresh.contains(&id) && handled.insert(id);
        if !keep {
            tracing::debug!(step = name, event_id = %id, "duplicate delivery skipped");
            outcome.duplicates += 1;
        }
        keep
    });
    let events: Vec<&Event> = to_handle.iter().map(|(_, event)| *event).collect();
    // With traces exported: a span per handled event, continuing the trace its record carries
    // (linked to the batch, the current span); its context goes with the event's replies.
    let spans: Vec<tracing::Span> = if platform::trace::enabled() {
        let batch = tracing::Span::current();
        to_handle
            .iter()
            .map(|(message, event)| {
                let facts = platform::trace::RecordFacts {
                    order_id: &event.meta.order_id,
                    event_type: event.event_type().as_str(),
                    partition: message.partition(),
                    offset: message.offset(),
                };
                platform::trace::consumer_span(name, name, facts, message.headers(), &batch)
            })
            .collect()
    } else {
        Vec::new()
    };
    let bodies = step.apply(tx, &events).await.map_err(|error| match error {
        ApplyError::Events(failures) => BatchError::Records(
            failures
                .into_iter()
                .map(|(index, error)| {
                    let message = to_handle[index.min(to_handle.len().saturating_sub(1))].0;
                    ((message.partition(), message.offset()), error)
                })
                .collect(),
        ),
        ApplyError::State(HandlerError::Database(e)) => BatchError::from(e),
        ApplyError::State(other) => BatchError::Batch(anyhow::Error::new(other)),
    })?;
    let now = Utc::now();
    let forwards = step.forwards();
    let mut traces = Vec::new();
    for (index, (event, bodies)) in events.iter().zip(bodies).enumerate() {
        outcome.applied += 1;
        let trace = spans.get(index).and_then(platform::trace::Carrier::of);
        if forwards && bodies.len() > 1 {
            return Err(BatchError::Batch(anyhow::anyhow!(
                "step {name} forwards event {} as {} events; a forwarding step emits at most one per record",
                event.meta.event_id,
                bodies.len()
            )));
        }
        for (i, body) in bodies.into_iter().enumerate() {
            // A forwarded event keeps the record's own metadata; a reply is caused by it.
            let reply = if forwards {
                Event {
                    meta: event.meta.clone(),
                    body,
                }
            } else {
                let reply_id = events::reply_event_id(event.meta.event_id, &format!("{name}/{i}"));
                Event::caused_by(event, reply_id, now, body)
            };
            let reply_id = reply.meta.event_id;
            let payload = events::encode(&reply).map_err(|e| {
                BatchError::Batch(anyhow::anyhow!(
                    "encoding a {} reply: {e}",
                    reply.event_type()
                ))
            })?;
            to_outbox.push(OutboxRecord {
                event_id: reply_id,
                event_type: reply.event_type().as_str().to_string(),
                order_id: reply.meta.order_id.clone(),
                topic: identity.topic.clone(),
                key: None,
                payload: Some(payload),
                headers: vec![
                    ("event_type".into(), reply.event_type().as_str().into()),
                    ("event_id".into(), reply_id.to_string()),
                ],
            });
            traces.push(trace.clone());
        }
    }
    let mut rows = outbox::insert_traced(tx, name, to_outbox, traces).await?;
    outcome.replies = rows.len();
    rows.extend(dead_rows);
    rows.sort_by_key(|r| r.id);
    Ok((outcome, rows))
}

pub(crate) async fn dead_letter(
    tx: &mut PgConnection,
    identity: &Identity,
    message: &OwnedMessage,
    history: Vec<FailedAttempt>,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    deadletter::dead_letter(
        tx,
        DeadLetter::of(identity.name, &identity.group, message, history),
    )
    .await
}

/// Insert the events' ids into the inbox in one statement; returns the ids that were not
/// there yet (the ones to handle).
async fn record_in_inbox(
    tx: &mut PgConnection,
    step: &str,
    wanted: &[(&OwnedMessage, &Event)],
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

//! Driving and observing the pipeline under test: the bench publishes generated orders
//! itself, stamping each at publish (the `OrderCreated` record's Kafka timestamp and the
//! event's `occurred_at` are the moment it is sent; the monotonic instant is kept in memory),
//! watches the log with its own consumer for every order's terminal record, and polls
//! `analytics.orders` for the moment the order shows there in its terminal status.
//!
//! Latency to terminal is the terminal record's timestamp (set by the pipeline's producer when
//! it sends the reply) minus the `OrderCreated` record's: 1 ms granularity, one clock. Latency
//! to visible is the start of the first poll that returns the order, minus the publish
//! instant: granularity is the poll interval plus one query. Nothing here changes the
//! pipeline's state; the only writes are the orders themselves.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use events::EventType;
use platform::config::KafkaSettings;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How an order ended, as its terminal record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Cancelled,
}

/// What is known about the orders of one phase, by their index in the phase.
#[derive(Debug, Default)]
pub struct PhaseTrack {
    /// Wall-clock ms of each `OrderCreated` (its record timestamp).
    pub publish_ms: Vec<i64>,
    pub publish_at: Vec<Instant>,
    /// The terminal record's timestamp, ms.
    pub terminal_ms: Vec<Option<i64>>,
    pub outcome: Vec<Option<Outcome>>,
    /// `occurred_at` of the terminal event, µs: where the read-model poll starts looking.
    terminal_occurred_us: Vec<Option<i64>>,
    pub visible_at: Vec<Option<Instant>>,
    pub terminal: usize,
    pub visible: usize,
    /// Records of this phase's orders seen on the log, all types, repeats included.
    pub records: u64,
    /// Orders before this index are all terminal.
    first_open: usize,
}

impl PhaseTrack {
    pub fn published(&self) -> usize {
        self.publish_ms.len()
    }

    /// How long the oldest order not yet terminal has waited.
    pub fn oldest_open_age(&mut self, now: Instant) -> Option<Duration> {
        while self.first_open < self.published() && self.terminal_ms[self.first_open].is_some() {
            self.first_open += 1;
        }
        let at = self.publish_at.get(self.first_open)?;
        Some(now.saturating_duration_since(*at))
    }

    pub fn done(&self) -> bool {
        self.terminal == self.published() && self.visible == self.published()
    }
}

/// Every phase's orders, shared by the publisher, the log watcher and the read-model poller.
#[derive(Debug, Default)]
pub struct Tracker {
    pub phases: Vec<PhaseTrack>,
    /// Orders terminal on the log and not yet visible: (terminal occurred_at µs, phase, index).
    pending: BTreeSet<(i64, usize, usize)>,
    /// Every cancel reason seen on the log: the read-model poll looks up cancelled orders
    /// through the `(cancel_reason, cancelled_at)` index.
    reasons: BTreeSet<String>,
}

impl Tracker {
    /// Drop what is known about `phase`'s orders once it is summarised; later records of
    /// them are ignored.
    pub fn forget(&mut self, phase: usize) {
        if let Some(track) = self.phases.get_mut(phase) {
            *track = PhaseTrack::default();
        }
        self.pending.retain(|p| p.1 != phase);
    }
}

pub type Shared = Arc<Mutex<Tracker>>;

/// The tracker, even if a thread panicked while holding it (its counters stay usable).
pub fn lock(shared: &Shared) -> MutexGuard<'_, Tracker> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The order id of order `index` of `phase` in a run: what `demo::generate` makes of
/// `<prefix>-p<phase>`.
pub fn order_id(prefix: &str, phase: usize, index: usize) -> String {
    format!("{prefix}-p{phase}-{index:07}")
}

/// (phase, index) of one of the run's order ids; `None` for anything else.
pub fn parse_order_id(prefix: &str, id: &str) -> Option<(usize, usize)> {
    let rest = id.strip_prefix(prefix)?.strip_prefix("-p")?;
    let (phase, index) = rest.split_once('-')?;
    Some((phase.parse().ok()?, index.parse().ok()?))
}

/// Sends the run's orders: `demo::generate`'s mix, one seeded generator for the whole run.
pub struct Publisher {
    producer: platform::kafka::Producer,
    topic: String,
    prefix: String,
    rng: StdRng,
    deliveries: mpsc::UnboundedSender<rdkafka::producer::DeliveryFuture>,
    failures: Arc<Mutex<(u64, Option<String>)>>,
    pub sent: u64,
}

impl Publisher {
    pub fn new(kafka: &KafkaSettings, prefix: &str, seed: u64) -> anyhow::Result<Publisher> {
        let producer = platform::kafka::producer(kafka, "orderflow-bench")?;
        let (deliveries, mut pending) =
            mpsc::unbounded_channel::<rdkafka::producer::DeliveryFuture>();
        let failures = Arc::new(Mutex::new((0u64, None::<String>)));
        let noted = failures.clone();
        // Acknowledgements are awaited apart from sending, so pacing never waits for the broker.
        tokio::spawn(async move {
            while let Some(delivery) = pending.recv().await {
                let failure = match delivery.await {
                    Ok(Ok(_)) => None,
                    Ok(Err((error, _))) => Some(format!("the broker refused an order: {error}")),
                    Err(_) => Some("the producer dropped an order before delivery".to_string()),
                };
                if let Some(failure) = failure {
                    let mut noted = noted.lock().unwrap_or_else(|p| p.into_inner());
                    noted.0 += 1;
                    noted.1.get_or_insert(failure);
                }
            }
        });
        Ok(Publisher {
            producer,
            // An upstream system's orders: to the intake, which seals and appends them.
            topic: kafka.intake_topic.clone(),
            prefix: prefix.to_string(),
            rng: StdRng::seed_from_u64(seed),
            deliveries,
            failures,
            sent: 0,
        })
    }

    /// Publish the next order of `phase`, stamped now.
    pub async fn publish(&mut self, tracker: &Shared, phase: usize) -> anyhow::Result<()> {
        let index = lock(tracker).phases[phase].published();
        let run = format!("{}-p{phase}", self.prefix);
        let (input, _) = crate::demo::generate(&run, index, &mut self.rng);
        let now = Utc::now();
        let event = input
            .into_event(now)
            .context("a generated order is invalid (a bug in the generator)")?;
        let payload = events::encode(&event).context("encoding an order")?;
        let stamp_ms = now.timestamp_millis();
        {
            let mut tracker = lock(tracker);
            let track = &mut tracker.phases[phase];
            track.publish_ms.push(stamp_ms);
            track.publish_at.push(Instant::now());
            track.terminal_ms.push(None);
            track.outcome.push(None);
            track.terminal_occurred_us.push(None);
            track.visible_at.push(None);
        }
        let event_id = event.meta.event_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_type",
                value: Some(event.event_type().as_str()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(event_id.as_str()),
            });
        let mut record = FutureRecord::to(&self.topic)
            .key(event.meta.order_id.as_bytes())
            .payload(&payload)
            .headers(headers)
            .timestamp(stamp_ms);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    // The receiver lives as long as the runtime; a closed channel only means
                    // the bench is shutting down.
                    let _ = self.deliveries.send(delivery);
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => anyhow::bail!("producing an order to {}: {error}", self.topic),
            }
        }
    }

    /// The first delivery failure, if any order was not accepted.
    pub fn failure(&self) -> Option<(u64, String)> {
        let noted = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        noted.1.clone().map(|first| (noted.0, first))
    }
}

/// A consumer of the whole run topic outside every group (all partitions assigned from the
/// beginning, nothing committed), with short fetch waits so terminal records are seen soon.
pub fn watcher(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<StreamConsumer> {
    let mut config = platform::kafka::consumer_config(kafka, group, "orderflow-bench-watch");
    // Only when the bench notices a terminal record depends on this (its latency is taken
    // from the record's timestamp): short, so the read-model poll looks for it early.
    config.set("fetch.wait.max.ms", "10");
    let consumer: StreamConsumer = config.create().context("creating the log watcher")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).context("partition number")?;
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .context("building the watcher's assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("assigning the run topic to the watcher")?;
    Ok(consumer)
}

/// The event type of a record: its `event_type` header, else its decoded payload.
fn event_type(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<EventType> {
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            if header.key == "event_type" {
                let name = std::str::from_utf8(header.value?).ok()?;
                return EventType::ALL.into_iter().find(|t| t.as_str() == name);
            }
        }
    }
    events::decode(message.payload()?)
        .ok()
        .map(|e| e.event_type())
}

/// Read the log until `stop`, noting every record of the run and each order's first terminal
/// record.
pub async fn watch(
    consumer: StreamConsumer,
    prefix: String,
    tracker: Shared,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            received = consumer.recv() => match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "bench log watcher: consumer error; polling again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((phase, index)) = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| parse_order_id(&prefix, k))
        else {
            continue;
        };
        let kind = event_type(&message);
        let outcome = match kind {
            Some(EventType::OrderCompleted) => Some(Outcome::Completed),
            Some(EventType::OrderCancelled) => Some(Outcome::Cancelled),
            _ => None,
        };
        // Decoded only for terminal records: where the read-model poll must look from, and
        // under which cancel reason.
        let decoded = outcome.and_then(|_| events::decode(message.payload()?).ok());
        let occurred_us = decoded
            .as_ref()
            .map(|e| e.meta.occurred_at.timestamp_micros());
        let reason = match decoded.map(|e| e.body) {
            Some(events::EventBody::OrderCancelled(cancelled)) => Some(cancelled.reason),
            _ => None,
        };
        let stamp_ms = message.timestamp().to_millis();
        let mut guard = lock(&tracker);
        let tracker = &mut *guard;
        if let Some(reason) = reason {
            if !tracker.reasons.contains(&reason) {
                tracker.reasons.insert(reason);
            }
        }
        let Some(track) = tracker.phases.get_mut(phase) else {
            continue;
        };
        track.records += 1;
        let (Some(outcome), true) = (outcome, index < track.published()) else {
            continue;
        };
        if track.terminal_ms[index].is_some() {
            continue; // a reply published again after a retry: the first one counts
        }
        track.terminal_ms[index] = Some(stamp_ms.unwrap_or_else(|| Utc::now().timestamp_millis()));
        track.outcome[index] = Some(outcome);
        track.terminal += 1;
        // Without a decodable time, look back from the order's own publish time.
        let from = occurred_us.unwrap_or(track.publish_ms[index] * 1000);
        track.terminal_occurred_us[index] = Some(from);
        if track.visible_at[index].is_none() {
            tracker.pending.insert((from, phase, index));
        }
    }
}

/// How far back every poll looks at least, for orders that show in the read model before the
/// watcher has seen their terminal record.
const HORIZON: chrono::Duration = chrono::Duration::milliseconds(250);

/// Polls of the read model, for the report.
#[derive(Debug, Default)]
pub struct PollStats {
    pub polls: AtomicU64,
    pub micros: AtomicU64,
    pub rows: AtomicU64,
    pub errors: AtomicU64,
}

/// Poll `analytics.orders` every `interval` while any published order is not yet visible,
/// with one statement: the orders completed, or cancelled under a reason seen on the log, at or
/// after the oldest terminal event still unseen (so the window is only as wide as the
/// projection's lag). Both halves use the read model's own indexes (`completed_at`;
/// `(cancel_reason, cancelled_at)`) and are planned per call, so a poll stays cheap as the
/// table grows; the status is checked here.
pub async fn poll_visible(
    pool: PgPool,
    prefix: String,
    tracker: Shared,
    interval: Duration,
    stats: Arc<PollStats>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (oldest_pending, reasons) = {
            let tracker = lock(&tracker);
            if tracker.phases.iter().all(|p| p.visible == p.published()) {
                continue;
            }
            let reasons: Vec<String> = tracker.reasons.iter().cloned().collect();
            (tracker.pending.first().map(|p| p.0), reasons)
        };
        let recent = Utc::now() - HORIZON;
        let from = match oldest_pending.and_then(DateTime::from_timestamp_micros) {
            // 1 ms of slack for rounding between the event's µs and the column.
            Some(at) => (at - chrono::Duration::milliseconds(1)).min(recent),
            None => recent,
        };
        let started = Instant::now();
        let rows: Result<Vec<(String, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT order_id, status FROM analytics.orders WHERE completed_at >= $1
             UNION ALL
             SELECT order_id, status FROM analytics.orders
             WHERE cancel_reason = ANY($2) AND cancelled_at >= $1",
        )
        .persistent(false)
        .bind(from)
        .bind(&reasons)
        .fetch_all(&pool)
        .await;
        stats.polls.fetch_add(1, Ordering::Relaxed);
        stats.micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "bench read-model poll failed; polling again");
                continue;
            }
        };
        stats.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let mut guard = lock(&tracker);
        let tracker = &mut *guard;
        for (id, status) in rows {
            if status != "completed" && status != "cancelled" {
                continue;
            }
            let Some((phase, index)) = parse_order_id(&prefix, &id) else {
                continue;
            };
            let Some(track) = tracker.phases.get_mut(phase) else {
                continue;
            };
            if index >= track.published() || track.visible_at[index].is_some() {
                continue;
            }
            track.visible_at[index] = Some(started);
            track.visible += 1;
            if let Some(from) = track.terminal_occurred_us[index] {
                tracker.pending.remove(&(from, phase, index));
            }
        }
    }
}

/// Sample the child's resident memory every `every`, keeping the largest since the last
/// `swap(0)` of `max_kb`.
pub async fn sample_rss(
    pid: i32,
    max_kb: Arc<AtomicU64>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Some(memory) = super::procfs::read_memory(pid) {
            max_kb.fetch_max(memory.rss_kb, Ordering::Relaxed);
        }
    }
}

/// Rate of an open loop as the schedule needs it.
pub fn nonzero(rate: u32) -> anyhow::Result<NonZeroU32> {
    NonZeroU32::new(rate).context("a rate of 0 orders/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_round_trip() {
        let cases = [
            ("b20261129-ab12", 0, 0),
            ("b20261129-ab12", 3, 1_234_567),
            ("b20261129-ab12", 12, 12_345_678),
        ];
        for (prefix, phase, index) in cases {
            let id = order_id(prefix, phase, index);
            assert_eq!(parse_order_id(prefix, &id), Some((phase, index)), "{id}");
        }
        // What demo::generate makes of the run name is what the bench parses.
        let mut rng = StdRng::seed_from_u64(1);
        let (input, _) = crate::demo::generate("b1-x-p4", 17, &mut rng);
        assert_eq!(input.order_id, order_id("b1-x", 4, 17));
        for other in [
            "demo-1-0000001",
            "b20261129-ab12-q1-0000001",
            "b20261129-ab12-p1",
            "",
        ] {
            assert_eq!(parse_order_id("b20261129-ab12", other), None, "{other}");
        }
    }

    #[test]
    fn the_oldest_open_order_moves_as_orders_finish() {
        let start = Instant::now();
        let mut track = PhaseTrack::default();
        for i in 0..3u64 {
            track.publish_ms.push(0);
            track.publish_at.push(start + Duration::from_millis(10 * i));
            track.terminal_ms.push(None);
        }
        let now = start + Duration::from_millis(100);
        assert_eq!(track.oldest_open_age(now), Some(Duration::from_millis(100)));
        track.terminal_ms[0] = Some(1);
        track.terminal_ms[2] = Some(1);
        assert_eq!(track.oldest_open_age(now), Some(Duration::from_millis(90)));
        track.terminal_ms[1] = Some(1);
        assert_eq!(track.oldest_open_age(now), None);
    }
}

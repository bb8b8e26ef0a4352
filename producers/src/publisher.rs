//! Appending events to the order log, or new orders to the intake topic: encoded by `events`,
//! keyed by order id (so an order's events share a partition and stay in order), sent by the
//! idempotent producer. With traces
//! exported, every event is sent under a span of its own whose context its record carries.

use std::io::BufRead;

use anyhow::Context;
use chrono::Utc;
use events::Event;
use platform::config::KafkaSettings;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};

/// How many sends are in flight before the publisher waits for acknowledgements.
const IN_FLIGHT_MAX: usize = 10_000;

pub struct Publisher {
    producer: platform::kafka::Producer,
    topic: String,
}

/// Outcome of publishing a stream of lines.
#[derive(Debug, Default)]
pub struct PublishReport {
    pub published: usize,
    /// (1-based line number, reason) of every line not published.
    pub failed: Vec<(usize, String)>,
}

impl Publisher {
    /// A publisher onto the order log (`kafka.topic`): for orderflow's own events.
    pub fn new(kafka: &KafkaSettings, client_id: &str) -> anyhow::Result<Self> {
        Ok(Publisher {
            producer: platform::kafka::producer(kafka, client_id)?,
            topic: kafka.topic.clone(),
        })
    }

    /// A publisher onto the intake topic (`kafka.intake_topic`), as any upstream producer:
    /// plain `OrderCreated`, which the intake seals and appends to the log.
    pub fn intake(kafka: &KafkaSettings, client_id: &str) -> anyhow::Result<Self> {
        Ok(Publisher {
            producer: platform::kafka::producer(kafka, client_id)?,
            topic: kafka.intake_topic.clone(),
        })
    }

    /// The topic this publisher writes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Append `events` and wait until the broker acknowledged every one. Returns the error of
    /// each event that failed, by index.
    pub async fn publish(&self, events: &[Event]) -> Vec<(usize, String)> {
        let mut failures = Vec::new();
        for (chunk_index, chunk) in events.chunks(IN_FLIGHT_MAX).enumerate() {
            let mut payloads = Vec::with_capacity(chunk.len());
            for (i, event) in chunk.iter().enumerate() {
                match events::encode(event) {
                    Ok(bytes) => payloads.push(Some(bytes)),
                    Err(error) => {
                        failures.push((chunk_index * IN_FLIGHT_MAX + i, error.to_string()));
                        payloads.push(None);
                    }
                }
            }
            let sends =
                chunk
                    .iter()
                    .zip(&payloads)
                    .enumerate()
                    .filter_map(|(i, (event, payload))| {
                        let payload = payload.as_ref()?;
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
                        // With traces exported, each event starts its order's trace (or joins
                        // the current span's: an API request) and the record carries it.
                        let span = platform::trace::event_span(
                            "publish",
                            "publish",
                            &event.meta.order_id,
                            event.event_type().as_str(),
                        );
                        let headers = platform::trace::inject(headers, &span);
                        let record = FutureRecord::to(&self.topic)
                            .key(event.meta.order_id.as_bytes())
                            .payload(payload)
                            .headers(headers);
                        Some(async move {
                            let sent = self
                                .producer
                                .send(record, rdkafka::util::Timeout::Never)
                                .await;
                            // The span ends when the broker acknowledged the record.
                            drop(span);
                            (i, sent)
                        })
                    });
            for (i, result) in futures::future::join_all(sends).await {
                if let Err((error, _)) = result {
                    failures.push((
                        chunk_index * IN_FLIGHT_MAX + i,
                        format!("broker did not accept the record: {error}"),
                    ));
                }
            }
        }
        failures.sort();
        failures
    }

    /// Read JSON order lines, publish the valid ones in batches, and report every bad line
    /// with its number and reason. Blank lines are skipped.
    pub async fn publish_lines(&self, reader: impl BufRead) -> anyhow::Result<PublishReport> {
        const BATCH: usize = 1_000;
        let mut report = PublishReport::default();
        let mut pending: Vec<(usize, Event)> = Vec::with_capacity(BATCH);
        for (index, line) in reader.lines().enumerate() {
            let number = index + 1;
            let line = line.with_context(|| format!("reading input line {number}"))?;
            if line.trim().is_empty() {
                continue;
            }
            match crate::parse_line(&line, Utc::now()) {
                Ok(event) => pending.push((number, event)),
                Err(error) => report.failed.push((number, error.to_string())),
            }
            if pending.len() >= BATCH {
                self.flush(&mut pending, &mut report).await;
            }
        }
        self.flush(&mut pending, &mut report).await;
        report.failed.sort();
        Ok(report)
    }

    async fn flush(&self, pending: &mut Vec<(usize, Event)>, report: &mut PublishReport) {
        let events: Vec<Event> = pending.iter().map(|(_, e)| e.clone()).collect();
        let failures = self.publish(&events).await;
        report.published += events.len() - failures.len();
        for (i, reason) in failures {
            report.failed.push((pending[i].0, reason));
        }
        pending.clear();
    }

    /// Wait for everything queued to be delivered (used before exit).
    pub fn flush_all(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .context("flushing the producer")
    }
}

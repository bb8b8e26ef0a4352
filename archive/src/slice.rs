//! Reading a bounded slice of the order log outside any consumer group: every partition from a
//! start offset up to (not including) a stop offset. Rebuilds read this way; they never join
//! the projector's group and never commit offsets. The reader is `platform::kafka::bulk_reader`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use platform::config::KafkaSettings;
use platform::kafka::EndAware;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Per partition: the offset to read from and the offset to stop before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub stop: i64,
}

/// A reader of `ranges` of one topic.
pub struct LogSlice {
    consumer: StreamConsumer<EndAware>,
    topic: String,
    /// Partitions still being read: next offset expected and where to stop.
    open: BTreeMap<i32, Range>,
    /// How long to wait for a record before deciding the log is shorter than asked.
    stall: Duration,
}

impl LogSlice {
    /// Start reading. Partitions whose range is empty are done already.
    pub fn open(
        kafka: &KafkaSettings,
        topic: &str,
        ranges: &BTreeMap<i32, Range>,
        stall: Duration,
    ) -> anyhow::Result<LogSlice> {
        let consumer: StreamConsumer<EndAware> = platform::kafka::bulk_reader(kafka, "replay")?;
        let open: BTreeMap<i32, Range> = ranges
            .iter()
            .filter(|(_, r)| r.start < r.stop)
            .map(|(p, r)| (*p, *r))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for (partition, range) in &open {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(range.start))
                .context("building the partition assignment")?;
        }
        consumer
            .assign(&tpl)
            .with_context(|| format!("assigning the partitions of {topic}"))?;
        Ok(LogSlice {
            consumer,
            topic: topic.to_string(),
            open,
            stall,
        })
    }

    /// Records not yet returned, estimated from offsets.
    pub fn remaining(&self) -> i64 {
        self.open.values().map(|r| r.stop - r.start).sum()
    }

    /// Stop reading `partition` before `offset` (used by `--until <time>` when a later event
    /// shows up).
    pub fn stop_partition(&mut self, partition: i32) {
        if self.open.remove(&partition).is_some() {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&self.topic, partition, Offset::Invalid)
                .is_ok()
            {
                // Pausing only saves fetches; records of a stopped partition are dropped anyway.
                let _ = self.consumer.pause(&tpl);
            }
        }
    }

    /// Up to `max` records in log order per partition, or `None` when every partition has
    /// reached its stop offset. Fails if the log ends before a stop offset.
    pub async fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Vec<OwnedMessage>>> {
        if self.open.is_empty() {
            return Ok(None);
        }
        let mut batch = Vec::with_capacity(max.min(8192));
        let deadline = tokio::time::Instant::now() + self.stall;
        while batch.len() < max && !self.open.is_empty() {
            // Wait long for the first record of a batch, briefly for the rest.
            let wait = if batch.is_empty() {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::from_millis(5)
            };
            let received = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) if batch.is_empty() => anyhow::bail!(
                    "the log ended early: no record for {:?} while reading {} up to {:?}; \
                     the broker holds fewer records than asked for (retention, a wiped broker, \
                     or an --until position past the end)",
                    self.stall,
                    self.topic,
                    self.open
                ),
                Err(_) => break,
                Ok(received) => received,
            };
            match received {
                Ok(message) => {
                    let partition = message.partition();
                    let Some(range) = self.open.get_mut(&partition) else {
                        continue;
                    };
                    if message.offset() >= range.stop {
                        self.open.remove(&partition);
                        continue;
                    }
                    range.start = message.offset() + 1;
                    let done = range.start >= range.stop;
                    batch.push(message.detach());
                    if done {
                        self.stop_partition(partition);
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    // At the end of what the broker has: done if that reaches the stop offset.
                    let reached = self.consumer.position().ok().and_then(|tpl| {
                        tpl.find_partition(&self.topic, partition)
                            .and_then(|e| match e.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            })
                    });
                    if let (Some(at), Some(range)) = (reached, self.open.get(&partition)) {
                        if at >= range.stop {
                            self.open.remove(&partition);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Kafka error while reading the log; reading on");
                }
            }
        }
        Ok(Some(batch))
    }
}

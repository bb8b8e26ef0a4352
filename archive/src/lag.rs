//! The archive's lag behind the log — its recovery point objective: records the log holds that
//! the manifest does not name yet, and how long the oldest of them has been waiting. Read from
//! the manifest on disk, the broker's log ends, and the one record per lagging partition at
//! which the archive continues (read outside every group; nothing is joined or committed).
//!
//! The age is that of the oldest *unarchived* record, not of the newest archived one: after a
//! quiet hour, one new record is seconds old, and so is what a disaster would lose.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use platform::config::KafkaSettings;
use platform::kafka::EndAware;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::manifest::Manifest;

/// One partition the archive is behind on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub partition: i32,
    /// The first offset the archive does not hold.
    pub next_offset: i64,
    /// The log end (high watermark).
    pub end: i64,
}

impl Behind {
    pub fn records(&self) -> i64 {
        self.end - self.next_offset
    }
}

/// The partitions of `ends` (partition → log end) that hold records the archive does not: a
/// partition missing from the manifest is archived from offset 0.
pub fn behind(manifest: &Manifest, ends: &BTreeMap<i32, i64>) -> Vec<Behind> {
    ends.iter()
        .map(|(&partition, &end)| Behind {
            partition,
            next_offset: manifest
                .partitions
                .get(&partition)
                .map_or(0, |p| p.next_offset),
            end,
        })
        .filter(|b| b.records() > 0)
        .collect()
}

/// What the archive lacks at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchiveLag {
    /// Records on the log that no archive file holds yet.
    pub records: i64,
    /// When the oldest of them was written (record timestamp); `None` when there are none, or
    /// none could be read in time (then the age is unknown, not zero).
    pub oldest_unarchived: Option<DateTime<Utc>>,
}

impl ArchiveLag {
    /// Seconds the oldest unarchived record has waited at `now`: 0 when nothing is missing,
    /// `None` when records are missing but their time could not be read.
    pub fn seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        if self.records == 0 {
            return Some(0.0);
        }
        let oldest = self.oldest_unarchived?;
        Some(((now - oldest).num_milliseconds() as f64 / 1000.0).max(0.0))
    }
}

/// Reads the first unarchived record of each lagging partition, to learn its time. Built once
/// and reused: each [`Peek::lag`] re-assigns it.
pub struct Peek {
    topic: String,
    reader: BaseConsumer<EndAware>,
}

/// Longest a [`Peek::lag`] waits for the records it asked for.
const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

impl Peek {
    pub fn open(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Peek> {
        Ok(Peek {
            topic: topic.to_string(),
            reader: platform::kafka::reader(kafka, "archive-lag")?,
        })
    }

    /// The archive's lag given the log ends: records from the manifest, the oldest one's time
    /// from the broker. Blocks for up to two seconds (call it from a blocking context).
    pub fn lag(
        &self,
        manifest: &Manifest,
        ends: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<ArchiveLag> {
        let behind = behind(manifest, ends);
        let records = behind.iter().map(Behind::records).sum();
        if behind.is_empty() {
            return Ok(ArchiveLag::default());
        }
        let mut tpl = TopicPartitionList::new();
        for b in &behind {
            tpl.add_partition_offset(&self.topic, b.partition, Offset::Offset(b.next_offset))?;
        }
        self.reader.assign(&tpl)?;
        let mut times: BTreeMap<i32, i64> = BTreeMap::new();
        let started = Instant::now();
        while times.len() < behind.len() && started.elapsed() < PEEK_TIMEOUT {
            match self.reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    if let Some(ms) = message.timestamp().to_millis() {
                        times.entry(message.partition()).or_insert(ms);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
        self.reader.unassign()?;
        // Only a complete answer says which record is the oldest.
        let oldest_unarchived = if times.len() == behind.len() {
            times
                .values()
                .min()
                .and_then(|ms| Utc.timestamp_millis_opt(*ms).single())
        } else {
            None
        };
        Ok(ArchiveLag {
            records,
            oldest_unarchived,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::PartitionArchive;

    #[test]
    fn the_archive_is_behind_where_the_log_ends_past_its_next_offset() {
        let mut manifest = Manifest::empty("t");
        for (partition, next_offset) in [(0, 10), (1, 20)] {
            manifest.partitions.insert(
                partition,
                PartitionArchive {
                    next_offset,
                    segments: Vec::new(),
                },
            );
        }
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 25), (2, 3)].into();
        let found = behind(&manifest, &ends);
        // Partition 0 is archived to its end; 1 lacks 5; 2 was never archived.
        assert_eq!(
            found,
            vec![
                Behind {
                    partition: 1,
                    next_offset: 20,
                    end: 25
                },
                Behind {
                    partition: 2,
                    next_offset: 0,
                    end: 3
                },
            ]
        );
        assert_eq!(found.iter().map(Behind::records).sum::<i64>(), 8);
    }

    #[test]
    fn the_age_is_that_of_the_oldest_unarchived_record_and_unknown_when_unread() {
        let now = Utc.timestamp_opt(1_000_000, 0).unwrap();
        let lag = |records, oldest: Option<i64>| ArchiveLag {
            records,
            oldest_unarchived: oldest.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        };
        assert_eq!(lag(0, None).seconds(now), Some(0.0));
        assert_eq!(lag(5, Some(999_990)).seconds(now), Some(10.0));
        assert_eq!(lag(5, None).seconds(now), None);
        // A record stamped ahead of this clock is not a negative age.
        assert_eq!(lag(1, Some(1_000_002)).seconds(now), Some(0.0));
    }
}

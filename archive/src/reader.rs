//! Reading an archive back: its records in offset order per partition, file by file, each file
//! checked against the manifest's checksum as it is read, and as the messages they were.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use events::archive::LogRecord;
use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;

use crate::manifest::{sha256_hex, Manifest, Segment};

/// An archived record as the message it was, for code that reads the log.
pub fn message(record: LogRecord) -> OwnedMessage {
    let headers = if record.headers.is_empty() {
        None
    } else {
        let mut owned = rdkafka::message::OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            owned = owned.insert(rdkafka::message::Header {
                key,
                value: value.as_deref(),
            });
        }
        Some(owned)
    };
    OwnedMessage::new(
        record.value,
        record.key,
        record.topic,
        record
            .timestamp_ms
            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        record.partition,
        record.offset,
        headers,
    )
}

/// Reads an archive's records partition by partition, file by file, in offset order. Records
/// carry the manifest's topic: an archive moved to a topic of another name (the manifest
/// rewritten) reads as that topic's log.
pub struct ArchiveReader {
    dir: PathBuf,
    topic: String,
    /// Files still to read, in order.
    queue: VecDeque<Segment>,
    pending: VecDeque<LogRecord>,
    total: u64,
}

impl ArchiveReader {
    pub fn new(dir: &Path, manifest: &Manifest) -> ArchiveReader {
        let queue: VecDeque<Segment> = manifest
            .partitions
            .values()
            .flat_map(|p| p.segments.iter().cloned())
            .collect();
        ArchiveReader {
            dir: dir.to_path_buf(),
            topic: manifest.topic.clone(),
            total: queue.iter().map(|s| s.records).sum(),
            queue,
            pending: Default::default(),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Up to `max` records, or `None` at the end.
    pub fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Vec<LogRecord>>> {
        while self.pending.len() < max {
            let Some(segment) = self.queue.pop_front() else {
                break;
            };
            let path = self.dir.join(&segment.file);
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(
                sha256_hex(&bytes) == segment.sha256,
                "{}: checksum differs from the manifest; the archive is damaged",
                path.display()
            );
            let records = events::archive::read_segment(bytes.as_slice())
                .with_context(|| format!("reading {}", path.display()))?;
            let topic = &self.topic;
            self.pending.extend(records.into_iter().map(|mut r| {
                if r.topic != *topic {
                    r.topic.clone_from(topic);
                }
                r
            }));
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let take = self.pending.len().min(max);
        Ok(Some(self.pending.drain(..take).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn records_come_back_in_offset_order_per_partition_as_the_manifests_topic() {
        let dir = fixture::dir("reader-order");
        let mut manifest = fixture::write(
            &dir,
            "orders.events",
            &[(0, vec![vec![0, 1], vec![2, 4]]), (1, vec![vec![0]])],
        );
        // Restored under another name: the records read as that topic's.
        manifest.topic = "restored.events".to_string();
        let mut reader = ArchiveReader::new(&dir, &manifest);
        assert_eq!(reader.total(), 5);
        let mut read = Vec::new();
        while let Some(batch) = reader.next_batch(3).expect("readable") {
            assert!(!batch.is_empty() && batch.len() <= 3);
            read.extend(batch);
        }
        let positions: Vec<(i32, i64)> = read.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(positions, vec![(0, 0), (0, 1), (0, 2), (0, 4), (1, 0)]);
        assert!(read.iter().all(|r| r.topic == "restored.events"));
        assert_eq!(read[3], fixture::record("restored.events", 0, 4));
    }

    #[test]
    fn a_file_changed_after_the_manifest_is_not_read() {
        let dir = fixture::dir("reader-changed");
        let manifest = fixture::write(&dir, "orders.events", &[(0, vec![vec![0, 1]])]);
        fs::write(dir.join(&manifest.partitions[&0].segments[0].file), b"junk").expect("write");
        let mut reader = ArchiveReader::new(&dir, &manifest);
        let error = reader.next_batch(10).expect_err("damaged");
        assert!(error.to_string().contains("checksum"), "{error}");
    }

    #[test]
    fn an_archived_record_is_the_message_it_was() {
        let record = fixture::record("orders.events", 2, 41);
        let message = message(record.clone());
        assert_eq!(crate::archiver::log_record(&message), record);
    }
}

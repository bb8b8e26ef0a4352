//! The archiver: copies every record of the order log into Avro object container files, one
//! file per partition and time window, and names each in the manifest ([`crate::manifest`]).
//!
//! Crash safety: a file is written under a temporary name, synced and renamed; only then is it
//! added to the manifest, itself written the same way. The manifest is the truth: on start the
//! archiver removes files it does not name and continues each partition at its `next_offset`,
//! so a crash at any point neither loses nor repeats a record. It reads outside every group;
//! its position is the manifest.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use events::archive::{LogRecord, SegmentWriter};
use platform::config::KafkaSettings;
use platform::kafka::EndAware;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::manifest::{sha256_hex, sync_dir, Manifest, Segment};

/// The `[archive]` section: the log archiver (`orderflow run` starts it when `dir` is set;
/// `orderflow archive` runs it once). Files are Avro object container files per partition and
/// time window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Directory of the archive (created if missing); empty turns the archiver component off.
    pub dir: String,
    /// A file never holds records of two windows of this length (by record timestamp).
    pub window_secs: u64,
    /// Most records per file.
    pub segment_max_records: usize,
    /// Records held longer than this are written out even if their file is not full: the
    /// archive's lag behind the log (its RPO) stays below about this much.
    pub flush_interval_ms: u64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings {
            dir: String::new(),
            window_secs: 3_600,
            segment_max_records: 100_000,
            flush_interval_ms: 10_000,
        }
    }
}

/// The records of one partition waiting to be written as one file.
struct Open {
    records: Vec<LogRecord>,
    window: i64,
    since: Instant,
}

/// Copies the log into the archive directory.
pub struct Archiver {
    dir: PathBuf,
    topic: String,
    settings: ArchiveSettings,
    manifest: Manifest,
    open: BTreeMap<i32, Open>,
}

/// `orderflow archive` stops after the log has been quiet this long...
const ONCE_IDLE: Duration = Duration::from_secs(10);
/// ...or this long after every partition reported its end.
const ONCE_GRACE: Duration = Duration::from_secs(2);

/// How much an archiver run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveRun {
    pub files: usize,
    pub records: u64,
}

impl Archiver {
    /// Open (or start) the archive of the log `kafka.topic` in `archive.dir`, removing files a
    /// crash left behind that the manifest does not name.
    pub fn open(kafka: &KafkaSettings, archive: &ArchiveSettings) -> anyhow::Result<Archiver> {
        anyhow::ensure!(
            !archive.dir.is_empty(),
            "archive.dir is not set; set it in the config file or ORDERFLOW_ARCHIVE__DIR"
        );
        anyhow::ensure!(archive.window_secs > 0, "archive.window_secs must be > 0");
        anyhow::ensure!(
            archive.segment_max_records > 0,
            "archive.segment_max_records must be > 0"
        );
        let dir = PathBuf::from(&archive.dir);
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating the archive directory {}", dir.display()))?;
        let topic = kafka.topic.clone();
        let manifest = Manifest::load(&dir, &topic)?;
        remove_strays(&dir, &manifest)?;
        Ok(Archiver {
            dir,
            topic,
            settings: archive.clone(),
            manifest,
            open: BTreeMap::new(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Archive the log: until every partition is at its end when `once`, else until `shutdown`.
    /// Held records are written out before returning normally.
    pub async fn run(
        mut self,
        kafka: &KafkaSettings,
        once: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<ArchiveRun> {
        let partitions = platform::kafka::partition_count(kafka, &self.topic)?;
        tokio::task::block_in_place(|| self.ensure_continuous(kafka))?;
        let consumer = self.reader(kafka, partitions)?;
        let mut at_end: BTreeMap<i32, bool> = (0..i32::try_from(partitions)?)
            .map(|p| (p, false))
            .collect();
        let mut run = ArchiveRun::default();
        // Records read, and records written into files (the manifest names them): the
        // archiver's consumed and applied.
        let metrics = platform::metrics::ComponentMetrics::new("archiver");
        let mut counted = 0;
        let tick = Duration::from_millis(200);
        let mut last_record = Instant::now();
        tracing::info!(dir = %self.dir.display(), topic = %self.topic, once, "archiver started");
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = tokio::time::timeout(tick, consumer.recv()) => received,
            };
            match received {
                Err(_idle) => {}
                Ok(Ok(message)) => {
                    metrics.consumed.increment(1);
                    last_record = Instant::now();
                    at_end.insert(message.partition(), false);
                    self.add(&message, &mut run)?;
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition, true);
                }
                Ok(Err(error)) => tracing::warn!(%error, "Kafka error while archiving; reading on"),
            }
            let due = Duration::from_millis(self.settings.flush_interval_ms);
            let stale: Vec<i32> = self
                .open
                .iter()
                .filter(|(p, open)| {
                    open.since.elapsed() >= due || (once && at_end.get(p).copied().unwrap_or(false))
                })
                .map(|(p, _)| *p)
                .collect();
            for partition in stale {
                self.flush(partition, None, &mut run)?;
            }
            metrics.applied.increment(run.records - counted);
            counted = run.records;
            // Once: done when every partition reported its end and nothing more arrived for a
            // moment (some brokers report an end early), or when nothing arrived for a while
            // (brokers that report no end of an untouched partition).
            let quiet = last_record.elapsed();
            if once && ((at_end.values().all(|e| *e) && quiet >= ONCE_GRACE) || quiet >= ONCE_IDLE)
            {
                break;
            }
        }
        let held: Vec<i32> = self.open.keys().copied().collect();
        for partition in held {
            self.flush(partition, None, &mut run)?;
        }
        metrics.applied.increment(run.records - counted);
        tracing::info!(files = run.files, records = run.records, "archiver stopped");
        Ok(run)
    }

    /// Fail unless the broker still holds every record from where the archive continues: a
    /// log that ends before that point was replaced or truncated (a wiped or restored broker),
    /// and one that starts after it lost records the archive never saw (retention outran the
    /// archiver). Either way, continuing would leave a gap, so the operator decides.
    fn ensure_continuous(&self, kafka: &KafkaSettings) -> anyhow::Result<()> {
        let probe: BaseConsumer = platform::kafka::probe(kafka)?;
        for (partition, archived) in &self.manifest.partitions {
            let (low, high) = probe
                .fetch_watermarks(&self.topic, *partition, Duration::from_secs(10))
                .with_context(|| {
                    format!("reading the ends of {} partition {partition}", self.topic)
                })?;
            let next = archived.next_offset;
            anyhow::ensure!(
                next <= high,
                "partition {partition}: the archive in {} continues from offset {next}, but the log \
                 ends at {high}: the log was replaced or truncated (a wiped or restored broker?). \
                 Keep this archive as it is and archive the new log into another directory",
                self.dir.display()
            );
            anyhow::ensure!(
                next >= low,
                "partition {partition}: the archive in {} continues from offset {next}, but the log \
                 now starts at {low}: records {next}..{low} are gone from the broker and can no \
                 longer be archived",
                self.dir.display()
            );
        }
        Ok(())
    }

    fn reader(
        &self,
        kafka: &KafkaSettings,
        partitions: usize,
    ) -> anyhow::Result<StreamConsumer<EndAware>> {
        let consumer: StreamConsumer<EndAware> = platform::kafka::reader(kafka, "archiver")?;
        let mut tpl = TopicPartitionList::new();
        for partition in 0..i32::try_from(partitions)? {
            let offset = match self.manifest.partitions.get(&partition) {
                Some(archived) if archived.next_offset > 0 => Offset::Offset(archived.next_offset),
                _ => Offset::Beginning,
            };
            tpl.add_partition_offset(&self.topic, partition, offset)?;
        }
        consumer
            .assign(&tpl)
            .context("assigning the log's partitions")?;
        Ok(consumer)
    }

    fn add(
        &mut self,
        message: &rdkafka::message::BorrowedMessage<'_>,
        run: &mut ArchiveRun,
    ) -> anyhow::Result<()> {
        let record = log_record(&message.detach());
        let partition = record.partition;
        let window_ms = i64::try_from(self.settings.window_secs.saturating_mul(1000))?;
        let window = record.timestamp_ms.unwrap_or(0).div_euclid(window_ms) * window_ms;
        if let Some(open) = self.open.get(&partition) {
            if open.window != window {
                // A file never spans two windows: close it where this record starts.
                self.flush(partition, Some(record.offset), run)?;
            }
        }
        let open = self.open.entry(partition).or_insert_with(|| Open {
            records: Vec::new(),
            window,
            since: Instant::now(),
        });
        open.records.push(record);
        if open.records.len() >= self.settings.segment_max_records {
            self.flush(partition, None, run)?;
        }
        Ok(())
    }

    /// Write the held records of `partition` as one file ending before `next` (default: after
    /// its last record), then record it in the manifest.
    fn flush(
        &mut self,
        partition: i32,
        next: Option<i64>,
        run: &mut ArchiveRun,
    ) -> anyhow::Result<()> {
        let Some(open) = self.open.remove(&partition) else {
            return Ok(());
        };
        let (Some(first), Some(last)) = (open.records.first(), open.records.last()) else {
            return Ok(());
        };
        let archived = self.manifest.partitions.entry(partition).or_default();
        let start = if archived.segments.is_empty() && archived.next_offset == 0 {
            // The first file of a partition starts at the first record the broker had.
            first.offset
        } else {
            archived.next_offset
        };
        let next = next.unwrap_or(last.offset + 1);
        let window_start = DateTime::<Utc>::from_timestamp_millis(open.window).unwrap_or_default();
        let relative = format!(
            "{}/p{partition:03}/{}/{start:020}-{next:020}.avro",
            self.topic,
            window_start.format("%Y-%m-%dT%H%M%SZ")
        );
        let path = self.dir.join(&relative);
        let folder = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let mut writer = SegmentWriter::new(
            Vec::new(),
            &[
                ("topic", self.topic.clone()),
                ("partition", partition.to_string()),
                ("start_offset", start.to_string()),
                ("next_offset", next.to_string()),
            ],
        )?;
        for record in &open.records {
            writer.append(record)?;
        }
        let bytes = writer.finish()?;
        {
            let tmp = path.with_extension("avro.tmp");
            let mut file = BufWriter::new(
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
            );
            file.write_all(&bytes)?;
            file.into_inner()
                .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?
                .sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&folder)?;
        }
        let timestamps = open.records.iter().filter_map(|r| r.timestamp_ms);
        let segment = Segment {
            file: relative,
            start_offset: start,
            next_offset: next,
            records: open.records.len() as u64,
            first_offset: first.offset,
            last_offset: last.offset,
            min_timestamp_ms: timestamps.clone().min(),
            max_timestamp_ms: timestamps.max(),
            window_start,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            written_at: Utc::now(),
        };
        archived.next_offset = next;
        archived.segments.push(segment);
        self.manifest.save(&self.dir)?;
        run.files += 1;
        run.records += open.records.len() as u64;
        tracing::debug!(
            partition,
            start,
            next,
            records = open.records.len(),
            "archive file written"
        );
        Ok(())
    }
}

/// Remove `.tmp` files and archive files the manifest does not name (a crash between writing
/// a file and recording it). They are written again from the log.
fn remove_strays(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let named: std::collections::HashSet<PathBuf> = manifest
        .partitions
        .values()
        .flat_map(|p| &p.segments)
        .map(|s| dir.join(&s.file))
        .collect();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in
            fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "tmp")
                || (path.extension().is_some_and(|e| e == "avro") && !named.contains(&path))
            {
                tracing::warn!(file = %path.display(), "removing an archive file the manifest does not name");
                fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// A log record as archived.
pub fn log_record(message: &OwnedMessage) -> LogRecord {
    let timestamp_ms = match message.timestamp() {
        Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
        Timestamp::NotAvailable => None,
    };
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    LogRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms,
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

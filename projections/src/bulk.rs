//! The bulk phase of a rebuild: read a slice of the log (from the broker or an archive), fold
//! it in memory from empty, and write every table once, into empty tables without their
//! secondary indexes, with the live projector's writer (`store::write`: every row is new, so
//! all of it goes in with `COPY`). It knows nothing of generations or switching (`rebuild.rs`
//! and `restore.rs` call it).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use archive::{LogSlice, Range};
use chrono::{DateTime, Utc};
use events::Event;
use platform::config::KafkaSettings;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::copy;
use crate::fold::{self, EventRow, Fold, LogPosition};
use crate::store::{self, Advance, Target};

/// Progress of a phase, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Where and how the bulk phase reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading<'a> {
    /// Read this archive directory instead of the broker (up to the stop offsets).
    pub archive: Option<&'a Path>,
    /// Records per read.
    pub batch: usize,
    /// How long a read of the broker may wait for a record before the log counts as ended.
    pub stall: Duration,
}

impl Default for Reading<'_> {
    fn default() -> Self {
        Reading {
            archive: None,
            batch: 20_000,
            stall: Duration::from_secs(30),
        }
    }
}

/// What the bulk phase folded.
pub(crate) struct Bulk {
    fold: Fold,
    events: Vec<EventRow>,
    read: u64,
    undecodable: u64,
    next: BTreeMap<i32, i64>,
    last_event_at: BTreeMap<i32, DateTime<Utc>>,
    applied: BTreeMap<i32, i64>,
}

pub(crate) async fn read_and_fold(
    kafka: &KafkaSettings,
    reading: &Reading<'_>,
    progress: &(dyn Fn(Progress) + Sync),
    ranges: &BTreeMap<i32, Range>,
    time_limit: Option<DateTime<Utc>>,
) -> anyhow::Result<Bulk> {
    let topic = kafka.topic.as_str();
    // Partitions read to the end stop at their stop offset (or where the archive ends).
    let mut next: BTreeMap<i32, i64> = ranges.iter().map(|(p, r)| (*p, r.stop)).collect();
    let mut source = match reading.archive {
        None => Source::Log(LogSlice::open(kafka, topic, ranges, reading.stall)?),
        Some(dir) => {
            let manifest = archive::Manifest::load(dir, topic)?;
            for (partition, stop) in next.iter_mut() {
                let archived = manifest
                    .partitions
                    .get(partition)
                    .map_or(0, |p| p.next_offset);
                *stop = (*stop).min(archived);
            }
            Source::Archive {
                total: manifest.records(),
                reader: archive::ArchiveReader::new(dir, &manifest),
                stop: next.clone(),
            }
        }
    };
    let total = source.total();
    let mut bulk = Bulk {
        fold: Fold::new(),
        events: Vec::new(),
        read: 0,
        undecodable: 0,
        next,
        last_event_at: BTreeMap::new(),
        applied: BTreeMap::new(),
    };
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut stopped: HashSet<i32> = HashSet::new();
    while let Some(batch) = source.next_batch(reading.batch).await? {
        for message in &batch {
            let partition = message.partition();
            if stopped.contains(&partition) {
                continue;
            }
            let decoded: Option<Event> = message.payload().and_then(|p| events::decode(p).ok());
            if let (Some(limit), Some(event)) = (time_limit, &decoded) {
                if event.meta.occurred_at > limit {
                    // The prefix of this partition up to `limit` ends here.
                    stopped.insert(partition);
                    source.stop_partition(partition);
                    bulk.next.insert(partition, message.offset());
                    continue;
                }
            }
            bulk.read += 1;
            let Some(event) = decoded else {
                bulk.undecodable += 1;
                continue;
            };
            if !seen.insert(event.meta.event_id) || !event.event_type().concerns_order() {
                // A repeat, or a stock or customer event: the steps' state, no order's history.
                continue;
            }
            bulk.fold.apply(&event);
            *bulk.applied.entry(partition).or_default() += 1;
            let last = bulk
                .last_event_at
                .entry(partition)
                .or_insert(event.meta.occurred_at);
            *last = (*last).max(event.meta.occurred_at);
            bulk.events.push(fold::timeline_row(
                &event,
                &LogPosition {
                    topic: message.topic(),
                    partition,
                    offset: message.offset(),
                },
            ));
        }
        progress(Progress {
            phase: "reading the log",
            done: bulk.read,
            total,
        });
    }
    Ok(bulk)
}

/// Where the bulk phase reads: the broker, or an archive (records up to the stop offsets).
enum Source {
    Log(LogSlice),
    Archive {
        reader: archive::ArchiveReader,
        stop: BTreeMap<i32, i64>,
        total: u64,
    },
}

impl Source {
    fn total(&self) -> u64 {
        match self {
            Source::Log(slice) => u64::try_from(slice.remaining()).unwrap_or(0),
            Source::Archive { total, .. } => *total,
        }
    }

    fn stop_partition(&mut self, partition: i32) {
        match self {
            Source::Log(slice) => slice.stop_partition(partition),
            Source::Archive { stop, .. } => {
                stop.insert(partition, i64::MIN);
            }
        }
    }

    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Option<Vec<OwnedMessage>>> {
        match self {
            Source::Log(slice) => slice.next_batch(max).await,
            Source::Archive { reader, stop, .. } => {
                let Some(records) = reader.next_batch(max)? else {
                    return Ok(None);
                };
                Ok(Some(
                    records
                        .into_iter()
                        .filter(|r| stop.get(&r.partition).is_some_and(|s| r.offset < *s))
                        .map(archive::message)
                        .collect(),
                ))
            }
        }
    }
}

/// What the bulk phase read, without the folded state (already written).
pub(crate) struct Loaded {
    pub events: Vec<EventRow>,
    pub read: u64,
    pub undecodable: u64,
}

/// Write a bulk fold into the empty tables of `target`, with its positions, in one transaction:
/// secondary indexes dropped, every row written, the indexes built again. Returns what was read
/// and the rows written.
pub(crate) async fn load(
    pool: &PgPool,
    target: &Target,
    topic: &str,
    bulk: Bulk,
) -> anyhow::Result<(Loaded, u64)> {
    let mut tx = pool.begin().await?;
    // A crash loses the rebuild, never live data: no need to wait for the WAL flush.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    // The secondary indexes are built after the load, each with one sort.
    sqlx::query("SET LOCAL maintenance_work_mem = '256MB'")
        .execute(&mut *tx)
        .await?;
    let changes = bulk.fold.into_changes();
    let indexes = store::drop_secondary_indexes(&mut tx, target).await?;
    let mut rows_loaded =
        copy::events(&mut tx, &target.table("order_events"), &bulk.events).await?;
    store::write(&mut tx, target, &changes).await?;
    store::create_indexes(&mut tx, &indexes).await?;
    rows_loaded += (changes.orders.len()
        + changes.lines.len()
        + changes.steps.len()
        + changes.customers.len()
        + changes.daily.len()
        + changes.sku_daily.len()
        + changes.cancellations.len()) as u64;
    let advances: Vec<Advance> = bulk
        .next
        .iter()
        .map(|(partition, next)| Advance {
            topic: topic.to_string(),
            partition: *partition,
            next_offset: *next,
            last_event_at: bulk.last_event_at.get(partition).copied(),
            events_applied: bulk.applied.get(partition).copied().unwrap_or(0),
        })
        .collect();
    store::advance(&mut tx, target, &advances).await?;
    tx.commit().await?;
    rows_loaded += advances.len() as u64;
    sqlx::query(&format!(
        "ANALYZE \"{}\".orders, \"{0}\".order_events",
        target.schema()
    ))
    .execute(pool)
    .await?;
    Ok((
        Loaded {
            events: bulk.events,
            read: bulk.read,
            undecodable: bulk.undecodable,
        },
        rows_loaded,
    ))
}

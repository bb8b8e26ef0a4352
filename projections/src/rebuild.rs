//! Blue/green rebuilds and point-in-time builds of the read models (`orderflow replay`).
//!
//! A rebuild folds the log into a new generation while the live one keeps serving:
//!
//! 1. **Bulk**: read the log up to the live generation's positions, fold it in memory from
//!    empty, and load every table with `COPY`.
//! 2. **Catch up**: apply what the live projector applied meanwhile, batch by batch, with the
//!    projector's own code ([`apply::apply`]), until little is left.
//! 3. **Switch**: lock `analytics_meta.live` (projector batches wait; analysts' reads do not),
//!    apply the rest up to the live positions, compare every table of both generations, and
//!    only if they are equal move the views and the projector to the new generation, all in
//!    that one transaction. The previous generation is kept until `orderflow generations drop`.
//!
//! A point-in-time build (`--until`) runs the bulk step only, into `analytics_pit_<N>`.
//!
//! A verify-only rebuild (`orderflow check --rebuild`) runs steps 1 to 3 but never switches:
//! after comparing it drops the new generation, equal or not, so what analysts see is untouched.
//!
//! The bulk step can read an archive instead of the broker (`--from-archive`); the catch-up
//! then reads the rest from the broker.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use archive::{LogSlice, Range};
use chrono::{DateTime, Utc};
use platform::config::KafkaSettings;
use sqlx::{PgConnection, PgPool};

use crate::apply::{self, Decoded};
use crate::bulk;
pub use crate::bulk::Progress;
use crate::fold::EventRow;
use crate::generations::{self, Generation, Purpose};
use crate::store::{self, Target};
use crate::verify::{self, Verification};

/// Where a point-in-time build stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// Per partition, the longest prefix of events that occurred at or before this time.
    Time(DateTime<Utc>),
    /// Per partition, every record before this offset (as in `analytics.watermarks.next_offset`).
    Positions(BTreeMap<i32, i64>),
}

impl FromStr for Until {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(time) = DateTime::parse_from_rfc3339(text) {
            return Ok(Until::Time(time.with_timezone(&Utc)));
        }
        let mut positions = BTreeMap::new();
        for part in text.split(',') {
            let parsed = part.split_once(':').and_then(|(p, o)| {
                Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?))
            });
            match parsed {
                Some((partition, offset)) if partition >= 0 && offset >= 0 => {
                    if positions.insert(partition, offset).is_some() {
                        return Err(format!("partition {partition} is given twice in {text:?}"));
                    }
                }
                _ => {
                    return Err(format!(
                        "{text:?} is neither an RFC 3339 time (2026-11-23T18:00:00Z) nor positions \
                         PARTITION:NEXT_OFFSET,... (0:1200,1:1185,...)"
                    ))
                }
            }
        }
        Ok(Until::Positions(positions))
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Until::Time(t) => write!(f, "{}", t.to_rfc3339()),
            Until::Positions(p) => {
                let parts: Vec<String> = p.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// How to run a replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Build a point-in-time generation instead of replacing the live one.
    pub until: Option<Until>,
    /// Switch even when verification finds differences (after an intended change of the fold).
    pub force_switch: bool,
    /// Also time a plain `COPY` of the same number of timeline rows, for comparison.
    pub compare_copy: bool,
    /// Records per read batch and per catch-up transaction.
    pub batch: usize,
    /// How long a read may wait for a record before the log counts as ended.
    pub stall: Duration,
    /// Read the bulk part from this archive directory instead of the broker; what the archive
    /// lacks up to the live position is then read from the broker.
    pub archive: Option<std::path::PathBuf>,
    /// Build and compare, then drop the new generation whether equal or not; never switch.
    pub verify_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        let reading = bulk::Reading::default();
        Options {
            until: None,
            force_switch: false,
            compare_copy: false,
            batch: reading.batch,
            stall: reading.stall,
            archive: None,
            verify_only: false,
        }
    }
}

impl Options {
    fn reading(&self) -> bulk::Reading<'_> {
        bulk::Reading {
            archive: self.archive.as_deref(),
            batch: self.batch,
            stall: self.stall,
        }
    }
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new generation is live.
    Switched { forced: bool },
    /// Verification found differences; the live generation stays, the new one is `failed`.
    Refused,
    /// A point-in-time generation is ready to query.
    PointInTime,
    /// Verify-only: compared with the live generation (equal or not), then dropped.
    Verified { equal: bool },
}

/// What a replay did and how long each part took.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where the bulk part was read: "the log" or "archive <dir>".
    pub source: String,
    pub generation: Generation,
    pub previous: Generation,
    pub outcome: Outcome,
    pub events_read: u64,
    pub events_applied: u64,
    pub undecodable: u64,
    pub rows_loaded: u64,
    pub read_and_fold: Duration,
    pub load: Duration,
    pub catch_up_events: u64,
    pub catch_up: Duration,
    pub verify: Duration,
    pub total: Duration,
    /// Rows and time of the plain `COPY` baseline, when asked for.
    pub copy_baseline: Option<(u64, Duration)>,
    pub verification: Option<Verification>,
    pub positions: Vec<store::Position>,
}

impl Report {
    /// Events read per second of the bulk phase (read, fold and load).
    pub fn bulk_rate(&self) -> f64 {
        rate(self.events_read, self.read_and_fold + self.load)
    }
}

fn rate(events: u64, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64().max(1e-9)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "generation {} ({}) from {}; live was {} ({})",
            self.generation.generation,
            self.generation.schema_name,
            self.source,
            self.previous.generation,
            self.previous.schema_name
        )?;
        writeln!(
            f,
            "bulk: {} records read ({} events applied, {} duplicates, {} undecodable) in {:.2} s, \
             {} rows loaded with COPY in {:.2} s: {:.0} events/s",
            self.events_read,
            self.events_applied,
            self.events_read - self.events_applied - self.undecodable,
            self.undecodable,
            self.read_and_fold.as_secs_f64(),
            self.rows_loaded,
            self.load.as_secs_f64(),
            self.bulk_rate()
        )?;
        if let Some((rows, took)) = self.copy_baseline {
            writeln!(
                f,
                "baseline: plain COPY of {rows} timeline rows into an unindexed table in {:.2} s: {:.0} rows/s",
                took.as_secs_f64(),
                rate(rows, took)
            )?;
        }
        if self.outcome != Outcome::PointInTime {
            writeln!(
                f,
                "catch-up: {} records in {:.2} s; verification {:.2} s",
                self.catch_up_events,
                self.catch_up.as_secs_f64(),
                self.verify.as_secs_f64()
            )?;
        }
        if let Some(verification) = &self.verification {
            write!(f, "{verification}")?;
        }
        let positions: Vec<String> = self
            .positions
            .iter()
            .map(|p| format!("{}:{}", p.partition, p.next_offset))
            .collect();
        writeln!(f, "positions: {}", positions.join(","))?;
        write!(f, "total {:.2} s: ", self.total.as_secs_f64())?;
        match &self.outcome {
            Outcome::Switched { forced: false } => writeln!(
                f,
                "verified equal; analysts now read {} (previous kept: orderflow generations drop {})",
                self.generation.schema_name, self.previous.generation
            ),
            Outcome::Switched { forced: true } => writeln!(
                f,
                "DIFFERENT but switched (--force-switch); analysts now read {} (previous kept: \
                 orderflow generations drop {})",
                self.generation.schema_name, self.previous.generation
            ),
            Outcome::Refused => writeln!(
                f,
                "DIFFERENT: not switched; {} stays live, {} is kept as failed for inspection",
                self.previous.schema_name, self.generation.schema_name
            ),
            Outcome::PointInTime => writeln!(
                f,
                "point-in-time read models ready in schema {} (until {})",
                self.generation.schema_name,
                self.generation.until_spec.as_deref().unwrap_or("?")
            ),
            Outcome::Verified { equal } => writeln!(
                f,
                "{}; verify only: {} dropped, {} stays live",
                if *equal { "verified equal" } else { "DIFFERENT" },
                self.generation.schema_name,
                self.previous.schema_name
            ),
        }
    }
}

/// Build a new generation from the log; see the module documentation.
pub async fn replay(
    kafka: &KafkaSettings,
    pool: &PgPool,
    options: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let topic = kafka.topic.as_str();
    let mut conn = pool.acquire().await?;
    let previous = generations::live(&mut conn, false).await?;
    let live_target = previous.target()?;
    let live_positions = partition_offsets(
        topic,
        &store::positions(&mut conn, &live_target, false).await?,
    );
    drop(conn);

    let (purpose, stop, time_limit) = match &options.until {
        None => (Purpose::Live, live_positions.clone(), None),
        Some(Until::Time(t)) => (Purpose::PointInTime, live_positions.clone(), Some(*t)),
        Some(Until::Positions(given)) => {
            let partitions = platform::kafka::partition_count(kafka, topic)?;
            let missing: Vec<i32> = (0..i32::try_from(partitions)?)
                .filter(|p| !given.contains_key(p))
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "--until names no position for partition(s) {missing:?} of {topic}; give every \
                 partition (see analytics.watermarks)"
            );
            (Purpose::PointInTime, given.clone(), None)
        }
    };
    anyhow::ensure!(
        !(options.verify_only && options.until.is_some()),
        "a verify-only rebuild compares with the live generation; it takes no --until"
    );
    let until_spec = options.until.as_ref().map(ToString::to_string);
    let note = if options.verify_only {
        format!(
            "verify-only rebuild of {topic} against {}; dropped after comparing",
            previous.schema_name
        )
    } else {
        format!("replay of {topic}; live was {}", previous.schema_name)
    };
    let generation = generations::create(pool, purpose, until_spec.as_deref(), &note).await?;
    let target = generation.target()?;
    let result = build(
        kafka,
        pool,
        options,
        progress,
        &previous,
        &generation,
        &target,
        &stop,
        time_limit,
        started,
    )
    .await;
    if let Err(error) = &result {
        if options.verify_only {
            // Nobody inspects a check's generation; leave nothing behind.
            if let Err(drop_error) = generations::drop(pool, generation.generation).await {
                tracing::warn!(error = format!("{drop_error:#}"), generation = generation.generation,
                    "could not drop the verify-only generation; drop it with `orderflow generations drop`");
            }
        } else {
            let _ = generations::set_state(
                pool,
                generation.generation,
                "failed",
                &format!("{error:#}"),
            )
            .await;
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn build(
    kafka: &KafkaSettings,
    pool: &PgPool,
    options: &Options,
    progress: &(dyn Fn(Progress) + Sync),
    previous: &Generation,
    generation: &Generation,
    target: &Target,
    stop: &BTreeMap<i32, i64>,
    time_limit: Option<DateTime<Utc>>,
    started: Instant,
) -> anyhow::Result<Report> {
    let topic = kafka.topic.as_str();
    let ranges: BTreeMap<i32, Range> = stop
        .iter()
        .map(|(p, s)| (*p, Range { start: 0, stop: *s }))
        .collect();
    let bulk =
        bulk::read_and_fold(kafka, &options.reading(), progress, &ranges, time_limit).await?;
    let read_and_fold = started.elapsed();

    let load_started = Instant::now();
    let (bulk, rows_loaded) = bulk::load(pool, target, topic, bulk).await?;
    let load = load_started.elapsed();

    let copy_baseline = if options.compare_copy {
        Some(copy_baseline(pool, target, &bulk.events).await?)
    } else {
        None
    };
    let events_applied = bulk.events.len() as u64;

    let mut report = Report {
        source: options.archive.as_ref().map_or_else(
            || "the log".to_string(),
            |dir| format!("archive {}", dir.display()),
        ),
        generation: generation.clone(),
        previous: previous.clone(),
        outcome: Outcome::PointInTime,
        events_read: bulk.read,
        events_applied,
        undecodable: bulk.undecodable,
        rows_loaded,
        read_and_fold,
        load,
        catch_up_events: 0,
        catch_up: Duration::ZERO,
        verify: Duration::ZERO,
        total: Duration::ZERO,
        copy_baseline,
        verification: None,
        positions: Vec::new(),
    };
    if generation.purpose == "point_in_time" {
        generations::set_state(
            pool,
            generation.generation,
            "ready",
            &generation.note.clone().unwrap_or_default(),
        )
        .await?;
        report.positions = positions_of(pool, target).await?;
        report.total = started.elapsed();
        return Ok(report);
    }

    // Catch up without holding anything, so the locked part is short.
    let catch_up_started = Instant::now();
    let live_target = previous.target()?;
    for _ in 0..CATCH_UP_ROUNDS {
        let mut conn = pool.acquire().await?;
        let behind = lag(&mut conn, &live_target, target, topic).await?;
        drop(conn);
        if behind.values().map(|r| r.stop - r.start).sum::<i64>() <= LOCKED_CATCH_UP_MAX {
            break;
        }
        report.catch_up_events +=
            catch_up(kafka, options, pool, None, target, &behind, progress).await?;
    }

    let mut tx = pool.begin().await?;
    let locked = generations::lock_live(&mut tx).await?;
    anyhow::ensure!(
        locked.generation == previous.generation,
        "generation {} became live while this replay ran; nothing switched",
        locked.generation
    );
    let behind = lag(&mut tx, &live_target, target, topic).await?;
    report.catch_up_events += catch_up(
        kafka,
        options,
        pool,
        Some(&mut tx),
        target,
        &behind,
        progress,
    )
    .await?;
    report.catch_up = catch_up_started.elapsed();

    let verify_started = Instant::now();
    progress(Progress {
        phase: "verifying",
        done: 0,
        total: 1,
    });
    let verification = verify::compare(&mut tx, &live_target, target).await?;
    report.verify = verify_started.elapsed();
    let equal = verification.matches();
    report.verification = Some(verification);
    if options.verify_only {
        tx.rollback().await?;
        report.positions = positions_of(pool, target).await?;
        generations::drop(pool, generation.generation).await?;
        report.outcome = Outcome::Verified { equal };
        report.total = started.elapsed();
        return Ok(report);
    }
    if equal || options.force_switch {
        generations::switch(&mut tx, generation).await?;
        tx.commit().await?;
        report.outcome = Outcome::Switched { forced: !equal };
    } else {
        tx.rollback().await?;
        generations::set_state(
            pool,
            generation.generation,
            "failed",
            "verification found differences with the live generation; not switched",
        )
        .await?;
        report.outcome = Outcome::Refused;
    }
    report.positions = positions_of(pool, target).await?;
    report.total = started.elapsed();
    Ok(report)
}

/// Catch-up rounds without the lock before the final, locked one.
const CATCH_UP_ROUNDS: usize = 5;
/// At most this many records are left for the locked catch-up (unless the rounds run out).
const LOCKED_CATCH_UP_MAX: i64 = 5_000;

/// Per partition, how far `target` is behind `live`.
async fn lag(
    conn: &mut PgConnection,
    live: &Target,
    target: &Target,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, Range>> {
    let live = partition_offsets(topic, &store::positions(&mut *conn, live, false).await?);
    let ours = partition_offsets(topic, &store::positions(&mut *conn, target, false).await?);
    Ok(live
        .into_iter()
        .filter_map(|(partition, stop)| {
            let start = ours.get(&partition).copied().unwrap_or(0);
            (start < stop).then_some((partition, Range { start, stop }))
        })
        .collect())
}

/// Apply `ranges` of the log to `target` with the projector's incremental code, one
/// transaction per batch, or all inside `locked` when given.
async fn catch_up(
    kafka: &KafkaSettings,
    options: &Options,
    pool: &PgPool,
    mut locked: Option<&mut PgConnection>,
    target: &Target,
    ranges: &BTreeMap<i32, Range>,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<u64> {
    if ranges.is_empty() {
        return Ok(0);
    }
    let mut slice = LogSlice::open(kafka, &kafka.topic, ranges, options.stall)?;
    let total = u64::try_from(slice.remaining()).unwrap_or(0);
    let mut done = 0u64;
    while let Some(batch) = slice.next_batch(options.batch).await? {
        let batch = Decoded::decode(batch);
        match locked.as_deref_mut() {
            Some(conn) => {
                apply::apply(conn, target, &batch, None).await?;
            }
            None => {
                let mut tx = pool.begin().await?;
                apply::apply(&mut tx, target, &batch, None).await?;
                tx.commit().await?;
            }
        }
        done += batch.len() as u64;
        progress(Progress {
            phase: "catching up",
            done,
            total,
        });
    }
    Ok(done)
}

/// `COPY` the timeline rows once more into a temporary table without indexes: what Postgres
/// ingests when nothing is folded or indexed.
async fn copy_baseline(
    pool: &PgPool,
    target: &Target,
    events: &[EventRow],
) -> anyhow::Result<(u64, Duration)> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "CREATE TEMPORARY TABLE copy_baseline (LIKE \"{}\".order_events) ON COMMIT DROP",
        target.schema()
    ))
    .execute(&mut *tx)
    .await?;
    let started = Instant::now();
    let rows = crate::copy::events(&mut tx, "pg_temp.copy_baseline", events).await?;
    let took = started.elapsed();
    tx.rollback().await?;
    Ok((rows, took))
}

async fn positions_of(pool: &PgPool, target: &Target) -> anyhow::Result<Vec<store::Position>> {
    let mut conn = pool.acquire().await?;
    Ok(store::positions(&mut conn, target, false).await?)
}

fn partition_offsets(topic: &str, positions: &[store::Position]) -> BTreeMap<i32, i64> {
    positions
        .iter()
        .filter(|p| p.topic == topic)
        .map(|p| (p.partition, p.next_offset))
        .collect()
}

/// Parse `--until` for the command line.
pub fn parse_until(text: &str) -> Result<Until, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_takes_a_time_or_every_partition_position() {
        assert_eq!(
            "2026-11-23T18:00:00Z".parse::<Until>(),
            Ok(Until::Time(
                DateTime::parse_from_rfc3339("2026-11-23T18:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            ))
        );
        assert_eq!(
            "0:12, 1:0".parse::<Until>(),
            Ok(Until::Positions(BTreeMap::from([(0, 12), (1, 0)])))
        );
        for bad in ["yesterday", "0:12,0:13", "0:-1", "0", ""] {
            assert!(bad.parse::<Until>().is_err(), "{bad:?} should not parse");
        }
    }
}

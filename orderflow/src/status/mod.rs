//! The pipeline's facts that live in the database and the broker rather than in the code path
//! — consumer lag per group and partition, outbox backlog, parked orders, open dead letters,
//! the saga's open orders and missed deadlines, the read models' freshness, the archive's lag
//! — gathered into one typed [`Status`] snapshot. Two readers use it: `orderflow status` (a
//! table or JSON for a person or a script, with an exit code from the health rules) and the
//! collector that sets the fact gauges in every long-running process.
//!
//! The SQL lives next to the tables (`platform::outbox::unpublished`,
//! `platform::deadletter::open_per_consumer`, `consumers::parked::per_step`,
//! `consumers::saga::open_per_state` / `deadlines_missed`, `projections::audit::watermarks` /
//! `completed_since`), the archive's lag in `archive::lag`; this module reads the broker
//! (`read`: log ends, committed offsets through a client that never joins a group), assembles
//! the snapshot, and never writes anything.
//!
//! Parts: `read` the sources and the snapshot's assembly, `health` the rules (pure),
//! `render` the table, `collector` the gauges; this file the types and `orderflow status`.

pub mod collector;
pub mod health;
mod read;
mod render;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use health::{evaluate, Finding, Rule, Thresholds};
pub use read::{Sources, Unreachable};
pub use render::render;

use crate::components::Component;
use crate::settings::Settings;

/// The catalog's `component` label of a component (the projector's command-line name is
/// `projections`).
pub fn label(component: Component) -> &'static str {
    match component {
        Component::Projections => "projector",
        other => other.name(),
    }
}

/// One partition of a group: where it is and where the log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionPosition {
    pub partition: i32,
    /// Committed offset (steps) or stored position (projector); `None` when there is none.
    pub position: Option<i64>,
    pub end: i64,
}

impl PartitionPosition {
    /// Records behind the log end (0 when at or beyond it; nothing committed counts from 0).
    pub fn lag(&self) -> i64 {
        (self.end - self.position.unwrap_or(0)).max(0)
    }
}

/// What one consuming component has left to do and what it set aside.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentStatus {
    /// The catalog label: inventory, payment, shipping, saga, projector.
    pub component: &'static str,
    pub group: String,
    pub partitions: Vec<PartitionPosition>,
    /// Records behind the log end, summed over partitions.
    pub lag: i64,
    /// Records moved past per second (offsets committed or positions stored) since the
    /// previous read; `None` on a first read.
    pub applied_per_sec: Option<f64>,
    /// Records consumed but held behind parked orders (the lag does not count them).
    pub backlog: i64,
    /// Orders parked, waiting for a retry.
    pub parked: i64,
    /// Dead letters not redriven.
    pub dead_letters: i64,
    pub outbox_unpublished: i64,
    /// Age of the oldest unpublished outbox row; 0 when none.
    pub outbox_oldest_secs: f64,
    /// Projector only: how stale the read models are (0 when every record on the log is
    /// applied, else the age of the newest applied event of the furthest-behind partition).
    pub freshness_secs: Option<f64>,
}

/// The saga's open orders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaStatus {
    /// Orders per open state (terminal states are not counted: see
    /// `consumers::saga::open_per_state`).
    pub open: BTreeMap<String, i64>,
    /// Orders past a step deadline that the saga has not given up yet.
    pub deadlines_missed: i64,
    /// Orders the read model shows completed in the last minute.
    pub completed_last_minute: i64,
}

/// The archive's lag behind the log (its RPO).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiveStatus {
    pub dir: String,
    pub records: i64,
    /// Age of the oldest unarchived record; `None` when it could not be read.
    pub seconds: Option<f64>,
    /// Why the lag could not be read (the manifest, the broker), if it could not.
    pub problem: Option<String>,
}

/// Everything `orderflow status` shows, read at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub taken_at: DateTime<Utc>,
    pub topic: String,
    /// Log end per partition.
    pub log_end: BTreeMap<i32, i64>,
    pub components: Vec<ComponentStatus>,
    /// Present when the saga is among the components asked for.
    pub saga: Option<SagaStatus>,
    /// Present when the archiver is asked for and `archive.dir` is set.
    pub archive: Option<ArchiveStatus>,
}

impl Status {
    /// Fill in `applied_per_sec` from an earlier snapshot of the same components.
    pub fn rates_since(&mut self, earlier: &Status) {
        let seconds = (self.taken_at - earlier.taken_at).num_milliseconds() as f64 / 1000.0;
        if seconds <= 0.0 {
            return;
        }
        for now in &mut self.components {
            let Some(before) = earlier
                .components
                .iter()
                .find(|c| c.component == now.component)
            else {
                continue;
            };
            let moved: i64 = now
                .partitions
                .iter()
                .map(|p| {
                    let was = before
                        .partitions
                        .iter()
                        .find(|b| b.partition == p.partition)
                        .and_then(|b| b.position);
                    match (was, p.position) {
                        (Some(was), Some(is)) => (is - was).max(0),
                        _ => 0,
                    }
                })
                .sum();
            now.applied_per_sec = Some(moved as f64 / seconds);
        }
    }
}

/// What `orderflow status` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this component's facts (all when `None`).
    pub component: Option<Component>,
    pub json: bool,
    /// Print a new snapshot every this often, until interrupted.
    pub watch: Option<Duration>,
    pub thresholds: Thresholds,
}

/// The components `orderflow status` reports on: the one asked for, or every one (the archiver
/// when `archive.dir` is set).
pub fn components(settings: &Settings, only: Option<Component>) -> Vec<Component> {
    match only {
        Some(component) => vec![component],
        None => {
            let mut all = Component::ALL.to_vec();
            if !settings.archive.dir.is_empty() {
                all.push(Component::Archiver);
            }
            all
        }
    }
}

/// How long a one-shot `orderflow status` waits between its two reads of the offsets, to say
/// how many records per second each component applies.
const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// The exit code of a snapshot: 0 healthy, 1 a rule fired.
pub fn exit_code(findings: &[Finding]) -> u8 {
    if findings.is_empty() {
        0
    } else {
        1
    }
}

/// A snapshot with rates: two reads [`RATE_SAMPLE`] apart.
pub async fn snapshot(sources: &Sources, which: &[Component]) -> Result<Status, Unreachable> {
    let first = sources.status(which).await?;
    let started = Instant::now();
    tokio::time::sleep(RATE_SAMPLE.saturating_sub(started.elapsed())).await;
    let mut second = sources.status(which).await?;
    second.rates_since(&first);
    Ok(second)
}

/// `orderflow status`: print the snapshot (or one every `--watch` seconds) and return the
/// exit code: 0 healthy, 1 unhealthy (the rules that fired are printed), 2 Postgres or Kafka
/// cannot be reached (which, where, and what to do).
pub async fn run(settings: &Settings, options: &Options) -> ExitCode {
    let which = components(settings, options.component);
    let sources = match Sources::open(settings).await {
        Ok(sources) => sources,
        Err(unreachable) => {
            eprintln!("status: {unreachable}");
            return ExitCode::from(2);
        }
    };
    let mut previous: Option<Status> = None;
    loop {
        let read = match &previous {
            Some(earlier) => sources.status(&which).await.map(|mut s| {
                s.rates_since(earlier);
                s
            }),
            None => snapshot(&sources, &which).await,
        };
        let status = match read {
            Ok(status) => status,
            Err(unreachable) => {
                eprintln!("status: {unreachable}");
                if options.watch.is_none() {
                    return ExitCode::from(2);
                }
                tokio::time::sleep(options.watch.unwrap_or_default()).await;
                continue;
            }
        };
        let findings = evaluate(&status, &options.thresholds);
        if options.json {
            let value = serde_json::json!({
                "status": &status,
                "healthy": findings.is_empty(),
                "findings": &findings,
            });
            println!("{value}");
        } else {
            print!("{}", render(&status, &findings));
        }
        let Some(every) = options.watch else {
            return ExitCode::from(exit_code(&findings));
        };
        previous = Some(status);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::from(exit_code(&findings)),
        }
        if !options.json {
            println!();
        }
    }
}

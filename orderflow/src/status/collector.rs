//! The collector: in every long-running process, a task that reads the facts of the components
//! that process runs (the same reads as `orderflow status`) and sets the catalog's gauges
//! every `admin.collect_interval_ms`. A `--only payment` process reports payment's lag, outbox,
//! parked orders and dead letters; the saga's process its open orders and missed deadlines; the
//! projector's its freshness and watermark lag; the archiver's the archive's lag. Scaled out to
//! several processes, each reports the same value: aggregate with `max`.
//!
//! A source that cannot be read (Postgres, the broker, the archive) sets every gauge that
//! depends on it to NaN — unknown — until it answers again: never a stale value that looks
//! current, never a zero that looks healthy (comparisons with NaN are false, so an alert on the
//! gauge neither fires nor resolves on it; `orderflow_dependency_up` says why). A failure is
//! logged once when a source starts failing and once when it recovers. Nothing the collector
//! meets stops the component it runs beside.

use std::collections::BTreeMap;
use std::time::Duration;

use platform::metrics::names;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::read::DatabaseFacts;
use super::{label, Sources, Status};
use crate::components::Component;
use crate::settings::Settings;

/// One source's last outcome, to log only changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Unknown,
    Ok,
    Failing,
}

/// Log a source's outcome when it differs from the last one.
fn note(seen: &mut Seen, source: &str, outcome: Result<(), String>) {
    match (outcome, *seen) {
        (Ok(()), Seen::Failing) => {
            tracing::info!(source, "status collector reads its source again");
            *seen = Seen::Ok;
        }
        (Ok(()), _) => *seen = Seen::Ok,
        (Err(error), Seen::Unknown | Seen::Ok) => {
            tracing::warn!(
                source,
                %error,
                "status collector cannot read its source; its gauges are NaN until it can"
            );
            *seen = Seen::Failing;
        }
        (Err(_), Seen::Failing) => {}
    }
}

/// The collector of one process: the facts of `which` components.
pub struct Collector {
    settings: Settings,
    pool: PgPool,
    which: Vec<Component>,
    sources: Option<Sources>,
    /// Partitions whose lag series were set, per component: made NaN when the broker fails.
    lag_series: BTreeMap<&'static str, Vec<i32>>,
    kafka: Seen,
    postgres: Seen,
    archive: Seen,
}

impl Collector {
    pub fn new(settings: &Settings, pool: PgPool, which: &[Component]) -> Collector {
        Collector {
            settings: settings.clone(),
            pool,
            which: which.to_vec(),
            sources: None,
            lag_series: BTreeMap::new(),
            kafka: Seen::Unknown,
            postgres: Seen::Unknown,
            archive: Seen::Unknown,
        }
    }

    /// Read every source once and set the gauges; what could not be read is NaN. Returns the
    /// snapshot when every source answered.
    pub async fn collect(&mut self) -> Option<Status> {
        if self.sources.is_none() {
            match Sources::with_pool(&self.settings, self.pool.clone(), &self.which).await {
                Ok(sources) => self.sources = Some(sources),
                Err(error) => {
                    note(&mut self.kafka, "kafka", Err(error.to_string()));
                    self.unknown_broker();
                    self.database_gauges(None);
                    return None;
                }
            }
        }
        let sources = self.sources.as_ref()?;
        let broker = sources.broker().await.map_err(|e| e.to_string());
        let database = sources
            .database(&self.which)
            .await
            .map_err(|e| e.to_string());
        note(
            &mut self.kafka,
            "kafka",
            broker.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        note(
            &mut self.postgres,
            "postgres",
            database.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let archive = match &broker {
            Ok(broker) if self.which.contains(&Component::Archiver) => {
                sources.archive(&broker.ends).await
            }
            _ => None,
        };
        self.database_gauges(database.as_ref().ok());
        let (Ok(broker), Ok(database)) = (broker, database) else {
            self.unknown_broker();
            return None;
        };
        let status =
            super::read::assemble(&self.settings, &self.which, &broker, &database, archive);
        self.broker_gauges(&status);
        Some(status)
    }

    /// Run until `shutdown`: a collection every `every`.
    pub async fn run(mut self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.collect() => {}
            }
        }
    }

    fn steps(&self) -> impl Iterator<Item = Component> + '_ {
        self.which
            .iter()
            .copied()
            .filter(|c| !matches!(c, Component::Projections | Component::Archiver))
    }

    fn consumers(&self) -> impl Iterator<Item = Component> + '_ {
        self.which
            .iter()
            .copied()
            .filter(|c| *c != Component::Archiver)
    }

    /// The gauges that come from Postgres alone (`None`: it did not answer, all NaN).
    fn database_gauges(&self, facts: Option<&DatabaseFacts>) {
        let or_nan = |value: Option<f64>| value.unwrap_or(f64::NAN);
        for component in self.consumers() {
            let (name, component_label) = (component.name(), label(component));
            let dead = facts.map(|f| f.dead_letters.get(name).copied().unwrap_or(0) as f64);
            metrics::gauge!(names::DEAD_LETTERS_OPEN, "component" => component_label)
                .set(or_nan(dead));
            let outbox = facts.map(|f| f.outbox.get(name).copied().unwrap_or((0, 0.0)));
            metrics::gauge!(names::OUTBOX_UNPUBLISHED, "component" => component_label)
                .set(or_nan(outbox.map(|(rows, _)| rows as f64)));
            metrics::gauge!(names::OUTBOX_OLDEST_AGE, "component" => component_label)
                .set(or_nan(outbox.map(|(_, age)| age)));
        }
        for component in self.steps() {
            let parked = facts.map(|f| {
                f.parked
                    .get(component.name())
                    .map_or(0.0, |p| p.orders as f64)
            });
            metrics::gauge!(names::PARKED_ORDERS, "component" => label(component))
                .set(or_nan(parked));
        }
        if self.which.contains(&Component::Saga) {
            let saga = facts.and_then(|f| f.saga.as_ref());
            let states: Vec<(String, f64)> = match saga {
                Some(saga) => saga
                    .open
                    .iter()
                    .map(|(s, n)| (s.clone(), *n as f64))
                    .collect(),
                None => consumers::saga::OPEN_STATES
                    .iter()
                    .map(|s| (s.to_string(), f64::NAN))
                    .collect(),
            };
            for (state, value) in states {
                metrics::gauge!(names::SAGA_ORDERS, "state" => state).set(value);
            }
            metrics::gauge!(names::SAGA_DEADLINES_MISSED)
                .set(or_nan(saga.map(|saga| saga.deadlines_missed as f64)));
        }
    }

    /// The gauges that need the broker (and, for the projector, Postgres too).
    fn broker_gauges(&mut self, status: &Status) {
        for c in &status.components {
            let topic = self.source_topic(c.component);
            for p in &c.partitions {
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "component" => c.component,
                    "group" => c.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => p.partition.to_string()
                )
                .set(p.lag() as f64);
            }
            self.lag_series.insert(
                c.component,
                c.partitions.iter().map(|p| p.partition).collect(),
            );
            if c.component == label(Component::Projections) {
                metrics::gauge!(names::PROJECTION_WATERMARK_LAG).set(c.lag as f64);
                let freshness = c.freshness_secs.unwrap_or(f64::NAN);
                for model in projections::fold::MODELS {
                    metrics::gauge!(names::PROJECTION_FRESHNESS, "model" => model).set(freshness);
                }
            }
        }
        if self.which.contains(&Component::Archiver) {
            let (records, seconds) = match &status.archive {
                Some(a) if a.problem.is_none() => (a.records as f64, a.seconds.unwrap_or(f64::NAN)),
                _ => (f64::NAN, f64::NAN),
            };
            let outcome = match &status.archive {
                Some(a) => a.problem.clone().map_or(Ok(()), Err),
                None => Ok(()),
            };
            note(&mut self.archive, "archive", outcome);
            metrics::gauge!(names::ARCHIVE_LAG_RECORDS).set(records);
            metrics::gauge!(names::ARCHIVE_LAG_SECONDS).set(seconds);
        }
    }

    /// The topic a component (by label) reads: the intake topic for the intake, else the log.
    fn source_topic(&self, component: &str) -> &String {
        if component == label(Component::Intake) {
            &self.settings.kafka.intake_topic
        } else {
            &self.settings.kafka.topic
        }
    }

    /// The broker did not answer: every gauge that needs it is unknown.
    fn unknown_broker(&self) {
        for component in self.consumers() {
            let component_label = label(component);
            let topic = self.source_topic(component_label);
            let group = self.settings.group_id(component.name());
            for partition in self.lag_series.get(component_label).into_iter().flatten() {
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "component" => component_label,
                    "group" => group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(f64::NAN);
            }
            if component == Component::Projections {
                metrics::gauge!(names::PROJECTION_WATERMARK_LAG).set(f64::NAN);
                for model in projections::fold::MODELS {
                    metrics::gauge!(names::PROJECTION_FRESHNESS, "model" => model).set(f64::NAN);
                }
            }
        }
        if self.which.contains(&Component::Archiver) {
            metrics::gauge!(names::ARCHIVE_LAG_RECORDS).set(f64::NAN);
            metrics::gauge!(names::ARCHIVE_LAG_SECONDS).set(f64::NAN);
        }
    }
}

/// Start the collector of `which` components beside them, until `shutdown`. It runs as a
/// detached task: whatever happens to it, the components go on.
pub fn spawn(
    settings: &Settings,
    pool: &PgPool,
    which: &[Component],
    every: Duration,
    shutdown: &CancellationToken,
) {
    if which.is_empty() || every.is_zero() {
        return;
    }
    let collector = Collector::new(settings, pool.clone(), which);
    let shutdown = shutdown.clone();
    tokio::spawn(collector.run(every, shutdown));
}

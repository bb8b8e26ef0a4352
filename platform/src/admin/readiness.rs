//! Readiness: is this process fit to take its share of the work? Ready when Postgres answers a
//! query, the brokers answer a metadata request, every component holds its assignment (or is
//! idle by design) and the process is not draining on shutdown.
//!
//! A background task ([`run`]) probes every [`super::PROBE_INTERVAL`], each probe bounded by
//! [`PROBE_TIMEOUT`], so the verdict turns within seconds when a dependency goes away or comes
//! back; `/readyz` only reads the last verdict. The probes use their own Postgres connection
//! and Kafka client, so a busy pool never makes a healthy process look unready. The verdict
//! itself ([`verdict`]) is a pure function of what was observed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSettings, KafkaSettings};
use crate::kafka_stats::Assignment;
use crate::metrics::names::{DEPENDENCY_UP, READY};

/// Longest a single probe (a query, a metadata request) may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a readiness tick observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observations {
    /// Did Postgres answer (`None`: this process has no database to probe)?
    pub postgres: Option<bool>,
    /// Did the brokers answer a metadata request (`None`: nothing to probe)?
    pub kafka: Option<bool>,
    /// The shutdown signal was given: the process is finishing its batches.
    pub draining: bool,
    /// Components whose group has not (or no longer) assigned them their partitions.
    pub unassigned: Vec<&'static str>,
}

/// One thing that keeps the process from being ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotReady {
    /// `postgres`, `kafka`, `draining`, a component's name, or `probe`.
    pub check: &'static str,
    pub reason: &'static str,
}

/// The readiness verdict `/readyz` serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<NotReady>,
}

impl Verdict {
    /// Before the first probe has run.
    fn pending() -> Verdict {
        Verdict {
            ready: false,
            not_ready: vec![NotReady {
                check: "probe",
                reason: "the first readiness check has not run yet",
            }],
        }
    }

    /// The small JSON body of `/readyz`: what is not ready, never how (no addresses, no
    /// connection strings, no error text).
    pub fn to_json(&self) -> String {
        // A struct of bools and static strings always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"ready\":{}}}", self.ready))
    }
}

/// Ready exactly when nothing below fails.
pub fn verdict(seen: &Observations) -> Verdict {
    let mut not_ready = Vec::new();
    if seen.draining {
        not_ready.push(NotReady {
            check: "draining",
            reason: "shutting down: finishing the current batches",
        });
    }
    if seen.postgres == Some(false) {
        not_ready.push(NotReady {
            check: "postgres",
            reason: "the database does not answer",
        });
    }
    if seen.kafka == Some(false) {
        not_ready.push(NotReady {
            check: "kafka",
            reason: "the brokers do not answer a metadata request",
        });
    }
    for component in &seen.unassigned {
        not_ready.push(NotReady {
            check: component,
            reason: "waiting for its consumer group to assign partitions",
        });
    }
    Verdict {
        ready: not_ready.is_empty(),
        not_ready,
    }
}

/// The process's readiness: the components it tracks and the last verdict. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    components: Vec<(&'static str, Assignment)>,
    verdict: Verdict,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            inner: Arc::new(Mutex::new(Inner {
                components: Vec::new(),
                verdict: Verdict::pending(),
            })),
        }
    }
}

impl Readiness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain values only: a panic elsewhere while holding the lock leaves them readable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count `component` ready only while `assignment` is settled.
    pub fn track(&self, component: &'static str, assignment: Assignment) {
        self.lock().components.push((component, assignment));
    }

    /// The last verdict.
    pub fn current(&self) -> Verdict {
        self.lock().verdict.clone()
    }

    fn unassigned(&self) -> Vec<&'static str> {
        self.lock()
            .components
            .iter()
            .filter(|(_, a)| !a.is_settled())
            .map(|(name, _)| *name)
            .collect()
    }

    fn set(&self, verdict: Verdict) {
        self.lock().verdict = verdict;
    }
}

/// What the probe task looks at. Everything is optional: a process without a database (the
/// archiver alone) probes only the brokers.
#[derive(Default)]
pub struct Probes {
    /// Postgres to probe with a connection of its own (`SELECT 1`).
    pub database: Option<DatabaseSettings>,
    /// The brokers to ask for the metadata of `kafka.topic`.
    pub kafka: Option<KafkaSettings>,
    /// The pool whose connections the gauges count.
    pub pool: Option<PgPool>,
}

/// Probe, decide, publish the verdict and the gauges, every [`super::PROBE_INTERVAL`], until
/// the task is aborted.
pub async fn run(readiness: Readiness, probes: Probes, draining: CancellationToken) {
    let mut postgres = probes.database.as_ref().map(PostgresProbe::new);
    let mut kafka = probes.kafka.as_ref().and_then(KafkaProbe::new);
    let kafka_unprobed = probes.kafka.is_some() && kafka.is_none();
    let mut ticks = tokio::time::interval(super::PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu = super::process::CpuClock::new();
    loop {
        ticks.tick().await;
        let (postgres_up, kafka_up) = tokio::join!(
            async {
                match postgres.as_mut() {
                    Some(probe) => Some(probe.check().await),
                    None => None,
                }
            },
            async {
                match kafka.as_mut() {
                    Some(probe) => Some(probe.check().await),
                    None if kafka_unprobed => Some(false),
                    None => None,
                }
            }
        );
        let seen = Observations {
            postgres: postgres_up,
            kafka: kafka_up,
            draining: draining.is_cancelled(),
            unassigned: readiness.unassigned(),
        };
        let decided = verdict(&seen);
        for (dependency, up) in [("postgres", seen.postgres), ("kafka", seen.kafka)] {
            if let Some(up) = up {
                metrics::gauge!(DEPENDENCY_UP, "dependency" => dependency)
                    .set(f64::from(u8::from(up)));
            }
        }
        metrics::gauge!(READY).set(f64::from(u8::from(decided.ready)));
        let before = readiness.current();
        if before.ready != decided.ready {
            tracing::info!(ready = decided.ready, not_ready = ?decided.not_ready, "readiness changed");
        }
        readiness.set(decided);
        if let Some(pool) = &probes.pool {
            super::process::sample_pool(pool);
        }
        cpu.sample();
    }
}

/// A connection of its own to Postgres, opened again after any failure.
struct PostgresProbe {
    options: Option<PgConnectOptions>,
    conn: Option<PgConnection>,
}

impl PostgresProbe {
    fn new(settings: &DatabaseSettings) -> Self {
        let options = settings
            .url
            .parse::<PgConnectOptions>()
            .ok()
            .map(|o| o.log_statements(tracing::log::LevelFilter::Trace));
        PostgresProbe {
            options,
            conn: None,
        }
    }

    async fn check(&mut self) -> bool {
        let Some(options) = &self.options else {
            // The URL did not parse: the pool could not have connected either.
            return false;
        };
        if self.conn.is_none() {
            match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
                Ok(Ok(conn)) => self.conn = Some(conn),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "readiness: cannot connect to Postgres");
                    return false;
                }
                Err(_) => return false,
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let answered = tokio::time::timeout(PROBE_TIMEOUT, conn.ping()).await;
        let up = matches!(answered, Ok(Ok(())));
        if !up {
            // A connection that failed once is not trusted again; the next tick opens a new one.
            if let Some(conn) = self.conn.take() {
                drop(conn);
            }
        }
        up
    }
}

/// A client that only asks for metadata (no group, no fetch), kept for the process's life so
/// librdkafka reconnects by itself when the brokers return.
struct KafkaProbe {
    client: Arc<BaseConsumer>,
    topic: String,
}

impl KafkaProbe {
    fn new(settings: &KafkaSettings) -> Option<Self> {
        match crate::kafka::probe(settings) {
            Ok(client) => Some(KafkaProbe {
                client: Arc::new(client),
                topic: settings.topic.clone(),
            }),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "readiness: cannot build the Kafka probe; kafka counts as down");
                None
            }
        }
    }

    async fn check(&mut self) -> bool {
        let client = Arc::clone(&self.client);
        let topic = self.topic.clone();
        let asked = tokio::task::spawn_blocking(move || {
            let answer = client.fetch_metadata(Some(&topic), PROBE_TIMEOUT);
            // Serve the client's queued events (errors, logs) so they do not pile up.
            let _ = client.poll(Duration::ZERO);
            answer.is_ok_and(|m| !m.brokers().is_empty())
        })
        .await;
        asked.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(
        postgres: Option<bool>,
        kafka: Option<bool>,
        draining: bool,
        unassigned: &[&'static str],
    ) -> Observations {
        Observations {
            postgres,
            kafka,
            draining,
            unassigned: unassigned.to_vec(),
        }
    }

    /// (observations, ready, the checks named as not ready, in order)
    #[test]
    fn the_verdict_table() {
        let cases: Vec<(Observations, bool, Vec<&str>)> = vec![
            (seen(Some(true), Some(true), false, &[]), true, vec![]),
            // Nothing to probe (no database in this process) is not a failure.
            (seen(None, Some(true), false, &[]), true, vec![]),
            (seen(None, None, false, &[]), true, vec![]),
            (
                seen(Some(false), Some(true), false, &[]),
                false,
                vec!["postgres"],
            ),
            (
                seen(Some(true), Some(false), false, &[]),
                false,
                vec!["kafka"],
            ),
            (
                seen(Some(true), Some(true), true, &[]),
                false,
                vec!["draining"],
            ),
            (
                seen(Some(true), Some(true), false, &["inventory", "projector"]),
                false,
                vec!["inventory", "projector"],
            ),
            (
                seen(Some(false), Some(false), true, &["saga"]),
                false,
                vec!["draining", "postgres", "kafka", "saga"],
            ),
        ];
        for (observed, ready, checks) in cases {
            let got = verdict(&observed);
            assert_eq!(got.ready, ready, "{observed:?}");
            let named: Vec<&str> = got.not_ready.iter().map(|n| n.check).collect();
            assert_eq!(named, checks, "{observed:?}");
        }
    }

    #[test]
    fn the_body_names_what_is_not_ready_and_nothing_else() {
        let ready = verdict(&seen(Some(true), Some(true), false, &[]));
        assert_eq!(ready.to_json(), r#"{"ready":true}"#);
        let down = verdict(&seen(Some(false), Some(true), false, &["payment"]));
        let body = down.to_json();
        assert_eq!(
            body,
            r#"{"ready":false,"not_ready":[{"check":"postgres","reason":"the database does not answer"},{"check":"payment","reason":"waiting for its consumer group to assign partitions"}]}"#
        );
    }

    #[test]
    fn a_tracked_component_counts_only_while_its_assignment_is_settled() {
        let readiness = Readiness::default();
        assert!(
            !readiness.current().ready,
            "nothing decided before the first probe"
        );
        let assignment = Assignment::default();
        readiness.track("shipping", assignment.clone());
        readiness.track("archiver", Assignment::settled());
        assert_eq!(readiness.unassigned(), vec!["shipping"]);
        assignment.set(true);
        assert!(readiness.unassigned().is_empty());
    }
}

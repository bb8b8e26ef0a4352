//! The process's one Prometheus recorder and the metric catalog.
//!
//! Every metric orderflow records is named here ([`CATALOG`], one constant per name) with its
//! type, unit and one line of help; `docs/metrics.md` is the same list for people. Code records
//! through the `metrics` facade (`metrics::counter!(names::RECORDS_CONSUMED, ...)`) without
//! passing a registry around; [`recorder`] installs the global recorder once, with explicit
//! histogram buckets, and [`render`] writes the Prometheus text the admin listener serves.
//!
//! Labels are bounded: a component, a port, a kind or outcome from a short fixed list, a
//! partition. Never an order id or a customer id. Hot paths record through handles created
//! once per component, so recording allocates nothing per record.
//!
//! A process that never calls [`recorder`] (the admin listener is off, one-shot commands)
//! keeps the facade's no-op recorder: every `counter!` is then a few instructions.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The catalog's names, one constant each, so a typo is a compile error.
pub mod names {
    // Counters.
    pub const RECORDS_CONSUMED: &str = "orderflow_records_consumed_total";
    pub const RECORDS_APPLIED: &str = "orderflow_records_applied_total";
    pub const RECORDS_DUPLICATE: &str = "orderflow_records_duplicate_total";
    pub const RECORDS_IGNORED: &str = "orderflow_records_ignored_total";
    pub const ORDERS_PARKED: &str = "orderflow_orders_parked_total";
    pub const RECORDS_DEAD_LETTERED: &str = "orderflow_records_dead_lettered_total";
    pub const BATCH_FAILURES: &str = "orderflow_batch_failures_total";
    pub const EVENTS_PUBLISHED: &str = "orderflow_events_published_total";
    pub const REDRIVES: &str = "orderflow_redrives_total";
    pub const HTTP_REQUESTS: &str = "orderflow_http_requests_total";
    pub const HTTP_ORDERS_ACCEPTED: &str = "orderflow_http_orders_accepted_total";
    // Histograms.
    pub const BATCH_RECORDS: &str = "orderflow_batch_records";
    pub const BATCH_DURATION: &str = "orderflow_batch_duration_seconds";
    pub const HANDLER_DURATION: &str = "orderflow_handler_duration_seconds";
    pub const COMMIT_DURATION: &str = "orderflow_commit_duration_seconds";
    pub const PORT_CALL_DURATION: &str = "orderflow_port_call_duration_seconds";
    pub const ORDER_TERMINAL: &str = "orderflow_order_terminal_seconds";
    pub const DB_POOL_ACQUIRE: &str = "orderflow_db_pool_acquire_seconds";
    pub const HTTP_REQUEST_DURATION: &str = "orderflow_http_request_duration_seconds";
    // Gauges computed from the database and the broker (`orderflow status` and the sampler).
    pub const CONSUMER_LAG: &str = "orderflow_consumer_lag_records";
    pub const OUTBOX_UNPUBLISHED: &str = "orderflow_outbox_unpublished_rows";
    pub const OUTBOX_OLDEST_AGE: &str = "orderflow_outbox_oldest_unpublished_age_seconds";
    pub const PARKED_ORDERS: &str = "orderflow_parked_orders";
    pub const DEAD_LETTERS_OPEN: &str = "orderflow_dead_letters_open";
    pub const SAGA_ORDERS: &str = "orderflow_saga_orders";
    pub const SAGA_DEADLINES_MISSED: &str = "orderflow_saga_deadlines_missed";
    pub const PROJECTION_FRESHNESS: &str = "orderflow_projection_freshness_seconds";
    pub const PROJECTION_WATERMARK_LAG: &str = "orderflow_projection_watermark_lag_records";
    pub const ARCHIVE_LAG_RECORDS: &str = "orderflow_archive_lag_records";
    pub const ARCHIVE_LAG_SECONDS: &str = "orderflow_archive_lag_seconds";
    // Gauges recorded in line by the process itself.
    pub const DB_POOL_CONNECTIONS: &str = "orderflow_db_pool_connections";
    pub const KAFKA_PRODUCER_QUEUE: &str = "orderflow_kafka_producer_queue_messages";
    pub const KAFKA_REQUEST_LATENCY: &str = "orderflow_kafka_request_latency_seconds";
    pub const KAFKA_BROKER_UP: &str = "orderflow_kafka_broker_up";
    pub const BREAKER_STATE: &str = "orderflow_breaker_state";
    pub const DEPENDENCY_UP: &str = "orderflow_dependency_up";
    pub const READY: &str = "orderflow_ready";
    pub const PROCESS_RESIDENT_MEMORY: &str = "orderflow_process_resident_memory_bytes";
    pub const PROCESS_CPU: &str = "orderflow_process_cpu_seconds_total";
    pub const BUILD_INFO: &str = "orderflow_build_info";
}

/// What kind of series a catalog entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// The label names, in the order the catalog gives them.
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Histograms only: the bucket upper bounds (Prometheus `le`), ascending.
    pub buckets: &'static [f64],
}

/// One HTTP request: a key lookup (sub-millisecond) to a `Prefer: wait` of ten seconds.
const HTTP_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];
/// Upper bounds for durations of a batch, a handler, a commit: 1 ms to 30 s.
const BATCH_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Records per batch: 1 to the largest catch-up batch.
const BATCH_SIZES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
/// A provider or carrier call: sub-millisecond (simulated) to a timeout of several seconds.
const PORT_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// An order from creation to its terminal event: tens of milliseconds to ten minutes.
const TERMINAL_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Waiting for a pooled connection: 0.1 ms (idle connection) to the acquire timeout.
const ACQUIRE_SECONDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: Unit::Count,
        labels,
        help,
        buckets: &[],
    }
}

const fn gauge(
    name: &'static str,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit,
        labels,
        help,
        buckets: &[],
    }
}

const fn histogram(
    name: &'static str,
    unit: Unit,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit,
        labels,
        help,
        buckets,
    }
}

use names::*;

/// Every metric orderflow records. `docs/metrics.md` lists the same names.
pub const CATALOG: &[Metric] = &[
    counter(
        RECORDS_CONSUMED,
        &["component"],
        "Records polled from Kafka.",
    ),
    counter(
        RECORDS_APPLIED,
        &["component"],
        "Records whose effects were committed.",
    ),
    counter(
        RECORDS_DUPLICATE,
        &["component"],
        "Records skipped by the inbox: seen before.",
    ),
    counter(
        RECORDS_IGNORED,
        &["component"],
        "Records of event types the component does not handle.",
    ),
    counter(
        ORDERS_PARKED,
        &["component"],
        "Orders parked (waiting behind an earlier failure).",
    ),
    counter(
        RECORDS_DEAD_LETTERED,
        &["component"],
        "Records written to the dead-letter table.",
    ),
    counter(
        BATCH_FAILURES,
        &["component", "kind"],
        "Failed batch attempts by kind: retryable, unavailable, permanent, poison.",
    ),
    counter(
        EVENTS_PUBLISHED,
        &["component"],
        "Outbox rows published to Kafka.",
    ),
    counter(
        REDRIVES,
        &["component", "outcome"],
        "Dead letters redriven, by outcome.",
    ),
    counter(
        HTTP_REQUESTS,
        &["route", "method", "status"],
        "HTTP API requests answered, by route template (never a raw path), method and status.",
    ),
    counter(
        HTTP_ORDERS_ACCEPTED,
        &[],
        "Orders newly accepted by POST /v1/orders (written to the outbox; repeats not counted).",
    ),
    histogram(
        BATCH_RECORDS,
        Unit::Count,
        &["component"],
        BATCH_SIZES,
        "Records per batch.",
    ),
    histogram(
        BATCH_DURATION,
        Unit::Seconds,
        &["component"],
        BATCH_SECONDS,
        "One batch from its poll to its offset commit.",
    ),
    histogram(
        HANDLER_DURATION,
        Unit::Seconds,
        &["component"],
        BATCH_SECONDS,
        "Port calls and decisions of one batch.",
    ),
    histogram(
        COMMIT_DURATION,
        Unit::Seconds,
        &["component", "kind"],
        BATCH_SECONDS,
        "Committing one batch: kind database (its transaction) or offsets (Kafka).",
    ),
    histogram(
        PORT_CALL_DURATION,
        Unit::Seconds,
        &["component", "port", "result"],
        PORT_SECONDS,
        "One call to a port (provider, carrier) by result: ok, error, timeout, refused.",
    ),
    histogram(
        ORDER_TERMINAL,
        Unit::Seconds,
        &["outcome"],
        TERMINAL_SECONDS,
        "From OrderCreated's occurred_at to the saga's terminal event (completed, cancelled).",
    ),
    histogram(
        DB_POOL_ACQUIRE,
        Unit::Seconds,
        &[],
        ACQUIRE_SECONDS,
        "Waiting for a connection from the Postgres pool.",
    ),
    histogram(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        &["route", "method"],
        HTTP_SECONDS,
        "One HTTP API request from its head read to its answer, by route template and method.",
    ),
    gauge(
        CONSUMER_LAG,
        Unit::Count,
        &["component", "group", "topic", "partition"],
        "Log end offset minus the group's committed offset.",
    ),
    gauge(
        OUTBOX_UNPUBLISHED,
        Unit::Count,
        &["component"],
        "Outbox rows not yet published.",
    ),
    gauge(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        &["component"],
        "Age of the oldest unpublished outbox row (0 when none).",
    ),
    gauge(
        PARKED_ORDERS,
        Unit::Count,
        &["component"],
        "Orders parked now.",
    ),
    gauge(
        DEAD_LETTERS_OPEN,
        Unit::Count,
        &["component"],
        "Dead letters not redriven.",
    ),
    gauge(
        SAGA_ORDERS,
        Unit::Count,
        &["state"],
        "Saga orders by state.",
    ),
    gauge(
        SAGA_DEADLINES_MISSED,
        Unit::Count,
        &[],
        "Orders past a step deadline that the saga has not given up yet.",
    ),
    gauge(
        PROJECTION_FRESHNESS,
        Unit::Seconds,
        &["model"],
        "Age of the newest event applied to a read model.",
    ),
    gauge(
        PROJECTION_WATERMARK_LAG,
        Unit::Count,
        &[],
        "Records between the projector's watermark and the log end.",
    ),
    gauge(
        ARCHIVE_LAG_RECORDS,
        Unit::Count,
        &[],
        "Records on the log not yet archived.",
    ),
    gauge(
        ARCHIVE_LAG_SECONDS,
        Unit::Seconds,
        &[],
        "Age of the oldest record not yet archived: the archive's recovery point.",
    ),
    gauge(
        DB_POOL_CONNECTIONS,
        Unit::Count,
        &["state"],
        "Postgres pool connections by state: in_use, idle.",
    ),
    gauge(
        KAFKA_PRODUCER_QUEUE,
        Unit::Count,
        &["client"],
        "Messages in a producer's librdkafka queue, not yet acknowledged.",
    ),
    gauge(
        KAFKA_REQUEST_LATENCY,
        Unit::Seconds,
        &["client", "broker"],
        "Average broker round trip over librdkafka's last statistics window.",
    ),
    gauge(
        KAFKA_BROKER_UP,
        Unit::Count,
        &["client", "broker"],
        "1 when librdkafka's connection to the broker is UP.",
    ),
    gauge(
        BREAKER_STATE,
        Unit::Count,
        &["component", "port"],
        "A port's circuit breaker: 0 closed, 1 half_open, 2 open.",
    ),
    gauge(
        DEPENDENCY_UP,
        Unit::Count,
        &["dependency"],
        "1 when the readiness probe reaches the dependency (postgres, kafka).",
    ),
    gauge(READY, Unit::Count, &[], "1 when /readyz answers 200."),
    gauge(
        PROCESS_RESIDENT_MEMORY,
        Unit::Bytes,
        &[],
        "Resident set size of the process (/proc/self/statm).",
    ),
    gauge(
        PROCESS_CPU,
        Unit::Seconds,
        &[],
        "User and system CPU time of the process (/proc/self/stat).",
    ),
    gauge(
        BUILD_INFO,
        Unit::Count,
        &["version"],
        "Always 1; the version is the label.",
    ),
];

/// Why a batch attempt failed, as `orderflow_batch_failures_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A record's handler failed in a way worth retrying (a provider timeout or 5xx, a
    /// deadlock): its order parks and is retried with backoff.
    Retryable,
    /// A dependency was unavailable: the database for the whole batch, or a service whose
    /// circuit breaker refused the call.
    Unavailable,
    /// A record broke a rule or a provider refused it for good (dead-lettered), or the batch
    /// hit an error that no retry mends.
    Permanent,
    /// A record that does not decode: dead-lettered on sight.
    Poison,
}

impl FailureKind {
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Retryable,
        FailureKind::Unavailable,
        FailureKind::Permanent,
        FailureKind::Poison,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Permanent => "permanent",
            FailureKind::Poison => "poison",
        }
    }
}

/// One component's counters and histograms, created once when the component starts: recording
/// a batch then costs a few atomic adds and allocates nothing. Handles made before the recorder
/// is installed (or in a process without one) record nothing.
#[derive(Clone)]
pub struct ComponentMetrics {
    pub component: &'static str,
    pub consumed: Counter,
    pub applied: Counter,
    pub duplicate: Counter,
    pub ignored: Counter,
    pub parked: Counter,
    pub dead_lettered: Counter,
    pub published: Counter,
    failures: [Counter; 4],
    pub batch_records: Histogram,
    pub batch_duration: Histogram,
    pub handler_duration: Histogram,
    pub commit_database: Histogram,
    pub commit_offsets: Histogram,
}

impl ComponentMetrics {
    /// Handles labelled `component` (one of the catalog's component names).
    pub fn new(component: &'static str) -> Self {
        let counter = |name: &'static str| metrics::counter!(name, "component" => component);
        let histogram = |name: &'static str| metrics::histogram!(name, "component" => component);
        let commit = |kind: &'static str| metrics::histogram!(COMMIT_DURATION, "component" => component, "kind" => kind);
        ComponentMetrics {
            component,
            consumed: counter(RECORDS_CONSUMED),
            applied: counter(RECORDS_APPLIED),
            duplicate: counter(RECORDS_DUPLICATE),
            ignored: counter(RECORDS_IGNORED),
            parked: counter(ORDERS_PARKED),
            dead_lettered: counter(RECORDS_DEAD_LETTERED),
            published: counter(EVENTS_PUBLISHED),
            failures: FailureKind::ALL.map(|kind| {
                metrics::counter!(BATCH_FAILURES, "component" => component, "kind" => kind.as_str())
            }),
            batch_records: histogram(BATCH_RECORDS),
            batch_duration: histogram(BATCH_DURATION),
            handler_duration: histogram(HANDLER_DURATION),
            commit_database: commit("database"),
            commit_offsets: commit("offsets"),
        }
    }

    /// The failure counter of `kind`.
    pub fn failure(&self, kind: FailureKind) -> &Counter {
        let index = FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        &self.failures[index]
    }
}

/// Whether this process installed the recorder (its admin listener is on). Clients ask
/// librdkafka for statistics only then: nobody would read them otherwise.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// How often histogram samples are folded into their buckets when nobody scrapes: bounds the
/// memory an unscraped process holds.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle; installs the global recorder on the first call.
///
/// Idempotent and safe from many threads and tests in one process: the first call builds the
/// recorder with the catalog's buckets, installs it, describes every catalog metric, sets
/// `orderflow_build_info` and starts a small upkeep thread. If some other recorder was
/// installed first (not something orderflow does), a warning is logged and the handle renders
/// only what this recorder sees: nothing.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for metric in CATALOG.iter().filter(|m| m.kind == Kind::Histogram) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), metric.buckets)
                // Only an empty bucket list is refused, and every catalog histogram has buckets
                // (the `histograms_have_ascending_buckets` test checks it).
                .expect("catalog histograms have buckets");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
            return handle;
        }
        describe_all();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started; histograms drain on scrape only");
        }
        handle
    })
}

/// The Prometheus text exposition of every series recorded so far (installs the recorder if
/// nobody has yet).
pub fn render() -> String {
    recorder().render()
}

/// `# HELP` lines (and units) for the whole catalog.
fn describe_all() {
    for m in CATALOG {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.unit, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.unit, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.unit, m.help),
        }
    }
}

/// The catalog entry of `name`, if it has one.
pub fn lookup(name: &str) -> Option<&'static Metric> {
    CATALOG.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for m in CATALOG {
            assert!(m.name.starts_with("orderflow_"), "{}", m.name);
            let total = m.name.ends_with("_total");
            match m.kind {
                Kind::Counter => assert!(total, "counter {} must end in _total", m.name),
                // The one gauge named _total is CPU seconds, a float that only grows.
                Kind::Gauge => assert!(!total || m.name == PROCESS_CPU, "{}", m.name),
                Kind::Histogram => assert!(!total, "{}", m.name),
            }
            if m.unit == Unit::Seconds {
                assert!(m.name.contains("_seconds"), "{} is in seconds", m.name);
            }
            if m.unit == Unit::Bytes {
                assert!(m.name.ends_with("_bytes"), "{} is in bytes", m.name);
            }
            for label in m.labels {
                assert!(
                    !label.contains("order") && !label.contains("customer"),
                    "{}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, m) in CATALOG.iter().enumerate() {
            assert!(
                CATALOG[i + 1..].iter().all(|o| o.name != m.name),
                "{} twice",
                m.name
            );
        }
    }

    #[test]
    fn histograms_have_ascending_buckets() {
        for m in CATALOG {
            if m.kind == Kind::Histogram {
                assert!(!m.buckets.is_empty(), "{}", m.name);
                assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
            } else {
                assert!(m.buckets.is_empty(), "{}", m.name);
            }
        }
    }

    #[test]
    fn render_shows_recorded_series_with_help_and_buckets() {
        recorder();
        recorder(); // a second call is harmless
        metrics::counter!(RECORDS_CONSUMED, "component" => "unit_test").increment(3);
        metrics::histogram!(BATCH_RECORDS, "component" => "unit_test").record(7.0);
        let text = render();
        assert!(
            text.contains("# HELP orderflow_records_consumed_total Records polled"),
            "{text}"
        );
        assert!(
            text.contains("orderflow_records_consumed_total{component=\"unit_test\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("orderflow_batch_records_bucket{component=\"unit_test\",le=\"10\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE orderflow_batch_records histogram"),
            "{text}"
        );
        assert!(text.contains("orderflow_build_info{version="), "{text}");
    }
}

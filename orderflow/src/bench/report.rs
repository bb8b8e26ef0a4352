//! What `orderflow bench` reports: the JSON document (every figure, with the definitions of
//! the derived ones written into it) and the table printed from it. Pure: building the figures
//! is `mod.rs`'s job, drawing them `chart.rs`'s.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::raw::{BrokerLimit, PostgresLimit};
use super::stats::Percentiles;

/// The JSON document's format; bump on an incompatible change.
pub const SCHEMA: &str = "orderflow-bench/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// Names the run in tables and charts (`--label`, else the binary's file name).
    pub label: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub machine: Machine,
    pub orderflow_bin: String,
    pub orderflow_version: String,
    pub topic: String,
    pub database: String,
    pub partitions: i32,
    pub options: BTreeMap<String, serde_json::Value>,
    pub processes: Processes,
    pub raw: Raw,
    pub granularity: Granularity,
    pub warmup_secs: Option<f64>,
    pub phases: Vec<PhaseReport>,
    /// Things the reader should know: rates not offered, a child that exited, cleanup.
    pub notes: Vec<String>,
    /// Set when the run stopped on an error; the phases before it are still reported.
    pub error: Option<String>,
    /// What each derived figure means.
    pub definitions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub load_average_before: Option<[f64; 3]>,
    pub load_average_after: Option<[f64; 3]>,
    pub kernel: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Processes {
    pub orderflow_pid: Option<i32>,
    pub postmaster_pid: Option<i32>,
    pub kafka_pids: Vec<i32>,
    pub kafka_found_by: String,
    pub bench_pid: i32,
    /// VmHWM of the child over its whole life, KiB.
    pub orderflow_hwm_kb_lifetime: Option<u64>,
    pub orderflow_exit: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Raw {
    /// Synthetic orders whose complete histories were written (about five records each).
    pub orders: usize,
    pub broker: Option<BrokerLimit>,
    pub postgres: Option<PostgresLimit>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Granularity {
    /// Create → terminal comes from two record timestamps: millisecond resolution.
    pub terminal_ms: f64,
    /// Create → visible is known to within one poll period plus one query.
    pub visible_poll_interval_ms: f64,
    pub visible_polls: u64,
    pub visible_query_mean_ms: Option<f64>,
    pub visible_rows_per_poll_mean: Option<f64>,
    pub visible_poll_errors: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub terminal: Option<Percentiles>,
    pub visible: Option<Percentiles>,
}

/// CPU seconds by process group; `None` where the process could not be found.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cpu {
    pub orderflow: Option<f64>,
    /// The whole Postgres cluster (every database's backends and the background processes).
    pub postgres: Option<f64>,
    /// The pipeline's backends on the bench database alone (a lower bound; see definitions).
    #[serde(default)]
    pub postgres_pipeline: Option<f64>,
    /// The bench's own backends (the read-model poll, counts).
    #[serde(default)]
    pub postgres_bench: Option<f64>,
    pub kafka: Option<f64>,
    pub bench: Option<f64>,
    /// Everything else the machine ran meanwhile (busy time of all cores minus the above):
    /// other people's work on a shared machine, the kernel's. Large means disturbed figures.
    #[serde(default)]
    pub other: Option<f64>,
    /// Of `other`: user processes the bench does not watch (other people's work).
    #[serde(default)]
    pub other_processes: Option<f64>,
    /// Of `other`: kernel threads (journal commits and writeback for the fsyncs, memory
    /// management): mostly work the run itself causes.
    #[serde(default)]
    pub kernel_threads: Option<f64>,
}

impl Cpu {
    pub fn per(&self, orders: usize) -> Cpu {
        let n = orders as f64;
        let each = |v: Option<f64>| v.filter(|_| orders > 0).map(|v| v / n);
        Cpu {
            orderflow: each(self.orderflow),
            postgres: each(self.postgres),
            postgres_pipeline: each(self.postgres_pipeline),
            postgres_bench: each(self.postgres_bench),
            kafka: each(self.kafka),
            bench: each(self.bench),
            other: each(self.other),
            other_processes: each(self.other_processes),
            kernel_threads: each(self.kernel_threads),
        }
    }

    /// CPU of every process group measured (the cluster's figure already holds the
    /// per-database ones).
    pub fn total(&self) -> f64 {
        [self.orderflow, self.postgres, self.kafka, self.bench]
            .iter()
            .flatten()
            .sum()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rss {
    /// Largest VmRSS seen by sampling every 200 ms during the phase, KiB.
    pub peak_sampled_kb: Option<u64>,
    /// VmHWM at the phase's end, KiB.
    pub hwm_kb: Option<u64>,
    /// "phase" when the peak was reset at the phase's start, else "process start".
    pub hwm_since: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakSample {
    pub t_secs: f64,
    pub rss_kb: Option<u64>,
    pub hwm_kb: Option<u64>,
    /// The child's CPU seconds since the soak began.
    pub orderflow_cpu_secs: Option<f64>,
    /// The child's CPU over the last interval, in cores.
    pub orderflow_cpu_cores: Option<f64>,
    pub published: usize,
    pub terminal: usize,
    pub visible: usize,
}

/// Latency of the orders published in one window of a soak.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakWindow {
    pub from_secs: f64,
    pub orders: usize,
    pub terminal: Option<Percentiles>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    /// "closed", "open" or "soak".
    pub kind: String,
    pub offered_per_s: Option<u32>,
    pub planned: usize,
    pub published: usize,
    pub terminal: usize,
    pub visible: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub publish_secs: f64,
    /// First publish to last terminal record.
    pub duration_secs: Option<f64>,
    /// What the per-second figures divide by (see `definitions.orders_per_s`).
    pub rate_window_secs: Option<f64>,
    pub orders_per_s: Option<f64>,
    pub latency_ms: Latency,
    pub log_records: u64,
    pub log_records_per_s: Option<f64>,
    pub log_records_per_order: Option<f64>,
    pub db_rows: Option<i64>,
    pub db_rows_per_s: Option<f64>,
    pub db_rows_per_order: Option<f64>,
    pub ratio_log: Option<f64>,
    pub ratio_db: Option<f64>,
    pub broker_ceiling_orders_per_s: Option<f64>,
    pub postgres_ceiling_orders_per_s: Option<f64>,
    /// From the phase's first publish until every order was terminal and visible.
    pub cpu_window_secs: f64,
    pub cpu_seconds: Cpu,
    pub cpu_seconds_per_order: Cpu,
    pub rss: Rss,
    /// Open loops: did the pipeline keep up (see `definitions.kept_up`)?
    pub kept_up: Option<bool>,
    pub stopped_early: bool,
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soak_samples: Vec<SoakSample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soak_windows: Vec<SoakWindow>,
}

/// The definitions written into every report.
pub fn definitions() -> BTreeMap<String, String> {
    [
        ("orders_per_s", "orders terminal in the phase / rate_window_secs; closed loop: last terminal record's timestamp - first OrderCreated's timestamp; open loop and soak: last - first terminal record's timestamp (the steady completion rate, not diluted by the first order's latency). log_records_per_s and db_rows_per_s divide by the same window"),
        ("latency_ms.terminal", "per order: timestamp of its OrderCompleted/OrderCancelled record - timestamp of its OrderCreated record (stamped by the bench when it sent the order); nearest-rank percentiles"),
        ("latency_ms.visible", "per order: start of the first poll of analytics.orders that shows it completed or cancelled - the moment the bench sent it; granularity in `granularity`"),
        ("log_records", "records of the phase's orders on the log (OrderCreated and every reply, repeats included), seen by the bench's own consumer"),
        ("db_rows", "rows added to pipeline.inbox + pipeline.outbox during the phase (the steps' exactly-once bookkeeping, counted after the phase drained)"),
        ("ratio_log", "log_records_per_s / raw.broker.produce_records_per_s: the share of the broker's bare produce rate (same record count and sizes, same producer settings) the pipeline's log traffic reached"),
        ("ratio_db", "db_rows_per_s / raw.postgres.rows_per_s: the share of Postgres's bare rate for rows of the same shape in the same 500-row batches that the pipeline's inbox and outbox writes reached; state tables and read models are extra work the raw test does not do"),
        ("broker_ceiling_orders_per_s", "raw.broker.produce_records_per_s / log_records_per_order: orders/s if the broker did nothing else"),
        ("postgres_ceiling_orders_per_s", "raw.postgres.rows_per_s / db_rows_per_order: orders/s if Postgres wrote only the inbox and outbox rows"),
        ("cpu_seconds", "utime+stime deltas from /proc over cpu_window_secs: orderflow = the `orderflow run` child; postgres = the whole cluster serving the bench database (the postmaster, its live children and those it reaped: other databases' work on a shared server counts too); postgres_pipeline = only the backends connected to the bench database other than the bench's own (a lower bound: a backend that ended during the phase is missed), shown in brackets in the table; postgres_bench = the bench's own backends (read-model polls, counts); kafka = the broker JVM(s); bench = this process (publisher, log watcher, read-model poller); other = the machine's busy time (/proc/stat, all cores) minus all of these, of which other_processes = user processes not named above (other people's work: a phase notes it when it exceeds 5 % of the machine, the figures are then disturbed) and kernel_threads = kernel threads (journal commits and writeback for the fsyncs, memory management: mostly caused by the run itself); the rest is interrupt time"),
        ("rss", "the orderflow child's VmRSS sampled every 200 ms (peak_sampled_kb) and its VmHWM at the phase's end"),
        ("kept_up", "an open loop kept up when it was not stopped early, completed at least 85 % of the offered orders/s, and the median create-to-terminal latency of the last quarter of its orders is at most twice that of the first quarter plus 500 ms; a higher rate is offered only after a rate was kept up"),
        ("stopped_early", "an open loop stops offering once an order has waited longer than --max-latency-secs for its terminal record"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

fn triple(p: &Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("{:.0}/{:.0}/{:.0}", p.p50, p.p99, p.p999),
        None => "-".into(),
    }
}

fn ms(v: Option<f64>) -> String {
    num(v.map(|s| s * 1000.0), 2)
}

/// The table `orderflow bench` prints.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "orderflow bench: {} ({}), {} cpus, topic {}, database {}",
        report.label, report.orderflow_version, report.machine.cpus, report.topic, report.database
    );
    match (&report.raw.broker, &report.raw.postgres) {
        (Some(b), Some(p)) => {
            let _ = writeln!(
                out,
                "raw limits (same run): broker produce {:.0} records/s, consume {:.0} records/s \
                 ({} records, {:.0} B mean); Postgres {:.0} rows/s ({} rows, {} per batch, {} writers)",
                b.produce_records_per_s,
                b.consume_records_per_s,
                b.records,
                b.record_bytes_mean,
                p.rows_per_s,
                p.rows,
                p.batch_rows,
                p.writers
            );
        }
        _ => {
            let _ = writeln!(out, "raw limits: not measured");
        }
    }
    let _ = writeln!(
        out,
        "latency: create→terminal from record timestamps (1 ms); create→visible by polling \
         analytics.orders every {:.0} ms (mean query {} ms)",
        report.granularity.visible_poll_interval_ms,
        num(report.granularity.visible_query_mean_ms, 1)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>7} {:>8}  {:>17}  {:>17}  {:>35}  {:>7} {:>6} {:>6}",
        "phase",
        "offered",
        "orders",
        "orders/s",
        "terminal ms",
        "visible ms",
        "CPU ms/order",
        "RSS MB",
        "log×",
        "db×"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>7} {:>8}  {:>17}  {:>17}  {:>35}  {:>7} {:>6} {:>6}",
        "",
        "/s",
        "",
        "",
        "p50/p99/p99.9",
        "p50/p99/p99.9",
        "orderflow/pg(db)/kafka/bench",
        "peak",
        "",
        ""
    );
    for phase in &report.phases {
        let cpu = &phase.cpu_seconds_per_order;
        let cpu = format!(
            "{}/{}({})/{}/{}",
            ms(cpu.orderflow),
            ms(cpu.postgres),
            ms(cpu.postgres_pipeline),
            ms(cpu.kafka),
            ms(cpu.bench)
        );
        let rss_kb = phase
            .rss
            .peak_sampled_kb
            .max(phase.rss.hwm_kb.filter(|_| phase.rss.hwm_since == "phase"));
        let _ = writeln!(
            out,
            "{:<10} {:>7} {:>7} {:>8}  {:>17}  {:>17}  {:>35}  {:>7} {:>6} {:>6}",
            phase.name,
            phase
                .offered_per_s
                .map_or_else(|| "-".to_string(), |r| r.to_string()),
            phase.terminal,
            num(phase.orders_per_s, 0),
            triple(&phase.latency_ms.terminal),
            triple(&phase.latency_ms.visible),
            cpu,
            num(rss_kb.map(|kb| kb as f64 / 1024.0), 0),
            num(phase.ratio_log, 3),
            num(phase.ratio_db, 3),
        );
        if let Some(note) = &phase.note {
            let _ = writeln!(out, "{:<10} ↳ {note}", "");
        }
    }
    for phase in report.phases.iter().filter(|p| !p.soak_samples.is_empty()) {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}: the orderflow child every 10 s", phase.name);
        let _ = writeln!(
            out,
            "{:>7} {:>9} {:>9} {:>10} {:>10} {:>10} {:>17}",
            "t s",
            "RSS MB",
            "HWM MB",
            "CPU cores",
            "published",
            "terminal",
            "terminal ms p50/p99/p99.9"
        );
        for sample in &phase.soak_samples {
            let window = phase
                .soak_windows
                .iter()
                .rev()
                .find(|w| w.from_secs <= sample.t_secs - 10.0 + 1e-6)
                .and_then(|w| w.terminal.clone());
            let _ = writeln!(
                out,
                "{:>7.0} {:>9} {:>9} {:>10} {:>10} {:>10} {:>17}",
                sample.t_secs,
                num(sample.rss_kb.map(|kb| kb as f64 / 1024.0), 1),
                num(sample.hwm_kb.map(|kb| kb as f64 / 1024.0), 1),
                num(sample.orderflow_cpu_cores, 2),
                sample.published,
                sample.terminal,
                triple(&window),
            );
        }
    }
    if let Some(hwm) = report.processes.orderflow_hwm_kb_lifetime {
        let _ = writeln!(
            out,
            "\norderflow child peak RSS over the whole run (VmHWM): {:.0} MB",
            hwm as f64 / 1024.0
        );
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(error) = &report.error {
        let _ = writeln!(out, "the run stopped early: {error}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_order_divides_what_was_measured() {
        let cpu = Cpu {
            orderflow: Some(2.0),
            postgres: Some(4.0),
            postgres_pipeline: Some(3.0),
            postgres_bench: None,
            kafka: None,
            bench: Some(0.5),
            other: Some(9.0),
            other_processes: Some(1.0),
            kernel_threads: Some(2.0),
        };
        let per = cpu.per(1000);
        assert_eq!(per.orderflow, Some(0.002));
        assert_eq!(per.postgres, Some(0.004));
        assert_eq!(per.kafka, None);
        assert_eq!(per.bench, Some(0.0005));
        assert_eq!(cpu.per(0).orderflow, None);
        assert!((cpu.total() - 6.5).abs() < 1e-12);
    }
}

//! `orderflow bench`: in one run on one machine, the raw limits of the broker and of Postgres,
//! then the pipeline — an `orderflow run` child on a fresh topic and database — at full speed
//! (closed loop) and at fixed offered rates (open loop), or for minutes at one rate (soak);
//! orders/s, latency to terminal and to visible, CPU per order by process, peak RSS and the
//! ratio to the raw limits, printed, written as JSON and drawn as a chart.
//!
//! The bench only observes: it publishes the orders, reads the log with its own consumer and
//! reads the read model; it never touches the pipeline's state. It cleans up what it created
//! (child, database, topics) on every exit path unless `--keep` is given.
//!
//! Files: `raw.rs` the raw limits, `child.rs` the process under test, `pipeline.rs` publishing
//! and observing, `procfs.rs` CPU and memory from /proc, `stats.rs` the arithmetic,
//! `report.rs` the JSON and the table, `chart.rs` the SVG.

pub mod chart;
pub mod child;
pub mod pipeline;
pub mod procfs;
pub mod raw;
pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use child::{Running, Target};
use pipeline::{PhaseTrack, PollStats, Publisher, Shared};
use report::{Cpu, Latency, PhaseReport, Report, Rss, SoakSample, SoakWindow};

use crate::settings::Settings;

/// The command line of `orderflow bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Orders of the closed loop, published at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub orders: u32,
    /// Offered rates of the open loop, orders/s, comma separated; each runs --seconds.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000", value_parser = parse_rate)]
    pub rates: Vec<u32>,
    /// Seconds each open-loop rate is offered.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub seconds: u32,
    /// Soak instead of the closed and open loops: offer --rate for this many minutes and
    /// report the child's RSS and CPU every 10 s.
    #[arg(long, requires = "rate", conflicts_with_all = ["orders", "rates", "seconds"],
          value_parser = clap::value_parser!(u32).range(1..))]
    pub soak_minutes: Option<u32>,
    /// The soak's offered rate, orders/s.
    #[arg(long, requires = "soak_minutes", value_parser = parse_rate)]
    pub rate: Option<u32>,
    /// The orderflow binary to measure [default: this one].
    #[arg(long, value_name = "PATH")]
    pub orderflow_bin: Option<PathBuf>,
    /// Name of the run in the table and the chart [default: the binary's file name].
    #[arg(long)]
    pub label: Option<String>,
    /// The JSON report [default: .run/bench/bench-<stamp>.json].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The latency-vs-throughput chart (SVG) [default: the JSON's path with .svg].
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Also draw these earlier reports (JSON files of orderflow bench) on the chart.
    #[arg(long, value_name = "JSON")]
    pub compare: Vec<PathBuf>,
    /// Measure nothing: print the table of this report and draw it (with any --compare) into
    /// --chart [default: the report's path with .svg].
    #[arg(long, value_name = "JSON", conflicts_with_all = ["orderflow_bin", "out", "keep", "soak_minutes"])]
    pub redraw: Option<PathBuf>,
    /// Leave the bench's database and topic (and the child's log) in place.
    #[arg(long)]
    pub keep: bool,
    /// Partitions of the bench topic and the scratch topic [default: kafka.partitions].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
    /// How often to poll analytics.orders for visible orders, ms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,
    /// Stop offering a rate once an order has waited this long for its terminal record.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_latency_secs: u64,
    /// After publishing, wait at most this long for every order to be terminal and visible.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub drain_secs: u64,
    /// Seed of the order generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Connections writing batches side by side in the raw Postgres measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub pg_writers: u64,
    /// At most this many synthetic orders (about five records each) for the raw limits.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub raw_orders_max: u32,
}

/// One offered rate, orders/s: a whole number of at least 1.
pub fn parse_rate(text: &str) -> Result<u32, String> {
    let rate: u32 = text.trim().parse().map_err(|_| {
        format!("{text:?} is not a rate: give whole orders per second, e.g. 250 or 250,500,1000")
    })?;
    if rate == 0 {
        return Err("0 is not a rate: give orders per second of at least 1".to_string());
    }
    Ok(rate)
}

/// `url` with its database replaced by `database` (user, host, port and query kept).
pub fn with_database(url: &str, database: &str) -> Option<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://")? + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| i + authority_start);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

/// Host and port of a database URL, without user or password, for messages.
fn host_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_string()
}

/// What a run does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseSpec {
    Closed { orders: usize },
    Open { rate: u32, secs: u64 },
    Soak { rate: u32, secs: u64 },
}

impl PhaseSpec {
    pub fn name(&self) -> String {
        match self {
            PhaseSpec::Closed { .. } => "closed".into(),
            PhaseSpec::Open { rate, .. } => format!("open {rate}"),
            PhaseSpec::Soak { rate, .. } => format!("soak {rate}"),
        }
    }

    pub fn planned(&self) -> usize {
        match self {
            PhaseSpec::Closed { orders } => *orders,
            PhaseSpec::Open { rate, secs } | PhaseSpec::Soak { rate, secs } => {
                usize::try_from(u64::from(*rate) * secs).unwrap_or(usize::MAX)
            }
        }
    }
}

/// The phases `options` ask for: a soak alone, or the closed loop then the rates in rising
/// order (each once).
pub fn plan(options: &Options) -> Vec<PhaseSpec> {
    if let (Some(minutes), Some(rate)) = (options.soak_minutes, options.rate) {
        return vec![PhaseSpec::Soak {
            rate,
            secs: u64::from(minutes) * 60,
        }];
    }
    let mut rates = options.rates.clone();
    rates.sort_unstable();
    rates.dedup();
    std::iter::once(PhaseSpec::Closed {
        orders: options.orders as usize,
    })
    .chain(rates.into_iter().map(|rate| PhaseSpec::Open {
        rate,
        secs: u64::from(options.seconds),
    }))
    .collect()
}

/// Orders published before the measured phases: every consumer group joins and warms up.
const WARMUP_ORDERS: usize = 20;
const WARMUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How often loops check the child, signals and the stop rule.
const CHECK_EVERY: Duration = Duration::from_millis(100);
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(10);
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long a stopping child may take to finish its batches.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Run the benchmark. `stop` is cancelled on SIGINT/SIGTERM: the run then stops the child and
/// cleans up. Returns the report (also when a phase failed: see `Report::error`) and whether
/// the run succeeded.
pub async fn run(
    settings: &Settings,
    config_file: Option<&Path>,
    options: &Options,
    stop: CancellationToken,
) -> anyhow::Result<Report> {
    if let Some(path) = &options.redraw {
        return redraw(path, options);
    }
    let stamp = format!(
        "{}-{}",
        Utc::now().format("%Y%m%d%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..4]
    );
    let bin = match &options.orderflow_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot tell where this orderflow binary is")?,
    };
    let label = options.label.clone().unwrap_or_else(|| {
        bin.file_name()
            .map_or_else(|| "orderflow".into(), |n| n.to_string_lossy().to_string())
    });
    let partitions = options.partitions.unwrap_or(settings.kafka.partitions);
    let database = format!("orderflow_bench_{}", stamp.replace('-', "_"));
    let database_url = with_database(&settings.database.url, &database).with_context(|| {
        format!(
            "database.url {:?} is not a postgres://host/database URL",
            host_of(&settings.database.url)
        )
    })?;
    let admin_url = with_database(&settings.database.url, "postgres")
        .context("database.url is not a postgres:// URL")?;
    let mut bench_settings = settings.clone();
    bench_settings.kafka.topic = format!("bench-{stamp}");
    bench_settings.kafka.intake_topic = format!("bench-{stamp}-intake");
    bench_settings.kafka.group_prefix = format!("bench-{stamp}");
    bench_settings.database.url = database_url.clone();
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!(".run/bench/bench-{stamp}.json")));
    let chart = options
        .chart
        .clone()
        .unwrap_or_else(|| out.with_extension("svg"));
    let log = out.with_extension("child.log");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let compared: Vec<Report> = options
        .compare
        .iter()
        .map(|path| load_report(path))
        .collect::<anyhow::Result<_>>()?;

    preflight(settings, &admin_url).await?;
    let target = Target {
        bin: bin.clone(),
        config: config_file.map(Path::to_path_buf),
        env: vec![
            (
                "ORDERFLOW_KAFKA__TOPIC".into(),
                bench_settings.kafka.topic.clone(),
            ),
            (
                "ORDERFLOW_KAFKA__INTAKE_TOPIC".into(),
                bench_settings.kafka.intake_topic.clone(),
            ),
            (
                "ORDERFLOW_KAFKA__GROUP_PREFIX".into(),
                bench_settings.kafka.group_prefix.clone(),
            ),
            ("ORDERFLOW_DATABASE__URL".into(), database_url.clone()),
            // The pipeline's components only: an archiver would be extra work the bench does not
            // ask for.
            ("ORDERFLOW_ARCHIVE__DIR".into(), String::new()),
        ],
    };
    let version = target.version().await?;

    let mut report = Report {
        schema: report::SCHEMA.into(),
        label,
        started_at: Utc::now(),
        finished_at: None,
        machine: report::Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average_before: load_average(),
            load_average_after: None,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
        },
        orderflow_bin: bin.display().to_string(),
        orderflow_version: version,
        topic: bench_settings.kafka.topic.clone(),
        database: format!("{database} on {}", host_of(&database_url)),
        partitions,
        options: echo(options),
        processes: report::Processes {
            bench_pid: i32::try_from(std::process::id()).unwrap_or(-1),
            ..Default::default()
        },
        raw: report::Raw::default(),
        granularity: report::Granularity {
            terminal_ms: 1.0,
            visible_poll_interval_ms: options.poll_ms as f64,
            ..Default::default()
        },
        warmup_secs: None,
        phases: Vec::new(),
        notes: Vec::new(),
        error: None,
        definitions: report::definitions(),
    };
    eprintln!(
        "bench {stamp}: {} against topic {} and database {database}; report {}",
        bin.display(),
        bench_settings.kafka.topic,
        out.display()
    );

    let run = Run {
        cpus: report.machine.cpus,
        settings: bench_settings,
        target,
        options: options.clone(),
        stamp: stamp.clone(),
        partitions,
        log: log.clone(),
        stop,
    };
    let measured = run.measure(&mut report).await;
    if let Err(error) = &measured {
        report.error = Some(format!("{error:#}"));
    }
    // Cleanup on every path; its failures are reported, not allowed to hide the run's.
    if options.keep {
        report.notes.push(format!(
            "kept: database {database}, topic {}, child log {}",
            run.settings.kafka.topic,
            log.display()
        ));
    } else {
        for problem in cleanup(&run.settings, &admin_url, &database, &stamp).await {
            report.notes.push(problem);
        }
        if measured.is_ok() {
            let _ = std::fs::remove_file(&log);
        }
    }
    report.finished_at = Some(Utc::now());
    report.machine.load_average_after = load_average();

    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(&out, json).with_context(|| format!("writing {}", out.display()))?;
    let mut runs: Vec<&Report> = vec![&report];
    runs.extend(compared.iter());
    if let Err(error) = chart::draw(&chart, &runs) {
        report.notes.push(format!("no chart: {error:#}"));
    }
    print!("{}", report::render(&report));
    println!("report: {}", out.display());
    println!("chart:  {}", chart.display());
    measured.map(|()| report)
}

/// Read a report written by an earlier run.
fn load_report(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the report {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an orderflow bench report", path.display()))
}

/// `--redraw`: the table and the chart of reports already written.
fn redraw(path: &Path, options: &Options) -> anyhow::Result<Report> {
    let report = load_report(path)?;
    let compared: Vec<Report> = options
        .compare
        .iter()
        .map(|path| load_report(path))
        .collect::<anyhow::Result<_>>()?;
    let chart = options
        .chart
        .clone()
        .unwrap_or_else(|| path.with_extension("svg"));
    let mut runs: Vec<&Report> = vec![&report];
    runs.extend(compared.iter());
    chart::draw(&chart, &runs)?;
    print!("{}", report::render(&report));
    println!("chart:  {}", chart.display());
    Ok(report)
}

/// Fail early, and clearly, when the services are missing.
async fn preflight(settings: &Settings, admin_url: &str) -> anyhow::Result<()> {
    let kafka = settings.kafka.clone();
    tokio::task::spawn_blocking(move || platform::kafka::check_connection(&kafka))
        .await
        .context("the Kafka connection check did not finish")?
        .with_context(|| {
            format!(
                "orderflow bench needs the Kafka broker at {} (kafka.brokers); start it with \
                 scripts/dev-up",
                settings.kafka.brokers
            )
        })?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(admin_url)
        .await
        .with_context(|| {
            format!(
                "orderflow bench needs Postgres at {} (database.url; it creates and drops its own \
                 database there); start it with scripts/dev-up",
                host_of(admin_url)
            )
        })?;
    pool.close().await;
    Ok(())
}

/// Drop the bench's database and delete its topics; returns what could not be cleaned up.
async fn cleanup(settings: &Settings, admin_url: &str, database: &str, stamp: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(admin_url)
        .await
    {
        Ok(pool) => {
            let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .execute(&pool)
                .await;
            if let Err(error) = dropped {
                problems.push(format!("could not drop database {database}: {error}"));
            }
            pool.close().await;
        }
        Err(error) => problems.push(format!("could not drop database {database}: {error}")),
    }
    let topics = [
        format!("bench-{stamp}"),
        format!("bench-{stamp}-raw"),
        format!("bench-{stamp}-intake"),
    ];
    if let Err(error) = delete_topics(settings, &topics).await {
        problems.push(format!("could not delete topics {topics:?}: {error:#}"));
    }
    problems
}

async fn delete_topics(settings: &Settings, topics: &[String]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = platform::kafka::client_config(&settings.kafka)
        .create()
        .context("creating a Kafka admin client")?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&names, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => anyhow::bail!("deleting {name}: {code}"),
        }
    }
    Ok(())
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

fn echo(options: &Options) -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    [
        ("orders", json!(options.orders)),
        ("rates", json!(options.rates)),
        ("seconds", json!(options.seconds)),
        ("soak_minutes", json!(options.soak_minutes)),
        ("rate", json!(options.rate)),
        ("poll_ms", json!(options.poll_ms)),
        ("max_latency_secs", json!(options.max_latency_secs)),
        ("drain_secs", json!(options.drain_secs)),
        ("seed", json!(options.seed)),
        ("pg_writers", json!(options.pg_writers)),
        ("raw_orders_max", json!(options.raw_orders_max)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The processes whose CPU is accounted.
struct Watched {
    orderflow: i32,
    postmaster: Option<i32>,
    kafka: Vec<i32>,
    bench: i32,
    ticks_per_s: f64,
}

/// CPU ticks per process group at one moment.
#[derive(Debug, Clone, Default)]
struct Ticks {
    orderflow: Option<u64>,
    postgres: Option<u64>,
    /// Per backend of the bench database: the pipeline's, and the bench's own.
    pg_pipeline: Option<BTreeMap<i32, u64>>,
    pg_bench: Option<BTreeMap<i32, u64>>,
    kafka: Option<u64>,
    bench: Option<u64>,
    /// Busy time of every core together.
    machine: Option<u64>,
    /// Every process, to tell other people's work from the kernel's.
    all: Vec<procfs::Stat>,
}

/// `application_name` of the bench's own connections, so their Postgres time is told apart
/// from the pipeline's.
const BENCH_APPLICATION: &str = "orderflow-bench";

impl Watched {
    async fn sample(&self, pool: &PgPool) -> Ticks {
        let backends: Option<Vec<(i32, bool)>> = sqlx::query_as(
            "SELECT pid, application_name = $1 FROM pg_stat_activity
             WHERE datname = current_database() AND backend_type = 'client backend'",
        )
        .bind(BENCH_APPLICATION)
        .fetch_all(pool)
        .await
        .map_err(|error| tracing::warn!(%error, "cannot list the bench database's backends"))
        .ok();
        let stats = procfs::all_stats();
        let own = |pid: i32| {
            stats
                .iter()
                .find(|s| s.pid == pid)
                .map(procfs::Stat::total_ticks)
        };
        let kafka: Vec<u64> = self.kafka.iter().filter_map(|pid| own(*pid)).collect();
        let local = self.postmaster.is_some();
        let backends_of = |bench: bool| {
            let backends = backends.as_ref().filter(|_| local)?;
            Some(
                backends
                    .iter()
                    .filter(|(_, ours)| *ours == bench)
                    .filter_map(|(pid, _)| Some((*pid, own(*pid)?)))
                    .collect::<BTreeMap<i32, u64>>(),
            )
        };
        Ticks {
            orderflow: own(self.orderflow),
            postgres: self
                .postmaster
                .and_then(|pm| procfs::tree_ticks(&stats, pm)),
            pg_pipeline: backends_of(false),
            pg_bench: backends_of(true),
            kafka: (!kafka.is_empty()).then(|| kafka.iter().sum()),
            bench: own(self.bench),
            machine: procfs::read_machine_busy(),
            all: stats,
        }
    }

    /// Whether a process is one of those whose CPU is reported by name.
    fn is_watched(&self, stat: &procfs::Stat) -> bool {
        stat.pid == self.orderflow
            || stat.pid == self.bench
            || self.kafka.contains(&stat.pid)
            || self
                .postmaster
                .is_some_and(|pm| stat.pid == pm || stat.ppid == pm)
    }

    fn seconds(&self, before: &Ticks, after: &Ticks) -> Cpu {
        let secs = |ticks: u64| ticks as f64 / self.ticks_per_s;
        let delta = |b: Option<u64>, a: Option<u64>| Some(secs(a?.saturating_sub(b?)));
        let backends = |b: &Option<BTreeMap<i32, u64>>, a: &Option<BTreeMap<i32, u64>>| {
            Some(secs(backend_ticks(b.as_ref()?, a.as_ref()?)))
        };
        let mut cpu = Cpu {
            orderflow: delta(before.orderflow, after.orderflow),
            postgres: delta(before.postgres, after.postgres),
            postgres_pipeline: backends(&before.pg_pipeline, &after.pg_pipeline),
            postgres_bench: backends(&before.pg_bench, &after.pg_bench),
            kafka: delta(before.kafka, after.kafka),
            bench: delta(before.bench, after.bench),
            other: None,
            other_processes: None,
            kernel_threads: None,
        };
        cpu.other = delta(before.machine, after.machine).map(|all| (all - cpu.total()).max(0.0));
        if !before.all.is_empty() && !after.all.is_empty() {
            let (processes, kernel) =
                procfs::unwatched_ticks(&before.all, &after.all, |s| self.is_watched(s));
            // Never more than the machine's unexplained busy time.
            let cap = cpu.other.unwrap_or(f64::INFINITY);
            cpu.other_processes = Some(secs(processes).min(cap));
            cpu.kernel_threads = Some(secs(kernel).min(cap));
        }
        cpu
    }
}

/// CPU ticks the backends alive at the end spent since the start: a backend that was not
/// there at the start began during the interval, so all its time counts. (A backend that
/// ended in between is missed: the figure is a lower bound; pooled connections rarely end.)
fn backend_ticks(before: &BTreeMap<i32, u64>, after: &BTreeMap<i32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, ticks)| ticks.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

struct Run {
    cpus: usize,
    settings: Settings,
    target: Target,
    options: Options,
    stamp: String,
    partitions: i32,
    log: PathBuf,
    stop: CancellationToken,
}

/// What the phases share while the child runs.
struct Live {
    child: Running,
    tracker: Shared,
    publisher: Publisher,
    pool: PgPool,
    watched: Watched,
    rss_max_kb: Arc<AtomicU64>,
    raw_broker_rps: Option<f64>,
    raw_pg_rps: Option<f64>,
}

impl Run {
    fn interrupted(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.stop.is_cancelled(),
            "interrupted (SIGINT/SIGTERM): the pipeline was stopped and the bench's database and \
             topics removed"
        );
        Ok(())
    }

    async fn measure(&self, report: &mut Report) -> anyhow::Result<()> {
        let phases = plan(&self.options);
        let total_orders: usize =
            phases.iter().map(PhaseSpec::planned).sum::<usize>() + WARMUP_ORDERS;

        eprintln!(
            "setting up: migrate, topics, stock ({})",
            self.target.bin.display()
        );
        self.target.run_to_end(&["migrate"]).await?;
        self.target
            .run_to_end(&["topics", "--partitions", &self.partitions.to_string()])
            .await?;
        // Enough of every sku for every order (demo::seed_stock's bound), set through the
        // binary under test so its own schema is used.
        let per_sku = i64::try_from(total_orders.max(1) * 9).unwrap_or(i64::MAX);
        let mut stock: Vec<String> = (0..crate::demo::STOCKED_SKUS)
            .map(|i| format!("{}={per_sku}", crate::demo::stocked_sku(i)))
            .collect();
        stock.push(format!("{}=0", crate::demo::EMPTY_SKU));
        let mut args: Vec<&str> = vec!["stock", "set"];
        args.extend(stock.iter().map(String::as_str));
        self.target.run_to_end(&args).await?;
        self.interrupted()?;

        let connect = sqlx::postgres::PgConnectOptions::from_str(&self.settings.database.url)
            .context("database.url")?
            .application_name(BENCH_APPLICATION);
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(self.options.pg_writers).unwrap_or(4) + 2)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await
            .context("connecting to the bench database")?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .context("asking Postgres for its backend pid")?;
        let postmaster = procfs::postmaster_of(backend);
        if postmaster.is_none() {
            report.notes.push(
                "Postgres runs elsewhere (its backend is not a local process): no Postgres CPU"
                    .into(),
            );
        }
        let (kafka, found_by) = procfs::find_kafka(&self.settings.kafka.brokers);
        if kafka.is_empty() {
            report
                .notes
                .push("no local Kafka broker process found: no Kafka CPU".into());
        }
        report.processes.postmaster_pid = postmaster;
        report.processes.kafka_pids = kafka.clone();
        report.processes.kafka_found_by = found_by.to_string();

        // Raw limits: as many records and rows as the pipeline run will write (about five per
        // order), capped.
        let raw_orders = total_orders.min(self.options.raw_orders_max as usize);
        report.raw.orders = raw_orders;
        let records = raw::records(raw_orders, self.options.seed)?;
        eprintln!(
            "raw limits: {} records through the broker alone",
            records.len()
        );
        let scratch = format!("bench-{}-raw", self.stamp);
        let broker = tokio::select! {
            _ = self.stop.cancelled() => None,
            measured = raw::broker(
                &self.settings.kafka,
                &scratch,
                &scratch,
                self.partitions,
                &records,
            ) => Some(measured.context("measuring the broker's raw limit")?),
        };
        self.interrupted()?;
        report.raw.broker = broker;
        eprintln!("raw limits: {} rows into Postgres alone", records.len());
        let postgres = tokio::select! {
            _ = self.stop.cancelled() => None,
            measured = raw::postgres(
                &pool,
                "public.bench_raw_rows",
                usize::try_from(self.options.pg_writers).unwrap_or(4),
                &records,
            ) => Some(measured.context("measuring Postgres's raw limit")?),
        };
        self.interrupted()?;
        report.raw.postgres = postgres;
        drop(records);

        eprintln!("starting `{} run`", self.target.bin.display());
        let child = self.target.spawn_run(&self.log)?;
        report.processes.orderflow_pid = Some(child.pid);
        let watched = Watched {
            orderflow: child.pid,
            postmaster,
            kafka,
            bench: report.processes.bench_pid,
            ticks_per_s: procfs::ticks_per_second(),
        };
        let tasks = CancellationToken::new();
        // Stop the helper tasks however this function returns.
        let _stop_tasks = tasks.clone().drop_guard();
        let tracker: Shared = Arc::new(Mutex::new(pipeline::Tracker::default()));
        let prefix = format!("b{}", self.stamp);
        let topic_partitions = usize::try_from(self.partitions).unwrap_or(1);
        let consumer = pipeline::watcher(
            &self.settings.kafka,
            &format!("bench-{}.watch", self.stamp),
            &self.settings.kafka.topic,
            topic_partitions,
        )?;
        tokio::spawn(pipeline::watch(
            consumer,
            prefix.clone(),
            tracker.clone(),
            tasks.clone(),
        ));
        let polls = Arc::new(PollStats::default());
        tokio::spawn(pipeline::poll_visible(
            pool.clone(),
            prefix.clone(),
            tracker.clone(),
            Duration::from_millis(self.options.poll_ms),
            polls.clone(),
            tasks.clone(),
        ));
        let rss_max_kb = Arc::new(AtomicU64::new(0));
        tokio::spawn(pipeline::sample_rss(
            child.pid,
            rss_max_kb.clone(),
            RSS_SAMPLE_EVERY,
            tasks.clone(),
        ));
        // Stock is StockAdjusted events on the log: orders published before the child's
        // inventory step applied them would race them in partitions it reads later.
        wait_stock_applied(&pool, per_sku, &self.stop).await?;
        let mut live = Live {
            child,
            tracker,
            publisher: Publisher::new(&self.settings.kafka, &prefix, self.options.seed)?,
            pool,
            watched,
            rss_max_kb,
            raw_broker_rps: report.raw.broker.as_ref().map(|b| b.produce_records_per_s),
            raw_pg_rps: report.raw.postgres.as_ref().map(|p| p.rows_per_s),
        };

        let result = self.phases(&mut live, &phases, report).await;

        report.processes.orderflow_hwm_kb_lifetime =
            procfs::read_memory(live.child.pid).map(|m| m.hwm_kb);
        let polled = polls.polls.load(Ordering::Relaxed);
        report.granularity.visible_polls = polled;
        report.granularity.visible_poll_errors = polls.errors.load(Ordering::Relaxed);
        if polled > 0 {
            report.granularity.visible_query_mean_ms =
                Some(polls.micros.load(Ordering::Relaxed) as f64 / polled as f64 / 1000.0);
            report.granularity.visible_rows_per_poll_mean =
                Some(polls.rows.load(Ordering::Relaxed) as f64 / polled as f64);
        }
        let stopped = live.child.stop(STOP_GRACE).await;
        match &stopped {
            Ok(status) => {
                report.processes.orderflow_exit = Some(status.to_string());
                if !status.success() && result.is_ok() {
                    report.notes.push(format!(
                        "the pipeline process exited with {status} when asked to stop; see {}",
                        self.log.display()
                    ));
                }
            }
            Err(error) => report
                .notes
                .push(format!("stopping the pipeline: {error:#}")),
        }
        result
    }

    async fn phases(
        &self,
        live: &mut Live,
        phases: &[PhaseSpec],
        report: &mut Report,
    ) -> anyhow::Result<()> {
        eprintln!("warming up: {WARMUP_ORDERS} orders (every consumer group joins)");
        let warmup_started = Instant::now();
        let warmup = new_phase(&live.tracker);
        for _ in 0..WARMUP_ORDERS {
            live.publisher.publish(&live.tracker, warmup).await?;
        }
        let drained = self
            .drain(live, warmup, WARMUP_TIMEOUT, "the warm-up")
            .await?;
        anyhow::ensure!(
            drained,
            "the pipeline did not finish {WARMUP_ORDERS} warm-up orders within {}s; see its log {}",
            WARMUP_TIMEOUT.as_secs(),
            self.log.display()
        );
        report.warmup_secs = Some(warmup_started.elapsed().as_secs_f64());

        let mut not_kept_up: Option<u32> = None;
        for spec in phases {
            if let (Some(failed), PhaseSpec::Open { rate, .. }) = (not_kept_up, spec) {
                report.notes.push(format!(
                    "{rate} orders/s not offered: the pipeline did not keep up at {failed} orders/s"
                ));
                continue;
            }
            eprintln!("phase {}: {} orders", spec.name(), spec.planned());
            let phase = self.phase(live, spec).await?;
            if let (PhaseSpec::Open { rate, .. }, Some(false)) = (spec, phase.kept_up) {
                not_kept_up = Some(*rate);
            }
            report.phases.push(phase);
            if let Some((count, first)) = live.publisher.failure() {
                anyhow::bail!("{count} orders were not accepted by the broker; first: {first}");
            }
        }
        Ok(())
    }

    /// Wait until every order of `phase` is terminal and visible; false on timeout.
    async fn drain(
        &self,
        live: &mut Live,
        phase: usize,
        timeout: Duration,
        what: &str,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.interrupted()?;
            live.child.check_alive(what)?;
            if pipeline::lock(&live.tracker).phases[phase].done() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn phase(&self, live: &mut Live, spec: &PhaseSpec) -> anyhow::Result<PhaseReport> {
        let name = spec.name();
        let index = new_phase(&live.tracker);
        let pid = live.child.pid;
        let hwm_reset = procfs::reset_peak_rss(pid);
        live.rss_max_kb.store(
            procfs::read_memory(pid).map_or(0, |m| m.rss_kb),
            Ordering::Relaxed,
        );
        let rows_before = db_rows(&live.pool).await;
        let cpu_before = live.watched.sample(&live.pool).await;
        let started = Instant::now();
        let mut stopped_early = None;
        let mut samples: Vec<SoakSample> = Vec::new();

        match spec {
            PhaseSpec::Closed { orders } => {
                for i in 0..*orders {
                    if i % 1000 == 0 {
                        self.interrupted()?;
                        live.child.check_alive(&name)?;
                    }
                    live.publisher.publish(&live.tracker, index).await?;
                }
            }
            PhaseSpec::Open { rate, .. } | PhaseSpec::Soak { rate, .. } => {
                let rate = pipeline::nonzero(*rate)?;
                let planned = spec.planned();
                let soak = matches!(spec, PhaseSpec::Soak { .. });
                let mut published = 0usize;
                let mut next_check = started;
                let mut next_sample = started + SOAK_SAMPLE_EVERY;
                let mut last_sample: (Instant, Option<u64>) = (started, cpu_before.orderflow);
                let max_wait = Duration::from_secs(self.options.max_latency_secs);
                while published < planned {
                    let now = Instant::now();
                    let due = crate::demo::due_by(rate, now - started).min(planned);
                    while published < due {
                        live.publisher.publish(&live.tracker, index).await?;
                        published += 1;
                    }
                    let now = Instant::now();
                    if now >= next_check {
                        next_check = now + CHECK_EVERY;
                        self.interrupted()?;
                        live.child.check_alive(&name)?;
                        let waited =
                            pipeline::lock(&live.tracker).phases[index].oldest_open_age(now);
                        if let Some(waited) = waited.filter(|w| *w > max_wait) {
                            stopped_early = Some(format!(
                                "stopped offering after {:.1} s: an order waited {:.1} s for its \
                                 terminal record (limit --max-latency-secs {})",
                                (now - started).as_secs_f64(),
                                waited.as_secs_f64(),
                                self.options.max_latency_secs
                            ));
                            break;
                        }
                    }
                    if soak && now >= next_sample {
                        next_sample += SOAK_SAMPLE_EVERY;
                        let sample = soak_sample(live, started, &cpu_before, &mut last_sample);
                        eprintln!(
                            "  {:>5.0} s: RSS {} MB, CPU {} cores, {} published, {} terminal",
                            sample.t_secs,
                            sample
                                .rss_kb
                                .map_or("-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
                            sample
                                .orderflow_cpu_cores
                                .map_or("-".into(), |c| format!("{c:.2}")),
                            sample.published,
                            sample.terminal
                        );
                        samples.push(sample);
                    }
                    if published < planned {
                        let next_due = started + stats::due_at(rate, published);
                        let wake = next_due.min(next_check).max(Instant::now());
                        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
                    }
                }
            }
        }
        let publish_secs = started.elapsed().as_secs_f64();
        let drain_timeout = Duration::from_secs(self.options.drain_secs);
        let drained = self.drain(live, index, drain_timeout, &name).await?;
        let cpu_after = live.watched.sample(&live.pool).await;
        let cpu_window_secs = started.elapsed().as_secs_f64();
        if matches!(spec, PhaseSpec::Soak { .. }) {
            let mut last = (Instant::now(), None);
            let mut sample = soak_sample(live, started, &cpu_before, &mut last);
            sample.orderflow_cpu_cores = None;
            samples.push(sample);
        }
        let memory = procfs::read_memory(pid);
        let rows_after = db_rows(&live.pool).await;
        let cpu = live.watched.seconds(&cpu_before, &cpu_after);

        let tracker = pipeline::lock(&live.tracker);
        let track = &tracker.phases[index];
        let mut phase = summarize_phase(track, spec, &name);
        phase.publish_secs = publish_secs;
        phase.cpu_window_secs = cpu_window_secs;
        phase.cpu_seconds = cpu;
        phase.cpu_seconds_per_order = cpu.per(phase.terminal);
        phase.rss = Rss {
            peak_sampled_kb: Some(live.rss_max_kb.load(Ordering::Relaxed)).filter(|kb| *kb > 0),
            hwm_kb: memory.map(|m| m.hwm_kb),
            hwm_since: if hwm_reset { "phase" } else { "process start" }.into(),
        };
        phase.db_rows = match (rows_before, rows_after) {
            (Some(b), Some(a)) => Some(a - b),
            _ => None,
        };
        let secs = phase.rate_window_secs.unwrap_or(0.0);
        phase.db_rows_per_s = phase
            .db_rows
            .and_then(|r| stats::per_second(r as f64, secs));
        phase.db_rows_per_order = phase
            .db_rows
            .filter(|_| phase.terminal > 0)
            .map(|r| r as f64 / phase.terminal as f64);
        phase.ratio_log = stats::ratio(phase.log_records_per_s, live.raw_broker_rps);
        phase.ratio_db = stats::ratio(phase.db_rows_per_s, live.raw_pg_rps);
        phase.broker_ceiling_orders_per_s =
            stats::ceiling(live.raw_broker_rps, phase.log_records_per_order);
        phase.postgres_ceiling_orders_per_s =
            stats::ceiling(live.raw_pg_rps, phase.db_rows_per_order);
        phase.stopped_early = stopped_early.is_some();
        let mut notes: Vec<String> = stopped_early.into_iter().collect();
        let capacity = cpu_window_secs * self.cpus as f64;
        if let Some(other) = cpu
            .other_processes
            .filter(|o| capacity > 0.0 && *o > 0.05 * capacity)
        {
            notes.push(format!(
                "other processes used {other:.1} CPU s ({:.0} % of the machine) during this \
                 phase: the figures are disturbed",
                100.0 * other / capacity
            ));
        }
        if !drained {
            notes.push(format!(
                "{} of {} orders not terminal and visible {}s after publishing ended",
                phase.published - phase.terminal.min(phase.visible),
                phase.published,
                self.options.drain_secs
            ));
        }
        if !matches!(spec, PhaseSpec::Closed { .. }) {
            let latencies: Vec<Option<f64>> = (0..track.published())
                .map(|i| track.terminal_ms[i].map(|t| (t - track.publish_ms[i]) as f64))
                .collect();
            let growth = stats::quarter_medians(&latencies);
            let offered = f64::from(phase.offered_per_s.unwrap_or(0));
            let achieved = phase.orders_per_s.unwrap_or(0.0);
            let kept_up = !phase.stopped_early
                && drained
                && achieved >= stats::ACHIEVED_SHARE_MIN * offered
                && growth
                    .is_none_or(|(first, last)| stats::kept_up(first, last, achieved, offered));
            phase.kept_up = Some(kept_up);
            if !kept_up && !phase.stopped_early && drained {
                let (first, last) = growth.unwrap_or((f64::NAN, f64::NAN));
                notes.push(format!(
                    "did not keep up: {achieved:.0} of {offered:.0} orders/s completed; median \
                     latency {first:.0} ms in the first quarter, {last:.0} ms in the last"
                ));
            }
        }
        if matches!(spec, PhaseSpec::Soak { .. }) {
            phase.soak_samples = samples;
            phase.soak_windows = soak_windows(track);
        }
        phase.note = (!notes.is_empty()).then(|| notes.join("; "));
        drop(tracker);
        // The published orders are no longer needed once summarised; keep the memory flat
        // over long runs.
        pipeline::lock(&live.tracker).forget(index);
        Ok(phase)
    }
}

fn new_phase(tracker: &Shared) -> usize {
    let mut tracker = pipeline::lock(tracker);
    tracker.phases.push(PhaseTrack::default());
    tracker.phases.len() - 1
}

/// Rows in the steps' inbox and outbox; `None` when the tables cannot be read.
/// Wait, at most two minutes, until the inventory step of the pipeline child has applied the
/// seeded level of every stocked sku.
async fn wait_stock_applied(
    pool: &PgPool,
    per_sku: i64,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    const LIMIT: Duration = Duration::from_secs(120);
    let skus: Vec<String> = (0..crate::demo::STOCKED_SKUS)
        .map(crate::demo::stocked_sku)
        .collect();
    let deadline = Instant::now() + LIMIT;
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inventory.stock WHERE sku = ANY($1) AND available = $2",
        )
        .bind(&skus)
        .bind(per_sku)
        .fetch_one(pool)
        .await
        .context("reading the seeded stock levels")?;
        if usize::try_from(applied).unwrap_or(0) == skus.len() {
            return Ok(());
        }
        anyhow::ensure!(
            !stop.is_cancelled(),
            "interrupted (SIGINT/SIGTERM) while waiting for the seeded stock"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the inventory step of `orderflow run` applied {applied} of {} seeded stock levels \
             within {} s; see the child's log",
            skus.len(),
            LIMIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn db_rows(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pipeline.inbox) + (SELECT count(*) FROM pipeline.outbox)",
    )
    .fetch_one(pool)
    .await
    .map_err(|error| tracing::warn!(%error, "cannot count pipeline.inbox/outbox rows"))
    .ok()
}

fn soak_sample(
    live: &Live,
    started: Instant,
    cpu_before: &Ticks,
    last: &mut (Instant, Option<u64>),
) -> SoakSample {
    let now = Instant::now();
    let memory = procfs::read_memory(live.child.pid);
    let ticks = procfs::read_stat(live.child.pid).map(|s| s.total_ticks());
    let per_s = live.watched.ticks_per_s;
    let cores = match (ticks, last.1) {
        (Some(t), Some(l)) => stats::per_second(
            t.saturating_sub(l) as f64 / per_s,
            (now - last.0).as_secs_f64(),
        ),
        _ => None,
    };
    *last = (now, ticks);
    let tracker = pipeline::lock(&live.tracker);
    let track = tracker.phases.last();
    SoakSample {
        t_secs: (now - started).as_secs_f64().round(),
        rss_kb: memory.map(|m| m.rss_kb),
        hwm_kb: memory.map(|m| m.hwm_kb),
        orderflow_cpu_secs: match (ticks, cpu_before.orderflow) {
            (Some(t), Some(b)) => Some(t.saturating_sub(b) as f64 / per_s),
            _ => None,
        },
        orderflow_cpu_cores: cores,
        published: track.map_or(0, PhaseTrack::published),
        terminal: track.map_or(0, |t| t.terminal),
        visible: track.map_or(0, |t| t.visible),
    }
}

/// Create → terminal latency of the orders published in each 10 s window of a soak.
fn soak_windows(track: &PhaseTrack) -> Vec<SoakWindow> {
    let Some(first) = track.publish_at.first().copied() else {
        return Vec::new();
    };
    let mut windows: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..track.published() {
        let window = (track.publish_at[i] - first).as_secs() / SOAK_SAMPLE_EVERY.as_secs();
        *counts.entry(window).or_default() += 1;
        if let Some(t) = track.terminal_ms[i] {
            windows
                .entry(window)
                .or_default()
                .push((t - track.publish_ms[i]) as f64);
        }
    }
    counts
        .into_iter()
        .map(|(window, orders)| SoakWindow {
            from_secs: (window * SOAK_SAMPLE_EVERY.as_secs()) as f64,
            orders,
            terminal: windows.remove(&window).and_then(stats::summarize),
        })
        .collect()
}

/// The figures of one phase that follow from its orders alone.
fn summarize_phase(track: &PhaseTrack, spec: &PhaseSpec, name: &str) -> PhaseReport {
    let published = track.published();
    let mut terminal_latencies = Vec::with_capacity(published);
    let mut visible_latencies = Vec::with_capacity(published);
    let (mut completed, mut cancelled) = (0, 0);
    let mut last_terminal: Option<i64> = None;
    for i in 0..published {
        if let Some(t) = track.terminal_ms[i] {
            terminal_latencies.push((t - track.publish_ms[i]) as f64);
            last_terminal = Some(last_terminal.map_or(t, |l| l.max(t)));
        }
        match track.outcome[i] {
            Some(pipeline::Outcome::Completed) => completed += 1,
            Some(pipeline::Outcome::Cancelled) => cancelled += 1,
            None => {}
        }
        if let Some(v) = track.visible_at[i] {
            visible_latencies.push(
                v.saturating_duration_since(track.publish_at[i])
                    .as_secs_f64()
                    * 1000.0,
            );
        }
    }
    let first_publish = track.publish_ms.iter().min().copied();
    let first_terminal = track.terminal_ms.iter().flatten().min().copied();
    let duration_secs = match (first_publish, last_terminal) {
        (Some(f), Some(l)) if l > f => Some((l - f) as f64 / 1000.0),
        _ => None,
    };
    // A closed loop's rate counts from its first publish; an open loop's from its first
    // terminal order, so the latency of the first orders does not pass for slowness.
    let rate_from = match spec {
        PhaseSpec::Closed { .. } => first_publish,
        PhaseSpec::Open { .. } | PhaseSpec::Soak { .. } => first_terminal,
    };
    let rate_window_secs = match (rate_from, last_terminal) {
        (Some(f), Some(l)) if l > f => Some((l - f) as f64 / 1000.0),
        _ => None,
    };
    let terminal = track.terminal;
    let orders_per_s = rate_window_secs.and_then(|s| stats::per_second(terminal as f64, s));
    let (kind, offered) = match spec {
        PhaseSpec::Closed { .. } => ("closed", None),
        PhaseSpec::Open { rate, .. } => ("open", Some(*rate)),
        PhaseSpec::Soak { rate, .. } => ("soak", Some(*rate)),
    };
    PhaseReport {
        name: name.to_string(),
        kind: kind.into(),
        offered_per_s: offered,
        planned: spec.planned(),
        published,
        terminal,
        visible: track.visible,
        completed,
        cancelled,
        duration_secs,
        rate_window_secs,
        orders_per_s,
        latency_ms: Latency {
            terminal: stats::summarize(terminal_latencies),
            visible: stats::summarize(visible_latencies),
        },
        log_records: track.records,
        log_records_per_s: rate_window_secs
            .and_then(|s| stats::per_second(track.records as f64, s)),
        log_records_per_order: (terminal > 0).then(|| track.records as f64 / terminal as f64),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn parse(args: &[&str]) -> Result<Options, String> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map(|c| c.options)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_are_checked() {
        let defaults = parse(&[]).expect("defaults parse");
        assert_eq!(defaults.rates, vec![250, 500, 1000, 2000]);
        assert_eq!((defaults.orders, defaults.seconds), (10_000, 20));
        assert_eq!(
            parse(&["--rates", "100"]).expect("one rate").rates,
            vec![100]
        );
        let bad = [
            (vec!["--rates", "0"], "0 is not a rate"),
            (vec!["--rates", "250,0"], "0 is not a rate"),
            (vec!["--rates", "fast"], "is not a rate"),
            (vec!["--orders", "0"], "--orders"),
            (vec!["--seconds", "0"], "--seconds"),
            (vec!["--soak-minutes", "10"], "--rate"),
            (vec!["--rate", "100"], "--soak-minutes"),
            (
                vec!["--soak-minutes", "1", "--rate", "0"],
                "0 is not a rate",
            ),
            (
                vec!["--soak-minutes", "1", "--rate", "5", "--rates", "5"],
                "--rates",
            ),
            (vec!["--poll-ms", "0"], "--poll-ms"),
        ];
        for (args, want) in bad {
            let error = parse(&args).expect_err(&format!("{args:?} must be refused"));
            assert!(error.contains(want), "{args:?}: {error}");
        }
    }

    #[test]
    fn the_plan_follows_the_flags() {
        let options = parse(&[
            "--orders",
            "200",
            "--rates",
            "500,100,500",
            "--seconds",
            "3",
        ])
        .expect("parse");
        assert_eq!(
            plan(&options),
            vec![
                PhaseSpec::Closed { orders: 200 },
                PhaseSpec::Open { rate: 100, secs: 3 },
                PhaseSpec::Open { rate: 500, secs: 3 },
            ]
        );
        assert_eq!(plan(&options)[2].planned(), 1500);
        let soak = parse(&["--soak-minutes", "10", "--rate", "1000"]).expect("parse");
        assert_eq!(
            plan(&soak),
            vec![PhaseSpec::Soak {
                rate: 1000,
                secs: 600
            }]
        );
        assert_eq!(plan(&soak)[0].planned(), 600_000);
    }

    #[test]
    fn backends_count_from_the_start_or_from_their_own_start() {
        let before = BTreeMap::from([(10, 100), (11, 50), (12, 7)]);
        // 10 went on, 11 ended (missed), 13 started during the interval.
        let after = BTreeMap::from([(10, 160), (12, 7), (13, 25)]);
        assert_eq!(backend_ticks(&before, &after), 60 + 25);
        assert_eq!(backend_ticks(&BTreeMap::new(), &BTreeMap::new()), 0);
    }

    #[test]
    fn database_urls_keep_everything_but_the_name() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/orderflow",
                "postgres://postgres@127.0.0.1:5432/b1",
            ),
            (
                "postgres://u:p%40ss@db:5432/x?sslmode=verify-full&sslrootcert=/ca.pem",
                "postgres://u:p%40ss@db:5432/b1?sslmode=verify-full&sslrootcert=/ca.pem",
            ),
            ("postgres://db", "postgres://db/b1"),
            ("postgresql://db/", "postgresql://db/b1"),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "b1").as_deref(), Some(want), "{url}");
        }
        assert_eq!(with_database("not a url", "b1"), None);
        assert_eq!(host_of("postgres://u:secret@db:5432/x?a=b"), "db:5432");
        assert_eq!(host_of("postgres://127.0.0.1/x"), "127.0.0.1");
    }

    #[test]
    fn a_phase_is_summarised_from_its_orders() {
        let start = Instant::now();
        let mut track = PhaseTrack::default();
        // Four orders published 100 ms apart; terminal 50, 60, 70 ms later; one never.
        for i in 0..4i64 {
            track.publish_ms.push(1_000 + 100 * i);
            track
                .publish_at
                .push(start + Duration::from_millis(100 * i as u64));
            let done = i < 3;
            track.terminal_ms.push(done.then_some(1_050 + 110 * i));
            track.outcome.push(done.then_some(if i == 1 {
                pipeline::Outcome::Cancelled
            } else {
                pipeline::Outcome::Completed
            }));
            track
                .visible_at
                .push(done.then(|| start + Duration::from_millis(100 * i as u64 + 80)));
        }
        track.terminal = 3;
        track.visible = 3;
        track.records = 14;
        let phase = summarize_phase(&track, &PhaseSpec::Open { rate: 10, secs: 1 }, "open 10");
        assert_eq!((phase.published, phase.terminal, phase.visible), (4, 3, 3));
        assert_eq!((phase.completed, phase.cancelled), (2, 1));
        let terminal = phase.latency_ms.terminal.expect("latencies");
        assert_eq!(
            (terminal.p50, terminal.p99, terminal.max),
            (60.0, 70.0, 70.0)
        );
        let visible = phase.latency_ms.visible.expect("latencies");
        assert!((visible.p50 - 80.0).abs() < 1e-6);
        // First publish 1000 ms, first terminal 1050 ms, last terminal 1270 ms.
        assert_eq!(phase.duration_secs, Some(0.27));
        assert_eq!(phase.rate_window_secs, Some(0.22));
        assert!((phase.orders_per_s.expect("rate") - 3.0 / 0.22).abs() < 1e-9);
        let closed = summarize_phase(&track, &PhaseSpec::Closed { orders: 4 }, "closed");
        assert!((closed.orders_per_s.expect("rate") - 3.0 / 0.27).abs() < 1e-9);
        assert!((phase.log_records_per_order.expect("records") - 14.0 / 3.0).abs() < 1e-9);
        assert_eq!(phase.offered_per_s, Some(10));
    }
}

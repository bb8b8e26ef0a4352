//! `orderflow check`: the pipeline's invariants, checked against a database and the broker —
//! every order terminal, payments and stock consistent with the outcomes, no effect applied
//! twice, every reply published and every group at the log end, nothing dead-lettered or
//! parked, and (with `--rebuild`) the read models equal to a fresh fold of the log.
//!
//! The SQL lives with the tables it reads (`platform::audit`, `consumers::audit`,
//! `projections::audit`); this module reads the broker, decides pass or fail and prints. It
//! writes nothing but the verify-only generation of `--rebuild`, which it drops again, and
//! never joins a consumer group (see `Probe`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use consumers::audit::{Payments, Stock, Terminal};
use events::EventType;
use platform::audit::Found;
use platform::Settings;
use projections::audit::OutcomeRules;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

/// Names of the invariants, as printed and in the JSON.
pub const TERMINAL: &str = "every order terminal";
pub const OUTCOMES: &str = "outcomes follow the demo's rules";
pub const PAYMENTS: &str = "at most one live authorization per order";
pub const STOCK: &str = "stock conserved per sku";
pub const DUPLICATES: &str = "no effect applied twice";
pub const LAG: &str = "every reply published and every group at the log end";
pub const REBUILD: &str = "every read model equals a fresh fold of the log";
pub const SET_ASIDE: &str = "nothing dead-lettered, nothing parked";

/// Example lines printed under a FAIL.
const EXAMPLES_MAX: usize = 10;
/// How long one broker request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--wait-zero-lag` looks, and how often it says how far it is.
const WAIT_POLL: Duration = Duration::from_secs(1);
const WAIT_PROGRESS: Duration = Duration::from_secs(10);

/// Event types an order may legitimately have more than once (a customer may ask to cancel
/// twice and be refused twice), and the outbox's dead letters: not duplicates.
fn repeatable() -> [&'static str; 3] {
    [
        EventType::OrderCancellationRequested.as_str(),
        EventType::OrderCancellationRejected.as_str(),
        "DeadLetter",
    ]
}

/// What to check beyond the generic invariants.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Exactly this many orders (with the prefix, when given) must exist.
    pub orders: Option<u64>,
    /// Only orders whose id starts with this count for the order checks.
    pub order_prefix: Option<String>,
    /// Stock before any order, `SKU=QTY` per line: available + reserved must equal it.
    pub initial_stock: Option<PathBuf>,
    /// Check outcomes against the demo generator's rules.
    pub demo_outcomes: bool,
    /// Fold the whole log into a verify-only generation and compare it with the live one.
    pub rebuild: bool,
    /// Wait up to this long for zero lag and nothing unpublished before checking.
    pub wait_zero_lag: Option<Duration>,
    /// Also write the results as JSON here.
    pub json: Option<PathBuf>,
}

/// The verdict on one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
    pub examples: Vec<String>,
}

/// One partition of a group: where the group is and where the log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The committed offset (steps) or stored position (projector); `None` if there is none.
    pub position: Option<i64>,
    pub end: i64,
}

impl PartitionLag {
    /// Records behind the log end; negative when the position is beyond it.
    pub fn lag(&self) -> i64 {
        self.end - self.position.unwrap_or(0)
    }
}

/// A group's lag on every partition of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    /// Lag of `group` on every partition in `ends` (partition → log end), given its positions.
    pub fn new(group: &str, ends: &BTreeMap<i32, i64>, positions: &BTreeMap<i32, i64>) -> Self {
        GroupLag {
            group: group.to_string(),
            partitions: ends
                .iter()
                .map(|(&partition, &end)| PartitionLag {
                    partition,
                    position: positions.get(&partition).copied(),
                    end,
                })
                .collect(),
        }
    }

    /// Records behind the log end, over every partition (positions beyond the end count 0).
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag().max(0)).sum()
    }

    /// The partition furthest from the log end (either way), if any is not at it.
    pub fn worst(&self) -> Option<PartitionLag> {
        self.partitions
            .iter()
            .filter(|p| p.lag() != 0)
            .max_by_key(|p| (p.lag().abs(), -p.partition))
            .copied()
    }

    pub fn at_end(&self) -> bool {
        self.worst().is_none()
    }

    /// `payment lag 12 (worst partition 2: at 100, log end 112)`.
    pub fn describe(&self) -> String {
        let Some(worst) = self.worst() else {
            return format!("{} lag 0", self.group);
        };
        let at = worst
            .position
            .map_or_else(|| "nothing committed".to_string(), |p| format!("at {p}"));
        let beyond = if worst.lag() < 0 {
            " BEYOND the log end: topic recreated or truncated?"
        } else {
            ""
        };
        format!(
            "{} lag {} (worst partition {}: {at}, log end {}{beyond})",
            self.group,
            self.total(),
            worst.partition,
            worst.end
        )
    }
}

/// What the broker and the database said at one moment about lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSnapshot {
    pub ends: BTreeMap<i32, i64>,
    pub groups: Vec<GroupLag>,
    pub unpublished: Found,
    /// The log end did not move while the positions were read: the snapshot is consistent.
    pub stable: bool,
    pub parked: i64,
}

impl LagSnapshot {
    /// Every group at the log end and nothing left to publish.
    pub fn zero(&self) -> bool {
        self.stable && self.unpublished.count == 0 && self.groups.iter().all(GroupLag::at_end)
    }

    /// One line: log end, lag per group, unpublished, parked.
    pub fn summary(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(GroupLag::describe).collect();
        format!(
            "log end {} over {} partitions; {}; unpublished outbox rows {}; parked {}{}",
            self.ends.values().sum::<i64>(),
            self.ends.len(),
            groups.join(", "),
            self.unpublished.count,
            self.parked,
            if self.stable {
                ""
            } else {
                "; the log end moved while positions were read"
            }
        )
    }
}

/// How `--wait-zero-lag` ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Waited {
    /// Zero lag after this long.
    Reached(Duration),
    /// Not within the limit.
    TimedOut(Duration),
}

/// Records on the log against events in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCounts {
    pub records: i64,
    pub events: i64,
    pub dead_lettered: i64,
}

impl LogCounts {
    /// Records beyond the distinct events and what the projector set aside: replies
    /// published again after a crash, absorbed by the inboxes and the timeline's key.
    pub fn republished(&self) -> i64 {
        self.records - self.events - self.dead_lettered
    }
}

/// Everything a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub checks: Vec<CheckResult>,
    pub lag: Vec<GroupLag>,
    pub log: Option<LogCounts>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The text `orderflow check` prints: one line per invariant, examples under a FAIL, the
    /// log counts, and the tally last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let verdict = if check.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "{verdict}  {}: {}", check.name, check.detail);
            if !check.passed {
                for example in check.examples.iter().take(EXAMPLES_MAX) {
                    let _ = writeln!(out, "        {example}");
                }
                if check.examples.len() > EXAMPLES_MAX {
                    let _ = writeln!(
                        out,
                        "        ... {} more",
                        check.examples.len() - EXAMPLES_MAX
                    );
                }
            }
        }
        if let Some(log) = &self.log {
            let _ = writeln!(
                out,
                "INFO  log: {} records on the log, {} distinct events in analytics.order_events, \
                 {} dead-lettered by the projector -> {} re-published copies (absorbed by design)",
                log.records,
                log.events,
                log.dead_lettered,
                log.republished()
            );
        }
        let passed = self.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            out,
            "check: {passed} passed, {} failed",
            self.checks.len() - passed
        );
        out
    }

    /// The same results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let lag: serde_json::Map<String, serde_json::Value> = self
            .lag
            .iter()
            .map(|g| {
                let worst = g.worst();
                (
                    g.group.clone(),
                    json!({
                        "total": g.total(),
                        "at_end": g.at_end(),
                        "worst_partition": worst.map(|w| w.partition),
                        "worst_lag": worst.map_or(0, |w| w.lag()),
                        "partitions": g.partitions.iter().map(|p| json!({
                            "partition": p.partition,
                            "position": p.position,
                            "log_end": p.end,
                            "lag": p.lag(),
                        })).collect::<Vec<_>>(),
                    }),
                )
            })
            .collect();
        json!({
            "passed": self.passed(),
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name,
                "passed": c.passed,
                "detail": c.detail,
                "examples": c.examples,
            })).collect::<Vec<_>>(),
            "lag": lag,
            "log": self.log.map(|l| json!({
                "records": l.records,
                "events": l.events,
                "dead_lettered": l.dead_lettered,
                "republished": l.republished(),
            })),
        })
    }
}

/// Run `orderflow check` and print its report. Exit 0 when every invariant holds, 1 when one
/// fails, 2 when the check itself cannot run (bad input, database or broker unreachable).
pub async fn run(settings: &Settings, options: &Options) -> ExitCode {
    match check(settings, options).await {
        Ok(report) => {
            print!("{}", report.render());
            if let Some(path) = &options.json {
                if let Err(error) = write_json(path, &report) {
                    eprintln!("check: {error:#}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(if report.passed() { 0 } else { 1 })
        }
        Err(error) => {
            eprintln!("check: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json())?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write the JSON report to {}", path.display()))
}

/// Every check; an error means the check could not run.
pub async fn check(settings: &Settings, options: &Options) -> anyhow::Result<Report> {
    let initial = match &options.initial_stock {
        Some(path) => Some(read_initial_stock(path)?),
        None => None,
    };
    let pool = connect(settings).await?;
    let probe = Probe::open(settings)?;
    let prefix = options.order_prefix.as_deref();

    let waited = match options.wait_zero_lag {
        Some(limit) => Some(wait_zero_lag(&pool, &probe, limit).await?),
        None => None,
    };

    let mut conn = pool.acquire().await?;
    let mut checks = Vec::new();
    let terminal = consumers::audit::terminal(&mut conn, prefix).await?;
    checks.push(terminal_result(&terminal, options.orders, prefix));
    if options.demo_outcomes {
        let rules = OutcomeRules {
            out_of_stock_skus: vec![crate::demo::EMPTY_SKU.to_string()],
            decline_over_minor: settings.payment.decline_over_minor,
            unserved_countries: settings.shipping.unserved_countries.clone(),
        };
        let (orders, wrong) = projections::audit::outcomes(&mut conn, prefix, &rules).await?;
        checks.push(CheckResult {
            name: OUTCOMES,
            passed: wrong.count == 0,
            detail: format!(
                "{} of {orders} orders ended differently than stock ({}), the payment limit ({}) \
                 and the destination ({}) dictate",
                wrong.count,
                rules.out_of_stock_skus.join(", "),
                rules.decline_over_minor,
                rules.unserved_countries.join(", ")
            ),
            examples: wrong.examples,
        });
    }
    let payments = consumers::audit::payments(&mut conn).await?;
    checks.push(payments_result(&payments));
    let stock = consumers::audit::stock(&mut conn).await?;
    checks.push(stock_result(&stock, initial.as_ref()));
    checks.push(duplicates_result(
        &consumers::audit::duplicates(&mut conn).await?,
        &projections::audit::timeline_duplicates(&mut conn, &repeatable()).await?,
        &platform::audit::outbox_duplicates(&mut conn, &repeatable()).await?,
    ));
    drop(conn);

    let snapshot = lag_snapshot(&pool, &probe).await?;
    checks.push(lag_result(&snapshot, waited));

    if options.rebuild {
        checks.push(rebuild(settings, &pool).await);
    }

    let mut conn = pool.acquire().await?;
    let dead = platform::audit::dead_letters(&mut conn, None).await?;
    let parked = consumers::audit::parked(&mut conn).await?;
    checks.push(set_aside_result(&dead, &parked));

    // Records and events only compare when the projector has applied the whole log.
    let log = if snapshot.zero() {
        let projector = platform::audit::dead_letters(&mut conn, Some(projections::NAME)).await?;
        Some(LogCounts {
            records: snapshot.ends.values().sum(),
            events: projections::audit::events(&mut conn).await?,
            dead_lettered: projector.open.count,
        })
    } else {
        None
    };
    Ok(Report {
        checks,
        lag: snapshot.groups,
        log,
    })
}

/// Read an initial stock file (the format `orderflow restore --stock` takes); a sku given twice
/// is an error, not a sum.
pub fn read_initial_stock(path: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut stock = BTreeMap::new();
    for (sku, qty) in crate::restore::read_stock(path)? {
        if stock.insert(sku.clone(), qty).is_some() {
            anyhow::bail!(
                "{}: sku {sku} is given twice; give each sku's initial quantity once",
                path.display()
            );
        }
    }
    Ok(stock)
}

async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = platform::db::connect(&settings.database).await?;
    let has_schema: bool = sqlx::query_scalar(
        "SELECT to_regclass('saga.orders') IS NOT NULL AND to_regclass('analytics_meta.live') IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .context("reading the database's schema")?;
    anyhow::ensure!(
        has_schema,
        "database {} holds no orderflow schema (run `orderflow migrate`, or point \
         ORDERFLOW_DATABASE__URL at the pipeline's database)",
        platform::config::redact_url(&settings.database.url)
    );
    Ok(pool)
}

/// The broker, asked from outside every group: log ends and the steps' committed offsets.
struct Probe {
    topic: String,
    partitions: Vec<i32>,
    /// One reader per step group, in [`consumers::STEP_NAMES`] order.
    groups: Vec<(String, BaseConsumer)>,
}

impl Probe {
    fn open(settings: &Settings) -> anyhow::Result<Probe> {
        let kafka = &settings.kafka;
        let topic = kafka.topic.clone();
        let count = platform::kafka::partition_count(kafka, &topic).with_context(|| {
            format!(
                "cannot read topic {topic} from the Kafka broker at {} (is it running? start it \
                 with scripts/dev-up, or set ORDERFLOW_KAFKA__BROKERS / ORDERFLOW_KAFKA__TOPIC)",
                kafka.brokers
            )
        })?;
        let partitions = (0..i32::try_from(count)?).collect();
        let client_id = format!("orderflow-check-{}", std::process::id());
        let groups = consumers::STEP_NAMES
            .iter()
            .map(|step| {
                let group = settings.group_id(step);
                // A member's settings, but it never subscribes and is never assigned
                // partitions, so it never joins the group: members, generation and
                // assignments stay as they are. It only asks OffsetFetch and ListOffsets,
                // and auto-commit is off, so nothing is committed through it.
                let reader: BaseConsumer =
                    platform::kafka::consumer_config(kafka, &group, &client_id)
                        .create()
                        .with_context(|| format!("creating an offset reader for group {group}"))?;
                Ok((group, reader))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Probe {
            topic,
            partitions,
            groups,
        })
    }

    /// Log end (high watermark: ListOffsets latest) per partition.
    fn ends(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let (_, reader) = &self.groups[0];
        self.partitions
            .iter()
            .map(|&p| {
                let (_, high) = reader
                    .fetch_watermarks(&self.topic, p, BROKER_TIMEOUT)
                    .with_context(|| {
                        format!("reading the log end of {} partition {p}", self.topic)
                    })?;
                Ok((p, high))
            })
            .collect()
    }

    /// Committed offsets of the group read by `reader` (OffsetFetch; no join).
    fn committed(&self, group: &str, reader: &BaseConsumer) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut wanted = TopicPartitionList::new();
        for &p in &self.partitions {
            wanted.add_partition(&self.topic, p);
        }
        let got = reader
            .committed_offsets(wanted, BROKER_TIMEOUT)
            .with_context(|| format!("reading the committed offsets of group {group}"))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }
}

/// Log ends, every group's positions, unpublished and parked, then the log ends again: if
/// they did not move, no reply was produced meanwhile and the snapshot is consistent.
async fn lag_snapshot(pool: &PgPool, probe: &Probe) -> anyhow::Result<LagSnapshot> {
    // The broker calls block for a round trip each; tell the runtime.
    let before = tokio::task::block_in_place(|| probe.ends())?;
    let mut groups = Vec::new();
    for (group, reader) in &probe.groups {
        let committed = tokio::task::block_in_place(|| probe.committed(group, reader))?;
        groups.push(GroupLag::new(group, &before, &committed));
    }
    let mut conn = pool.acquire().await?;
    let (live, positions) = projections::audit::live_positions(&mut conn, &probe.topic).await?;
    groups.push(GroupLag::new(
        &format!("{} ({})", projections::NAME, live.schema_name),
        &before,
        &positions,
    ));
    let unpublished = platform::audit::unpublished(&mut conn).await?;
    let parked = consumers::audit::parked(&mut conn).await?.count;
    drop(conn);
    let after = tokio::task::block_in_place(|| probe.ends())?;
    Ok(LagSnapshot {
        stable: before == after,
        ends: before,
        groups,
        unpublished,
        parked,
    })
}

/// Poll until zero lag, nothing unpublished and nothing parked, or `limit`. Errors while
/// polling (a restarting broker or database) are reported and polled through.
async fn wait_zero_lag(pool: &PgPool, probe: &Probe, limit: Duration) -> anyhow::Result<Waited> {
    let started = Instant::now();
    let mut last_progress = started;
    loop {
        let said = match lag_snapshot(pool, probe).await {
            Ok(snapshot) if snapshot.zero() && snapshot.parked == 0 => {
                let took = started.elapsed();
                eprintln!(
                    "check: zero lag after {:.1} s: {}",
                    took.as_secs_f64(),
                    snapshot.summary()
                );
                return Ok(Waited::Reached(took));
            }
            Ok(snapshot) => snapshot.summary(),
            Err(error) => format!("cannot read lag: {error:#}"),
        };
        if started.elapsed() >= limit {
            eprintln!("check: no zero lag within {} s: {said}", limit.as_secs());
            return Ok(Waited::TimedOut(limit));
        }
        if last_progress.elapsed() >= WAIT_PROGRESS {
            last_progress = Instant::now();
            eprintln!(
                "check: waiting for zero lag ({:.0} of {} s): {said}",
                started.elapsed().as_secs_f64(),
                limit.as_secs()
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Fold the whole log into a verify-only generation, compare, drop it.
async fn rebuild(settings: &Settings, pool: &PgPool) -> CheckResult {
    let options = projections::rebuild::Options {
        verify_only: true,
        ..Default::default()
    };
    let phase = std::sync::Mutex::new("");
    let progress = |p: projections::rebuild::Progress| {
        if let Ok(mut current) = phase.lock() {
            if *current != p.phase {
                *current = p.phase;
                eprintln!("check: rebuild: {}", p.phase);
            }
        }
    };
    match projections::rebuild::replay(settings, pool, &options, &progress).await {
        Ok(report) => rebuild_result(&report),
        Err(error) => CheckResult {
            name: REBUILD,
            passed: false,
            detail: format!("the rebuild failed: {error:#}"),
            examples: Vec::new(),
        },
    }
}

fn rebuild_result(report: &projections::rebuild::Report) -> CheckResult {
    let Some(verification) = &report.verification else {
        return CheckResult {
            name: REBUILD,
            passed: false,
            detail: "the rebuild compared nothing".into(),
            examples: Vec::new(),
        };
    };
    let rows: i64 = verification.tables.iter().map(|t| t.live.0).sum();
    let rebuilt: i64 = verification.tables.iter().map(|t| t.rebuilt.0).sum();
    let differing: Vec<&str> = verification
        .tables
        .iter()
        .filter(|t| !t.matches())
        .map(|t| t.table)
        .collect();
    let mut examples = Vec::new();
    for t in verification.tables.iter().filter(|t| !t.matches()) {
        examples.push(format!(
            "{}: live {} rows {}, rebuilt {} rows {}",
            t.table, t.live.0, t.live.1, t.rebuilt.0, t.rebuilt.1
        ));
        examples.extend(
            t.only_live
                .iter()
                .map(|r| format!("{} only in live:    {r}", t.table)),
        );
        examples.extend(
            t.only_rebuilt
                .iter()
                .map(|r| format!("{} only in rebuilt: {r}", t.table)),
        );
    }
    let at: i64 = report.positions.iter().map(|p| p.next_offset).sum();
    CheckResult {
        name: REBUILD,
        passed: differing.is_empty(),
        detail: format!(
            "{} tables compared at log position {at} ({} records folded): {rows} rows live, \
             {rebuilt} rebuilt; {}; verify-only generation {} dropped",
            verification.tables.len(),
            report.events_read + report.catch_up_events,
            if differing.is_empty() {
                "all equal".to_string()
            } else {
                format!("DIFFERENT: {}", differing.join(", "))
            },
            report.generation.generation
        ),
        examples,
    }
}

/// Invariant 1. With `orders`, exactly that many (with the prefix) must exist in both the saga
/// and the read model.
pub fn terminal_result(t: &Terminal, orders: Option<u64>, prefix: Option<&str>) -> CheckResult {
    let which = prefix.map_or_else(String::new, |p| format!(" with id prefix {p:?}"));
    let count_ok = orders.is_none_or(|n| {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        t.saga_orders == n && t.read_orders == n
    });
    let passed = count_ok
        && t.saga_terminal == t.saga_orders
        && t.read_terminal == t.read_orders
        && t.disagree == 0
        && t.only_saga == 0
        && t.only_read == 0;
    let expected = orders.map_or_else(String::new, |n| format!(" (expected {n})"));
    let mut examples = t.open_groups.clone();
    if t.read_terminal < t.read_orders && t.open_groups.is_empty() {
        examples.push(format!(
            "read model: {} orders not terminal although the saga ended them",
            t.read_orders - t.read_terminal
        ));
    }
    examples.extend(t.disagreements.iter().cloned());
    CheckResult {
        name: TERMINAL,
        passed,
        detail: format!(
            "orders{which}: saga {}/{} terminal, read model {}/{} terminal{expected}; status differs \
             for {}, only in the saga {}, only in the read model {}",
            t.saga_terminal,
            t.saga_orders,
            t.read_terminal,
            t.read_orders,
            t.disagree,
            t.only_saga,
            t.only_read
        ),
        examples,
    }
}

/// Invariant 3.
pub fn payments_result(p: &Payments) -> CheckResult {
    CheckResult {
        name: PAYMENTS,
        passed: p.multiple_authorized == 0
            && p.cancelled_authorized == 0
            && p.completed_unpaid == 0
            && p.ledger_wrong == 0,
        detail: format!(
            "payments authorized {}, voided {}, declined {}; orders with more than one authorized {}; \
             cancelled with a live authorization {}; completed without one {}; ledger nets wrong for {}",
            p.authorized,
            p.voided,
            p.declined,
            p.multiple_authorized,
            p.cancelled_authorized,
            p.completed_unpaid,
            p.ledger_wrong
        ),
        examples: p.examples.clone(),
    }
}

/// Per sku, what is off: reserved against what live reservations hold, and with `initial`,
/// available + reserved against it (every sku of `initial` must have a stock row).
pub fn stock_problems(
    skus: &[consumers::audit::SkuStock],
    initial: Option<&BTreeMap<String, i64>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for s in skus {
        if s.reserved != s.held {
            problems.push(format!(
                "{}: reserved {} but live reservations hold {}",
                s.sku, s.reserved, s.held
            ));
        }
        if let Some(want) = initial.and_then(|i| i.get(&s.sku)) {
            if s.available + s.reserved != *want {
                problems.push(format!(
                    "{}: available {} + reserved {} = {}, initial {want}",
                    s.sku,
                    s.available,
                    s.reserved,
                    s.available + s.reserved
                ));
            }
        }
    }
    if let Some(initial) = initial {
        for (sku, qty) in initial {
            if !skus.iter().any(|s| &s.sku == sku) {
                problems.push(format!("{sku}: initial {qty}, but no stock row"));
            }
        }
    }
    problems
}

/// Invariant 4.
pub fn stock_result(stock: &Stock, initial: Option<&BTreeMap<String, i64>>) -> CheckResult {
    let problems = stock_problems(&stock.skus, initial);
    let available: i64 = stock.skus.iter().map(|s| s.available).sum();
    let reserved: i64 = stock.skus.iter().map(|s| s.reserved).sum();
    let against_initial = match initial {
        None => String::new(),
        Some(initial) => {
            let not_in_file = stock
                .skus
                .iter()
                .filter(|s| !initial.contains_key(&s.sku))
                .count();
            format!(
                "; initial {} over {} skus{}",
                initial.values().sum::<i64>(),
                initial.len(),
                if not_in_file > 0 {
                    format!(" ({not_in_file} skus with stock rows not in the file, not compared with it)")
                } else {
                    String::new()
                }
            )
        }
    };
    let mut examples = problems.clone();
    if stock.reserved_for_cancelled.count > 0 {
        examples.push(format!(
            "stock still reserved for cancelled orders: {}",
            stock.reserved_for_cancelled.examples.join(", ")
        ));
    }
    if stock.completed_unreserved.count > 0 {
        examples.push(format!(
            "completed orders without a reservation: {}",
            stock.completed_unreserved.examples.join(", ")
        ));
    }
    CheckResult {
        name: STOCK,
        passed: problems.is_empty()
            && stock.reserved_for_cancelled.count == 0
            && stock.completed_unreserved.count == 0,
        detail: format!(
            "{} skus, available {available} + reserved {reserved}{against_initial}; skus off {}; \
             reserved for cancelled orders {}; completed orders without a reservation {}",
            stock.skus.len(),
            problems.len(),
            stock.reserved_for_cancelled.count,
            stock.completed_unreserved.count
        ),
        examples,
    }
}

/// Invariant 5.
pub fn duplicates_result(
    steps: &consumers::audit::StepDuplicates,
    timeline: &Found,
    outbox: &Found,
) -> CheckResult {
    let mut examples = steps.examples.clone();
    if steps.reservations_dup > 0 {
        examples.push(format!(
            "inventory.reservations: {} extra rows",
            steps.reservations_dup
        ));
    }
    if steps.shipments_dup > 0 {
        examples.push(format!(
            "shipping.shipments: {} extra rows",
            steps.shipments_dup
        ));
    }
    examples.extend(timeline.examples.iter().cloned());
    examples.extend(outbox.examples.iter().cloned());
    CheckResult {
        name: DUPLICATES,
        passed: steps.total() == 0 && timeline.count == 0 && outbox.count == 0,
        detail: format!(
            "reservations {} (dup {}), ledger dup authorization/void/decline {}/{}/{}, shipments {} \
             (dup {}), timeline (order, event type) dup {}, outbox dup {}",
            steps.reservations,
            steps.reservations_dup,
            steps.ledger_authorization_dup,
            steps.ledger_void_dup,
            steps.ledger_decline_dup,
            steps.shipments,
            steps.shipments_dup,
            timeline.count,
            outbox.count
        ),
        examples,
    }
}

/// Invariant 6, from a snapshot taken after the wait (if any).
pub fn lag_result(snapshot: &LagSnapshot, waited: Option<Waited>) -> CheckResult {
    let wait = match waited {
        None => String::new(),
        Some(Waited::Reached(took)) => {
            format!("; zero lag reached after {:.1} s", took.as_secs_f64())
        }
        Some(Waited::TimedOut(limit)) => {
            format!("; zero lag NOT reached within {} s", limit.as_secs())
        }
    };
    let timed_out = matches!(waited, Some(Waited::TimedOut(_)));
    let mut examples: Vec<String> = snapshot
        .groups
        .iter()
        .filter(|g| !g.at_end())
        .map(GroupLag::describe)
        .collect();
    examples.extend(
        snapshot
            .unpublished
            .examples
            .iter()
            .map(|e| format!("unpublished: {e}")),
    );
    let groups: Vec<String> = snapshot
        .groups
        .iter()
        .map(|g| format!("{} {}", g.group, g.total()))
        .collect();
    CheckResult {
        name: LAG,
        passed: snapshot.zero() && !timed_out,
        detail: format!(
            "unpublished outbox rows {}; lag {} (log end {} over {} partitions){}{wait}",
            snapshot.unpublished.count,
            groups.join(", "),
            snapshot.ends.values().sum::<i64>(),
            snapshot.ends.len(),
            if snapshot.stable {
                ""
            } else {
                "; the log end moved while positions were read (the pipeline is not idle)"
            }
        ),
        examples,
    }
}

/// Invariant 8.
pub fn set_aside_result(dead: &platform::audit::DeadLetters, parked: &Found) -> CheckResult {
    let mut examples: Vec<String> = dead
        .open
        .examples
        .iter()
        .map(|e| format!("dead letter: {e}"))
        .collect();
    examples.extend(parked.examples.iter().map(|e| format!("parked: {e}")));
    CheckResult {
        name: SET_ASIDE,
        passed: dead.open.count == 0 && parked.count == 0,
        detail: format!(
            "pipeline.dead_letters {} open ({} redriven); pipeline.parked {}",
            dead.open.count, dead.redriven, parked.count
        ),
        examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consumers::audit::SkuStock;

    fn sku(sku: &str, available: i64, reserved: i64, held: i64) -> SkuStock {
        SkuStock {
            sku: sku.into(),
            available,
            reserved,
            held,
        }
    }

    #[test]
    fn stock_is_compared_per_sku_with_reservations_and_the_initial_levels() {
        let initial: BTreeMap<String, i64> = [("A".to_string(), 10), ("B".to_string(), 5)].into();
        // (rows, with the initial levels?, problems found, by their start)
        let cases: Vec<(Vec<SkuStock>, bool, Vec<&str>)> = vec![
            (vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0)], true, vec![]),
            (vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0)], false, vec![]),
            (
                vec![sku("A", 7, 3, 2), sku("B", 5, 0, 0)],
                false,
                vec!["A: reserved 3 but live reservations hold 2"],
            ),
            (
                vec![sku("A", 8, 3, 3), sku("B", 5, 0, 0)],
                true,
                vec!["A: available 8 + reserved 3 = 11, initial 10"],
            ),
            (vec![sku("A", 8, 3, 3), sku("B", 5, 0, 0)], false, vec![]),
            (
                vec![sku("A", 7, 3, 3)],
                true,
                vec!["B: initial 5, but no stock row"],
            ),
            // A sku only reservations know (no stock row) shows up with zero stock.
            (
                vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0), sku("C", 0, 0, 2)],
                true,
                vec!["C: reserved 0 but live reservations hold 2"],
            ),
            (
                vec![sku("A", 9, 2, 3), sku("B", 5, 0, 0)],
                true,
                vec!["A: reserved 2", "A: available 9 + reserved 2"],
            ),
        ];
        for (rows, with_initial, want) in cases {
            let got = stock_problems(&rows, with_initial.then_some(&initial));
            assert_eq!(got.len(), want.len(), "{rows:?}: {got:?}");
            for (line, start) in got.iter().zip(&want) {
                assert!(
                    line.starts_with(start),
                    "{line:?} should start with {start:?}"
                );
            }
        }
    }

    #[test]
    fn lag_is_per_partition_against_the_log_end() {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 20), (2, 0)].into();
        // (positions, total, worst partition, at end)
        type Case = (Vec<(i32, i64)>, i64, Option<i32>, bool);
        let cases: Vec<Case> = vec![
            (vec![(0, 10), (1, 20), (2, 0)], 0, None, true),
            // Nothing committed on an empty partition is at its end.
            (vec![(0, 10), (1, 20)], 0, None, true),
            (vec![(0, 10)], 20, Some(1), false),
            (vec![(0, 7), (1, 18)], 5, Some(0), false),
            (vec![(0, 8), (1, 18)], 4, Some(0), false),
            (vec![], 30, Some(1), false),
            // Beyond the log end is not at it, and counts no lag.
            (vec![(0, 12), (1, 20)], 0, Some(0), false),
        ];
        for (positions, total, worst, at_end) in cases {
            let positions: BTreeMap<i32, i64> = positions.into_iter().collect();
            let lag = GroupLag::new("g", &ends, &positions);
            assert_eq!(lag.total(), total, "{positions:?}");
            assert_eq!(lag.worst().map(|w| w.partition), worst, "{positions:?}");
            assert_eq!(lag.at_end(), at_end, "{positions:?}");
        }
        let lag = GroupLag::new("orderflow.payment", &ends, &[(0, 7), (1, 18)].into());
        assert_eq!(
            lag.describe(),
            "orderflow.payment lag 5 (worst partition 0: at 7, log end 10)"
        );
        let lag = GroupLag::new("g", &ends, &[(1, 20)].into());
        assert_eq!(
            lag.describe(),
            "g lag 10 (worst partition 0: nothing committed, log end 10)"
        );
    }

    fn snapshot(positions: &[(i32, i64)], unpublished: i64, stable: bool) -> LagSnapshot {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 20)].into();
        LagSnapshot {
            groups: vec![GroupLag::new(
                "g",
                &ends,
                &positions.iter().copied().collect(),
            )],
            ends,
            unpublished: Found {
                count: unpublished,
                examples: (0..unpublished).map(|i| format!("row {i}")).collect(),
            },
            stable,
            parked: 0,
        }
    }

    #[test]
    fn the_lag_check_needs_every_group_at_the_end_nothing_unpublished_and_a_still_log() {
        let at_end = [(0, 10), (1, 20)];
        let reached = Some(Waited::Reached(Duration::from_secs(3)));
        let timed_out = Some(Waited::TimedOut(Duration::from_secs(60)));
        // (snapshot, wait, passes, a piece of the detail)
        let cases = [
            (
                snapshot(&at_end, 0, true),
                None,
                true,
                "lag g 0 (log end 30 over 2 partitions)",
            ),
            (
                snapshot(&at_end, 0, true),
                reached,
                true,
                "zero lag reached after 3.0 s",
            ),
            (
                snapshot(&at_end, 0, true),
                timed_out,
                false,
                "NOT reached within 60 s",
            ),
            (
                snapshot(&[(0, 9), (1, 20)], 0, true),
                None,
                false,
                "lag g 1",
            ),
            (
                snapshot(&at_end, 2, true),
                None,
                false,
                "unpublished outbox rows 2",
            ),
            (
                snapshot(&at_end, 0, false),
                None,
                false,
                "the log end moved",
            ),
        ];
        for (snap, waited, passes, detail) in cases {
            let result = lag_result(&snap, waited);
            assert_eq!(result.passed, passes, "{}", result.detail);
            assert!(
                result.detail.contains(detail),
                "{:?} lacks {detail:?}",
                result.detail
            );
        }
        let failing = lag_result(&snapshot(&[(0, 9), (1, 20)], 1, true), None);
        assert_eq!(
            failing.examples,
            [
                "g lag 1 (worst partition 0: at 9, log end 10)",
                "unpublished: row 0"
            ]
        );
    }

    fn result(name: &'static str, passed: bool, examples: usize) -> CheckResult {
        CheckResult {
            name,
            passed,
            detail: "d".into(),
            examples: (0..examples).map(|i| format!("e{i}")).collect(),
        }
    }

    #[test]
    fn the_report_prints_one_line_per_check_examples_under_a_fail_and_the_tally_last() {
        // (checks, log counts, expected text)
        let cases: Vec<(Vec<CheckResult>, Option<LogCounts>, String)> = vec![
            (
                vec![result(TERMINAL, true, 2)],
                None,
                "PASS  every order terminal: d\ncheck: 1 passed, 0 failed\n".into(),
            ),
            (
                vec![result(TERMINAL, true, 0), result(STOCK, false, 2)],
                Some(LogCounts { records: 100, events: 97, dead_lettered: 1 }),
                "PASS  every order terminal: d\nFAIL  stock conserved per sku: d\n        e0\n        e1\n\
                 INFO  log: 100 records on the log, 97 distinct events in analytics.order_events, \
                 1 dead-lettered by the projector -> 2 re-published copies (absorbed by design)\n\
                 check: 1 passed, 1 failed\n"
                    .into(),
            ),
            (
                vec![result(LAG, false, 12)],
                None,
                format!(
                    "FAIL  {LAG}: d\n{}        ... 2 more\ncheck: 0 passed, 1 failed\n",
                    (0..10).map(|i| format!("        e{i}\n")).collect::<String>()
                ),
            ),
        ];
        for (checks, log, want) in cases {
            let report = Report {
                checks,
                lag: Vec::new(),
                log,
            };
            assert_eq!(report.render(), want);
        }
    }

    #[test]
    fn the_json_report_carries_the_verdicts_and_the_lag_per_group() {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 20)].into();
        let report = Report {
            checks: vec![result(TERMINAL, true, 0), result(LAG, false, 1)],
            lag: vec![GroupLag::new("p.saga", &ends, &[(0, 10), (1, 15)].into())],
            log: None,
        };
        let json = report.to_json();
        assert_eq!(json["passed"], false);
        assert_eq!(json["checks"][0]["name"], TERMINAL);
        assert_eq!(json["checks"][0]["passed"], true);
        assert_eq!(json["checks"][1]["examples"][0], "e0");
        assert_eq!(json["lag"]["p.saga"]["total"], 5);
        assert_eq!(json["lag"]["p.saga"]["worst_partition"], 1);
        assert_eq!(json["lag"]["p.saga"]["partitions"][1]["position"], 15);
        assert_eq!(json["lag"]["p.saga"]["partitions"][1]["log_end"], 20);
        assert!(json["log"].is_null());
    }

    #[test]
    fn terminal_needs_the_expected_count_every_order_ended_and_both_sides_agreeing() {
        let all_done = Terminal {
            saga_orders: 3,
            saga_terminal: 3,
            read_orders: 3,
            read_terminal: 3,
            ..Terminal::default()
        };
        // (found, --orders, passes)
        let cases = [
            (all_done.clone(), None, true),
            (all_done.clone(), Some(3), true),
            (all_done.clone(), Some(4), false),
            (
                Terminal {
                    saga_terminal: 2,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (
                Terminal {
                    read_terminal: 2,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (
                Terminal {
                    disagree: 1,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (
                Terminal {
                    read_orders: 2,
                    read_terminal: 2,
                    only_saga: 1,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (Terminal::default(), None, true),
            (Terminal::default(), Some(1), false),
        ];
        for (found, orders, passes) in cases {
            assert_eq!(
                terminal_result(&found, orders, Some("demo-")).passed,
                passes,
                "{found:?} {orders:?}"
            );
        }
    }

    #[test]
    fn an_initial_stock_file_names_each_sku_once() {
        let dir = std::env::temp_dir().join(format!("orderflow-check-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("A=1\nB=2\n", Ok(vec![("A", 1), ("B", 2)])),
            ("A=1\nA=2\n", Err("sku A is given twice")),
            ("A=x\n", Err("line 1")),
        ];
        for (text, want) in cases {
            let path = dir.join("stock");
            std::fs::write(&path, text).unwrap();
            match (read_initial_stock(&path), want) {
                (Ok(got), Ok(want)) => {
                    let want: BTreeMap<String, i64> =
                        want.into_iter().map(|(s, q)| (s.to_string(), q)).collect();
                    assert_eq!(got, want);
                }
                (Err(error), Err(want)) => assert!(error.to_string().contains(want), "{error}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

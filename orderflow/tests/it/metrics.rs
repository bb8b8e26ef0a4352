//! The admin listener of a real `orderflow run` process: `/metrics` parses as Prometheus text
//! and counts exactly the orders that went through; `/readyz` turns 503 within seconds when
//! the process's Postgres stops and 200 again when it is back.
//!
//! The pipeline runs as the binary, not in this test process: the metrics recorder is global
//! per process, and the other tests of this binary run components too.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{order, orderflow, TestEnv};

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text exposition format (version 0.0.4).
// ---------------------------------------------------------------------------------------------

/// One sample: its metric name and labels (sorted), and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the families' types and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include `labels`; panics when
    /// there is none or more than one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: wanted one sample, found {found:?}"
        );
        found[0].value
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Whether a family (a counter, gauge or histogram) of this name has any sample.
    fn has_family(&self, family: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.name == family || family_of(&s.name, &self.types) == family)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_name(name) && !name.contains(':')
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` series belong
/// to the histogram.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("{text:?} is not a sample value")),
    }
}

/// `{a="x",b="y"}` at the start of `text`: the labels and the rest of the line.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("a label needs =\"")?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in a label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parse `text` strictly: every line a comment, blank, `# HELP`/`# TYPE`, or a sample of a
/// family whose TYPE came first; valid names; histograms with cumulative buckets ending in
/// `+Inf`, equal to `_count`.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    for (number, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if exposition
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                }
                (Some("HELP"), Some(name), _) if !valid_name(name) => {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(stamp) = fields.next() {
            stamp
                .parse::<i64>()
                .map_err(|_| at(format!("bad timestamp {stamp:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("extra fields".into()));
        }
        let family = family_of(name, &exposition.types);
        if !exposition.types.contains_key(family) {
            return Err(at(format!("sample of {family} before its TYPE")));
        }
        exposition.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// A series' labels but `le`, sorted.
type Labels = Vec<(String, String)>;

/// Every histogram series: buckets non-decreasing in `le`, the last `+Inf`, equal to `_count`.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (family, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        let bucket_name = format!("{family}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in exposition.samples.iter().filter(|s| s.name == bucket_name) {
            let le = sample
                .labels
                .get("le")
                .ok_or_else(|| format!("{bucket_name} without le"))?;
            let le = parse_value(le)?;
            let key: Vec<(String, String)> = sample
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, sample.value));
        }
        for (key, buckets) in series {
            let ordered = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            if !ordered {
                return Err(format!(
                    "{family}{key:?}: buckets not cumulative: {buckets:?}"
                ));
            }
            let last = buckets.last().copied().unwrap_or((0.0, 0.0));
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{key:?}: no +Inf bucket"));
            }
            let labels: Vec<(&str, &str)> =
                key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count_name = format!("{family}_count");
            let count: Vec<f64> = exposition
                .samples
                .iter()
                .filter(|s| {
                    s.name == count_name
                        && s.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.value)
                .collect();
            if count != [last.1] {
                return Err(format!(
                    "{family}{key:?}: _count {count:?} is not the +Inf bucket {}",
                    last.1
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_parser_accepts_the_format_and_refuses_what_is_not() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{component=\"x\",q=\"a\\\"b\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n\
                # TYPE g gauge\ng 1.5e-3 1700000000000\n";
    let parsed = parse(good).expect("valid exposition");
    assert_eq!(parsed.value("a_total", &[("component", "x")]), 3.0);
    assert_eq!(parsed.value("a_total", &[("q", "a\"b")]), 3.0);
    assert_eq!(parsed.value("h_count", &[]), 2.0);
    assert!(parsed.has_family("h") && parsed.has_family("g") && !parsed.has_family("nope"));
    let bad = [
        ("a_total 1\n", "before its TYPE"),
        ("# TYPE a counter\na{x=\"1} 1\n", "unterminated"),
        ("# TYPE a counter\na one\n", "not a sample value"),
        ("# TYPE 1a counter\n", "bad metric name"),
        ("# TYPE a counter\na{1x=\"1\"} 1\n", "bad label name"),
        ("# TYPE a counter\na 1 2 3\n", "extra fields"),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "not cumulative",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n",
            "no +Inf",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
            "_count",
        ),
    ];
    for (text, why) in bad {
        let error = parse(text).expect_err(text);
        assert!(error.contains(why), "{text:?}: {error}");
    }
}

// ---------------------------------------------------------------------------------------------
// An `orderflow run` child with its admin listener on a free port.
// ---------------------------------------------------------------------------------------------

/// A running `orderflow run` whose admin listener took a free port; killed when dropped.
struct Pipeline {
    child: Child,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pipeline {
    /// Start `command` (an `orderflow run ...`) with `admin.listen` on port 0 and wait for
    /// the address it logs.
    fn start(mut command: Command) -> Pipeline {
        command
            .env("ORDERFLOW_ADMIN__LISTEN", "127.0.0.1:0")
            // The listener's address is logged at info (a directive for platform::admin alone
            // did not show it in a fresh-clone CI run; plain info does — the cause is not known yet).
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start orderflow run");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("admin listener on http://")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = found.send(addr);
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let admin = match address.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let shown = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                panic!("orderflow run logged no admin address within 60 s:\n{shown}");
            }
        };
        Pipeline { child, admin, log }
    }

    fn log_tail(&self) -> String {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()))
    }

    async fn scrape(&self) -> Exposition {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        parse(&body).unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{body}"))
    }

    /// Poll `/readyz` until it answers `status` with a body containing `needle`; returns the
    /// body. Bounded by `within`.
    async fn wait_ready(&mut self, status: u16, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = (0, String::new());
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("orderflow run exited ({exit}):\n{}", self.log_tail());
            }
            if let Ok(answer) = get(self.admin, "/readyz").await {
                if answer.0 == status && answer.1.contains(needle) {
                    return answer.1;
                }
                last = answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "/readyz did not answer {status} with {needle:?} within {within:?}; last: {last:?}\n{}",
            self.log_tail()
        );
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or("no end of the head")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// The names `docs/metrics.md` lists (backticked `orderflow_*` at the start of a table row).
fn documented_names() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path).expect("docs/metrics.md");
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name))
        .filter(|name| name.starts_with("orderflow_") && !name.contains(':'))
        .map(str::to_string)
        .collect()
}

/// Metrics of the catalog that `orderflow run` does not record in line: the gauges computed
/// from the database and the broker (the status collector's), and redrives, which happen in
/// `orderflow dlq redrive`. The HTTP API's (`orderflow_http_*`) are `orderflow serve`'s.
const NOT_IN_LINE: &[&str] = &[
    "orderflow_consumer_lag_records",
    "orderflow_outbox_unpublished_rows",
    "orderflow_outbox_oldest_unpublished_age_seconds",
    "orderflow_parked_orders",
    "orderflow_dead_letters_open",
    "orderflow_saga_orders",
    "orderflow_saga_deadlines_missed",
    "orderflow_projection_freshness_seconds",
    "orderflow_projection_watermark_lag_records",
    "orderflow_archive_lag_records",
    "orderflow_archive_lag_seconds",
    "orderflow_redrives_total",
];

const ORDERS: usize = 24;
const STEPS: [&str; 4] = ["inventory", "payment", "shipping", "saga"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_order_and_name_every_in_line_metric() {
    let env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 1_000)]).await;
    let archive = tempdir("metrics-archive");
    let mut command = orderflow(&env);
    command
        .args(["run"])
        .env("ORDERFLOW_ARCHIVE__DIR", &archive)
        .env("ORDERFLOW_ARCHIVE__FLUSH_INTERVAL_MS", "200");
    let mut pipeline = Pipeline::start(command);
    // Every component holds its partitions before the orders arrive.
    pipeline
        .wait_ready(200, "\"ready\":true", Duration::from_secs(90))
        .await;

    let orders: Vec<_> = (0..ORDERS)
        .map(|i| order(&format!("m-{i}"), &[("SKU-A", 1, 1_000)], "DE"))
        .collect();
    env.publish(&orders).await;
    env.wait_count(
        "SELECT count(*) FROM analytics.orders WHERE status = 'completed'",
        ORDERS as i64,
    )
    .await;
    // Every event of every order is on the log, and the projector applied each once.
    let events = env
        .count("SELECT count(*) FROM analytics.order_events")
        .await as f64;
    let n = ORDERS as f64;

    // Counters move after their commits: poll until they add up (bounded), then check exactly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let scrape = loop {
        let scrape = pipeline.scrape().await;
        let settled = [
            "inventory",
            "payment",
            "shipping",
            "saga",
            "projector",
            "archiver",
        ]
        .iter()
        .all(|c| {
            scrape
                .matching("orderflow_records_consumed_total", &[("component", c)])
                .map(|s| s.value)
                .sum::<f64>()
                == events
        }) && scrape
            .matching(
                "orderflow_records_applied_total",
                &[("component", "archiver")],
            )
            .map(|s| s.value)
            .sum::<f64>()
            == events
            && scrape
                .matching(
                    "orderflow_order_terminal_seconds_count",
                    &[("outcome", "completed")],
                )
                .map(|s| s.value)
                .sum::<f64>()
                == n
            && scrape.has_family("orderflow_kafka_broker_up");
        if settled || tokio::time::Instant::now() >= deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let counter = |name: &str, component: &str| scrape.value(name, &[("component", component)]);
    for component in [
        "inventory",
        "payment",
        "shipping",
        "saga",
        "projector",
        "archiver",
    ] {
        assert_eq!(
            counter("orderflow_records_consumed_total", component),
            events,
            "{component} consumed every record of the log once"
        );
    }
    for step in STEPS {
        let applied = counter("orderflow_records_applied_total", step);
        let ignored = counter("orderflow_records_ignored_total", step);
        assert_eq!(applied + ignored, events, "{step}: applied + ignored");
        assert_eq!(
            counter("orderflow_records_duplicate_total", step),
            0.0,
            "{step}"
        );
        assert_eq!(
            counter("orderflow_records_dead_lettered_total", step),
            0.0,
            "{step}"
        );
        assert_eq!(
            counter("orderflow_orders_parked_total", step),
            0.0,
            "{step}"
        );
        assert_eq!(
            counter("orderflow_events_published_total", step),
            n,
            "{step} published one reply per order"
        );
        assert!(
            scrape.value("orderflow_batch_records_count", &[("component", step)]) >= 1.0,
            "{step} recorded its batches"
        );
        assert_eq!(
            scrape.value("orderflow_batch_records_sum", &[("component", step)]),
            events,
            "{step}: the batches held every record"
        );
    }
    assert_eq!(
        counter("orderflow_records_applied_total", "inventory"),
        n,
        "one OrderCreated each"
    );
    assert_eq!(
        counter("orderflow_records_applied_total", "projector"),
        events
    );
    assert_eq!(
        counter("orderflow_records_applied_total", "archiver"),
        events
    );
    assert_eq!(
        scrape.value(
            "orderflow_order_terminal_seconds_count",
            &[("outcome", "completed")]
        ),
        n
    );
    assert_eq!(
        scrape.value(
            "orderflow_order_terminal_seconds_count",
            &[("outcome", "cancelled")]
        ),
        0.0
    );
    assert_eq!(
        scrape.value(
            "orderflow_port_call_duration_seconds_count",
            &[
                ("component", "payment"),
                ("port", "provider"),
                ("result", "error")
            ]
        ),
        0.0
    );
    assert!(
        scrape.value(
            "orderflow_port_call_duration_seconds_count",
            &[
                ("component", "shipping"),
                ("port", "carrier"),
                ("result", "ok")
            ]
        ) >= 1.0
    );
    assert_eq!(
        scrape.value(
            "orderflow_breaker_state",
            &[("component", "payment"), ("port", "provider")]
        ),
        0.0,
        "closed"
    );
    assert_eq!(scrape.value("orderflow_ready", &[]), 1.0);
    assert_eq!(
        scrape.value("orderflow_dependency_up", &[("dependency", "postgres")]),
        1.0
    );
    assert_eq!(
        scrape.value("orderflow_dependency_up", &[("dependency", "kafka")]),
        1.0
    );
    assert!(scrape.value("orderflow_process_resident_memory_bytes", &[]) > 1e6);
    // No series carries an order id.
    for sample in &scrape.samples {
        for value in sample.labels.values() {
            assert!(
                !value.starts_with("m-"),
                "an order id as a label: {sample:?}"
            );
        }
    }

    let documented = documented_names();
    assert!(
        documented.len() > 30,
        "docs/metrics.md lists the catalog: {documented:?}"
    );
    let missing: Vec<&String> = documented
        .iter()
        .filter(|name| !NOT_IN_LINE.contains(&name.as_str()))
        .filter(|name| !name.starts_with("orderflow_http_"))
        .filter(|name| !scrape.has_family(name))
        .collect();
    assert!(
        missing.is_empty(),
        "documented metrics recorded in line but not served by orderflow run: {missing:?}"
    );
    for name in platform::metrics::CATALOG.iter().map(|m| m.name) {
        assert!(
            documented.iter().any(|d| d == name),
            "{name} is in the catalog but not in docs/metrics.md"
        );
    }
    drop(pipeline);
    let _ = std::fs::remove_dir_all(&archive);
    env.finish().await;
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "orderflow-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

// ---------------------------------------------------------------------------------------------
// Readiness against a Postgres server of the test's own.
// ---------------------------------------------------------------------------------------------

/// A Postgres server started by `scripts/pg/instance`, stopped when dropped.
struct OwnPostgres {
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg/instance")
    }

    fn run(&self, args: &[&str]) {
        let output = Command::new(Self::script())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .expect("run scripts/pg/instance");
        assert!(
            output.status.success(),
            "scripts/pg/instance {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn up(dir: PathBuf) -> OwnPostgres {
        // A free port: bind one, let it go, hand it to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = OwnPostgres { dir, port };
        server.start();
        server
    }

    fn start(&self) {
        self.run(&["up", "--port", &self.port.to_string()]);
    }

    fn stop(&self) {
        self.run(&["stop", "--mode", "fast"]);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", "--mode", "immediate", "--dir"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_when_postgres_stops_and_true_when_it_returns() {
    let postgres = OwnPostgres::up(tempdir("ready-pg"));
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut settings = orderflow::settings::Settings::default();
    settings.database.url = postgres.url("orderflow");
    settings.kafka.topic = format!("test.{id}.events");
    settings.kafka.intake_topic = format!("test.{id}.intake");
    settings.kafka.group_prefix = format!("test-{id}");
    let pool = orderflow::components::prepare_database(&settings, true)
        .await
        .expect("migrate the test's own Postgres");
    pool.close().await;
    orderflow::components::ensure_topics(&settings, 2)
        .await
        .expect("the broker at 127.0.0.1:9092 (scripts/dev-up)");

    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .args(["run", "--only", "inventory"])
        .env("ORDERFLOW_KAFKA__TOPIC", &settings.kafka.topic)
        .env(
            "ORDERFLOW_KAFKA__GROUP_PREFIX",
            &settings.kafka.group_prefix,
        )
        .env("ORDERFLOW_DATABASE__URL", &settings.database.url);
    let mut pipeline = Pipeline::start(command);
    pipeline
        .wait_ready(200, "\"ready\":true", Duration::from_secs(90))
        .await;

    postgres.stop();
    let body = pipeline
        .wait_ready(503, "\"check\":\"postgres\"", Duration::from_secs(30))
        .await;
    assert!(
        !body.contains("127.0.0.1"),
        "no addresses in the body: {body}"
    );
    assert!(
        !body.contains("postgres://"),
        "no connection strings in the body: {body}"
    );
    let down = pipeline.scrape().await;
    assert_eq!(down.value("orderflow_ready", &[]), 0.0);
    assert_eq!(
        down.value("orderflow_dependency_up", &[("dependency", "postgres")]),
        0.0
    );
    assert_eq!(
        down.value("orderflow_dependency_up", &[("dependency", "kafka")]),
        1.0
    );

    postgres.start();
    pipeline
        .wait_ready(200, "\"ready\":true", Duration::from_secs(60))
        .await;
    let up = pipeline.scrape().await;
    assert_eq!(
        up.value("orderflow_dependency_up", &[("dependency", "postgres")]),
        1.0
    );
    assert_eq!(up.value("orderflow_ready", &[]), 1.0);
}

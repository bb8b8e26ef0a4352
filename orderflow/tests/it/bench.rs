//! `orderflow bench` end to end with tiny numbers, against the dev broker and Postgres: the
//! binary benchmarks itself as its child, and the JSON report must hold together — every
//! published order reached terminal and the read model, percentiles in order, CPU figures for
//! every process, and nothing left behind. Wall-clock figures are checked for presence and
//! sign only, never for speed.

use std::process::Command;

use serde_json::Value;

fn number(value: &Value, path: &str) -> f64 {
    let found = path
        .split('.')
        .try_fold(value, |v, key| v.get(key))
        .unwrap_or_else(|| panic!("{path} missing in {value:#}"));
    found
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {found}"))
}

fn count(value: &Value, path: &str) -> u64 {
    let n = number(value, path);
    assert!(n >= 0.0 && n.fract() == 0.0, "{path} = {n} is not a count");
    n as u64
}

fn check_ordered(latency: &Value, what: &str, orders: u64) {
    assert_eq!(
        count(latency, "count"),
        orders,
        "{what}: one latency per order"
    );
    let (p50, p99, p999, max) = (
        number(latency, "p50"),
        number(latency, "p99"),
        number(latency, "p999"),
        number(latency, "max"),
    );
    assert!(
        0.0 <= p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{what}: percentiles out of order: {latency}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_consistent_figures_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("orderflow-bench-it-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "bench",
            "--orders",
            "200",
            "--rates",
            "100",
            "--seconds",
            "3",
        ])
        .args(["--partitions", "3", "--label", "it"])
        .arg("--out")
        .arg(&json)
        .arg("--chart")
        .arg(&svg)
        .env("RUST_LOG", "warn")
        // The child's intake seals the bench's orders.
        .env(
            "ORDERFLOW_PRIVACY__MASTER_KEY",
            crate::support::TEST_MASTER_KEY,
        )
        .output()
        .expect("run orderflow bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "orderflow bench failed (it needs Kafka at 127.0.0.1:9092 and Postgres at \
         127.0.0.1:5432: scripts/dev-up)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("terminal ms"),
        "no table printed:\n{stdout}"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report exists"))
            .expect("the report is JSON");
    assert_eq!(report["schema"], "orderflow-bench/1");
    assert_eq!(report["label"], "it");
    assert!(report["error"].is_null(), "error: {}", report["error"]);
    assert_eq!(report["processes"]["orderflow_exit"], "exit status: 0");

    // The raw limits moved as many rows as records, and measured a rate for each.
    let records = count(&report, "raw.broker.records");
    assert!(
        records >= 5 * 100,
        "about five records per order: {records}"
    );
    assert_eq!(count(&report, "raw.postgres.rows"), records);
    for rate in [
        "raw.broker.produce_records_per_s",
        "raw.broker.consume_records_per_s",
        "raw.postgres.rows_per_s",
    ] {
        assert!(number(&report, rate) > 0.0, "{rate}");
    }

    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["closed", "open 100"]);
    for phase in phases {
        let name = phase["name"].as_str().unwrap_or_default();
        let published = count(phase, "published");
        assert_eq!(published, count(phase, "planned"), "{name}: all published");
        assert_eq!(count(phase, "terminal"), published, "{name}: all terminal");
        assert_eq!(count(phase, "visible"), published, "{name}: all visible");
        assert_eq!(
            count(phase, "completed") + count(phase, "cancelled"),
            published,
            "{name}: every order completed or cancelled"
        );
        assert!(
            count(phase, "completed") > 0 && count(phase, "cancelled") > 0,
            "{name}: the demo's mix"
        );
        check_ordered(&phase["latency_ms"]["terminal"], name, published);
        check_ordered(&phase["latency_ms"]["visible"], name, published);
        assert!(
            count(phase, "log_records") >= 3 * published,
            "{name}: at least created, one reply and the terminal record per order"
        );
        assert!(count(phase, "db_rows") > 0, "{name}: inbox and outbox rows");
        for figure in [
            "orders_per_s",
            "ratio_log",
            "ratio_db",
            "rss.peak_sampled_kb",
        ] {
            assert!(number(phase, figure) > 0.0, "{name}: {figure}");
        }
        for process in ["orderflow", "postgres", "kafka", "bench"] {
            assert!(
                number(phase, &format!("cpu_seconds.{process}")) >= 0.0,
                "{name}: CPU of {process}"
            );
            assert!(
                number(phase, &format!("cpu_seconds_per_order.{process}")) >= 0.0,
                "{name}: CPU per order of {process}"
            );
        }
        assert!(
            number(phase, "cpu_seconds.orderflow") > 0.0,
            "{name}: the pipeline did some work"
        );
    }
    assert!(
        phases[1]["kept_up"].is_boolean(),
        "an open loop says whether it kept up"
    );

    let chart = std::fs::read_to_string(&svg).expect("the chart exists");
    assert!(chart.starts_with("<svg"), "an SVG chart");

    // Nothing left behind: the database is dropped (the topic deletion is the same code path).
    let database = report["database"]
        .as_str()
        .and_then(|d| d.split_whitespace().next())
        .expect("database name")
        .to_string();
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("Postgres");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&database)
        .fetch_one(&pool)
        .await
        .expect("query pg_database");
    assert_eq!(left, 0, "{database} was not dropped");
    let _ = std::fs::remove_dir_all(&dir);
}

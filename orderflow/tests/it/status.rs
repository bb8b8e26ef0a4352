//! `orderflow status` and the fact gauges against the real broker and Postgres: a poison
//! record shows as an open dead letter of the component that set it aside — in the status
//! (exit 1, the rule and the component named) and in its gauge — lag falls to 0 once the
//! orders are processed, and an unreachable Postgres or broker is exit 2, named.

use std::time::Duration;

use orderflow::components::Component;
use orderflow::status::{self, collector::Collector, Rule, Sources, Thresholds};

use crate::support::{order, orderflow, TestEnv};

/// How long a gauge or a lag may take to show what the database already says.
const WAIT: Duration = Duration::from_secs(60);

/// The value of the one series of `name` whose labels include every `label="value"` in
/// `labels`, in the Prometheus text `text`.
fn series_value(text: &str, name: &str, labels: &[&str]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            let (head, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            labels.iter().all(|l| head.contains(l))
        })
        .and_then(|line| line.rsplit_once(' ').map(|(_, v)| v.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_makes_status_unhealthy_and_shows_in_its_gauge() {
    let mut env = TestEnv::new().await;
    platform::metrics::recorder();
    env.start(&[Component::Inventory]);
    env.produce_raw("o-status-poison", b"not avro at all").await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'inventory' AND redriven_at IS NULL",
        1,
    )
    .await;

    // The binary, as an operator or a script runs it: exit 1, the rule and the component named.
    let output = orderflow(&env)
        .args(["status", "--component", "inventory"])
        .output()
        .expect("run orderflow status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("dead_letters_open [inventory]"),
        "the rule and component are not named:\n{stdout}"
    );

    // The JSON for scripts says the same.
    let output = orderflow(&env)
        .args(["status", "--json"])
        .output()
        .expect("run orderflow status --json");
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("status --json prints one JSON object");
    assert_eq!(json["healthy"], false);
    let findings = json["findings"].as_array().expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f["rule"] == "dead_letters_open" && f["component"] == "inventory"),
        "{json:#}"
    );
    let inventory = json["status"]["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["component"] == "inventory")
        .expect("inventory in the status")
        .clone();
    assert_eq!(inventory["dead_letters"], 1, "{inventory:#}");

    // The library function main calls, with the thresholds moved: one dead letter allowed.
    let sources = Sources::open(&env.settings).await.expect("sources");
    let snapshot = status::snapshot(&sources, &[Component::Inventory])
        .await
        .expect("snapshot");
    let strict = status::evaluate(&snapshot, &Thresholds::default());
    assert_eq!(
        strict.iter().map(|f| f.rule).collect::<Vec<_>>(),
        vec![Rule::DeadLettersOpen],
        "{strict:?}"
    );
    let loose = Thresholds {
        max_dead_letters: 1,
        ..Thresholds::default()
    };
    assert!(status::evaluate(&snapshot, &loose).is_empty());

    // The gauge of the process that runs inventory. Other tests in this process may set the
    // same series from their own databases, so it is polled until it shows this test's value.
    let mut collector = Collector::new(&env.settings, env.pool.clone(), &[Component::Inventory]);
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < WAIT {
        collector.collect().await.expect("every source answers");
        last = series_value(
            &platform::metrics::render(),
            "orderflow_dead_letters_open",
            &["component=\"inventory\""],
        );
        if last.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.as_deref(), Some("1"), "orderflow_dead_letters_open");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_falls_to_zero_once_the_orders_are_processed() {
    let mut env = TestEnv::new().await;
    platform::metrics::recorder();
    let ids = ["st-1", "st-2", "st-3"];
    let orders: Vec<_> = ids
        .iter()
        .map(|id| order(id, &[("SKU-A", 1, 1_000)], "DE"))
        .collect();
    env.publish(&orders).await;
    // As many to the intake: the intake's lag is on its own topic.
    let upstream = ["st-in-1", "st-in-2", "st-in-3"];
    let orders: Vec<_> = upstream
        .iter()
        .map(|id| order(id, &[("SKU-A", 1, 1_000)], "DE"))
        .collect();
    env.publish_to_intake(&orders).await;

    // Nothing runs yet: every group is behind by three orders (the steps on the log, the
    // intake on the intake topic).
    let which = status::components(&env.settings, None);
    let sources = Sources::open(&env.settings).await.expect("sources");
    let before = sources.status(&which).await.expect("status before");
    for c in &before.components {
        assert_eq!(c.lag, 3, "{} before anything ran: {c:?}", c.component);
    }

    env.start_all();
    for id in ids.iter().chain(&upstream) {
        env.wait_terminal(id).await;
    }
    let mut collector = Collector::new(&env.settings, env.pool.clone(), &which);
    let started = std::time::Instant::now();
    let after = loop {
        let status = collector.collect().await.expect("every source answers");
        if status.components.iter().all(|c| c.lag == 0) || started.elapsed() > WAIT {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for c in &after.components {
        assert_eq!(c.lag, 0, "{} after the orders: {c:?}", c.component);
        assert!(c.partitions.iter().all(|p| p.lag() == 0), "{c:?}");
    }
    assert!(
        after.log_end.values().sum::<i64>() > 3,
        "the steps' replies are on the log too: {:?}",
        after.log_end
    );
    // Every lag series of this test's groups (their names are this test's own) reads 0.
    let text = platform::metrics::render();
    for c in &after.components {
        for p in &c.partitions {
            let value = series_value(
                &text,
                "orderflow_consumer_lag_records",
                &[
                    &format!("group=\"{}\"", c.group),
                    &format!("partition=\"{}\"", p.partition),
                ],
            );
            assert_eq!(
                value.as_deref(),
                Some("0"),
                "{} partition {}",
                c.group,
                p.partition
            );
        }
    }
    let projector = after
        .components
        .iter()
        .find(|c| c.component == "projector")
        .expect("projector");
    assert_eq!(projector.freshness_secs, Some(0.0), "caught up is fresh");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_or_broker_is_exit_2_and_named() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1.
    let output = orderflow(&env)
        .env(
            "ORDERFLOW_DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/orderflow",
        )
        .args(["status"])
        .output()
        .expect("run orderflow status");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Postgres at postgres://postgres@127.0.0.1:1/orderflow"),
        "{stderr}"
    );
    let output = orderflow(&env)
        .env("ORDERFLOW_KAFKA__BROKERS", "127.0.0.1:1")
        .args(["status"])
        .output()
        .expect("run orderflow status");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Kafka broker at 127.0.0.1:1"), "{stderr}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_read_leaves_its_gauges_unknown_not_stale() {
    let env = TestEnv::new().await;
    platform::metrics::recorder();
    let mut collector = Collector::new(&env.settings, env.pool.clone(), &[Component::Shipping]);
    assert!(collector.collect().await.is_some(), "first read");
    let group = env.settings.group_id("shipping");
    let lag = |text: &str| {
        series_value(
            text,
            "orderflow_consumer_lag_records",
            &[&format!("group=\"{group}\""), "partition=\"0\""],
        )
    };
    assert_eq!(lag(&platform::metrics::render()).as_deref(), Some("0"));

    // Postgres goes away for this collector: the facts it gave, and the lag that needs them
    // together with the broker's, become unknown instead of keeping their last value.
    env.pool.close().await;
    let started = std::time::Instant::now();
    let (mut dead, mut lag_now) = (None, None);
    while started.elapsed() < WAIT {
        assert!(
            collector.collect().await.is_none(),
            "a read without Postgres"
        );
        let text = platform::metrics::render();
        dead = series_value(
            &text,
            "orderflow_dead_letters_open",
            &["component=\"shipping\""],
        );
        lag_now = lag(&text);
        // Other tests of this process may set the shipping series from their own database.
        if dead.as_deref() == Some("NaN") {
            break;
        }
    }
    assert_eq!(dead.as_deref(), Some("NaN"), "orderflow_dead_letters_open");
    assert_eq!(
        lag_now.as_deref(),
        Some("NaN"),
        "orderflow_consumer_lag_records"
    );
    env.finish().await;
}

//! `orderflow check`: it passes on a pipeline that finished its orders, and fails, naming the
//! invariant, when one is broken on purpose.

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow::check::{self, Options, Report};

use crate::support::{order, orderflow, TestEnv};

/// Verdict per invariant.
fn verdicts(report: &Report) -> BTreeMap<&'static str, bool> {
    report.checks.iter().map(|c| (c.name, c.passed)).collect()
}

/// The names of the failing invariants, and the report as printed for the assertion message.
async fn failing(env: &TestEnv, options: &Options) -> (Vec<&'static str>, String) {
    let report = check::check(&env.settings, options)
        .await
        .expect("the check runs");
    let failed = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    (failed, report.render())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_passes_on_finished_orders_and_fails_on_each_broken_invariant() {
    let mut env = TestEnv::new().await;
    env.set_stock(&[(orderflow::demo::EMPTY_SKU, 0)]).await;
    env.start_all();
    // One order per outcome the demo's rules know.
    env.publish(&[
        order("chk-ok", &[("SKU-A", 2, 1_000)], "DE"),
        order(
            "chk-empty",
            &[("SKU-A", 1, 1_000), ("DEMO-EMPTY", 1, 500)],
            "DE",
        ),
        order("chk-dear", &[("SKU-A", 1, 900_000)], "DE"),
        order("chk-far", &[("SKU-B", 1, 1_000)], "AQ"),
    ])
    .await;
    for id in ["chk-ok", "chk-empty", "chk-dear", "chk-far"] {
        env.wait_terminal(id).await;
    }

    // The binary, as an operator (or scripts/crash-test) runs it, while the pipeline runs.
    let dir = std::env::temp_dir().join(format!("orderflow-check-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let stock_file = dir.join("stock");
    std::fs::write(&stock_file, "SKU-A=10\nSKU-B=5\nDEMO-EMPTY=0\n").expect("stock file");
    let json_file = dir.join("check.json");
    let output = orderflow(&env)
        .args([
            "check",
            "--orders",
            "4",
            "--order-prefix",
            "chk-",
            "--demo-outcomes",
        ])
        .arg("--initial-stock")
        .arg(&stock_file)
        .args(["--rebuild", "--wait-zero-lag", "60", "--json"])
        .arg(&json_file)
        .output()
        .expect("orderflow check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"check: 8 passed, 0 failed"), "{stdout}");
    for name in [
        check::TERMINAL,
        check::OUTCOMES,
        check::PAYMENTS,
        check::STOCK,
        check::DUPLICATES,
        check::LAG,
        check::REBUILD,
        check::SET_ASIDE,
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("PASS  {name}: "))),
            "no PASS line for {name}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("orders with id prefix \"chk-\": saga 4/4 terminal, read model 4/4"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_file).expect("json written"))
            .expect("valid JSON");
    assert_eq!(json["passed"], true, "{json}");
    assert_eq!(json["checks"].as_array().map(Vec::len), Some(8), "{json}");
    let saga_group = format!("{}.saga", env.settings.kafka.group_prefix);
    assert_eq!(json["lag"][&saga_group]["total"], 0, "{json}");
    // The verify-only rebuild left nothing behind and switched nothing.
    assert_eq!(
        env.count("SELECT count(*) FROM analytics_meta.generations")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT generation::bigint FROM analytics_meta.live")
            .await,
        1
    );

    // From here on nothing runs, so each broken invariant stays broken while it is checked.
    env.stop().await;
    let initial = check::read_initial_stock(&stock_file).expect("stock file");
    assert_eq!(initial.len(), 3);
    let options = Options {
        orders: Some(4),
        order_prefix: Some("chk-".into()),
        initial_stock: Some(stock_file.clone()),
        demo_outcomes: true,
        ..Options::default()
    };
    let (failed, text) = failing(&env, &options).await;
    assert!(failed.is_empty(), "{text}");

    // A second authorization in the ledger of a completed order.
    sqlx::query(
        "INSERT INTO payment.ledger (payment_id, order_id, entry, amount_minor, currency, caused_by)
         SELECT payment_id, order_id, 'authorization', amount_minor, currency, gen_random_uuid()
         FROM payment.payments WHERE order_id = 'chk-ok'",
    )
    .execute(&env.pool)
    .await
    .expect("extra authorization");
    let (failed, text) = failing(&env, &options).await;
    assert_eq!(failed, [check::PAYMENTS, check::DUPLICATES], "{text}");
    assert!(
        text.contains("ledger nets 2 authorizations for a completed order (e.g. chk-ok)"),
        "{text}"
    );
    exec(
        &env,
        "DELETE FROM payment.ledger WHERE id = (SELECT max(id) FROM payment.ledger)",
    )
    .await;

    // A stock row off by one: conservation against the initial stock fails.
    exec(
        &env,
        "UPDATE inventory.stock SET available = available + 1 WHERE sku = 'SKU-B'",
    )
    .await;
    let (failed, text) = failing(&env, &options).await;
    assert_eq!(failed, [check::STOCK], "{text}");
    assert!(
        text.contains("SKU-B: available 6 + reserved 0 = 6, initial 5"),
        "{text}"
    );
    // Without the initial stock the same row is consistent with the reservations.
    let generic = Options::default();
    let (failed, text) = failing(&env, &generic).await;
    assert!(failed.is_empty(), "{text}");
    exec(
        &env,
        "UPDATE inventory.stock SET available = available - 1 WHERE sku = 'SKU-B'",
    )
    .await;

    // Stock still reserved for a cancelled order.
    exec(
        &env,
        "UPDATE inventory.reservations SET status = 'reserved' WHERE order_id = 'chk-far'",
    )
    .await;
    let (failed, text) = failing(&env, &generic).await;
    assert_eq!(failed, [check::STOCK], "{text}");
    assert!(
        text.contains("stock still reserved for cancelled orders: chk-far"),
        "{text}"
    );
    exec(
        &env,
        "UPDATE inventory.reservations SET status = 'released' WHERE order_id = 'chk-far'",
    )
    .await;

    // A reply left unpublished.
    sqlx::query(
        "UPDATE pipeline.outbox SET published_at = NULL WHERE id = (SELECT min(id) FROM pipeline.outbox)",
    )
    .execute(&env.pool)
    .await
    .expect("unpublish");
    let (failed, text) = failing(&env, &generic).await;
    assert_eq!(failed, [check::LAG], "{text}");
    assert!(text.contains("unpublished outbox rows 1"), "{text}");
    exec(
        &env,
        "UPDATE pipeline.outbox SET published_at = now() WHERE published_at IS NULL",
    )
    .await;

    // A read model that no longer equals a fold of the log; the check switches nothing.
    sqlx::query(
        "UPDATE analytics_g1.orders SET total_minor = total_minor + 1 WHERE order_id = 'chk-ok'",
    )
    .execute(&env.pool)
    .await
    .expect("read model off");
    let rebuild = Options {
        rebuild: true,
        ..Options::default()
    };
    let report = check::check(&env.settings, &rebuild)
        .await
        .expect("the check runs");
    let text = report.render();
    assert_eq!(
        verdicts(&report).get(check::REBUILD),
        Some(&false),
        "{text}"
    );
    assert!(text.contains("DIFFERENT: orders"), "{text}");
    assert!(text.contains("orders only in live:    (chk-ok,"), "{text}");
    assert_eq!(
        env.count("SELECT count(*) FROM analytics_meta.generations")
            .await,
        1,
        "the verify-only generation is dropped"
    );
    assert_eq!(
        env.count("SELECT generation::bigint FROM analytics_meta.live")
            .await,
        1
    );
    sqlx::query(
        "UPDATE analytics_g1.orders SET total_minor = total_minor - 1 WHERE order_id = 'chk-ok'",
    )
    .execute(&env.pool)
    .await
    .expect("undo");

    // An order nobody has consumed: every group lags by one (no step knows the order yet, so
    // the order checks still see four).
    env.publish(&[order("chk-late", &[("SKU-A", 1, 1_000)], "DE")])
        .await;
    let (failed, text) = failing(&env, &options).await;
    assert_eq!(failed, [check::LAG], "{text}");
    assert!(
        !text.contains("INFO  log:"),
        "log counts only at zero lag:\n{text}"
    );
    for component in ["inventory", "payment", "shipping", "saga"] {
        let group = format!("{}.{component} lag 1", env.settings.kafka.group_prefix);
        assert!(text.contains(&group), "{group} missing:\n{text}");
    }
    assert!(text.contains("projections (analytics_g1) lag 1"), "{text}");
    // Waiting does not help when nothing consumes: the lag check says so.
    let waiting = Options {
        wait_zero_lag: Some(Duration::from_secs(2)),
        ..Options::default()
    };
    let (failed, text) = failing(&env, &waiting).await;
    assert!(failed.contains(&check::LAG), "{text}");
    assert!(text.contains("zero lag NOT reached within 2 s"), "{text}");

    // A dead letter and a parked order.
    sqlx::query(
        "INSERT INTO pipeline.dead_letters (id, consumer, topic, partition, \"offset\", dlq_topic,
             error_class, error_kind, error, attempts, history, first_failed_at, last_failed_at)
         VALUES (gen_random_uuid(), 'payment', 't', 0, 7, 't.dlq', 'permanent', 'invalid',
                 'made up by the test', 1, '[]', now(), now())",
    )
    .execute(&env.pool)
    .await
    .expect("dead letter");
    let (failed, text) = failing(&env, &generic).await;
    assert!(failed.contains(&check::SET_ASIDE), "{text}");
    assert!(
        text.contains("dead letter: payment t/0@7 permanent/invalid: made up by the test"),
        "{text}"
    );

    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_2_naming_what_it_cannot_reach() {
    let env = TestEnv::new().await;
    // (variable, value, a piece of the message)
    let cases = [
        (
            "ORDERFLOW_DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/nowhere",
            "cannot connect to Postgres at postgres://postgres@127.0.0.1:1/nowhere",
        ),
        (
            "ORDERFLOW_KAFKA__BROKERS",
            "127.0.0.1:1",
            "Kafka broker at 127.0.0.1:1",
        ),
        (
            "ORDERFLOW_KAFKA__PARTITIONS",
            "many",
            "invalid configuration",
        ),
    ];
    for (variable, value, message) in cases {
        let output = orderflow(&env)
            .env(variable, value)
            .env("ORDERFLOW_DATABASE__ACQUIRE_TIMEOUT_MS", "1000")
            .arg("check")
            .output()
            .expect("orderflow check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // One line says what failed (the client libraries may log their attempts before it).
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("check: ") || l.starts_with("error: "))
            .collect();
        assert_eq!(said.len(), 1, "{variable}: {stderr}");
        assert!(said[0].contains(message), "{variable}: {stderr}");
    }
    let output = orderflow(&env)
        .args(["check", "--initial-stock", "/nonexistent/stock"])
        .output()
        .expect("orderflow check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/stock"), "{stderr}");
    env.finish().await;
}

/// Run one statement that breaks or repairs an invariant; the test cannot go on without it.
async fn exec(env: &TestEnv, sql: &str) {
    sqlx::query(sql)
        .execute(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

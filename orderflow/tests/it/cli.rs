//! The `orderflow` binary as a user runs it.

use std::io::Write;
use std::process::Stdio;

use crate::support::{orderflow, TestEnv};

const GOOD: &str = r#"{"order_id":"ID","customer_id":"c-1","currency":"EUR","lines":[{"sku":"SKU-A","quantity":1,"unit_price_minor":100}],"shipping_address":{"name":"A","line1":"1 Main","city":"Berlin","postal_code":"10115","country":"DE"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_reports_bad_lines_by_number_and_publishes_the_rest() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let input = [
        GOOD.replace("ID", "o-cli-1"),
        "this is not json".to_string(),
        String::new(),
        GOOD.replace("ID", "o-cli-2")
            .replace("\"quantity\":1", "\"quantity\":-1"),
        GOOD.replace("ID", "o-cli-3"),
    ]
    .join("\n");
    let mut child = orderflow(&env)
        .arg("publish")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn orderflow");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("orderflow publish");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stdin:2: not a valid order object"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stdin:4: invalid order") && stderr.contains("quantity"),
        "{stderr}"
    );
    assert!(stderr.contains("published 2 orders"), "{stderr}");
    assert_eq!(env.wait_terminal("o-cli-1").await.0, "completed");
    assert_eq!(env.wait_terminal("o-cli-3").await.0, "completed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_missing_services_get_clear_errors() {
    let env = TestEnv::new().await;
    let output = orderflow(&env)
        .args(["run", "--only", "billing"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'billing'"));

    let output = orderflow(&env)
        .args(["stock", "set", "SKU-A=x"])
        .output()
        .expect("stock");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a whole number"));

    let output = orderflow(&env)
        .env(
            "ORDERFLOW_DATABASE__URL",
            "postgres://postgres@127.0.0.1:1/nowhere",
        )
        .env("ORDERFLOW_DATABASE__ACQUIRE_TIMEOUT_MS", "1000")
        .args(["stock", "set", "SKU-A=1"])
        .output()
        .expect("stock");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to Postgres at postgres://postgres@127.0.0.1:1/nowhere"),
        "{stderr}"
    );

    let output = orderflow(&env)
        .env("ORDERFLOW_KAFKA__PARTITIONS", "many")
        .arg("topics")
        .output()
        .expect("topics");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid configuration")
            && stderr.to_lowercase().contains("kafka.partitions"),
        "{stderr}"
    );
    env.finish().await;
}

//! Bad records and crashes: nothing is lost, nothing is applied twice, no partition stalls.

use apache_avro::types::Value;
use consumers::{Fault, RunnerOptions};
use orderflow::components::{self, Component};

use crate::support::{order, TestEnv};

/// An `OrderCreated` whose line has quantity 0, written by a client that skipped validation:
/// a valid Avro record that breaks a domain rule.
fn invalid_order_created(order_id: &str) -> Vec<u8> {
    let event = order(order_id, &[("SKU-A", 1, 100)], "DE")
        .into_event(chrono::Utc::now())
        .expect("valid");
    let bytes = events::encode(&event).expect("encode");
    let info = events::writer_schema(events::EventType::OrderCreated);
    let schema = apache_avro::Schema::parse_str(info.schema_json).expect("schema");
    let Value::Record(mut fields) =
        apache_avro::from_avro_datum(&schema, &mut &bytes[10..], None).expect("datum")
    else {
        panic!("a record")
    };
    for (name, value) in &mut fields {
        if name == "lines" {
            let Value::Array(lines) = value else {
                panic!("lines is an array")
            };
            let Value::Record(line) = &mut lines[0] else {
                panic!("a line record")
            };
            for (field, v) in line.iter_mut() {
                if field == "quantity" {
                    *v = Value::Int(0);
                }
            }
        }
    }
    let mut out = bytes[..10].to_vec();
    out.extend(apache_avro::to_avro_datum(&schema, Value::Record(fields)).expect("re-encode"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_invalid_records_are_set_aside_and_neighbours_complete() {
    let mut env = TestEnv::new().await;
    env.start_all();
    // Same key for all, so all four land in one partition, bad ones between good ones.
    let before = order("o-same", &[("SKU-A", 1, 100)], "DE");
    env.publish(&[before]).await;
    env.produce_raw("o-same", b"\xC3\x01garbage that is not avro")
        .await;
    env.produce_raw("o-same", &invalid_order_created("o-same"))
        .await;
    let other = order("o-next", &[("SKU-B", 1, 100)], "DE");
    env.publish(&[other]).await;

    assert_eq!(env.wait_terminal("o-same").await.0, "completed");
    assert_eq!(env.wait_terminal("o-next").await.0, "completed");
    // Each of the five consumers set both bad records aside, with position and reason.
    env.wait_count("SELECT count(*) FROM pipeline.dead_letters", 10)
        .await;
    let reasons: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT consumer, error_kind, \"offset\", error FROM pipeline.dead_letters WHERE consumer = 'inventory' ORDER BY \"offset\"",
    )
    .fetch_all(&env.pool)
    .await
    .expect("rejected");
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0].3.contains("fingerprint") || reasons[0].3.contains("malformed"),
        "{reasons:?}"
    );
    assert!(reasons[1].3.contains("quantity"), "{reasons:?}");
    assert!(reasons[0].2 < reasons[1].2);
    let bytes_kept: i64 =
        env.count("SELECT count(*) FROM pipeline.dead_letters WHERE payload IS NOT NULL AND record_key = 'o-same'::bytea").await;
    assert_eq!(bytes_kept, 10);
    assert_eq!(
        env.stock("SKU-A").await,
        (9, 1),
        "the invalid order reserved nothing"
    );
    env.finish().await;
}

/// A second `OrderCreated` for an order id already in progress, with a new event id: the
/// inventory step refuses it as a business-rule violation (the batch is re-applied without
/// it), the saga ignores it, and the first order completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_order_created_for_the_same_order_is_refused_once() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let first = order("o-twice", &[("SKU-A", 2, 100)], "DE")
        .into_event(chrono::Utc::now())
        .expect("valid");
    let mut second = order("o-twice", &[("SKU-B", 5, 100)], "DE")
        .into_event(chrono::Utc::now())
        .expect("valid");
    second.meta.event_id = uuid::Uuid::new_v4();
    second.meta.causation_id = second.meta.event_id;
    for event in [&first, &second] {
        env.produce_raw("o-twice", &events::encode(event).expect("encode"))
            .await;
    }
    let neighbour = env
        .publish(&[order("o-after-twice", &[("SKU-A", 1, 100)], "DE")])
        .await;
    assert_eq!(env.wait_terminal("o-twice").await.0, "completed");
    assert_eq!(
        env.wait_terminal(&neighbour[0].meta.order_id).await.0,
        "completed"
    );

    assert_eq!(env.stock("SKU-A").await, (7, 3));
    assert_eq!(
        env.stock("SKU-B").await,
        (5, 0),
        "the second OrderCreated reserved nothing"
    );
    let refused: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer, error_kind FROM pipeline.dead_letters ORDER BY consumer")
            .fetch_all(&env.pool)
            .await
            .expect("rejected");
    assert_eq!(refused, [("inventory".to_string(), "rule".to_string())]);
    let total: i64 = env
        .count("SELECT total_minor FROM analytics.orders WHERE order_id = 'o-twice'")
        .await;
    assert_eq!(total, 200, "the read model keeps the first order");
    env.finish().await;
}

/// A step dies after its Postgres commit (before publishing, or after publishing but before
/// committing offsets); a fresh member re-reads the batch and finishes the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_commit_and_offset_commit_applies_nothing_twice() {
    for fault in [Fault::CrashAfterDbCommit, Fault::CrashBeforeOffsetCommit] {
        let mut env = TestEnv::new().await;
        env.start(&[
            Component::Payment,
            Component::Shipping,
            Component::Saga,
            Component::Projections,
        ]);
        let options = RunnerOptions { fault: Some(fault) };
        let mut crashing = components::start_with(
            &[Component::Inventory],
            &env.settings,
            &env.pool,
            &env.shutdown,
            &options,
        )
        .expect("start");
        env.publish(&[order("o-crash", &[("SKU-A", 2, 100)], "DE")])
            .await;

        let died = crashing
            .join_next()
            .await
            .expect("one task")
            .expect("no panic");
        let error = died.expect_err("the injected fault stops the step");
        assert!(format!("{error:#}").contains("injected fault"), "{error:#}");
        drop(crashing);
        assert_eq!(
            env.stock("SKU-A").await,
            (8, 2),
            "{fault:?}: the commit happened"
        );

        env.start(&[Component::Inventory]);
        assert_eq!(
            env.wait_terminal("o-crash").await.0,
            "completed",
            "{fault:?}"
        );
        assert_eq!(env.stock("SKU-A").await, (8, 2), "{fault:?}: reserved once");
        assert_eq!(
            env.count("SELECT count(*) FROM inventory.reservations")
                .await,
            1
        );
        assert_eq!(
            env.count("SELECT count(*) FROM pipeline.inbox WHERE step = 'inventory'")
                .await,
            1
        );
        assert_eq!(
            env.count("SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL")
                .await,
            0
        );
        assert_eq!(
            env.timeline("o-crash").await,
            [
                "OrderCreated",
                "InventoryReserved",
                "PaymentAuthorized",
                "ShipmentScheduled",
                "OrderCompleted"
            ],
            "{fault:?}"
        );
        env.finish().await;
    }
}

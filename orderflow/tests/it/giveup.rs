//! Giving orders up: a step that misses its deadline (time controlled by the test, no sleeps)
//! and customer cancellations, with the compensations each needs.

use chrono::{Duration, Utc};
use orderflow::components::Component;

use crate::support::{order, TestEnv};

/// Publish `SagaStepTimedOut` for every order past its deadline as of `now`.
async fn expire(env: &TestEnv, now: chrono::DateTime<Utc>) -> Vec<String> {
    let expired = consumers::saga::expire_due(&env.pool, &env.settings.kafka.topic, now, 100)
        .await
        .expect("deadline check");
    let producer =
        platform::kafka::producer(&env.settings.kafka, "test-deadlines").expect("producer");
    platform::outbox::publish(&env.pool, &producer, &expired.rows)
        .await
        .expect("publish SagaStepTimedOut");
    expired.orders
}

async fn request_cancellation(env: &TestEnv, order_id: &str) {
    let event = producers::cancellation_request(order_id, "customer_request", "c-1", Utc::now())
        .expect("valid request");
    env.produce_raw(order_id, &events::encode(&event).expect("encode"))
        .await;
}

async fn saga_state(env: &TestEnv, order_id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM saga.orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&env.pool)
        .await
        .expect("saga row")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_payment_after_a_timeout_is_voided_never_shipped() {
    let mut env = TestEnv::new().await;
    // The test moves time itself.
    env.settings.saga.deadline_check_interval_ms = 0;
    env.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    env.publish(&[order("o-late", &[("SKU-A", 2, 100)], "DE")])
        .await;
    env.wait_count(
        "SELECT count(*) FROM saga.orders WHERE order_id = 'o-late' AND state = 'awaiting_payment'",
        1,
    )
    .await;
    // Not due yet: nothing happens.
    assert!(expire(&env, Utc::now()).await.is_empty());
    let later = Utc::now() + Duration::hours(1);
    assert_eq!(expire(&env, later).await, vec!["o-late".to_string()]);
    assert!(
        expire(&env, later).await.is_empty(),
        "a wait times out once"
    );
    assert_eq!(
        env.count("SELECT attempts::bigint FROM saga.orders WHERE order_id = 'o-late'")
            .await,
        1
    );

    // Payment comes up late and authorizes (it reads InventoryReserved, which precedes the
    // timeout); the authorization is voided, shipping refuses, the stock comes back.
    env.start(&[Component::Payment]);
    let (status, reason) = env.wait_terminal("o-late").await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("cancelled", Some("step_timed_out"))
    );
    env.wait_count(
        "SELECT count(*) FROM analytics.order_events WHERE order_id = 'o-late' AND event_type = 'ShipmentFailed'",
        1,
    )
    .await;
    let ledger: Vec<String> = sqlx::query_scalar(
        "SELECT entry FROM payment.ledger WHERE order_id = 'o-late' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("ledger");
    assert_eq!(ledger, ["authorization", "void"]);
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.shipments WHERE order_id = 'o-late' AND status = 'failed' AND failure_reason = 'order_abandoned'").await,
        1
    );
    assert_eq!(env.stock("SKU-A").await, (10, 0));
    let timeline = env.timeline("o-late").await;
    for want in [
        "SagaStepTimedOut",
        "PaymentAuthorized",
        "PaymentVoided",
        "InventoryReleased",
        "OrderCancelled",
    ] {
        assert!(timeline.iter().any(|t| t == want), "{want} in {timeline:?}");
    }
    assert!(
        !timeline.iter().any(|t| t == "OrderCompleted"),
        "{timeline:?}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancellation_is_accepted_before_shipping_and_refused_after() {
    let mut env = TestEnv::new().await;
    env.settings.saga.deadline_check_interval_ms = 0;
    // Shipping is down: the order waits for its shipment, paid and with stock reserved.
    env.start(&[
        Component::Inventory,
        Component::Payment,
        Component::Saga,
        Component::Projections,
    ]);
    env.publish(&[
        order("o-cancel", &[("SKU-A", 3, 100)], "DE"),
        order("o-shipped", &[("SKU-B", 1, 100)], "DE"),
    ])
    .await;
    env.wait_count(
        "SELECT count(*) FROM saga.orders WHERE state = 'awaiting_shipment'",
        2,
    )
    .await;
    request_cancellation(&env, "o-cancel").await;
    env.wait_count(
        "SELECT count(*) FROM saga.orders WHERE order_id = 'o-cancel' AND state = 'compensating'",
        1,
    )
    .await;
    // Shipping comes up: it schedules o-cancel (asked before the cancellation) and then
    // calls the shipment off; o-shipped completes.
    env.start(&[Component::Shipping]);
    let (status, reason) = env.wait_terminal("o-cancel").await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("cancelled", Some("cancellation_requested"))
    );
    assert_eq!(env.wait_terminal("o-shipped").await.0, "completed");
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.shipments WHERE order_id = 'o-cancel' AND status = 'cancelled'").await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM payment.payments WHERE order_id = 'o-cancel' AND status = 'voided'").await,
        1
    );
    assert_eq!(env.stock("SKU-A").await, (10, 0));

    // Too late for the completed order; a repeat for the cancelled one is refused too.
    request_cancellation(&env, "o-shipped").await;
    request_cancellation(&env, "o-cancel").await;
    request_cancellation(&env, "o-never-created").await;
    env.wait_count(
        "SELECT count(*) FROM analytics.order_events WHERE event_type = 'OrderCancellationRejected'",
        3,
    )
    .await;
    let reasons: Vec<(String, String)> = sqlx::query_as(
        "SELECT order_id, detail->>'reason' FROM analytics.order_events
         WHERE event_type = 'OrderCancellationRejected' ORDER BY order_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("rejections");
    assert_eq!(
        reasons,
        [
            ("o-cancel".to_string(), "already_cancelled".to_string()),
            ("o-never-created".to_string(), "unknown_order".to_string()),
            ("o-shipped".to_string(), "already_shipped".to_string()),
        ]
    );
    assert_eq!(saga_state(&env, "o-shipped").await, "completed");
    assert_eq!(saga_state(&env, "o-never-created").await, "");
    env.finish().await;
}

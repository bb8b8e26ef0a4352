//! Every terminal outcome of an order, end to end: read model, timeline and step state.

use crate::support::{order, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_completes_with_a_correct_row_and_timeline() {
    let mut env = TestEnv::new().await;
    env.start_all();
    env.publish(&[order(
        "o-happy",
        &[("SKU-A", 2, 1_250), ("SKU-B", 1, 500)],
        "DE",
    )])
    .await;

    assert_eq!(
        env.wait_terminal("o-happy").await,
        ("completed".to_string(), None)
    );
    let row: (String, i64, String, i32, bool, bool, String) = sqlx::query_as(
        "SELECT customer_id, total_minor, currency, line_count, completed_at >= created_at, cancelled_at IS NULL, last_event_type
         FROM analytics.orders WHERE order_id = 'o-happy'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("row");
    assert_eq!(
        row,
        (
            "c-1".into(),
            3_000,
            "EUR".into(),
            2,
            true,
            true,
            "OrderCompleted".into()
        )
    );
    assert_eq!(
        env.timeline("o-happy").await,
        [
            "OrderCreated",
            "InventoryReserved",
            "PaymentAuthorized",
            "ShipmentScheduled",
            "OrderCompleted"
        ]
    );
    assert_eq!(env.stock("SKU-A").await, (8, 2));
    assert_eq!(env.stock("SKU-B").await, (4, 1));
    assert_eq!(
        env.count("SELECT count(*) FROM payment.payments WHERE status = 'authorized'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.shipments WHERE status = 'scheduled'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM saga.orders WHERE state = 'completed'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.dead_letters")
            .await,
        0
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_stock_is_cancelled_and_moves_no_stock() {
    let mut env = TestEnv::new().await;
    env.start_all();
    // SKU-A alone would fit; SKU-B is short, so nothing may be reserved.
    env.publish(&[order(
        "o-short",
        &[("SKU-A", 3, 100), ("SKU-B", 6, 100)],
        "DE",
    )])
    .await;

    assert_eq!(
        env.wait_terminal("o-short").await,
        ("cancelled".to_string(), Some("out_of_stock".to_string()))
    );
    assert_eq!(
        env.timeline("o-short").await,
        ["OrderCreated", "InventoryRejected", "OrderCancelled"]
    );
    assert_eq!(env.stock("SKU-A").await, (10, 0));
    assert_eq!(env.stock("SKU-B").await, (5, 0));
    assert_eq!(env.count("SELECT count(*) FROM payment.payments").await, 0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declined_payments_cancel_and_release_stock() {
    let mut env = TestEnv::new().await;
    sqlx::query("INSERT INTO payment.blocked_customers (customer_id) VALUES ('c-blocked')")
        .execute(&env.pool)
        .await
        .expect("block customer");
    env.start_all();
    let over_limit = order("o-over", &[("SKU-A", 1, 600_000)], "DE");
    let mut blocked = order("o-blocked", &[("SKU-A", 1, 100)], "DE");
    blocked.customer_id = "c-blocked".into();
    env.publish(&[over_limit, blocked]).await;

    for id in ["o-over", "o-blocked"] {
        assert_eq!(
            env.wait_terminal(id).await,
            (
                "cancelled".to_string(),
                Some("payment_declined".to_string())
            )
        );
        assert_eq!(
            env.timeline(id).await,
            [
                "OrderCreated",
                "InventoryReserved",
                "PaymentDeclined",
                "InventoryReleased",
                "OrderCancelled"
            ]
        );
    }
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT decline_reason FROM payment.payments ORDER BY order_id")
            .fetch_all(&env.pool)
            .await
            .expect("payments");
    assert_eq!(reasons, ["customer_blocked", "amount_over_limit"]);
    assert_eq!(env.stock("SKU-A").await, (10, 0));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_shipment_voids_payment_and_releases_stock() {
    let mut env = TestEnv::new().await;
    env.start_all();
    env.publish(&[order("o-aq", &[("SKU-B", 2, 700)], "AQ")])
        .await;

    assert_eq!(
        env.wait_terminal("o-aq").await,
        ("cancelled".to_string(), Some("shipment_failed".to_string()))
    );
    let timeline = env.timeline("o-aq").await;
    assert_eq!(
        timeline[..4],
        [
            "OrderCreated",
            "InventoryReserved",
            "PaymentAuthorized",
            "ShipmentFailed"
        ]
    );
    // The two compensations run in parallel steps; either may land first.
    let mut compensations = timeline[4..6].to_vec();
    compensations.sort();
    assert_eq!(compensations, ["InventoryReleased", "PaymentVoided"]);
    assert_eq!(timeline[6], "OrderCancelled");
    assert_eq!(env.stock("SKU-B").await, (5, 0));
    let ledger: Vec<(String, i64)> =
        sqlx::query_as("SELECT entry, amount_minor FROM payment.ledger ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("ledger");
    assert_eq!(
        ledger,
        [
            ("authorization".to_string(), 1_400),
            ("void".to_string(), -1_400)
        ]
    );
    env.finish().await;
}

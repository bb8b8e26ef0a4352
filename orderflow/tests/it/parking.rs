//! Parking: an order whose step keeps failing is held with its later events, in order, while
//! other orders of the same partition flow on; it survives a restart and is released in order.

use std::sync::atomic::Ordering;

use orderflow::components::Component;

use crate::deadletters::{start_payment, FlakyProvider};
use crate::support::{order, TestEnv};

const OTHERS: [Component; 4] = [
    Component::Inventory,
    Component::Shipping,
    Component::Saga,
    Component::Projections,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_order_holds_its_later_events_while_its_partition_flows_on() {
    // One partition: every order shares it.
    let mut env = TestEnv::with_partitions(1).await;
    env.settings.consumer.retry_attempts_max = 10_000;
    env.settings.consumer.retry_total_ms_max = 600_000;
    env.settings.consumer.retry_delay_ms_min = 50;
    env.settings.consumer.retry_delay_ms_max = 200;
    env.start(&OTHERS);
    let provider = FlakyProvider::new(0, true, Some("c-stuck"));
    start_payment(&mut env, provider.clone());

    let mut stuck = order("o-stuck", &[("SKU-A", 1, 100)], "DE");
    stuck.customer_id = "c-stuck".into();
    let created = env.publish(&[stuck]).await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.parked WHERE step = 'payment' AND order_id = 'o-stuck'",
        1,
    )
    .await;
    // A later event of the parked order for the same step (here: its OrderCreated delivered
    // again) waits behind the failing one instead of being handled.
    env.produce_raw("o-stuck", &events::encode(&created[0]).expect("encode"))
        .await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.parked WHERE step = 'payment' AND order_id = 'o-stuck'",
        2,
    )
    .await;
    // Other orders of the same partition complete meanwhile.
    env.publish(&[order("o-flowing", &[("SKU-B", 1, 100)], "DE")])
        .await;
    assert_eq!(env.wait_terminal("o-flowing").await.0, "completed");
    let held: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT \"offset\", attempts FROM pipeline.parked WHERE order_id = 'o-stuck' ORDER BY seq",
    )
    .fetch_all(&env.pool)
    .await
    .expect("held rows");
    assert!(held[0].0 < held[1].0, "held in log order: {held:?}");
    assert!(
        held[0].1 >= 1 && held[1].1 == 0,
        "only the head has failed attempts: {held:?}"
    );

    // A restart keeps the parked order.
    env.stop().await;
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.parked WHERE order_id = 'o-stuck'")
            .await,
        2
    );
    env.start(&OTHERS);
    start_payment(&mut env, provider.clone());

    // The provider recovers: the head succeeds, the held duplicate is absorbed, the order ends.
    provider.down.store(false, Ordering::SeqCst);
    assert_eq!(env.wait_terminal("o-stuck").await.0, "completed");
    env.wait_count("SELECT count(*) FROM pipeline.parked", 0)
        .await;
    assert_eq!(
        env.count("SELECT count(*) FROM payment.ledger WHERE order_id = 'o-stuck'")
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

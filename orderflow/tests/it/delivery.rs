//! At-least-once delivery with exactly-once effects: repeated records and rewound offsets
//! change nothing; the projection resumes from the offsets it stored in Postgres.

use std::time::Duration;

use orderflow::components::Component;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::{order, TestEnv, PARTITIONS};

/// Commit offset 0 on every partition for `group` (no member may be running).
fn rewind_group(env: &TestEnv, group: &str) {
    let consumer = platform::kafka::group_offsets_client(&env.settings.kafka, group, "test-rewind")
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition_offset(&env.settings.kafka.topic, partition, Offset::Offset(0))
            .expect("tpl");
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("rewind commit");
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("read back");
    for element in committed.elements() {
        assert_eq!(element.offset(), Offset::Offset(0), "rewound {group}");
    }
}

/// Wait until `group` has committed offsets summing to `want` over all partitions.
async fn wait_committed(env: &TestEnv, group: &str, want: i64) {
    let consumer = platform::kafka::group_offsets_client(&env.settings.kafka, group, "test-watch")
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition(&env.settings.kafka.topic, partition);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .expect("committed offsets");
        let sum: i64 = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(n) => n,
                _ => 0,
            })
            .sum();
        if sum == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} committed {sum}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_and_rewinds_apply_nothing_twice() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let created = env
        .publish(&[order("o-dup", &[("SKU-A", 1, 1_000)], "DE")])
        .await;
    // The very same record produced a second time.
    env.produce_raw("o-dup", &events::encode(&created[0]).expect("encode"))
        .await;
    assert_eq!(env.wait_terminal("o-dup").await.0, "completed");
    env.stop().await;

    let inbox_before = env.count("SELECT count(*) FROM pipeline.inbox").await;
    let log_end = env
        .count("SELECT sum(next_offset)::bigint FROM analytics_g1.positions")
        .await;
    for component in ["inventory", "payment", "shipping", "saga"] {
        rewind_group(&env, &env.settings.group_id(component));
    }
    sqlx::query("UPDATE analytics_g1.positions SET next_offset = 0")
        .execute(&env.pool)
        .await
        .expect("rewind projection");
    env.start_all();
    // Every record is read again: wait until the projection and every step are back at the end.
    let end: i64 = env
        .count("SELECT count(*) FROM analytics.order_events")
        .await;
    env.wait_count(
        "SELECT sum(next_offset)::bigint FROM analytics_g1.positions",
        log_end,
    )
    .await;
    for component in ["inventory", "payment", "shipping", "saga"] {
        wait_committed(&env, &env.settings.group_id(component), log_end).await;
    }
    env.stop().await;

    assert_eq!(
        env.count("SELECT count(*) FROM inventory.reservations")
            .await,
        1
    );
    assert_eq!(env.stock("SKU-A").await, (9, 1));
    assert_eq!(
        env.count("SELECT count(*) FROM payment.ledger WHERE entry = 'authorization'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.shipments").await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM analytics.orders").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM analytics.order_events")
            .await,
        end
    );
    assert_eq!(end, 5, "one timeline row per distinct event");
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.inbox").await,
        inbox_before
    );
    // Each of the 5 distinct events sits once in each inbox that wants it.
    assert_eq!(
        env.count("SELECT count(*) FROM (SELECT step, event_id FROM pipeline.inbox GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0
    );
    let published: i64 = env
        .count("SELECT count(*) FROM pipeline.outbox WHERE published_at IS NOT NULL")
        .await;
    assert_eq!(
        published, 4,
        "one reply per step per order, published once each"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projection_starts_at_its_stored_offsets_not_the_groups() {
    let mut env = TestEnv::new().await;
    env.start_all();
    env.publish(&[
        order("o-p1", &[("SKU-A", 1, 100)], "DE"),
        order("o-p2", &[("SKU-B", 1, 100)], "FR"),
    ])
    .await;
    env.wait_terminal("o-p1").await;
    env.wait_terminal("o-p2").await;
    env.stop().await;

    // Wipe the read models and their stored offsets; the group's Kafka offsets stay at the end.
    sqlx::query(
        "TRUNCATE analytics_g1.orders, analytics_g1.order_lines, analytics_g1.order_events,
                  analytics_g1.customer_summary, analytics_g1.daily_sales, analytics_g1.sku_daily_sales,
                  analytics_g1.cancellations_daily, analytics_g1.saga_step_durations, analytics_g1.positions",
    )
    .execute(&env.pool)
    .await
    .expect("truncate");
    env.start(&[Component::Projections]);
    env.wait_count(
        "SELECT count(*) FROM analytics.orders WHERE status = 'completed'",
        2,
    )
    .await;
    env.wait_count("SELECT count(*) FROM analytics.order_events", 10)
        .await;
    env.finish().await;
}

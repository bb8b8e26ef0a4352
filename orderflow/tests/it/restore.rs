//! Restore from an archive alone: the log, the read models and the steps' state come back as
//! they were, and no step repeats a side effect.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use orderflow::components::Component;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::archive::{archive_once, live_digests, use_new_archive};
use crate::deadletters::{start_payment, FlakyProvider};
use crate::support::{order, TestEnv};
use orderflow::operator::Change;

/// Change stock or blocks the way `orderflow stock` / `orderflow customers` do: events
/// appended through the outbox and published. Returns the command id.
pub async fn operate(env: &TestEnv, change: Change) -> uuid::Uuid {
    let command = uuid::Uuid::new_v4();
    orderflow::operator::apply(&env.settings, &env.pool, command, &change, "test")
        .await
        .expect("command appended and published");
    command
}

/// Forget the stock `TestEnv::new` wrote straight into the table: here stock comes only from
/// events on the log, as the archive must carry it.
async fn without_direct_stock(env: &TestEnv) {
    sqlx::query("DELETE FROM inventory.stock")
        .execute(&env.pool)
        .await
        .expect("stock emptied");
}

/// `(sku, delta)` pairs as a `stock adjust`.
fn adjust(items: &[(&str, i64)]) -> Change {
    Change::AdjustStock(items.iter().map(|(s, d)| (s.to_string(), *d)).collect())
}

/// Every compared row of `env`'s state, with its topic's name made neutral so that two
/// environments compare.
async fn state_rows(env: &TestEnv) -> Vec<(String, Vec<String>)> {
    let topic = &env.settings.kafka.topic;
    orderflow::state::rows(&env.pool)
        .await
        .expect("state rows")
        .into_iter()
        .map(|(table, rows)| {
            let mut rows: Vec<String> = rows
                .into_iter()
                .map(|r| {
                    // A dead letter's id (also its outbox row's event id) hashes its group and
                    // position, topic name included; the other columns hold the same facts.
                    let fields: Vec<&str> = r.split(',').collect();
                    let r = match table.as_str() {
                        "pipeline.dead_letters" => fields[1..].join(","),
                        "pipeline.outbox" if fields.get(2) == Some(&"DeadLetter") => {
                            [&fields[..1], &fields[2..]].concat().join(",")
                        }
                        _ => r,
                    };
                    r.replace(topic.as_str(), "TOPIC")
                })
                .collect();
            rows.sort();
            (table, rows)
        })
        .collect()
}

/// Point the archive in `dir` at `topic`: the restored log gets another name here than the
/// archived one (the records keep their bytes).
fn point_manifest_at(dir: &std::path::Path, topic: &str) {
    let path = dir.join(::archive::MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read manifest")).expect("json");
    manifest["topic"] = serde_json::Value::String(topic.to_string());
    std::fs::write(&path, serde_json::to_vec(&manifest).expect("json")).expect("write manifest");
}

/// Publish a one-line order of `units` SKU-A and wait until the saga awaits its payment.
async fn publish_until_awaiting_payment(env: &TestEnv, order_id: &str, units: i32) {
    env.publish(&[order(order_id, &[("SKU-A", units, 100)], "DE")])
        .await;
    env.wait_count(
        &format!(
            "SELECT count(*) FROM saga.orders WHERE order_id = '{order_id}' AND state = 'awaiting_payment'"
        ),
        1,
    )
    .await;
}

/// The partition the producers' murmur2 partitioner puts `key` in (Kafka's default).
fn partition_of(key: &str, partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let data = key.as_bytes();
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    (h & 0x7fff_ffff) as i32 % partitions
}

/// The first id `prefix<i>` that lands in `partition`.
fn id_in_partition(prefix: &str, partition: i32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| partition_of(id, crate::support::PARTITIONS) == partition)
        .expect("some id lands there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_alone_restores_everything_without_repeating_an_effect() {
    // Before the disaster: every kind of outcome, a saga timeout, a poison record.
    let mut before = TestEnv::new().await;
    without_direct_stock(&before).await;
    let dir = use_new_archive(&mut before);
    before.settings.saga.deadline_check_interval_ms = 0;
    before.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    // Stock only by events: a set (from nothing), an adjustment up and one down, and one of
    // them delivered twice (the same record produced again), which the step applies once.
    operate(
        &before,
        Change::SetStock(vec![("SKU-A".into(), 8), ("SKU-B".into(), 5)]),
    )
    .await;
    operate(&before, adjust(&[("SKU-A", 3)])).await;
    let twice = operate(&before, adjust(&[("SKU-A", -1)])).await;
    let (key, payload): (String, Vec<u8>) =
        sqlx::query_as("SELECT order_id, payload FROM pipeline.outbox WHERE event_id = $1")
            .bind(consumers::commands::event_id(
                twice,
                events::EventType::StockAdjusted,
                "stock:SKU-A",
            ))
            .fetch_one(&before.pool)
            .await
            .expect("the adjustment's outbox row");
    before.produce_raw(&key, &payload).await;
    before
        .wait_count(
            "SELECT count(*) FROM pipeline.inbox WHERE step = 'inventory' AND event_type = 'StockAdjusted'",
            4,
        )
        .await;
    assert_eq!(
        before.stock("SKU-A").await,
        (10, 0),
        "8 + 3 - 1, the -1 once"
    );
    assert_eq!(before.stock("SKU-B").await, (5, 0));
    publish_until_awaiting_payment(&before, "o-late", 2).await;
    let expired = consumers::saga::expire_due(
        &before.pool,
        &before.settings.kafka.topic,
        Utc::now() + chrono::Duration::hours(1),
        10,
    )
    .await
    .expect("expire");
    assert_eq!(expired.orders, ["o-late"]);
    before.start(&[Component::Payment]);
    // A blocked customer is declined; unblocked, authorized; another stays blocked.
    operate(
        &before,
        Change::Block {
            customer_id: "c-blocked".into(),
            note: "chargeback".into(),
        },
    )
    .await;
    operate(
        &before,
        Change::Block {
            customer_id: "c-still-blocked".into(),
            note: "fraud".into(),
        },
    )
    .await;
    before
        .wait_count("SELECT count(*) FROM payment.blocked_customers", 2)
        .await;
    let mut blocked_order = order("o-blocked", &[("SKU-A", 1, 100)], "DE");
    blocked_order.customer_id = "c-blocked".into();
    before.publish(&[blocked_order.clone()]).await;
    assert_eq!(
        before.wait_terminal("o-blocked").await,
        (
            "cancelled".to_string(),
            Some("payment_declined".to_string())
        )
    );
    assert_eq!(
        before
            .count("SELECT count(*) FROM payment.payments WHERE order_id = 'o-blocked' AND decline_reason = 'customer_blocked'")
            .await,
        1
    );
    operate(
        &before,
        Change::Unblock {
            customer_id: "c-blocked".into(),
        },
    )
    .await;
    before
        .wait_count("SELECT count(*) FROM payment.blocked_customers", 1)
        .await;
    blocked_order.order_id = "o-unblocked".into();
    before.publish(&[blocked_order]).await;
    assert_eq!(before.wait_terminal("o-unblocked").await.0, "completed");
    // One unit of SKU-C, held first by an order of the last partition (declined, released),
    // then for good by an order of the first: a restore reading partition by partition meets
    // them the other way round.
    operate(&before, adjust(&[("SKU-C", 1)])).await;
    before
        .wait_count(
            "SELECT count(*) FROM inventory.stock WHERE sku = 'SKU-C' AND available = 1",
            1,
        )
        .await;
    let last = id_in_partition("o-first-", crate::support::PARTITIONS - 1);
    let first = id_in_partition("o-second-", 0);
    before
        .publish(&[order(&last, &[("SKU-C", 1, 900_000)], "DE")])
        .await;
    assert_eq!(
        before.wait_terminal(&last).await,
        (
            "cancelled".to_string(),
            Some("payment_declined".to_string())
        )
    );
    before
        .publish(&[order(&first, &[("SKU-C", 1, 100)], "DE")])
        .await;
    assert_eq!(before.wait_terminal(&first).await.0, "completed");
    assert_eq!(
        before
            .count(&format!("SELECT max(partition)::bigint FROM analytics.order_events WHERE order_id = '{last}'"))
            .await,
        i64::from(crate::support::PARTITIONS - 1),
        "the partitioner as computed here"
    );
    let mut orders = vec![
        order("o-short", &[("SKU-B", 9, 100)], "DE"),
        order("o-big", &[("SKU-A", 1, 900_000)], "DE"),
        order("o-aq", &[("SKU-A", 1, 100)], "AQ"),
    ];
    for i in 0..5 {
        orders.push(order(
            &format!("o-ok{i}"),
            &[("SKU-A", 1, 100), ("SKU-B", 1, 50)],
            "DE",
        ));
    }
    before.publish(&orders).await;
    before.produce_raw("o-poison", b"not an event").await;
    let all: Vec<String> = std::iter::once("o-late".to_string())
        .chain(orders.iter().map(|o| o.order_id.clone()))
        .collect();
    for id in &all {
        before.wait_terminal(id).await;
    }
    // Every step and the projector have dead-lettered the poison record, and every reply is
    // published.
    before
        .wait_count("SELECT count(*) FROM pipeline.dead_letters", 5)
        .await;
    before
        .wait_count(
            "SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL",
            0,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    before.stop().await;
    archive_once(&before.settings).await.expect("archive");
    let (_, want_positions) = live_digests(&before).await;
    let want_state = state_rows(&before).await;

    // After: an empty topic and an empty database. (The new topic has another name here, so
    // the manifest is pointed at it; the archived records keep their bytes.)
    let mut after = TestEnv::new().await;
    without_direct_stock(&after).await;
    // The same consumer groups as before (dead letters are named after them), with their
    // dead-letter topics for the new log.
    after.settings.kafka.group_prefix = before.settings.kafka.group_prefix.clone();
    orderflow::components::ensure_topics(&after.settings, crate::support::PARTITIONS)
        .await
        .expect("topics");
    point_manifest_at(&dir, &after.settings.kafka.topic);
    let report = orderflow::restore::restore(&after.settings, &after.pool, &dir)
        .await
        .expect("restore");
    assert_eq!(report.republished.records, report.archived);
    assert_eq!(report.models.events_read, report.archived);
    for (step, totals) in &report.steps {
        assert_eq!(totals.parked, 0, "{step}: every answer was archived");
        assert_eq!(totals.dead_lettered, 1, "{step}: the poison record");
        assert_eq!(
            totals.left_to_publish, 1,
            "{step}: only the dead letter (dead-letter topics are not archived)"
        );
    }
    // (The read models are compared row by row below, with the rest of the state; their
    // digests differ here only by the topic's name.)
    let (restored_models, got_positions) = live_digests(&after).await;
    assert_eq!(got_positions, want_positions);

    // Every step's group resumes at the archive's end.
    let manifest = ::archive::Manifest::load(&dir, &after.settings.kafka.topic).expect("manifest");
    for step in consumers::STEP_NAMES {
        let group = after.settings.group_id(step);
        let probe =
            platform::kafka::group_offsets_client(&after.settings.kafka, &group, "restore-test")
                .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for partition in manifest.partitions.keys() {
            tpl.add_partition(&after.settings.kafka.topic, *partition);
        }
        let committed = probe
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        for (partition, archived) in &manifest.partitions {
            let offset = committed
                .find_partition(&after.settings.kafka.topic, *partition)
                .map(|p| p.offset());
            assert_eq!(
                offset,
                Some(Offset::Offset(archived.next_offset)),
                "{group} partition {partition}"
            );
        }
    }

    // A second restore is refused before it touches anything.
    let again = orderflow::restore::restore(&after.settings, &after.pool, &dir).await;
    assert!(format!("{:#}", again.unwrap_err()).contains("is not empty"));

    // The live steps resume after the archive: the provider is never asked, nothing new
    // reaches the log, and the dead letters go out again to their topics.
    let provider = FlakyProvider::new(0, false, None);
    start_payment(&mut after, provider.clone());
    after.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    after
        .wait_count(
            "SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL",
            0,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        0,
        "no payment asked again"
    );
    let got_state = state_rows(&after).await;
    for ((table, want), (got_table, got)) in want_state.iter().zip(&got_state) {
        assert_eq!(table, got_table);
        let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(3).collect();
        let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{table}: missing {missing:?}, extra {extra:?}"
        );
    }
    assert_eq!(want_state.len(), got_state.len());
    let (models, positions) = live_digests(&after).await;
    assert_eq!(
        models, restored_models,
        "the projector applied nothing again"
    );
    assert_eq!(positions, want_positions, "no record was added to the log");
    for table in [
        "inventory.stock",
        "payment.blocked_customers",
        "payment.ledger",
        "shipping.shipments",
        "saga.orders",
        "pipeline.inbox",
    ] {
        assert!(
            want_state
                .iter()
                .any(|(t, rows)| t == table && !rows.is_empty()),
            "{table} compared"
        );
    }

    std::fs::remove_dir_all(&dir).ok();
    before.finish().await;
    after.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_the_archive_lost_are_asked_again_by_the_live_steps_only() {
    // The disaster struck mid-flight: the archive has o-reserved's reservation but not its
    // payment, and o-new's OrderCreated but no reservation.
    let mut before = TestEnv::new().await;
    without_direct_stock(&before).await;
    let dir = use_new_archive(&mut before);
    before.start(&[Component::Inventory, Component::Saga]);
    operate(&before, adjust(&[("SKU-A", 10)])).await;
    before
        .wait_count(
            "SELECT count(*) FROM inventory.stock WHERE available = 10",
            1,
        )
        .await;
    publish_until_awaiting_payment(&before, "o-reserved", 2).await;
    before.stop().await;
    before
        .publish(&[order("o-new", &[("SKU-A", 3, 100)], "DE")])
        .await;
    archive_once(&before.settings).await.expect("archive");

    let mut after = TestEnv::new().await;
    without_direct_stock(&after).await;
    point_manifest_at(&dir, &after.settings.kafka.topic);
    let report = orderflow::restore::restore(&after.settings, &after.pool, &dir)
        .await
        .expect("restore");
    let totals: std::collections::HashMap<_, _> = report.steps.into_iter().collect();
    // Inventory decided o-new anew (it has no effect outside) and left the reply to publish;
    // payment did not ask the provider about o-reserved but parked it for the live step.
    assert_eq!(totals["inventory"].left_to_publish, 1);
    assert_eq!(totals["payment"].parked, 1);
    assert_eq!(totals["payment"].left_to_publish, 0);
    assert_eq!(
        after.stock("SKU-A").await,
        (5, 5),
        "both reservations booked"
    );

    // The live steps ask the provider once per order, with the idempotency key of the
    // original request, and both orders complete.
    let provider = FlakyProvider::new(0, false, None);
    start_payment(&mut after, provider.clone());
    after.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    for id in ["o-reserved", "o-new"] {
        assert_eq!(after.wait_terminal(id).await.0, "completed", "{id}");
    }
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        after
            .count("SELECT count(*) FROM payment.ledger WHERE entry = 'authorization'")
            .await,
        2
    );
    assert_eq!(after.stock("SKU-A").await, (5, 5), "nothing reserved twice");

    std::fs::remove_dir_all(&dir).ok();
    before.finish().await;
    after.finish().await;
}

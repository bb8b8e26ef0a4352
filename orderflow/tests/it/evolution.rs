//! Schema evolution on the real broker and Postgres: `OrderCreated` records of schema v1 and v2
//! mixed on one log fold into the same read models as an all-v2 log, an archive of the mixed
//! log decodes record by record, and the steps complete orders written with either version.

use events::{Contact, EventBody, EventType};
use orderflow::components::Component;

use crate::analytics::fixed_orders;
use crate::archive::{archive_once, use_new_archive};
use crate::support::{order, TestEnv};

/// The orders whose `OrderCreated` the mixed log carries as v1 (written as a build from before
/// v2, or an upstream client on the v1 file, would).
const WRITTEN_AS_V1: [&str; 2] = ["o1", "o3"];

/// Every compared row of `env`'s state (`orderflow state`), with its topic and group names
/// made neutral so that two environments compare.
async fn state_rows(env: &TestEnv) -> Vec<(String, Vec<String>)> {
    let topic = &env.settings.kafka.topic;
    let groups = &env.settings.kafka.group_prefix;
    orderflow::state::rows(&env.pool)
        .await
        .expect("state rows")
        .into_iter()
        .map(|(table, rows)| {
            let mut rows: Vec<String> = rows
                .into_iter()
                .map(|r| {
                    r.replace(topic.as_str(), "TOPIC")
                        .replace(groups.as_str(), "GROUP")
                })
                .collect();
            rows.sort();
            (table, rows)
        })
        .collect()
}

/// Produce `events` in order, one record each keyed by order id, as plain records; the
/// `OrderCreated` of the orders in `as_v1` is written with schema v1, everything else with the
/// current version.
async fn produce(env: &TestEnv, events: &[events::Event], as_v1: &[&str]) {
    for event in events {
        let v1 = event.event_type() == EventType::OrderCreated
            && as_v1.contains(&event.meta.order_id.as_str());
        let bytes = if v1 {
            events::encode_version(event, 1).expect("encodes as v1")
        } else {
            events::encode(event).expect("encodes")
        };
        env.produce_raw(&event.meta.order_id, &bytes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_and_v2_records_mixed_on_one_log_fold_into_the_same_read_models() {
    // The same events (same ids and times) on two logs: one with two orders created in v1, one
    // all v2. The read models and the projector's state must not tell them apart.
    let events = fixed_orders();
    let mut mixed = TestEnv::new().await;
    let mut all_v2 = TestEnv::new().await;
    produce(&mixed, &events, &WRITTEN_AS_V1).await;
    produce(&all_v2, &events, &[]).await;
    for env in [&mut mixed, &mut all_v2] {
        env.start(&[Component::Projections]);
        env.wait_count(
            "SELECT count(*) FROM analytics.order_events",
            i64::try_from(events.len()).expect("fits"),
        )
        .await;
        env.wait_count(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM analytics.watermarks WHERE model = 'orders'",
            i64::try_from(events.len()).expect("fits"),
        )
        .await;
        env.stop().await;
    }
    // Not vacuous: every order is there, with what its OrderCreated said.
    assert_eq!(
        mixed
            .count("SELECT count(*) FROM analytics.orders WHERE total_minor > 0")
            .await,
        4
    );
    assert_eq!(
        mixed
            .count(
                "SELECT total_minor FROM analytics.orders WHERE order_id = 'o1' AND customer_id = 'c1'"
            )
            .await,
        1300
    );
    let mixed_rows = state_rows(&mixed).await;
    let v2_rows = state_rows(&all_v2).await;
    assert!(
        mixed_rows
            .iter()
            .any(|(t, rows)| t.contains("order_events") && rows.len() == events.len()),
        "the timeline is among the compared tables: {:?}",
        mixed_rows
            .iter()
            .map(|(t, r)| (t, r.len()))
            .collect::<Vec<_>>()
    );
    for ((table, a), (other, b)) in mixed_rows.iter().zip(&v2_rows) {
        assert_eq!(table, other);
        assert_eq!(
            a, b,
            "{table}: the mixed log's rows differ from the all-v2 log's"
        );
    }
    assert_eq!(mixed_rows.len(), v2_rows.len());

    // The mixed log archived: every record decodes, the v1 ones to the events as they were
    // created (no contact, no sealed data), and the archive keeps both fingerprints.
    let dir = use_new_archive(&mut mixed);
    archive_once(&mixed.settings).await.expect("archive");
    let manifest = ::archive::Manifest::load(&dir, &mixed.settings.kafka.topic).expect("manifest");
    let mut reader = ::archive::ArchiveReader::new(&dir, &manifest);
    let mut fingerprints = std::collections::BTreeMap::<u64, usize>::new();
    let mut decoded = Vec::new();
    while let Some(batch) = reader.next_batch(1000).expect("archive readable") {
        for record in batch {
            let bytes = record.value.expect("a value");
            let fp = u64::from_le_bytes(bytes[2..10].try_into().expect("a header"));
            *fingerprints.entry(fp).or_default() += 1;
            decoded.push(events::decode(&bytes).expect("every archived record decodes"));
        }
    }
    let fingerprint = |version: u32| {
        events::schema_catalog()
            .iter()
            .find(|i| i.event_type == EventType::OrderCreated && i.version == version)
            .expect("in catalog")
            .fingerprint
    };
    assert_eq!(
        fingerprints.get(&fingerprint(1)),
        Some(&2),
        "{fingerprints:x?}"
    );
    assert_eq!(
        fingerprints.get(&fingerprint(2)),
        Some(&2),
        "{fingerprints:x?}"
    );
    decoded.sort_by_key(|e| e.meta.event_id);
    let mut expected = events.clone();
    expected.sort_by_key(|e| e.meta.event_id);
    assert_eq!(decoded, expected);

    mixed.finish().await;
    all_v2.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_steps_complete_orders_written_with_either_version() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let now = chrono::Utc::now();
    let v1 = order("o-v1", &[("SKU-A", 1, 100)], "DE")
        .into_event(now)
        .expect("valid");
    let mut v2 = order("o-v2", &[("SKU-A", 1, 100)], "DE")
        .into_event(now)
        .expect("valid");
    let EventBody::OrderCreated(created) = &mut v2.body else {
        panic!("an order")
    };
    created.contact = Some(Contact {
        email: "ada@example.com".into(),
        phone: Some("+44 20 7946 0000".into()),
    });
    env.produce_raw("o-v1", &events::encode_version(&v1, 1).expect("v1"))
        .await;
    env.produce_raw("o-v2", &events::encode(&v2).expect("v2"))
        .await;
    for order_id in ["o-v1", "o-v2"] {
        assert_eq!(
            env.wait_terminal(order_id).await.0,
            "completed",
            "{order_id}"
        );
    }
    assert_eq!(env.timeline("o-v1").await, env.timeline("o-v2").await);
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.dead_letters")
            .await,
        0
    );
    env.finish().await;
}

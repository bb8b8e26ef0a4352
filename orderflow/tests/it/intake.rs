//! The intake: upstream orders published in clear to the intake topic reach the log sealed,
//! once each, and what it refuses is dead-lettered under consumer `intake` with its reason
//! while the partition keeps flowing.

use std::time::Duration;

use events::{Contact, Event, EventBody};
use orderflow::components::{self, Component};
use platform::kafka::EndAware;
use privacy::{KeyRing, MasterKey, Personal};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::support::{order, TestEnv, PARTITIONS, TEST_MASTER_KEY};

/// Every record of the order log up to its current end.
fn log_records(env: &TestEnv) -> Vec<OwnedMessage> {
    let topic = &env.settings.kafka.topic;
    let consumer: BaseConsumer<EndAware> =
        platform::kafka::reader(&env.settings.kafka, "test-log-reader").expect("reader");
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        ends.push(high);
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let want: i64 = ends.iter().sum();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < want && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.detach());
        }
    }
    assert_eq!(out.len() as i64, want, "the whole log read");
    out
}

/// The log's events with this event id.
fn on_log(env: &TestEnv, event_id: uuid::Uuid) -> Vec<Event> {
    log_records(env)
        .iter()
        .filter_map(|m| events::decode(m.payload()?).ok())
        .filter(|e| e.meta.event_id == event_id)
        .collect()
}

fn ring() -> KeyRing {
    KeyRing::new(MasterKey::from_base64(TEST_MASTER_KEY).expect("test master key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_order_completes_and_is_on_the_log_sealed_once() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let mut input = order("o-intake", &[("SKU-A", 2, 1_500)], "SE");
    input.contact = Some(Contact {
        email: "ada@example.com".into(),
        phone: Some("+46 70 123 45 67".into()),
    });
    let published = env.publish_to_intake(&[input]).await.remove(0);
    assert_eq!(env.wait_terminal("o-intake").await.0, "completed");

    let found = on_log(&env, published.meta.event_id);
    assert_eq!(found.len(), 1, "one OrderCreated on the log: {found:?}");
    let logged = &found[0];
    assert_eq!(logged.meta.order_id, published.meta.order_id);
    assert_eq!(logged.meta.correlation_id, published.meta.correlation_id);
    assert_eq!(logged.meta.causation_id, published.meta.causation_id);
    assert_eq!(
        logged.meta.occurred_at.timestamp_micros(),
        published.meta.occurred_at.timestamp_micros(),
        "the upstream record's own time"
    );
    let (EventBody::OrderCreated(sealed), EventBody::OrderCreated(original)) =
        (&logged.body, &published.body)
    else {
        panic!("not orders: {logged:?}");
    };
    assert!(sealed.sealed.is_some(), "sealed on the log");
    let address = &sealed.shipping_address;
    for field in [
        &address.name,
        &address.line1,
        &address.city,
        &address.postal_code,
    ] {
        assert_eq!(field, privacy::personal::PLACEHOLDER);
    }
    assert_eq!(sealed.contact, None);
    assert_eq!(address.country, "SE", "not personal: in clear");
    assert_eq!(sealed.lines, original.lines);

    let mut conn = env.pool.acquire().await.expect("connection");
    let keys = ring().live(&mut conn, &["c-1"]).await.expect("keys");
    let opened = privacy::unseal(sealed, "o-intake", &keys["c-1"]).expect("unseals");
    assert_eq!(opened, Personal::of(original));

    // The same intake record again (a retrying producer): nothing more on the log. A later
    // record in the same intake partition (same key) shows the intake got past it.
    let bytes = events::encode(&published).expect("encode");
    let intake = env.settings.kafka.intake_topic.clone();
    env.produce_raw_to(&intake, "o-intake", &bytes).await;
    let after = order("o-intake-after", &[("SKU-A", 1, 1_500)], "SE")
        .into_event(chrono::Utc::now())
        .expect("valid");
    env.produce_raw_to(
        &intake,
        "o-intake",
        &events::encode(&after).expect("encode"),
    )
    .await;
    assert_eq!(env.wait_terminal("o-intake-after").await.0, "completed");
    assert_eq!(on_log(&env, published.meta.event_id).len(), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.inbox WHERE step = 'intake'")
            .await,
        2
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_records_are_dead_lettered_with_their_reason_and_the_partition_flows() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let intake = env.settings.kafka.intake_topic.clone();
    let now = chrono::Utc::now();
    let valid = |id: &str| {
        order(id, &[("SKU-A", 1, 1_000)], "SE")
            .into_event(now)
            .expect("valid")
    };

    // An invalid order: an unknown currency, written over a valid record's bytes.
    let mut invalid = events::encode(&valid("o-invalid")).expect("encode");
    let at = invalid
        .windows(3)
        .position(|w| w == b"EUR")
        .expect("currency in the datum");
    invalid[at..at + 3].copy_from_slice(b"ZZZ");
    // Not an OrderCreated.
    let cancel = producers::cancellation_request("o-other", "customer_request", "c-1", now)
        .expect("request");
    // Sealed by someone else.
    let mut sealed = valid("o-sealed");
    if let EventBody::OrderCreated(o) = &mut sealed.body {
        privacy::seal(o, "o-sealed", &privacy::DataKey::generate("c-1")).expect("seal");
    }
    let records: [(&str, Vec<u8>, &str); 4] = [
        ("invalid", invalid, "ZZZ"),
        (
            "other type",
            events::encode(&cancel).expect("encode"),
            "takes only OrderCreated",
        ),
        (
            "already sealed",
            events::encode(&sealed).expect("encode"),
            "already sealed",
        ),
        ("garbage", b"not avro at all".to_vec(), "marker"),
    ];
    for (_, bytes, _) in &records {
        env.produce_raw_to(&intake, "o-refused", bytes).await;
    }
    let after = valid("o-refused-after");
    env.produce_raw_to(
        &intake,
        "o-refused",
        &events::encode(&after).expect("encode"),
    )
    .await;
    assert_eq!(env.wait_terminal("o-refused-after").await.0, "completed");

    let letters: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT error_class, error, topic FROM pipeline.dead_letters
         WHERE consumer = 'intake' ORDER BY \"offset\"",
    )
    .fetch_all(&env.pool)
    .await
    .expect("dead letters");
    assert_eq!(letters.len(), records.len(), "{letters:?}");
    for ((name, _, reason), (class, error, topic)) in records.iter().zip(&letters) {
        assert_eq!(class, "permanent", "{name}");
        assert!(error.contains(reason), "{name}: {error}");
        assert_eq!(topic, &intake, "{name}");
    }
    // Nothing refused reached the log.
    for refused in [&cancel, &sealed] {
        assert!(on_log(&env, refused.meta.event_id).is_empty());
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM analytics.orders WHERE order_id IN ('o-invalid', 'o-sealed')"
        )
        .await,
        0
    );

    // A redrive re-reads the letters' bytes from the dead-letter table: they fail again.
    let step = components::step(Component::Intake, &env.settings, &env.pool)
        .expect("intake step")
        .expect("a step");
    let producer = platform::kafka::producer(&env.settings.kafka, "test-redrive").expect("p");
    let reports = consumers::redrive::redrive(
        step.as_ref(),
        &env.settings.kafka,
        &env.pool,
        &producer,
        &[],
        false,
    )
    .await
    .expect("redrive");
    assert_eq!(reports.len(), records.len());
    for report in &reports {
        assert!(
            matches!(
                report.outcome,
                consumers::redrive::RedriveOutcome::FailedAgain { .. }
            ),
            "{report:?}"
        );
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_customer_gets_one_data_key_across_intake_members() {
    let mut env = TestEnv::new().await;
    env.start_all();
    // A second intake member in the same group.
    env.start(&[Component::Intake]);
    let mut orders = Vec::new();
    for i in 0..6 {
        let mut o = order(&format!("o-key-{i}"), &[("SKU-A", 1, 100)], "SE");
        o.customer_id = if i % 2 == 0 { "c-even" } else { "c-odd" }.into();
        orders.push(o);
    }
    env.publish_to_intake(&orders).await;
    for i in 0..6 {
        env.wait_terminal(&format!("o-key-{i}")).await;
    }
    let keys: Vec<(String, i64)> = sqlx::query_as(
        "SELECT customer_id, count(*) FROM privacy.data_keys GROUP BY customer_id ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .expect("keys");
    assert_eq!(keys, [("c-even".to_string(), 1), ("c-odd".to_string(), 1)]);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_does_not_start_without_a_master_key() {
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    settings.privacy.master_key = None;
    let error = match components::step(Component::Intake, &settings, &env.pool) {
        Ok(_) => panic!("started without a master key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("ORDERFLOW_PRIVACY__MASTER_KEY"), "{error}");
    settings.privacy.master_key = Some(platform::config::Secret::new("c2hvcnQ="));
    let error = match components::step(Component::Intake, &settings, &env.pool) {
        Ok(_) => panic!("started with a short master key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(!error.contains("c2hvcnQ="), "never shows the key: {error}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_topic_keeps_records_a_day_with_the_logs_partitions() {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let env = TestEnv::new().await;
    let kafka = &env.settings.kafka;
    let admin = platform::kafka::admin(kafka).expect("admin client");
    let retention_of = |topic: String| {
        let admin = &admin;
        async move {
            let described = admin
                .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                .await
                .expect("describe configs");
            let config = described
                .into_iter()
                .next()
                .expect("one resource")
                .unwrap_or_else(|e| panic!("the config of {topic}: {e}"));
            config
                .get("retention.ms")
                .and_then(|entry| entry.value.clone())
                .expect("retention.ms")
        }
    };
    let retention = retention_of(kafka.intake_topic.clone()).await;
    assert_eq!(
        retention,
        platform::config::kafka::INTAKE_RETENTION_MS.to_string()
    );
    assert_eq!(retention, "86400000", "24 h, as the README says");
    // The intake's refusals hold upstream records in clear: their topic keeps them no longer.
    let intake_dlq =
        platform::deadletter::dlq_topic(&kafka.intake_topic, &env.settings.group_id("intake"));
    assert_eq!(retention_of(intake_dlq).await, "86400000");
    let log_dlq = platform::deadletter::dlq_topic(&kafka.topic, &env.settings.group_id("payment"));
    assert_ne!(
        retention_of(log_dlq).await,
        "86400000",
        "other dead letters keep the default"
    );
    let partitions = |topic: &str| platform::kafka::partition_count(kafka, topic).expect("count");
    assert_eq!(partitions(&kafka.intake_topic), partitions(&kafka.topic));
    env.finish().await;
}

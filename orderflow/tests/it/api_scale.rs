//! The API as a service of several instances, against the real broker and Postgres: a
//! `Prefer: wait` answered by the projector's change announcement (the fallback poll set far
//! beyond the test), bounded in time by `api.wait_max_secs` and in number by
//! `api.wait_waiters_max`; and two servers relaying one outbox backlog publish every row once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use orderflow::components::Component;
use platform::kafka::EndAware;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::api_guards::{call, order};
use crate::support::{TestEnv, PARTITIONS};

/// An API as the dev `service` principal, with `tune` applied to its settings.
async fn serve(
    env: &TestEnv,
    shutdown: &CancellationToken,
    tune: impl FnOnce(&mut orderflow::settings::Settings),
) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut settings = env.settings.clone();
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.insecure_dev_principal = Some("service".into());
    tune(&mut settings);
    let api = api::start(
        &settings.api,
        &settings.kafka,
        env.pool.clone(),
        shutdown.clone(),
    )
    .await
    .expect("the API starts");
    let addr = api.address;
    (addr, tokio::spawn(api.wait()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_read_is_answered_by_the_projector_s_announcement_and_waits_are_bounded() {
    let mut env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    // One waiter at most; the wait's end and the fallback poll far beyond the test's own
    // bound: only the projector's announcement can answer the wait within it.
    let (addr, _server) = serve(&env, &shutdown, |s| {
        s.api.request_timeout_ms = 3_700_000;
        s.api.wait_max_secs = 3_600;
        s.api.wait_poll_ms = 3_600_000;
        s.api.wait_waiters_max = 1;
    })
    .await;
    let accepted = call(addr, "POST", "/v1/orders", &[], &order("o-wait-1")).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let before = call(addr, "GET", "/v1/orders/o-wait-1", &[], "").await;
    assert_eq!(before.json()["status"], "accepted", "nothing projects yet");
    let etag = before.header("etag").expect("an ETag").to_string();

    // The waiter: asks again while the slot is taken by a probe below.
    let waiter = {
        let etag = etag.clone();
        tokio::spawn(async move {
            loop {
                let a = call(
                    addr,
                    "GET",
                    "/v1/orders/o-wait-1",
                    &[("If-None-Match", &etag), ("Prefer", "wait=3600")],
                    "",
                )
                .await;
                match (a.status, a.header("preference-applied")) {
                    (304, None) => tokio::time::sleep(Duration::from_millis(50)).await,
                    _ => return a,
                }
            }
        })
    };
    // Past the bound a request is answered at once, without Preference-Applied; a probe that
    // got the slot itself waits its one second and is answered 304 with it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let probe = call(
            addr,
            "GET",
            "/v1/orders/o-wait-1",
            &[("If-None-Match", &etag), ("Prefer", "wait=1")],
            "",
        )
        .await;
        assert_eq!(probe.status, 304, "{}", probe.body);
        match probe.header("preference-applied") {
            None => break,
            Some(applied) => assert_eq!(applied, "wait=1"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a second waiter was never refused"
        );
    }
    assert!(!waiter.is_finished(), "the waiter holds the slot");

    // The projector applies the order's OrderCreated and announces it: the waiter is answered
    // with the projected order.
    env.start(&[Component::Projections]);
    let answer = tokio::time::timeout(Duration::from_secs(90), waiter)
        .await
        .expect("the waiter was not woken by the projector's announcement within 90 s")
        .expect("the waiter");
    assert_eq!(answer.status, 200, "not woken: {}", answer.body);
    assert_ne!(answer.header("etag"), Some(etag.as_str()));
    assert_eq!(answer.header("preference-applied"), Some("wait=3600"));
    let projected = answer.json();
    assert_ne!(projected["status"], "accepted", "{projected}");
    assert_eq!(projected["event_count"], 1, "{projected}");

    // Waiting is bounded by api.wait_max_secs, whatever the client asks.
    let (capped, _capped_server) = serve(&env, &shutdown, |s| s.api.wait_max_secs = 1).await;
    let current = answer.header("etag").unwrap().to_string();
    let a = call(
        capped,
        "GET",
        "/v1/orders/o-wait-1",
        &[("If-None-Match", &current), ("Prefer", "wait=3600")],
        "",
    )
    .await;
    assert_eq!(a.status, 304, "{}", a.body);
    assert_eq!(a.header("preference-applied"), Some("wait=1"));
    shutdown.cancel();
    env.finish().await;
}

/// Every record of `topic`, up to the end of each partition as it is now: (event id, count).
fn records_per_event(env: &TestEnv) -> HashMap<String, usize> {
    let topic = env.settings.kafka.topic.as_str();
    let consumer: BaseConsumer<EndAware> =
        platform::kafka::reader(&env.settings.kafka, "test-reader").expect("a reader");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("tpl");
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(partition, high);
    }
    consumer.assign(&tpl).expect("assign");
    let mut next: HashMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut seen = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while next.iter().any(|(p, n)| *n < ends[p]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the topic was not read to its end"
        );
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        next.insert(message.partition(), message.offset() + 1);
        let event_id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "event_id"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("an event_id header");
        *seen.entry(event_id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_relaying_one_backlog_publish_each_row_once() {
    let env = TestEnv::new().await;
    // A backlog: orders accepted while no broker is reachable.
    let offline = CancellationToken::new();
    let (addr, server) = serve(&env, &offline, |s| {
        s.kafka.brokers = "127.0.0.1:1".into();
        s.kafka.delivery_timeout_ms = 2_000;
    })
    .await;
    let orders = 400;
    for i in 0..orders {
        let a = call(
            addr,
            "POST",
            "/v1/orders",
            &[],
            &order(&format!("o-dup-{i}")),
        )
        .await;
        assert_eq!(a.status, 202, "{}", a.body);
    }
    offline.cancel();
    server.await.unwrap().unwrap();
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL")
            .await,
        orders
    );

    // Two servers with the broker, their relays racing for the same rows every 20 ms.
    let online = CancellationToken::new();
    let quick = |s: &mut orderflow::settings::Settings| s.api.relay_interval_ms = 20;
    let (first, second) = tokio::join!(serve(&env, &online, quick), serve(&env, &online, quick));
    env.wait_count(
        "SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    online.cancel();
    first.1.await.unwrap().unwrap();
    second.1.await.unwrap().unwrap();

    let seen = records_per_event(&env);
    assert_eq!(seen.len(), orders as usize, "every order on the log");
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} of {orders} records published more than once: {:?}",
        repeated.len(),
        repeated.iter().take(5).collect::<Vec<_>>()
    );
    env.finish().await;
}

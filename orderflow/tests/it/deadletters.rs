//! Dead letters: poison records on the first attempt, retries with backoff then success,
//! retries exhausted with the full history, the dead-letter topic's headers, and redrive.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consumers::payment::{AuthorizationDecision, AuthorizationRequest, Payment, PaymentProvider};
use consumers::{HandlerError, RunnerOptions, StepRunner};
use orderflow::components::Component;
use platform::kafka::EndAware;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::{order, TestEnv, PARTITIONS};

/// A payment provider that is down for its first `failures` calls (or while `down` is set,
/// for every customer or only `only_for`), answering like an HTTP 503, then authorizes.
pub struct FlakyProvider {
    pub failures: u32,
    pub calls: AtomicU32,
    pub down: AtomicBool,
    pub only_for: Option<&'static str>,
}

impl FlakyProvider {
    pub fn new(failures: u32, down: bool, only_for: Option<&'static str>) -> Arc<Self> {
        Arc::new(FlakyProvider {
            failures,
            calls: AtomicU32::new(0),
            down: AtomicBool::new(down),
            only_for,
        })
    }
}

#[async_trait]
impl PaymentProvider for FlakyProvider {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let affected = self.only_for.is_none_or(|c| c == request.customer_id);
        if call < self.failures || affected && self.down.load(Ordering::SeqCst) {
            return Err(HandlerError::Provider {
                provider: "flaky",
                message: "503 service unavailable".into(),
                retryable: true,
            });
        }
        Ok(AuthorizationDecision::Authorized {
            provider_reference: format!("flaky-{}", request.idempotency_key),
        })
    }

    async fn void(&self, _reference: &str, _key: uuid::Uuid) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub fn start_payment(env: &mut TestEnv, provider: Arc<FlakyProvider>) {
    let runner = StepRunner::new(
        consumers::step(Payment::new(provider)),
        &env.settings.kafka,
        &env.settings.consumer,
        env.pool.clone(),
        RunnerOptions::default(),
    )
    .expect("payment runner");
    let token = env.shutdown.clone();
    let mut set = tokio::task::JoinSet::new();
    set.spawn(async move { runner.run(token).await.map(|()| Component::Payment) });
    env.adopt(set);
}

/// Read every record of `topic` (all partitions) until `want` arrived.
fn read_topic(env: &TestEnv, topic: &str, want: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer<EndAware> =
        platform::kafka::reader(&env.settings.kafka, "test-reader").expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.detach());
        }
    }
    out
}

fn header(message: &rdkafka::message::OwnedMessage, key: &str) -> String {
    let headers = message.headers().expect("headers");
    (0..headers.count())
        .map(|i| headers.get(i))
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("header {key} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_go_to_the_dead_letter_topic_on_the_first_attempt() {
    let mut env = TestEnv::new().await;
    env.start(&[Component::Inventory]);
    env.produce_raw("o-poison", b"not avro at all").await;
    env.produce_raw("o-poison", &[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
        .await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'inventory'",
        2,
    )
    .await;
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT error_class, attempts, error FROM pipeline.dead_letters WHERE consumer = 'inventory' ORDER BY \"offset\"",
    )
    .fetch_all(&env.pool)
    .await
    .expect("dead letters");
    assert_eq!(rows[0].0, "permanent");
    assert_eq!(rows[0].1, 1, "no retries for poison");
    assert!(rows[0].2.contains("marker"), "{rows:?}");
    assert!(rows[1].2.contains("unknown schema fingerprint"), "{rows:?}");

    let dlq = platform::deadletter::dlq_topic(
        &env.settings.kafka.topic,
        &env.settings.group_id("inventory"),
    );
    let records = read_topic(&env, &dlq, 2);
    assert_eq!(records.len(), 2);
    let first = records
        .iter()
        .find(|m| m.payload() == Some(b"not avro at all".as_slice()))
        .expect("original bytes kept");
    assert_eq!(
        first.key(),
        Some(b"o-poison".as_slice()),
        "original key kept"
    );
    assert_eq!(header(first, "dlq.source.topic"), env.settings.kafka.topic);
    assert_eq!(
        header(first, "dlq.group"),
        env.settings.group_id("inventory")
    );
    assert_eq!(header(first, "dlq.error.class"), "permanent");
    assert_eq!(header(first, "dlq.attempts"), "1");
    assert!(header(first, "dlq.error.message").contains("marker"));
    let history: serde_json::Value =
        serde_json::from_str(&header(first, "dlq.history")).expect("history is JSON");
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    for name in [
        "dlq.source.partition",
        "dlq.source.offset",
        "dlq.first_failure_at",
        "dlq.last_failure_at",
    ] {
        header(first, name);
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retryable_failure_is_retried_with_backoff_then_succeeds() {
    let mut env = TestEnv::new().await;
    env.settings.consumer.retry_delay_ms_min = 10;
    env.settings.consumer.retry_delay_ms_max = 50;
    env.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    let provider = FlakyProvider::new(2, false, None);
    start_payment(&mut env, provider.clone());
    env.publish(&[order("o-flaky", &[("SKU-A", 1, 100)], "DE")])
        .await;

    assert_eq!(env.wait_terminal("o-flaky").await.0, "completed");
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM payment.ledger WHERE entry = 'authorization'")
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
async fn exhausted_retries_dead_letter_with_history_and_redrive_finishes_the_order() {
    let mut env = TestEnv::new().await;
    env.settings.consumer.retry_attempts_max = 3;
    env.settings.consumer.retry_delay_ms_min = 10;
    env.settings.consumer.retry_delay_ms_max = 50;
    env.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    let provider = FlakyProvider::new(0, true, None);
    start_payment(&mut env, provider.clone());
    env.publish(&[order("o-down", &[("SKU-A", 1, 100)], "DE")])
        .await;

    env.wait_count(
        "SELECT count(*) FROM pipeline.dead_letters WHERE consumer = 'payment'",
        1,
    )
    .await;
    let (class, attempts, history): (String, i32, serde_json::Value) =
        sqlx::query_as("SELECT error_class, attempts, history FROM pipeline.dead_letters WHERE consumer = 'payment'")
            .fetch_one(&env.pool)
            .await
            .expect("dead letter");
    assert_eq!((class.as_str(), attempts), ("retries_exhausted", 3));
    let history = history.as_array().expect("history array").clone();
    assert_eq!(history.len(), 3);
    assert!(
        history
            .iter()
            .all(|a| a["error"].as_str().is_some_and(|e| e.contains("503"))),
        "{history:?}"
    );

    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM pipeline.dead_letters")
        .fetch_one(&env.pool)
        .await
        .expect("id");

    // Provider back: the step moved on, later orders complete; the dead-lettered one waits.
    provider.down.store(false, Ordering::SeqCst);
    env.publish(&[order("o-next", &[("SKU-B", 1, 100)], "DE")])
        .await;
    assert_eq!(env.wait_terminal("o-next").await.0, "completed");
    assert_eq!(env.count("SELECT count(*) FROM saga.orders WHERE order_id = 'o-down' AND state = 'awaiting_payment'").await, 1);

    // A dry run reports, and changes nothing.
    let step = consumers::step(Payment::new(provider.clone()));
    let producer =
        platform::kafka::producer(&env.settings.kafka, "test-redrive").expect("producer");
    let calls_before = provider.calls.load(Ordering::SeqCst);
    let dry = consumers::redrive::redrive(
        step.as_ref(),
        &env.settings.kafka,
        &env.pool,
        &producer,
        &[],
        true,
    )
    .await
    .expect("dry run");
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        calls_before,
        "a dry run asks no provider"
    );
    assert_eq!(dry.len(), 1);
    // It would have to ask the provider, which a dry run does not do.
    let outcome = dry[0].outcome.to_string();
    assert!(
        outcome.starts_with("would call an outside service (not in a dry run)")
            && outcome.contains("payment provider")
            && outcome.contains("o-down"),
        "{outcome}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM payment.payments WHERE order_id = 'o-down'")
            .await,
        0,
        "dry run commits nothing"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.dead_letters WHERE redriven_at IS NULL")
            .await,
        1
    );

    let done = consumers::redrive::redrive(
        step.as_ref(),
        &env.settings.kafka,
        &env.pool,
        &producer,
        &[id],
        false,
    )
    .await
    .expect("redrive");
    assert_eq!(
        done[0].outcome.to_string(),
        "applied, emits PaymentAuthorized"
    );
    assert_eq!(env.wait_terminal("o-down").await.0, "completed");
    assert_eq!(env.count("SELECT count(*) FROM payment.ledger WHERE entry = 'authorization' AND order_id = 'o-down'").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.dead_letters WHERE redriven_at IS NOT NULL")
            .await,
        1
    );
    // A second redrive finds nothing open.
    let again = consumers::redrive::redrive(
        step.as_ref(),
        &env.settings.kafka,
        &env.pool,
        &producer,
        &[],
        false,
    )
    .await
    .expect("redrive");
    assert!(again.is_empty());
    env.finish().await;
}

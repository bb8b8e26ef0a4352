//! The payment provider's circuit breaker against the real broker and database: a provider
//! that fails, then hangs past the call timeout, then recovers. While the breaker is open the
//! orders park without spending their retry budget (3 attempts here, which the failures alone
//! would exhaust); once the provider is back every order completes, none authorized twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use consumers::payment::{AuthorizationDecision, AuthorizationRequest, Payment, PaymentProvider};
use consumers::ports::{BreakerState, CallSettings};
use consumers::step::{Decided, Step};
use consumers::{HandlerError, RunnerOptions, StepRunner};
use orderflow::components::Component;

use crate::support::{order, TestEnv};

const FAILING: u8 = 0;
const HANGING: u8 = 1;
const UP: u8 = 2;

/// Answers like an HTTP 503, or never (until the caller's timeout), or authorizes; counts
/// calls per idempotency key.
struct PhasedProvider {
    phase: AtomicU8,
    hung: AtomicU32,
    calls: Mutex<HashMap<uuid::Uuid, u32>>,
}

#[async_trait]
impl PaymentProvider for PhasedProvider {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(request.idempotency_key)
            .or_default() += 1;
        match self.phase.load(Ordering::SeqCst) {
            FAILING => Err(HandlerError::Provider {
                provider: "phased",
                message: "503 service unavailable".into(),
                retryable: true,
            }),
            HANGING => {
                self.hung.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                unreachable!("the call timeout ends this call first")
            }
            _ => Ok(AuthorizationDecision::Authorized {
                provider_reference: format!("phased-{}", request.idempotency_key),
            }),
        }
    }

    async fn void(&self, _reference: &str, _key: uuid::Uuid) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_park_while_the_breaker_is_open_and_complete_once_the_provider_recovers() {
    let mut env = TestEnv::new().await;
    env.settings.consumer.retry_attempts_max = 3;
    env.settings.consumer.retry_total_ms_max = 600_000;
    env.settings.consumer.retry_delay_ms_min = 10;
    env.settings.consumer.retry_delay_ms_max = 100;
    let calls = CallSettings {
        timeout_ms: 300,
        breaker_failures: 3,
        breaker_window_ms: 10_000,
        breaker_open_ms: 400,
    };
    let provider = Arc::new(PhasedProvider {
        phase: AtomicU8::new(FAILING),
        hung: AtomicU32::new(0),
        calls: Mutex::new(HashMap::new()),
    });
    let payment = Arc::new(Decided::new(Payment::with_calls(provider.clone(), &calls)));
    let step: Arc<dyn Step> = payment.clone();
    let runner = StepRunner::new(
        step,
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
    env.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);

    let orders: Vec<String> = (0..6).map(|i| format!("o-breaker-{i}")).collect();
    let inputs: Vec<_> = orders
        .iter()
        .map(|id| order(id, &[("SKU-A", 1, 100)], "DE"))
        .collect();
    env.publish(&inputs).await;

    // Failing: three failures open the breaker; the orders park, refused without a call.
    wait_until("the breaker opens", || {
        payment.decider().breaker() == BreakerState::Open
    })
    .await;
    let refused = "SELECT count(*) FROM pipeline.parked
                   WHERE step = 'payment' AND history::text LIKE '%\"unavailable\"%'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.count(refused).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no parked order was refused by the open breaker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Hanging: the half-open probe times out and opens the breaker again.
    provider.phase.store(HANGING, Ordering::SeqCst);
    wait_until("a probe hangs", || provider.hung.load(Ordering::SeqCst) > 0).await;
    wait_until("the breaker opens after the hung probe", || {
        payment.decider().breaker() == BreakerState::Open
    })
    .await;

    // Recovered: the next probe closes the breaker; every order completes.
    provider.phase.store(UP, Ordering::SeqCst);
    for id in &orders {
        assert_eq!(env.wait_terminal(id).await.0, "completed", "{id}");
    }
    assert_eq!(payment.decider().breaker(), BreakerState::Closed);
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.dead_letters")
            .await,
        0,
        "no order spent its retry budget while the provider was known to be down"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM (SELECT order_id FROM payment.ledger WHERE entry = 'authorization'
              GROUP BY order_id HAVING count(*) = 1) once"
        )
        .await,
        6,
        "every order authorized exactly once"
    );
    // One idempotency key per order, whatever the number of calls.
    assert_eq!(provider.calls.lock().unwrap().len(), 6);
    env.finish().await;
}

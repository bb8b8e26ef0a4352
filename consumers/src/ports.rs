//! Calls to the outside world (the payment provider, the carrier): each one bounded by a
//! timeout, carrying its idempotency key, and guarded by a circuit breaker.
//!
//! The engine never makes a call while it holds a transaction: it asks the questions a batch
//! raises first ([`crate::step::Step::prepare`]), keeps the answers by idempotency key, and
//! only then applies the batch, where the deciders read the answers.
//!
//! The breaker ([`Breaker`]) is closed while calls succeed; `failures` failed calls within
//! `window` open it; while open, calls fail at once with [`HandlerError::Unavailable`] (the
//! engine parks the order without spending its retry budget); after `open_for` one probe call
//! is let through (half-open): its success closes the breaker, its failure opens it again (and
//! spends no retry budget either).
//!
//! [`CallSettings`] configure a [`Guard`]; the steps that call out hold them in their own
//! sections (`[payment.calls]`, `[shipping.calls]`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Gauge, Histogram};
use platform::metrics::names::{BREAKER_STATE, PORT_CALL_DURATION};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::HandlerError;

/// How a step calls an outside service: each call is bounded by `timeout_ms`;
/// `breaker_failures` failed calls (timeouts, retryable errors) within `breaker_window_ms` open
/// the circuit breaker, which then refuses calls at once (the orders park) until, after
/// `breaker_open_ms`, one probe call goes through and closes it again if it succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallSettings {
    pub timeout_ms: u64,
    pub breaker_failures: u32,
    pub breaker_window_ms: u64,
    pub breaker_open_ms: u64,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            timeout_ms: 5_000,
            breaker_failures: 5,
            breaker_window_ms: 10_000,
            breaker_open_ms: 5_000,
        }
    }
}

/// The breaker's state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of `orderflow_breaker_state`: 0 closed, 1 half open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A circuit breaker over a clock the caller passes in (so tests control time).
#[derive(Debug)]
pub struct Breaker {
    failures: usize,
    window: Duration,
    open_for: Duration,
    /// Times of the failures inside the window (closed state).
    recent: VecDeque<Instant>,
    state: BreakerState,
    opened_at: Option<Instant>,
    /// A half-open probe is out; other calls are refused until it returns.
    probing: bool,
}

/// Whether a call may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The one half-open probe: its outcome decides the breaker's state.
    Probe,
    /// Refused: the breaker is open (or a probe is already out).
    Refused {
        retry_in: Duration,
    },
}

impl Breaker {
    pub fn new(failures: usize, window: Duration, open_for: Duration) -> Self {
        Breaker {
            failures: failures.max(1),
            window,
            open_for,
            recent: VecDeque::new(),
            state: BreakerState::Closed,
            opened_at: None,
            probing: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Ask to make a call at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => {
                let opened = self.opened_at.unwrap_or(now);
                let since = now.saturating_duration_since(opened);
                if since >= self.open_for {
                    self.state = BreakerState::HalfOpen;
                    self.probing = true;
                    Admission::Probe
                } else {
                    Admission::Refused {
                        retry_in: self.open_for - since,
                    }
                }
            }
            BreakerState::HalfOpen if !self.probing => {
                self.probing = true;
                Admission::Probe
            }
            BreakerState::HalfOpen => Admission::Refused {
                retry_in: self.open_for,
            },
        }
    }

    /// Record a call's outcome at `now`. Returns the new state when it changed.
    pub fn record(&mut self, now: Instant, ok: bool) -> Option<BreakerState> {
        let before = self.state;
        match (self.state, ok) {
            (BreakerState::HalfOpen, true) => {
                self.state = BreakerState::Closed;
                self.recent.clear();
                self.probing = false;
            }
            (BreakerState::HalfOpen, false) => self.open(now),
            (BreakerState::Closed, true) => {}
            (BreakerState::Closed, false) => {
                self.recent.push_back(now);
                while self
                    .recent
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
                {
                    self.recent.pop_front();
                }
                if self.recent.len() >= self.failures {
                    self.open(now);
                }
            }
            // A call admitted before the breaker opened came back late: it changes nothing.
            (BreakerState::Open, _) => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.probing = false;
        self.recent.clear();
    }
}

/// One outside service as the steps see it: a name, a timeout per call, a breaker, and the
/// metrics of its calls (none until [`Guard::measured`] names the component and port).
#[derive(Debug)]
pub struct Guard {
    name: &'static str,
    timeout: Duration,
    breaker: Mutex<Breaker>,
    metrics: PortMetrics,
}

/// `orderflow_port_call_duration_seconds` per result and `orderflow_breaker_state` of one
/// port, created once.
#[derive(Debug, Clone)]
struct PortMetrics {
    ok: Histogram,
    error: Histogram,
    timeout: Histogram,
    refused: Histogram,
    breaker: Gauge,
}

impl PortMetrics {
    fn none() -> Self {
        PortMetrics {
            ok: Histogram::noop(),
            error: Histogram::noop(),
            timeout: Histogram::noop(),
            refused: Histogram::noop(),
            breaker: Gauge::noop(),
        }
    }

    fn of(component: &'static str, port: &'static str) -> Self {
        let call = |result: &'static str| {
            metrics::histogram!(
                PORT_CALL_DURATION,
                "component" => component,
                "port" => port,
                "result" => result
            )
        };
        let breaker = metrics::gauge!(BREAKER_STATE, "component" => component, "port" => port);
        breaker.set(BreakerState::Closed.gauge_value());
        PortMetrics {
            ok: call("ok"),
            error: call("error"),
            timeout: call("timeout"),
            refused: call("refused"),
            breaker,
        }
    }
}

impl Guard {
    pub fn new(name: &'static str, calls: &CallSettings) -> Self {
        Guard {
            name,
            timeout: Duration::from_millis(calls.timeout_ms),
            breaker: Mutex::new(Breaker::new(
                calls.breaker_failures as usize,
                Duration::from_millis(calls.breaker_window_ms),
                Duration::from_millis(calls.breaker_open_ms),
            )),
            metrics: PortMetrics::none(),
        }
    }

    /// Record this guard's calls and breaker state as `port` of `component` (catalog labels:
    /// `payment`/`provider`, `shipping`/`carrier`).
    pub fn measured(mut self, component: &'static str, port: &'static str) -> Self {
        self.metrics = PortMetrics::of(component, port);
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // A panic while holding this lock cannot leave the breaker half-updated in a way that
        // matters more than losing it: take the data either way.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `call` (whose request carries `key`) through the breaker and the timeout. Only
    /// failures that say the service is in trouble (timeouts, retryable errors) count against
    /// the breaker; a permanent refusal is an answer.
    pub async fn call<T, F>(&self, key: Uuid, call: F) -> Result<T, HandlerError>
    where
        F: Future<Output = Result<T, HandlerError>>,
    {
        let started = Instant::now();
        let admission = self.lock().admit(started);
        if let Admission::Refused { retry_in } = admission {
            self.metrics.refused.record(started.elapsed());
            return Err(HandlerError::Unavailable {
                service: self.name,
                message: format!(
                    "circuit breaker open; next probe in {} ms",
                    retry_in.as_millis()
                ),
            });
        }
        let answer = tokio::time::timeout(self.timeout, call).await;
        let result = match &answer {
            Ok(Ok(_)) => &self.metrics.ok,
            Ok(Err(_)) => &self.metrics.error,
            Err(_) => &self.metrics.timeout,
        };
        result.record(started.elapsed());
        let outcome = match answer {
            Ok(outcome) => outcome,
            Err(_) => Err(HandlerError::Provider {
                provider: self.name,
                message: format!(
                    "no answer within {} ms (idempotency key {key})",
                    self.timeout.as_millis()
                ),
                retryable: true,
            }),
        };
        let trouble = matches!(&outcome, Err(e) if e.is_retryable());
        let changed = self.lock().record(Instant::now(), !trouble);
        self.metrics.breaker.set(self.state().gauge_value());
        // A failed probe only confirms what the open breaker said: the order waits for the
        // service without spending its retry budget, like the calls the breaker refused.
        let outcome = match outcome {
            Err(error) if trouble && admission == Admission::Probe => {
                Err(HandlerError::Unavailable {
                    service: self.name,
                    message: format!("circuit breaker probe failed: {error}"),
                })
            }
            other => other,
        };
        match changed {
            Some(BreakerState::Open) => {
                tracing::warn!(service = self.name, breaker = "open", "circuit breaker opened: calls fail fast and orders park until a probe succeeds")
            }
            Some(state) => {
                tracing::info!(
                    service = self.name,
                    breaker = state.as_str(),
                    "circuit breaker state changed"
                )
            }
            None => {}
        }
        outcome
    }
}

/// Answers from the outside world by the idempotency key of the question; failures are kept
/// as text, so that an answer can be read more than once.
#[derive(Debug, Default, Clone)]
pub struct Answers<A> {
    answers: HashMap<Uuid, Result<A, Failure>>,
}

/// A call that failed, as a decider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub service: &'static str,
    pub message: String,
    pub retryable: bool,
    /// Refused by an open breaker: the order parks without spending its retry budget.
    pub unavailable: bool,
}

impl Failure {
    pub fn of(error: &HandlerError, service: &'static str) -> Failure {
        Failure {
            service,
            message: match error {
                HandlerError::Provider { message, .. }
                | HandlerError::Unavailable { message, .. } => message.clone(),
                other => other.to_string(),
            },
            retryable: error.is_retryable(),
            unavailable: matches!(error, HandlerError::Unavailable { .. }),
        }
    }

    pub fn to_error(&self) -> HandlerError {
        if self.unavailable {
            HandlerError::Unavailable {
                service: self.service,
                message: self.message.clone(),
            }
        } else {
            HandlerError::Provider {
                provider: self.service,
                message: self.message.clone(),
                retryable: self.retryable,
            }
        }
    }
}

impl<A: Clone> Answers<A> {
    pub fn new() -> Self {
        Answers {
            answers: HashMap::new(),
        }
    }

    pub fn get(&self, key: Uuid) -> Option<&Result<A, Failure>> {
        self.answers.get(&key)
    }

    pub fn insert(&mut self, key: Uuid, answer: Result<A, Failure>) {
        self.answers.insert(key, answer);
    }

    /// Forget the failures, keep the answers.
    pub fn retain_answered(&mut self) {
        self.answers.retain(|_, answer| answer.is_ok());
    }

    pub fn remove(&mut self, key: Uuid) {
        self.answers.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// (at ms, call outcome or None for "only ask for admission"), expected admission and state.
    #[test]
    fn the_breaker_opens_after_failures_in_the_window_and_a_probe_closes_it() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, ms(1_000), ms(500));
        let at = |n| start + ms(n);
        // Two failures far apart never open it.
        assert_eq!(breaker.admit(at(0)), Admission::Allowed);
        breaker.record(at(0), false);
        breaker.record(at(1_500), false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Three within a second do.
        breaker.record(at(1_600), false);
        assert_eq!(breaker.record(at(1_700), false), Some(BreakerState::Open));
        // Open: refused until 500 ms passed, with the time left.
        assert_eq!(
            breaker.admit(at(1_900)),
            Admission::Refused { retry_in: ms(300) }
        );
        // Then one probe, and nobody else while it is out.
        assert_eq!(breaker.admit(at(2_200)), Admission::Probe);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(matches!(
            breaker.admit(at(2_201)),
            Admission::Refused { .. }
        ));
        // The probe fails: open again, counting from now.
        assert_eq!(breaker.record(at(2_300), false), Some(BreakerState::Open));
        assert!(matches!(
            breaker.admit(at(2_700)),
            Admission::Refused { .. }
        ));
        assert_eq!(breaker.admit(at(2_800)), Admission::Probe);
        // It succeeds: closed, the failure count starts over.
        assert_eq!(breaker.record(at(2_810), true), Some(BreakerState::Closed));
        assert_eq!(breaker.admit(at(2_820)), Admission::Allowed);
        breaker.record(at(2_830), false);
        breaker.record(at(2_840), false);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_late_answer_to_a_call_admitted_before_the_breaker_opened_changes_nothing() {
        let start = Instant::now();
        let mut breaker = Breaker::new(1, ms(1_000), ms(500));
        assert_eq!(breaker.record(start, false), Some(BreakerState::Open));
        assert_eq!(breaker.record(start + ms(10), true), None);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn a_call_past_its_timeout_fails_retryably_and_counts_against_the_breaker() {
        let calls = CallSettings {
            timeout_ms: 20,
            breaker_failures: 2,
            breaker_window_ms: 60_000,
            breaker_open_ms: 60_000,
        };
        let guard = Guard::new("carrier", &calls);
        let key = Uuid::nil();
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, HandlerError>(())
        };
        let first = guard.call(key, slow()).await.unwrap_err();
        assert!(first.is_retryable(), "{first}");
        assert!(first.to_string().contains("within 20 ms"), "{first}");
        // A permanent refusal is an answer, not trouble: the breaker stays closed.
        let refused = guard
            .call(key, async {
                Err::<(), _>(HandlerError::Provider {
                    provider: "carrier",
                    message: "bad request".into(),
                    retryable: false,
                })
            })
            .await;
        assert!(refused.is_err());
        assert_eq!(guard.state(), BreakerState::Closed);
        let _ = guard.call(key, slow()).await;
        assert_eq!(guard.state(), BreakerState::Open);
        let refused = guard.call(key, async { Ok(()) }).await.unwrap_err();
        assert!(
            matches!(refused, HandlerError::Unavailable { .. }),
            "{refused}"
        );
        assert!(refused.is_retryable());
    }

    #[tokio::test]
    async fn a_failed_probe_is_unavailable_and_a_good_one_closes_the_breaker() {
        let calls = CallSettings {
            timeout_ms: 1_000,
            breaker_failures: 1,
            breaker_window_ms: 60_000,
            breaker_open_ms: 1,
        };
        let guard = Guard::new("payment provider", &calls);
        let key = Uuid::nil();
        let failing = || async {
            Err::<(), _>(HandlerError::Provider {
                provider: "payment provider",
                message: "503".into(),
                retryable: true,
            })
        };
        let first = guard.call(key, failing()).await.unwrap_err();
        assert!(matches!(first, HandlerError::Provider { .. }), "{first}");
        assert_eq!(guard.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let probe = guard.call(key, failing()).await.unwrap_err();
        assert!(
            matches!(&probe, HandlerError::Unavailable { message, .. } if message.contains("probe failed")),
            "{probe}"
        );
        assert_eq!(guard.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(5)).await;
        guard
            .call(key, async { Ok(()) })
            .await
            .expect("the probe goes through");
        assert_eq!(guard.state(), BreakerState::Closed);
    }
}

//! What a step is: a pure decider over the state of the orders in a batch, plus how that state
//! is loaded and stored, plus the questions it asks the outside world.
//!
//! A [`Decider`] never touches the database or a service while it decides: the engine loads
//! the state of every order in the batch with one query per table ([`Decider::load`]), runs
//! [`Decider::decide`] for each event in log order, in memory, and writes what changed with one
//! set-based statement per table ([`Decider::store`]). When a decision needs an answer from
//! outside (the payment provider, the carrier), `decide` returns [`Decline::Ask`]; the engine
//! asks before it opens the batch's transaction ([`Step::prepare`]), through the step's
//! guarded ports, and keeps the answers by idempotency key for the decisions to read.
//!
//! [`Step`] is the object-safe face the engine drives; every `Decided<D>` is one.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;
use events::{Event, EventBody, EventType};
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::ports::{Answers, Failure};
use crate::HandlerError;

/// Why a decider did not decide an event.
#[derive(Debug)]
pub enum Decline<Q> {
    /// It needs this answer from outside first.
    Ask(Q),
    /// The event cannot be applied (classified by the engine: dead letter or park).
    Fail(HandlerError),
}

impl<Q> From<HandlerError> for Decline<Q> {
    fn from(error: HandlerError) -> Self {
        Decline::Fail(error)
    }
}

/// A question to the outside world, with the idempotency key its call carries.
pub trait Question: Debug + Clone + Send + Sync {
    fn key(&self) -> Uuid;
}

/// No questions: for steps without ports.
#[derive(Debug, Clone)]
pub enum Never {}

impl Question for Never {
    fn key(&self) -> Uuid {
        match *self {}
    }
}

/// The topic a step consumes: the order log (every step but one), or the intake topic
/// upstream producers write (the intake). A step's replies always go to the order log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Log,
    Intake,
}

/// A step's decisions and its state.
#[async_trait]
pub trait Decider: Send + Sync + 'static {
    /// The state of the orders of one batch (and whatever else the decisions read), as loaded,
    /// changed in memory by the decisions, then stored.
    type State: Send + Sync + Clone;
    type Question: Question;
    type Answer: Clone + Send + Sync;

    /// Consumer group suffix, inbox and outbox key, and the salt of reply event ids. Never
    /// change it for a deployed step: its inbox would forget what it processed.
    fn name(&self) -> &'static str;

    /// Whether the step reacts to events of this type; others are skipped without a trace.
    fn wants(&self, event_type: EventType) -> bool;

    /// The topic the step consumes ([`Source::Log`] unless it says otherwise).
    fn source(&self) -> Source {
        Source::Log
    }

    /// Whether the step forwards the records it reads instead of replying to them: its one
    /// event per record keeps the record's own metadata (event id, order id, correlation,
    /// causation, time) rather than getting a reply id caused by it. Forwarding twice appends
    /// the same event id twice, which every inbox downstream absorbs.
    fn forwards(&self) -> bool {
        false
    }

    /// Whether deciding `event` may need an answer from outside (cheap; by type). The engine
    /// only looks for questions in batches holding such an event.
    fn may_ask(&self, _event: &Event) -> bool {
        false
    }

    /// Load the state `events` touch, one query per table. `lock` (inside the batch's
    /// transaction) locks the rows, in a stable order; without it nothing is locked.
    async fn load(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
        lock: bool,
    ) -> Result<Self::State, HandlerError>;

    /// Apply one event to `state` and return the events to emit in reply. Pure.
    fn decide(
        &self,
        state: &mut Self::State,
        event: &Event,
        answers: &Answers<Self::Answer>,
    ) -> Result<Vec<EventBody>, Decline<Self::Question>>;

    /// Write what the decisions changed in `state`, one statement per table.
    async fn store(&self, tx: &mut PgConnection, state: &Self::State) -> Result<(), HandlerError>;

    /// Ask the outside world, through the step's guarded port. Steps without ports never ask.
    async fn ask(&self, question: &Self::Question) -> Result<Self::Answer, HandlerError> {
        Err(HandlerError::Rule(format!(
            "step {} has no port to ask {question:?}",
            self.name()
        )))
    }

    /// Ask several questions; one answer per question, by its key. The default asks them one
    /// by one, up to 16 at a time ([`ask_each`]); a step whose service answers batches may
    /// ask them together.
    async fn ask_all(
        &self,
        questions: Vec<Self::Question>,
    ) -> Vec<(Uuid, Result<Self::Answer, HandlerError>)> {
        ask_each(self, questions).await
    }

    /// The name of the service a question goes to (for failures and logs).
    fn service(&self) -> &'static str {
        self.name()
    }
}

/// The face of a step the engine drives (object safe).
#[async_trait]
pub trait Step: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn wants(&self, event_type: EventType) -> bool;
    /// The topic the step consumes ([`Decider::source`]).
    fn source(&self) -> Source;
    /// Whether the step forwards records instead of replying ([`Decider::forwards`]).
    fn forwards(&self) -> bool;
    /// Whether deciding `event` may need an answer from outside.
    fn may_ask(&self, event: &Event) -> bool;

    /// Outside any transaction: find the questions `events` raise against the state as it is
    /// now and ask them, keeping the answers for [`Step::apply`]. Returns how many calls were
    /// made. Reads without locking; makes no change.
    async fn prepare(&self, pool: &PgPool, events: &[&Event]) -> Result<usize, HandlerError>;

    /// Inside the batch's transaction: load, decide every event in order, store. Returns each
    /// event's replies, in order; on failure, the index of the event that failed. An event
    /// whose answer is not known yet fails with [`HandlerError::Unanswered`].
    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Vec<EventBody>>, ApplyError>;
}

/// Why a batch did not apply.
#[derive(Debug)]
pub enum ApplyError {
    /// Deciding these events (by index) failed; the other orders' events were decided, so
    /// every failure of the batch is known at once.
    Events(Vec<(usize, HandlerError)>),
    /// Loading or storing the batch's state failed: no one event is to blame.
    State(HandlerError),
}

/// Most question rounds in one prepare: an answer can raise a next question for the same
/// order within a batch (authorize, then void after a give-up).
const ROUNDS: usize = 4;
/// Calls in flight at once per step.
const CALLS_IN_FLIGHT: usize = 16;
/// Answers kept between prepare and apply; more means apply never came (a rebalance).
const ANSWERS_KEPT: usize = 20_000;

/// A decider as the engine runs it, with the answers it was given.
pub struct Decided<D: Decider> {
    decider: D,
    answers: Mutex<Answers<D::Answer>>,
}

impl<D: Decider> Decided<D> {
    pub fn new(decider: D) -> Self {
        Decided {
            decider,
            answers: Mutex::new(Answers::new()),
        }
    }

    pub fn decider(&self) -> &D {
        &self.decider
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers<D::Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One pass over `events` against a copy of `state`: the questions still open.
    fn questions(&self, state: &D::State, events: &[&Event]) -> Vec<D::Question> {
        let mut state = state.clone();
        let answers = self.answers();
        let mut waiting: HashSet<&str> = HashSet::new();
        let mut questions = Vec::new();
        for event in events {
            let order = event.meta.order_id.as_str();
            if waiting.contains(order) {
                continue;
            }
            match self.decider.decide(&mut state, event, &answers) {
                Ok(_) => {}
                Err(Decline::Ask(question)) => {
                    questions.push(question);
                    waiting.insert(order);
                }
                // The engine parks or dead-letters it; the order's later events wait.
                Err(Decline::Fail(_)) => {
                    waiting.insert(order);
                }
            }
        }
        questions
    }
}

/// Ask `questions` one by one through [`Decider::ask`], up to 16 at a time.
pub async fn ask_each<D: Decider + ?Sized>(
    decider: &D,
    questions: Vec<D::Question>,
) -> Vec<(Uuid, Result<D::Answer, HandlerError>)> {
    futures::stream::iter(questions)
        .map(|question| async move { (question.key(), decider.ask(&question).await) })
        .buffer_unordered(CALLS_IN_FLIGHT)
        .collect()
        .await
}

/// Wrap a decider for the engine.
pub fn step<D: Decider>(decider: D) -> std::sync::Arc<dyn Step> {
    std::sync::Arc::new(Decided::new(decider))
}

#[async_trait]
impl<D: Decider> Step for Decided<D> {
    fn name(&self) -> &'static str {
        self.decider.name()
    }

    fn wants(&self, event_type: EventType) -> bool {
        self.decider.wants(event_type)
    }

    fn source(&self) -> Source {
        self.decider.source()
    }

    fn forwards(&self) -> bool {
        self.decider.forwards()
    }

    fn may_ask(&self, event: &Event) -> bool {
        self.decider.may_ask(event)
    }

    async fn prepare(&self, pool: &PgPool, events: &[&Event]) -> Result<usize, HandlerError> {
        if !events.iter().any(|e| self.decider.may_ask(e)) {
            return Ok(0);
        }
        // A failed call is asked again on every attempt (the breaker decides whether it goes
        // out); only answers are kept.
        self.answers().retain_answered();
        let mut conn = pool.acquire().await?;
        let state = self.decider.load(&mut conn, events, false).await?;
        drop(conn);
        let mut calls = 0;
        for _ in 0..ROUNDS {
            let questions = self.questions(&state, events);
            if questions.is_empty() {
                break;
            }
            calls += questions.len();
            let service = self.decider.service();
            let answered = self.decider.ask_all(questions).await;
            let mut answers = self.answers();
            if answers.len() > ANSWERS_KEPT {
                *answers = Answers::new();
            }
            for (key, answer) in answered {
                answers.insert(key, answer.map_err(|error| Failure::of(&error, service)));
            }
        }
        Ok(calls)
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Vec<EventBody>>, ApplyError> {
        let mut state = self
            .decider
            .load(tx, events, true)
            .await
            .map_err(ApplyError::State)?;
        let mut replies = Vec::with_capacity(events.len());
        let mut failed: Vec<(usize, HandlerError)> = Vec::new();
        {
            let answers = self.answers();
            // An order whose event failed decides nothing more in this attempt: its later
            // events wait behind the failure (the engine parks or dead-letters it, then tries
            // the batch again with every failure known).
            let mut stopped: HashSet<&str> = HashSet::new();
            for (index, event) in events.iter().enumerate() {
                let order = event.meta.order_id.as_str();
                if stopped.contains(order) {
                    replies.push(Vec::new());
                    continue;
                }
                match self.decider.decide(&mut state, event, &answers) {
                    Ok(bodies) => replies.push(bodies),
                    Err(decline) => {
                        let error = match decline {
                            Decline::Ask(question) => HandlerError::Unanswered(format!(
                                "order {order} needs an answer from {} first ({question:?})",
                                self.decider.service()
                            )),
                            Decline::Fail(error) => error,
                        };
                        failed.push((index, error));
                        stopped.insert(order);
                        replies.push(Vec::new());
                    }
                }
            }
        }
        if !failed.is_empty() {
            return Err(ApplyError::Events(failed));
        }
        self.decider
            .store(tx, &state)
            .await
            .map_err(ApplyError::State)?;
        Ok(replies)
    }
}

/// The distinct order ids of `events`, sorted (so that rows are locked in a stable order).
pub fn order_ids<'a>(events: &[&'a Event]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = events.iter().map(|e| e.meta.order_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

//! The payment step: remembers each order's amount from `OrderCreated`, authorizes it with
//! the payment provider once its stock is reserved, and voids the authorization when shipping
//! fails or the saga gives the order up (see [`crate::give_up`]). `payment.payments` holds each order's payment; `payment.ledger` every movement.
//!
//! The provider is a trait; [`SimulatedProvider`] declines by two documented rules:
//! the order total is above `payment.decline_over_minor` (`amount_over_limit`), or the
//! customer is listed in `payment.blocked_customers` (`customer_blocked`). That list changes
//! only by `CustomerBlocked` / `CustomerUnblocked` events on the log (appended through
//! [`crate::commands`]), which this step applies, once each, in every mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use events::{Event, EventBody, EventType, PaymentAuthorized, PaymentDeclined, PaymentVoided};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::give_up::{self, Abandoned};
use crate::ports::{Answers, BreakerState, CallSettings, Failure, Guard};
use crate::step::{Decider, Decline, Question};
use crate::HandlerError;

pub const NAME: &str = "payment";
const SCHEMA: &str = "payment";

/// The `[payment]` section: rules of the simulated payment provider and how it is called.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// Orders whose total is above this many minor units are declined (`amount_over_limit`).
    pub decline_over_minor: i64,
    /// Timeout and circuit breaker of calls to the provider (`[payment.calls]`).
    #[serde(default)]
    pub calls: CallSettings,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        PaymentSettings {
            decline_over_minor: 500_000,
            calls: CallSettings::default(),
        }
    }
}

/// What the provider is asked to authorize. `idempotency_key` is stable across re-deliveries,
/// so a provider that honours it never charges twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    pub idempotency_key: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationDecision {
    Authorized { provider_reference: String },
    Declined { reason: String },
}

#[async_trait]
pub trait PaymentProvider: Send + Sync {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError>;
    async fn void(
        &self,
        provider_reference: &str,
        idempotency_key: Uuid,
    ) -> Result<(), HandlerError>;

    /// Whether [`PaymentProvider::authorize_all`] answers many requests in one call; then the
    /// step makes one guarded call per batch instead of one per order.
    fn answers_batches(&self) -> bool {
        false
    }

    /// Authorize `requests` in one call: one decision per request, in order. Only called when
    /// [`PaymentProvider::answers_batches`] says so.
    async fn authorize_all(
        &self,
        requests: &[AuthorizationRequest],
    ) -> Result<Vec<AuthorizationDecision>, HandlerError> {
        let _ = requests;
        Err(HandlerError::Rule(
            "this payment provider does not answer batches".into(),
        ))
    }
}

/// A provider with deterministic, documented rules, for demos and tests.
pub struct SimulatedProvider {
    pool: PgPool,
    decline_over_minor: i64,
}

impl SimulatedProvider {
    pub fn new(pool: PgPool, decline_over_minor: i64) -> Self {
        SimulatedProvider {
            pool,
            decline_over_minor,
        }
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError> {
        let mut decisions = self.authorize_all(std::slice::from_ref(request)).await?;
        decisions.pop().ok_or_else(|| HandlerError::Provider {
            provider: "simulated",
            message: "no decision".into(),
            retryable: true,
        })
    }

    fn answers_batches(&self) -> bool {
        true
    }

    /// One query for the whole batch: which of its customers are blocked.
    async fn authorize_all(
        &self,
        requests: &[AuthorizationRequest],
    ) -> Result<Vec<AuthorizationDecision>, HandlerError> {
        let customers: Vec<&str> = requests.iter().map(|r| r.customer_id.as_str()).collect();
        let blocked: Vec<String> = sqlx::query_scalar(
            "SELECT customer_id FROM payment.blocked_customers WHERE customer_id = ANY($1)",
        )
        .bind(&customers)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| HandlerError::Provider {
            provider: "simulated",
            message: e.to_string(),
            retryable: platform::db::is_retryable(&e),
        })?;
        Ok(requests
            .iter()
            .map(|request| {
                if request.amount_minor > self.decline_over_minor {
                    AuthorizationDecision::Declined {
                        reason: "amount_over_limit".into(),
                    }
                } else if blocked.contains(&request.customer_id) {
                    AuthorizationDecision::Declined {
                        reason: "customer_blocked".into(),
                    }
                } else {
                    AuthorizationDecision::Authorized {
                        provider_reference: format!("sim-{}", request.idempotency_key.simple()),
                    }
                }
            })
            .collect())
    }

    async fn void(
        &self,
        _provider_reference: &str,
        _idempotency_key: Uuid,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Write the batch's blocks and unblocks to `payment.blocked_customers`, one statement each.
async fn store_blocks(
    tx: &mut PgConnection,
    blocks: &BTreeMap<String, Block>,
) -> Result<(), sqlx::Error> {
    let mut blocked: (Vec<&str>, Vec<&str>, Vec<chrono::DateTime<chrono::Utc>>) =
        Default::default();
    let mut unblocked: Vec<&str> = Vec::new();
    for (customer, block) in blocks {
        match block {
            Block::Blocked { note, at } => {
                blocked.0.push(customer);
                blocked.1.push(note);
                blocked.2.push(*at);
            }
            Block::Unblocked => unblocked.push(customer),
        }
    }
    if !blocked.0.is_empty() {
        sqlx::query(
            "INSERT INTO payment.blocked_customers (customer_id, note, created_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[])
             ON CONFLICT (customer_id) DO UPDATE SET note = EXCLUDED.note",
        )
        .bind(&blocked.0)
        .bind(&blocked.1)
        .bind(&blocked.2)
        .execute(&mut *tx)
        .await?;
    }
    if !unblocked.is_empty() {
        sqlx::query("DELETE FROM payment.blocked_customers WHERE customer_id = ANY($1)")
            .bind(&unblocked)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Have the simulated provider decline `customer_id` from now on (`customer_blocked`), written
/// straight into `payment.blocked_customers`, bypassing the log: only for tests seeding state
/// a restore need not see. Operators block with [`crate::commands`] (`CustomerBlocked`).
pub async fn block_customer(
    pool: &PgPool,
    customer_id: &str,
    note: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment.blocked_customers (customer_id, note) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE SET note = EXCLUDED.note",
    )
    .bind(customer_id)
    .bind(note)
    .execute(pool)
    .await?;
    Ok(())
}

/// Let the simulated provider authorize `customer_id` again; `false` when it was not blocked.
/// Payments declined while blocked stay declined. Bypasses the log like [`block_customer`]:
/// tests only; operators unblock with [`crate::commands`] (`CustomerUnblocked`).
pub async fn unblock_customer(pool: &PgPool, customer_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM payment.blocked_customers WHERE customer_id = $1")
        .bind(customer_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A customer's block as operators read it (`GET /v1/customers/{id}/block`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CustomerBlock {
    pub customer_id: String,
    /// Why, as the operator who blocked the customer wrote it.
    pub note: String,
    pub blocked_at: chrono::DateTime<chrono::Utc>,
}

/// The block of `customer_id`, if the customer is blocked.
pub async fn customer_block(
    pool: &PgPool,
    customer_id: &str,
) -> Result<Option<CustomerBlock>, sqlx::Error> {
    sqlx::query_as(
        "SELECT customer_id, note, created_at AS blocked_at FROM payment.blocked_customers
         WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// The payment step: its provider, behind a timeout and a circuit breaker.
pub struct Payment {
    provider: Arc<dyn PaymentProvider>,
    guard: Guard,
}

impl Payment {
    /// With the default call settings (`[payment.calls]`).
    pub fn new(provider: Arc<dyn PaymentProvider>) -> Self {
        Payment::with_calls(provider, &CallSettings::default())
    }

    /// The step as `[payment]` configures it: the simulated provider (customer blocks read
    /// from `pool`) behind the section's call settings.
    pub fn simulated(pool: PgPool, settings: &PaymentSettings) -> Self {
        Payment::with_calls(
            Arc::new(SimulatedProvider::new(pool, settings.decline_over_minor)),
            &settings.calls,
        )
    }

    pub fn with_calls(provider: Arc<dyn PaymentProvider>, calls: &CallSettings) -> Self {
        Payment {
            provider,
            guard: Guard::new("payment provider", calls).measured(NAME, "provider"),
        }
    }

    /// The provider's circuit breaker.
    pub fn breaker(&self) -> BreakerState {
        self.guard.state()
    }
}

/// A question to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Authorize(AuthorizationRequest),
    Void { reference: String, key: Uuid },
}

impl Question for Call {
    fn key(&self) -> Uuid {
        match self {
            Call::Authorize(request) => request.idempotency_key,
            Call::Void { key, .. } => *key,
        }
    }
}

/// The provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Authorization(AuthorizationDecision),
    Voided,
}

/// Whom to charge for an order, and how much (from its `OrderCreated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    new: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Authorized,
    Declined,
    Voided,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Authorized => "authorized",
            Status::Declined => "declined",
            Status::Voided => "voided",
        }
    }
}

/// An order's payment as the decider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: Status,
    pub decline_reason: Option<String>,
    pub provider_reference: Option<String>,
    changed: bool,
}

/// A money movement to append to `payment.ledger`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub payment_id: Uuid,
    pub order_id: String,
    pub entry: &'static str,
    pub amount_minor: i64,
    pub currency: String,
    pub caused_by: Uuid,
}

/// The payment state of one batch's orders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub terms: HashMap<String, Terms>,
    pub payments: HashMap<String, PaymentRow>,
    pub abandoned: Abandoned,
    /// Entries decided in this batch.
    pub ledger: Vec<Entry>,
    /// Blocks and unblocks applied in this batch, the last per customer (one customer's
    /// events share a partition, so the batch holds them in log order).
    pub blocks: BTreeMap<String, Block>,
}

/// A customer's block as the last `CustomerBlocked` / `CustomerUnblocked` of a batch left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// Blocked since `at` (the event's time, so a restore writes the same row).
    Blocked {
        note: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    Unblocked,
}

type PaymentRecord = (
    String,
    Uuid,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
);

#[async_trait]
impl Decider for Payment {
    type State = State;
    type Question = Call;
    type Answer = Answer;

    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderCreated
                | EventType::InventoryReserved
                | EventType::ShipmentFailed
                | EventType::CustomerBlocked
                | EventType::CustomerUnblocked
        ) || give_up::is_marker(event_type)
    }

    fn may_ask(&self, event: &Event) -> bool {
        matches!(
            event.event_type(),
            EventType::InventoryReserved | EventType::ShipmentFailed
        ) || give_up::is_marker(event.event_type())
    }

    fn service(&self) -> &'static str {
        self.guard.name()
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
        lock: bool,
    ) -> Result<State, HandlerError> {
        let orders = crate::step::order_ids(events);
        let terms: Vec<(String, String, i64, String)> = sqlx::query_as(
            "SELECT order_id, customer_id, amount_minor, currency FROM payment.orders WHERE order_id = ANY($1)",
        )
        .bind(&orders)
        .fetch_all(&mut *conn)
        .await?;
        let payments: Vec<PaymentRecord> = sqlx::query_as(if lock {
            "SELECT order_id, payment_id, customer_id, amount_minor, currency, status, decline_reason,
                    provider_reference
             FROM payment.payments WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
        } else {
            "SELECT order_id, payment_id, customer_id, amount_minor, currency, status, decline_reason,
                    provider_reference
             FROM payment.payments WHERE order_id = ANY($1)"
        })
        .persistent(false)
        .bind(&orders)
        .fetch_all(&mut *conn)
        .await?;
        let mut state = State {
            abandoned: Abandoned::load(conn, SCHEMA, &orders).await?,
            ..State::default()
        };
        for (order_id, customer_id, amount_minor, currency) in terms {
            state.terms.insert(
                order_id,
                Terms {
                    customer_id,
                    amount_minor,
                    currency,
                    new: false,
                },
            );
        }
        for (
            order_id,
            payment_id,
            customer_id,
            amount_minor,
            currency,
            status,
            reason,
            reference,
        ) in payments
        {
            let status = match status.as_str() {
                "authorized" => Status::Authorized,
                "declined" => Status::Declined,
                "voided" => Status::Voided,
                other => {
                    return Err(HandlerError::Rule(format!(
                        "payment.payments holds an unknown status {other:?} for order {order_id}"
                    )))
                }
            };
            state.payments.insert(
                order_id,
                PaymentRow {
                    payment_id,
                    customer_id,
                    amount_minor,
                    currency,
                    status,
                    decline_reason: reason,
                    provider_reference: reference,
                    changed: false,
                },
            );
        }
        Ok(state)
    }

    fn decide(
        &self,
        state: &mut State,
        event: &Event,
        answers: &Answers<Answer>,
    ) -> Result<Vec<EventBody>, Decline<Call>> {
        decide(state, event, answers)
    }

    async fn store(&self, tx: &mut PgConnection, state: &State) -> Result<(), HandlerError> {
        store(tx, state).await?;
        Ok(())
    }

    async fn ask_all(&self, questions: Vec<Call>) -> Vec<(Uuid, Result<Answer, HandlerError>)> {
        if !self.provider.answers_batches() {
            return crate::step::ask_each(self, questions).await;
        }
        let (authorizations, others): (Vec<Call>, Vec<Call>) = questions
            .into_iter()
            .partition(|q| matches!(q, Call::Authorize(_)));
        let requests: Vec<AuthorizationRequest> = authorizations
            .into_iter()
            .filter_map(|q| match q {
                Call::Authorize(request) => Some(request),
                Call::Void { .. } => None,
            })
            .collect();
        let mut answers = crate::step::ask_each(self, others).await;
        let Some(first) = requests.first() else {
            return answers;
        };
        // One guarded call for the batch: its timeout and the breaker count it once.
        let decisions = self
            .guard
            .call(
                first.idempotency_key,
                self.provider.authorize_all(&requests),
            )
            .await;
        match decisions {
            Ok(decisions) if decisions.len() == requests.len() => {
                answers.extend(
                    requests
                        .iter()
                        .zip(decisions)
                        .map(|(r, d)| (r.idempotency_key, Ok(Answer::Authorization(d)))),
                );
            }
            Ok(decisions) => {
                let message = format!(
                    "{} decisions for {} authorization requests",
                    decisions.len(),
                    requests.len()
                );
                answers.extend(requests.iter().map(|r| {
                    (
                        r.idempotency_key,
                        Err(HandlerError::Provider {
                            provider: "payment provider",
                            message: message.clone(),
                            retryable: true,
                        }),
                    )
                }));
            }
            Err(error) => {
                let failure = Failure::of(&error, self.guard.name());
                answers.extend(
                    requests
                        .iter()
                        .map(|r| (r.idempotency_key, Err(failure.to_error()))),
                );
            }
        }
        answers
    }

    async fn ask(&self, question: &Call) -> Result<Answer, HandlerError> {
        match question {
            Call::Authorize(request) => self
                .guard
                .call(request.idempotency_key, self.provider.authorize(request))
                .await
                .map(Answer::Authorization),
            Call::Void { reference, key } => self
                .guard
                .call(*key, self.provider.void(reference, *key))
                .await
                .map(|()| Answer::Voided),
        }
    }
}

/// The payment step's decisions (pure).
pub fn decide(
    state: &mut State,
    event: &Event,
    answers: &Answers<Answer>,
) -> Result<Vec<EventBody>, Decline<Call>> {
    let order_id = &event.meta.order_id;
    match &event.body {
        EventBody::OrderCreated(order) => {
            if state.terms.contains_key(order_id) {
                tracing::warn!(%order_id, "duplicate OrderCreated; the first one stands");
            } else {
                state.terms.insert(
                    order_id.clone(),
                    Terms {
                        customer_id: order.customer_id.clone(),
                        amount_minor: order.total_minor(),
                        currency: order.currency.clone(),
                        new: true,
                    },
                );
            }
            Ok(Vec::new())
        }
        EventBody::InventoryReserved(_) => authorize(state, event, answers),
        EventBody::ShipmentFailed(_) => void(state, event, "shipment_failed", answers),
        // Facts, applied in every mode (restoring too): no decision, no reply.
        EventBody::CustomerBlocked(blocked) => {
            state.blocks.insert(
                blocked.customer_id.clone(),
                Block::Blocked {
                    note: blocked.note.clone(),
                    at: event.meta.occurred_at,
                },
            );
            Ok(Vec::new())
        }
        EventBody::CustomerUnblocked(unblocked) => {
            state
                .blocks
                .insert(unblocked.customer_id.clone(), Block::Unblocked);
            Ok(Vec::new())
        }
        body => match give_up::reason(body) {
            Some(reason) => {
                state.abandoned.note(event, reason);
                void(state, event, reason, answers)
            }
            None => Ok(Vec::new()),
        },
    }
}

fn authorize(
    state: &mut State,
    event: &Event,
    answers: &Answers<Answer>,
) -> Result<Vec<EventBody>, Decline<Call>> {
    let order_id = &event.meta.order_id;
    let Some(terms) = state.terms.get(order_id) else {
        return Err(Decline::Fail(HandlerError::Rule(format!(
            "InventoryReserved for order {order_id}, whose OrderCreated payment never saw"
        ))));
    };
    if let Some(payment) = state.payments.get(order_id) {
        return Err(Decline::Fail(HandlerError::Rule(format!(
            "order {order_id} already has a payment ({}); not charging again",
            payment.status.as_str()
        ))));
    }
    let payment_id = events::reply_event_id(event.meta.event_id, "payment-id");
    let (customer_id, amount_minor, currency) = (
        terms.customer_id.clone(),
        terms.amount_minor,
        terms.currency.clone(),
    );
    let mut row = PaymentRow {
        payment_id,
        customer_id: customer_id.clone(),
        amount_minor,
        currency: currency.clone(),
        status: Status::Declined,
        decline_reason: None,
        provider_reference: None,
        changed: true,
    };
    if state.abandoned.reason(order_id).is_some() {
        // Given up before payment was asked: never call the provider.
        row.decline_reason = Some(give_up::REFUSED.to_string());
        state.payments.insert(order_id.clone(), row);
        return Ok(vec![EventBody::PaymentDeclined(PaymentDeclined {
            customer_id,
            amount_minor,
            currency,
            reason: give_up::REFUSED.to_string(),
        })]);
    }
    let decision = match answers.get(payment_id) {
        None => {
            return Err(Decline::Ask(Call::Authorize(AuthorizationRequest {
                idempotency_key: payment_id,
                customer_id,
                amount_minor,
                currency,
            })))
        }
        Some(Err(failure)) => return Err(Decline::Fail(failure.to_error())),
        Some(Ok(Answer::Authorization(decision))) => decision.clone(),
        Some(Ok(other)) => {
            return Err(Decline::Fail(HandlerError::Rule(format!(
                "the provider answered {other:?} to the authorization of order {order_id}"
            ))))
        }
    };
    let (entry, reply) = match decision {
        AuthorizationDecision::Authorized { provider_reference } => {
            row.status = Status::Authorized;
            row.provider_reference = Some(provider_reference.clone());
            (
                "authorization",
                EventBody::PaymentAuthorized(PaymentAuthorized {
                    payment_id,
                    customer_id,
                    amount_minor,
                    currency: currency.clone(),
                    provider_reference,
                }),
            )
        }
        AuthorizationDecision::Declined { reason } => {
            row.decline_reason = Some(reason.clone());
            (
                "decline",
                EventBody::PaymentDeclined(PaymentDeclined {
                    customer_id,
                    amount_minor,
                    currency: currency.clone(),
                    reason,
                }),
            )
        }
    };
    state.payments.insert(order_id.clone(), row);
    state.ledger.push(Entry {
        payment_id,
        order_id: order_id.clone(),
        entry,
        amount_minor,
        currency,
        caused_by: event.meta.event_id,
    });
    Ok(vec![reply])
}

/// Compensation: void an authorization. Voiding twice, or an order never authorized, emits
/// nothing.
fn void(
    state: &mut State,
    event: &Event,
    reason: &str,
    answers: &Answers<Answer>,
) -> Result<Vec<EventBody>, Decline<Call>> {
    let order_id = &event.meta.order_id;
    let Some(payment) = state.payments.get_mut(order_id) else {
        if give_up::is_marker(event.event_type()) {
            // Given up before payment was asked: nothing to void.
            return Ok(Vec::new());
        }
        return Err(Decline::Fail(HandlerError::Rule(format!(
            "order {order_id} has no payment to void"
        ))));
    };
    if payment.status != Status::Authorized {
        tracing::info!(%order_id, status = payment.status.as_str(), "nothing to void");
        return Ok(Vec::new());
    }
    let key = events::reply_event_id(event.meta.event_id, "payment-void");
    match answers.get(key) {
        None => {
            return Err(Decline::Ask(Call::Void {
                reference: payment.provider_reference.clone().unwrap_or_default(),
                key,
            }))
        }
        Some(Err(failure)) => return Err(Decline::Fail(failure.to_error())),
        Some(Ok(_)) => {}
    }
    payment.status = Status::Voided;
    payment.changed = true;
    let (payment_id, amount_minor, currency) = (
        payment.payment_id,
        payment.amount_minor,
        payment.currency.clone(),
    );
    state.ledger.push(Entry {
        payment_id,
        order_id: order_id.clone(),
        entry: "void",
        amount_minor: -amount_minor,
        currency: currency.clone(),
        caused_by: event.meta.event_id,
    });
    Ok(vec![EventBody::PaymentVoided(PaymentVoided {
        payment_id,
        amount_minor,
        currency,
        reason: reason.to_string(),
    })])
}

/// Write what a batch decided: new terms, new and changed payments, ledger entries, give-ups;
/// one statement per table.
async fn store(tx: &mut PgConnection, state: &State) -> Result<(), sqlx::Error> {
    store_blocks(tx, &state.blocks).await?;
    let new_terms: Vec<(&String, &Terms)> = state.terms.iter().filter(|(_, t)| t.new).collect();
    if !new_terms.is_empty() {
        let orders: Vec<&str> = new_terms.iter().map(|(o, _)| o.as_str()).collect();
        let customers: Vec<&str> = new_terms
            .iter()
            .map(|(_, t)| t.customer_id.as_str())
            .collect();
        let amounts: Vec<i64> = new_terms.iter().map(|(_, t)| t.amount_minor).collect();
        let currencies: Vec<&str> = new_terms.iter().map(|(_, t)| t.currency.as_str()).collect();
        sqlx::query(
            "INSERT INTO payment.orders (order_id, customer_id, amount_minor, currency)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[])
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&orders)
        .bind(&customers)
        .bind(&amounts)
        .bind(&currencies)
        .execute(&mut *tx)
        .await?;
    }
    let changed: Vec<(&String, &PaymentRow)> =
        state.payments.iter().filter(|(_, p)| p.changed).collect();
    if !changed.is_empty() {
        let orders: Vec<&str> = changed.iter().map(|(o, _)| o.as_str()).collect();
        let ids: Vec<Uuid> = changed.iter().map(|(_, p)| p.payment_id).collect();
        let customers: Vec<&str> = changed
            .iter()
            .map(|(_, p)| p.customer_id.as_str())
            .collect();
        let amounts: Vec<i64> = changed.iter().map(|(_, p)| p.amount_minor).collect();
        let currencies: Vec<&str> = changed.iter().map(|(_, p)| p.currency.as_str()).collect();
        let statuses: Vec<&str> = changed.iter().map(|(_, p)| p.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, p)| p.decline_reason.as_deref())
            .collect();
        let references: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, p)| p.provider_reference.as_deref())
            .collect();
        sqlx::query(
            "INSERT INTO payment.payments (order_id, payment_id, customer_id, amount_minor, currency, status,
                                           decline_reason, provider_reference)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                  $7::text[], $8::text[])
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()",
        )
        .bind(&orders)
        .bind(&ids)
        .bind(&customers)
        .bind(&amounts)
        .bind(&currencies)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&references)
        .execute(&mut *tx)
        .await?;
    }
    if !state.ledger.is_empty() {
        let ledger = &state.ledger;
        let ids: Vec<Uuid> = ledger.iter().map(|e| e.payment_id).collect();
        let orders: Vec<&str> = ledger.iter().map(|e| e.order_id.as_str()).collect();
        let entries: Vec<&str> = ledger.iter().map(|e| e.entry).collect();
        let amounts: Vec<i64> = ledger.iter().map(|e| e.amount_minor).collect();
        let currencies: Vec<&str> = ledger.iter().map(|e| e.currency.as_str()).collect();
        let causes: Vec<Uuid> = ledger.iter().map(|e| e.caused_by).collect();
        // WITH ORDINALITY keeps the entries' ids in decision order.
        sqlx::query(
            "INSERT INTO payment.ledger (payment_id, order_id, entry, amount_minor, currency, caused_by)
             SELECT p, o, e, a, c, b FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                                                 $6::uuid[]) WITH ORDINALITY AS x(p, o, e, a, c, b, n)
             ORDER BY n",
        )
        .bind(&ids)
        .bind(&orders)
        .bind(&entries)
        .bind(&amounts)
        .bind(&currencies)
        .bind(&causes)
        .execute(&mut *tx)
        .await?;
    }
    state.abandoned.store(tx, SCHEMA).await?;
    Ok(())
}

#[cfg(test)]
mod tests;

//! The shipping step: keeps each order's address from `OrderCreated` and schedules a
//! shipment with the carrier once payment is authorized; calls a scheduled shipment off when
//! the saga gives the order up (see [`crate::give_up`]).
//!
//! Personal data: a sealed order's address is kept as the sealed copy the log carries
//! (`shipping.orders.address`, [`privacy::personal::sealed_to_json`]); the step checks the seal
//! when the order arrives (a changed byte, another order id or key: the record is
//! dead-lettered with the typed reason, not applied) and opens it in memory only, to put the
//! clear address into the carrier's [`ShipmentRequest`]. An order sealed under a destroyed key
//! (its customer was forgotten) is kept as erased, and so are a customer's kept copies once
//! `CustomerForgotten` arrives: the carrier is then asked with no address and refuses
//! (`address_erased`), which fails the shipment and compensates the order. An order never
//! sealed (written before sealing, or with `privacy.seal` off) keeps its clear address. The
//! data keys a batch needs are read with one query in [`Decider::load`].
//!
//! The carrier is a trait; [`SimulatedCarrier`] fails by two documented rules: it does not
//! deliver to the countries listed in `shipping.unserved_countries` (default `AQ`), and
//! answers `destination_not_served`; it does not deliver without an address
//! (`address_erased`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use events::{
    Address, Event, EventBody, EventType, SealedPersonal, ShipmentCancelled, ShipmentFailed,
    ShipmentScheduled,
};
use privacy::{KeyRing, KeyState, UnsealError};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::give_up::{self, Abandoned};
use crate::ports::{Answers, BreakerState, CallSettings, Guard};
use crate::step::{Decider, Decline, Question};
use crate::HandlerError;

pub const NAME: &str = "shipping";
const SCHEMA: &str = "shipping";

/// The `[shipping]` section: rules of the simulated carrier and how it is called.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShippingSettings {
    pub carrier: String,
    /// ISO country codes the carrier does not deliver to (`destination_not_served`).
    pub unserved_countries: Vec<String>,
    /// Timeout and circuit breaker of calls to the carrier (`[shipping.calls]`).
    #[serde(default)]
    pub calls: CallSettings,
}

impl Default for ShippingSettings {
    fn default() -> Self {
        ShippingSettings {
            carrier: "simulated-post".into(),
            unserved_countries: vec!["AQ".into()],
            calls: CallSettings::default(),
        }
    }
}

/// What the carrier is asked to ship. `address` is the clear address (opened in memory from
/// the kept sealed copy), `None` when it was erased or no key opens it; never logged (its
/// `Debug` leaves it out).
#[derive(Clone, PartialEq, Eq)]
pub struct ShipmentRequest {
    pub shipment_id: Uuid,
    pub order_id: String,
    pub country: String,
    pub address: Option<Box<Address>>,
}

impl std::fmt::Debug for ShipmentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipmentRequest")
            .field("shipment_id", &self.shipment_id)
            .field("order_id", &self.order_id)
            .field("country", &self.country)
            .field(
                "address",
                &if self.address.is_some() {
                    "<personal>"
                } else {
                    "<none>"
                },
            )
            .finish()
    }
}

/// Why the simulated carrier refuses a request without an address.
pub const ADDRESS_ERASED: &str = "address_erased";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierDecision {
    Scheduled { tracking_number: String },
    Refused { reason: String },
}

#[async_trait]
pub trait Carrier: Send + Sync {
    fn name(&self) -> &str;
    async fn schedule(&self, request: &ShipmentRequest) -> Result<CarrierDecision, HandlerError>;
    /// Call a scheduled shipment off before it leaves. Cancelling twice must be harmless.
    async fn cancel(&self, shipment_id: Uuid, tracking_number: &str) -> Result<(), HandlerError>;
}

pub struct SimulatedCarrier {
    name: String,
    unserved_countries: Vec<String>,
}

impl SimulatedCarrier {
    pub fn new(name: String, unserved_countries: Vec<String>) -> Self {
        SimulatedCarrier {
            name,
            unserved_countries,
        }
    }
}

#[async_trait]
impl Carrier for SimulatedCarrier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn schedule(&self, request: &ShipmentRequest) -> Result<CarrierDecision, HandlerError> {
        let Some(address) = &request.address else {
            return Ok(CarrierDecision::Refused {
                reason: ADDRESS_ERASED.into(),
            });
        };
        // An order scrubbed in clear (a forgotten customer's dead letter, redriven) carries
        // the erased marker instead of an address.
        if [&address.name, &address.line1, &address.city]
            .iter()
            .any(|f| f.trim().is_empty() || f.as_str() == privacy::personal::ERASED)
        {
            return Ok(CarrierDecision::Refused {
                reason: ADDRESS_ERASED.into(),
            });
        }
        if self
            .unserved_countries
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&request.country))
        {
            return Ok(CarrierDecision::Refused {
                reason: "destination_not_served".into(),
            });
        }
        Ok(CarrierDecision::Scheduled {
            tracking_number: format!("TRK{}", &request.shipment_id.simple().to_string()[..12]),
        })
    }

    async fn cancel(&self, _shipment_id: Uuid, _tracking_number: &str) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The shipping step: its carrier, behind a timeout and a circuit breaker, and the key ring
/// that opens sealed addresses.
pub struct Shipping {
    carrier: Arc<dyn Carrier>,
    guard: Guard,
    keys: Option<KeyRing>,
}

impl Shipping {
    /// With the default call settings (`[shipping.calls]`) and no key ring.
    pub fn new(carrier: Arc<dyn Carrier>) -> Self {
        Shipping::with_calls(carrier, &CallSettings::default())
    }

    /// The step as `[shipping]` configures it: the simulated carrier behind the section's
    /// call settings; `keys` opens sealed addresses (from `[privacy]`).
    pub fn simulated(settings: &ShippingSettings, keys: Option<KeyRing>) -> Self {
        Shipping::with_calls(
            Arc::new(SimulatedCarrier::new(
                settings.carrier.clone(),
                settings.unserved_countries.clone(),
            )),
            &settings.calls,
        )
        .with_keys(keys)
    }

    pub fn with_calls(carrier: Arc<dyn Carrier>, calls: &CallSettings) -> Self {
        Shipping {
            carrier,
            guard: Guard::new("carrier", calls).measured(NAME, "carrier"),
            keys: None,
        }
    }

    /// Open sealed addresses with `keys`. Without a ring (no master key configured, or a
    /// restore without a key backup) no seal is checked or opened: sealed orders are kept
    /// sealed and their shipments fail with `address_erased`.
    pub fn with_keys(mut self, keys: Option<KeyRing>) -> Self {
        self.keys = keys;
        self
    }

    /// The carrier's circuit breaker.
    pub fn breaker(&self) -> BreakerState {
        self.guard.state()
    }
}

/// A question to the carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Schedule(ShipmentRequest),
    Cancel {
        shipment_id: Uuid,
        tracking_number: String,
        key: Uuid,
    },
}

impl Question for Call {
    fn key(&self) -> Uuid {
        match self {
            Call::Schedule(request) => request.shipment_id,
            Call::Cancel { key, .. } => *key,
        }
    }
}

/// The carrier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Schedule(CarrierDecision),
    Cancelled,
}

/// An order's address as the step keeps it (`shipping.orders.address`).
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// Never sealed (written before sealing, or with sealing off): the clear address.
    Plain(serde_json::Value),
    /// The sealed copy the log carries; opened in memory only, when the carrier is asked.
    Sealed(SealedPersonal),
    /// Erased: its key was destroyed, or its customer forgotten (stored as NULL).
    Erased,
}

impl Kept {
    fn from_column(value: Option<serde_json::Value>) -> Kept {
        match value {
            None => Kept::Erased,
            Some(v) => match privacy::personal::sealed_from_json(&v) {
                Some(sealed) => Kept::Sealed(sealed),
                None => Kept::Plain(v),
            },
        }
    }

    fn to_column(&self) -> Option<serde_json::Value> {
        match self {
            Kept::Plain(v) => Some(v.clone()),
            Kept::Sealed(sealed) => Some(privacy::personal::sealed_to_json(sealed)),
            Kept::Erased => None,
        }
    }
}

/// Where an order goes (from its `OrderCreated`).
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub country: String,
    /// `None` only for rows older than the customer id column with no payment row.
    pub customer_id: Option<String>,
    pub kept: Kept,
    /// Decided in this batch: to be inserted.
    new: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Scheduled,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// An order's shipment as the decider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub shipment_id: Uuid,
    pub carrier: String,
    pub status: Status,
    pub tracking_number: Option<String>,
    pub failure_reason: Option<String>,
    pub country: String,
    changed: bool,
}

/// The shipping state of one batch's orders.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub destinations: HashMap<String, Destination>,
    pub shipments: HashMap<String, Shipment>,
    pub abandoned: Abandoned,
    /// The data keys the batch's sealed addresses name, as they stand (one query in `load`);
    /// a key id with no row is absent.
    pub keys: HashMap<Uuid, KeyState>,
    /// Customers forgotten in this batch: their kept copies are scrubbed when stored.
    pub forgotten: Vec<String>,
}

type ShipmentRecord = (
    String,
    Uuid,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

#[async_trait]
impl Decider for Shipping {
    type State = State;
    type Question = Call;
    type Answer = Answer;

    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderCreated | EventType::PaymentAuthorized | EventType::CustomerForgotten
        ) || give_up::is_marker(event_type)
    }

    fn may_ask(&self, event: &Event) -> bool {
        event.event_type() == EventType::PaymentAuthorized || give_up::is_marker(event.event_type())
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
        type DestinationRow = (String, String, Option<String>, Option<serde_json::Value>);
        let destinations: Vec<DestinationRow> = sqlx::query_as(
            "SELECT order_id, country, customer_id, address FROM shipping.orders
             WHERE order_id = ANY($1)",
        )
        .persistent(false)
        .bind(&orders)
        .fetch_all(&mut *conn)
        .await?;
        let shipments: Vec<ShipmentRecord> = sqlx::query_as(if lock {
            "SELECT order_id, shipment_id, carrier, status, tracking_number, failure_reason, country
             FROM shipping.shipments WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
        } else {
            "SELECT order_id, shipment_id, carrier, status, tracking_number, failure_reason, country
             FROM shipping.shipments WHERE order_id = ANY($1)"
        })
        .persistent(false)
        .bind(&orders)
        .fetch_all(&mut *conn)
        .await?;
        let mut state = State {
            abandoned: Abandoned::load(conn, SCHEMA, &orders).await?,
            ..State::default()
        };
        for (order_id, country, customer_id, address) in destinations {
            state.destinations.insert(
                order_id,
                Destination {
                    country,
                    customer_id,
                    kept: Kept::from_column(address),
                    new: false,
                },
            );
        }
        // The keys of the sealed addresses the batch checks (new orders) or opens (kept
        // copies), in one query.
        let mut key_ids: Vec<Uuid> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::OrderCreated(order) => order.sealed.as_ref(),
                _ => None,
            })
            .chain(state.destinations.values().filter_map(|d| match &d.kept {
                Kept::Sealed(sealed) => Some(sealed),
                _ => None,
            }))
            .filter_map(|sealed| Uuid::parse_str(&sealed.key_id).ok())
            .collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        if let (Some(ring), false) = (&self.keys, key_ids.is_empty()) {
            state.keys = ring.by_ids(conn, &key_ids).await.map_err(|e| match e {
                privacy::KeyError::Database(e) => HandlerError::Database(e),
                other => HandlerError::Unavailable {
                    service: "privacy",
                    message: other.to_string(),
                },
            })?;
        }
        for (order_id, shipment_id, carrier, status, tracking_number, failure_reason, country) in
            shipments
        {
            let status = match status.as_str() {
                "scheduled" => Status::Scheduled,
                "failed" => Status::Failed,
                "cancelled" => Status::Cancelled,
                other => {
                    return Err(HandlerError::Rule(format!(
                        "shipping.shipments holds an unknown status {other:?} for order {order_id}"
                    )))
                }
            };
            state.shipments.insert(
                order_id,
                Shipment {
                    shipment_id,
                    carrier,
                    status,
                    tracking_number,
                    failure_reason,
                    country,
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
        decide(self.carrier.name(), state, event, answers)
    }

    async fn store(&self, tx: &mut PgConnection, state: &State) -> Result<(), HandlerError> {
        store(tx, state).await?;
        Ok(())
    }

    async fn ask(&self, question: &Call) -> Result<Answer, HandlerError> {
        match question {
            Call::Schedule(request) => self
                .guard
                .call(request.shipment_id, self.carrier.schedule(request))
                .await
                .map(Answer::Schedule),
            Call::Cancel {
                shipment_id,
                tracking_number,
                key,
            } => self
                .guard
                .call(*key, self.carrier.cancel(*shipment_id, tracking_number))
                .await
                .map(|()| Answer::Cancelled),
        }
    }
}

/// The shipping step's decisions (pure); `carrier` names the carrier on new shipments.
pub fn decide(
    carrier: &str,
    state: &mut State,
    event: &Event,
    answers: &Answers<Answer>,
) -> Result<Vec<EventBody>, Decline<Call>> {
    let order_id = &event.meta.order_id;
    match &event.body {
        EventBody::OrderCreated(order) => {
            let kept = match &order.sealed {
                None => {
                    Kept::Plain(serde_json::to_value(&order.shipping_address).map_err(|e| {
                        HandlerError::Rule(format!(
                            "address of order {order_id} cannot be stored: {e}"
                        ))
                    })?)
                }
                Some(sealed) => {
                    let key_id = privacy::personal::sealed_key_id(order, order_id)
                        .map_err(refused)?
                        .unwrap_or_default();
                    match state.keys.get(&key_id) {
                        Some(KeyState::Live(key)) => {
                            privacy::unseal(order, order_id, key).map_err(refused)?;
                            Kept::Sealed(sealed.clone())
                        }
                        Some(KeyState::Destroyed) => Kept::Erased,
                        // No such key here (no key ring, or a restore without the key
                        // backup): kept sealed, unchecked; nothing can open it.
                        None => Kept::Sealed(sealed.clone()),
                    }
                }
            };
            // A duplicate OrderCreated: the first one stands.
            state
                .destinations
                .entry(order_id.clone())
                .or_insert(Destination {
                    country: order.shipping_address.country.clone(),
                    customer_id: Some(order.customer_id.clone()),
                    kept,
                    new: true,
                });
            Ok(Vec::new())
        }
        EventBody::PaymentAuthorized(_) => schedule(carrier, state, event, answers),
        EventBody::CustomerForgotten(forgotten) => {
            for key_id in &forgotten.key_ids {
                state.keys.insert(*key_id, KeyState::Destroyed);
            }
            for destination in state.destinations.values_mut() {
                if destination.customer_id.as_deref() == Some(forgotten.customer_id.as_str()) {
                    destination.kept = Kept::Erased;
                }
            }
            state.forgotten.push(forgotten.customer_id.clone());
            Ok(Vec::new())
        }
        body => match give_up::reason(body) {
            Some(reason) => {
                state.abandoned.note(event, reason);
                cancel(state, event, reason, answers)
            }
            None => Ok(Vec::new()),
        },
    }
}

/// A sealed address that does not check out: permanent, so the engine dead-letters the record
/// with the typed reason (the message names the order).
fn refused(error: UnsealError) -> HandlerError {
    let reason = match &error {
        UnsealError::NotSealed { .. } => "not_sealed",
        UnsealError::BadKeyId { .. } => "bad_key_id",
        UnsealError::OtherKey { .. } => "other_key",
        UnsealError::UnknownAlgorithm { .. } => "unknown_algorithm",
        UnsealError::Tampered { .. } => "tampered",
        UnsealError::Malformed { .. } => "malformed",
    };
    HandlerError::Rule(format!("sealed personal data refused ({reason}): {error}"))
}

/// The clear address of `destination`, opened in memory; `None` when erased or when no key
/// here opens it.
fn clear_address(
    state: &State,
    order_id: &str,
    destination: &Destination,
) -> Result<Option<Box<Address>>, HandlerError> {
    match &destination.kept {
        Kept::Erased => Ok(None),
        Kept::Plain(value) => serde_json::from_value(value.clone())
            .map(|a| Some(Box::new(a)))
            .map_err(|e| {
                HandlerError::Rule(format!(
                    "the kept address of order {order_id} is not an address: {e}"
                ))
            }),
        Kept::Sealed(sealed) => {
            let Ok(key_id) = Uuid::parse_str(&sealed.key_id) else {
                return Ok(None);
            };
            match state.keys.get(&key_id) {
                Some(KeyState::Live(key)) => privacy::personal::open(sealed, order_id, key)
                    .map(|p| Some(Box::new(p.address(&destination.country))))
                    .map_err(refused),
                _ => Ok(None),
            }
        }
    }
}

fn schedule(
    carrier: &str,
    state: &mut State,
    event: &Event,
    answers: &Answers<Answer>,
) -> Result<Vec<EventBody>, Decline<Call>> {
    let order_id = &event.meta.order_id;
    let Some(destination) = state.destinations.get(order_id) else {
        return Err(Decline::Fail(HandlerError::Rule(format!(
            "PaymentAuthorized for order {order_id}, whose OrderCreated shipping never saw"
        ))));
    };
    if state.shipments.contains_key(order_id) {
        return Err(Decline::Fail(HandlerError::Rule(format!(
            "order {order_id} already has a shipment; not scheduling again"
        ))));
    }
    let shipment_id = events::reply_event_id(event.meta.event_id, "shipment-id");
    let country = destination.country.clone();
    let address = clear_address(state, order_id, destination)?;
    let mut shipment = Shipment {
        shipment_id,
        carrier: carrier.to_string(),
        status: Status::Failed,
        tracking_number: None,
        failure_reason: None,
        country: country.clone(),
        changed: true,
    };
    if state.abandoned.reason(order_id).is_some() {
        // Given up before shipping was asked: never book the carrier.
        shipment.failure_reason = Some(give_up::REFUSED.to_string());
        state.shipments.insert(order_id.clone(), shipment);
        return Ok(vec![EventBody::ShipmentFailed(ShipmentFailed {
            carrier: carrier.to_string(),
            reason: give_up::REFUSED.to_string(),
        })]);
    }
    let decision = match answers.get(shipment_id) {
        None => {
            return Err(Decline::Ask(Call::Schedule(ShipmentRequest {
                shipment_id,
                order_id: order_id.clone(),
                country,
                address,
            })))
        }
        Some(Err(failure)) => return Err(Decline::Fail(failure.to_error())),
        Some(Ok(Answer::Schedule(decision))) => decision.clone(),
        Some(Ok(other)) => {
            return Err(Decline::Fail(HandlerError::Rule(format!(
                "the carrier answered {other:?} to the shipment of order {order_id}"
            ))))
        }
    };
    let reply = match decision {
        CarrierDecision::Scheduled { tracking_number } => {
            shipment.status = Status::Scheduled;
            shipment.tracking_number = Some(tracking_number.clone());
            EventBody::ShipmentScheduled(ShipmentScheduled {
                shipment_id,
                carrier: carrier.to_string(),
                tracking_number,
            })
        }
        CarrierDecision::Refused { reason } => {
            shipment.failure_reason = Some(reason.clone());
            EventBody::ShipmentFailed(ShipmentFailed {
                carrier: carrier.to_string(),
                reason,
            })
        }
    };
    state.shipments.insert(order_id.clone(), shipment);
    Ok(vec![reply])
}

/// Compensation: call off a scheduled shipment. Cancelling twice, or an order with no
/// scheduled shipment, emits nothing.
fn cancel(
    state: &mut State,
    event: &Event,
    reason: &str,
    answers: &Answers<Answer>,
) -> Result<Vec<EventBody>, Decline<Call>> {
    let order_id = &event.meta.order_id;
    let Some(shipment) = state.shipments.get_mut(order_id) else {
        return Ok(Vec::new());
    };
    if shipment.status != Status::Scheduled {
        tracing::info!(%order_id, status = shipment.status.as_str(), "no scheduled shipment to cancel");
        return Ok(Vec::new());
    }
    let key = events::reply_event_id(event.meta.event_id, "shipment-cancel");
    match answers.get(key) {
        None => {
            return Err(Decline::Ask(Call::Cancel {
                shipment_id: shipment.shipment_id,
                tracking_number: shipment.tracking_number.clone().unwrap_or_default(),
                key,
            }))
        }
        Some(Err(failure)) => return Err(Decline::Fail(failure.to_error())),
        Some(Ok(_)) => {}
    }
    shipment.status = Status::Cancelled;
    shipment.failure_reason = Some(reason.to_string());
    shipment.changed = true;
    Ok(vec![EventBody::ShipmentCancelled(ShipmentCancelled {
        shipment_id: shipment.shipment_id,
        carrier: shipment.carrier.clone(),
        reason: reason.to_string(),
    })])
}

/// Write what a batch decided: scrubs of forgotten customers, new destinations, new and
/// changed shipments, give-ups; one statement per table.
async fn store(tx: &mut PgConnection, state: &State) -> Result<(), sqlx::Error> {
    // Before the inserts: an order of a forgotten customer decided in this batch before the
    // forget is erased in memory already, one decided after it keeps its (new key's) copy.
    scrub(tx, &state.forgotten).await?;
    let new: Vec<(&String, &Destination)> =
        state.destinations.iter().filter(|(_, d)| d.new).collect();
    if !new.is_empty() {
        let orders: Vec<&str> = new.iter().map(|n| n.0.as_str()).collect();
        let addresses: Vec<Option<serde_json::Value>> =
            new.iter().map(|n| n.1.kept.to_column()).collect();
        let countries: Vec<&str> = new.iter().map(|n| n.1.country.as_str()).collect();
        let customers: Vec<Option<&str>> = new.iter().map(|n| n.1.customer_id.as_deref()).collect();
        sqlx::query(
            "INSERT INTO shipping.orders (order_id, address, country, customer_id)
             SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::text[], $4::text[])
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&orders)
        .bind(&addresses)
        .bind(&countries)
        .bind(&customers)
        .execute(&mut *tx)
        .await?;
    }
    let changed: Vec<(&String, &Shipment)> =
        state.shipments.iter().filter(|(_, s)| s.changed).collect();
    if !changed.is_empty() {
        let orders: Vec<&str> = changed.iter().map(|(o, _)| o.as_str()).collect();
        let ids: Vec<Uuid> = changed.iter().map(|(_, s)| s.shipment_id).collect();
        let carriers: Vec<&str> = changed.iter().map(|(_, s)| s.carrier.as_str()).collect();
        let statuses: Vec<&str> = changed.iter().map(|(_, s)| s.status.as_str()).collect();
        let tracking: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, s)| s.tracking_number.as_deref())
            .collect();
        let reasons: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, s)| s.failure_reason.as_deref())
            .collect();
        let countries: Vec<&str> = changed.iter().map(|(_, s)| s.country.as_str()).collect();
        sqlx::query(
            "INSERT INTO shipping.shipments (order_id, shipment_id, carrier, status, tracking_number,
                                             failure_reason, country)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[])
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status,
                 failure_reason = EXCLUDED.failure_reason",
        )
        .bind(&orders)
        .bind(&ids)
        .bind(&carriers)
        .bind(&statuses)
        .bind(&tracking)
        .bind(&reasons)
        .bind(&countries)
        .execute(&mut *tx)
        .await?;
    }
    state.abandoned.store(tx, SCHEMA).await?;
    Ok(())
}

/// Erase the kept addresses of `customers`' orders (`CustomerForgotten`, and
/// `orderflow customers forget` in its own transaction). Returns how many were scrubbed.
pub async fn scrub(tx: &mut PgConnection, customers: &[String]) -> Result<u64, sqlx::Error> {
    if customers.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "UPDATE shipping.orders SET address = NULL
         WHERE customer_id = ANY($1) AND address IS NOT NULL",
    )
    .bind(customers)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{self, authorized, cancel_accepted, created, timed_out};
    use crate::ports::Failure;

    fn schedule_key(order: &str) -> Uuid {
        events::reply_event_id(authorized(order).meta.event_id, "shipment-id")
    }

    fn scheduled(order: &str) -> (Uuid, Result<Answer, Failure>) {
        (
            schedule_key(order),
            Ok(Answer::Schedule(CarrierDecision::Scheduled {
                tracking_number: format!("TRK-{order}"),
            })),
        )
    }

    /// Given answers from the carrier, when these events arrive, then these outcomes.
    #[test]
    fn decisions() {
        let cancel_key =
            events::reply_event_id(cancel_accepted("o1").meta.event_id, "shipment-cancel");
        type Case = (
            &'static str,
            Vec<(Uuid, Result<Answer, Failure>)>,
            Vec<Event>,
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            (
                "asks the carrier once payment is authorized",
                vec![],
                vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
                &["-", "ask"],
            ),
            (
                "scheduled",
                vec![scheduled("o1")],
                vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
                &["-", "ShipmentScheduled"],
            ),
            (
                "refused by the carrier",
                vec![(
                    schedule_key("o1"),
                    Ok(Answer::Schedule(CarrierDecision::Refused {
                        reason: "destination_not_served".into(),
                    })),
                )],
                vec![created("o1", &[("A", 1, 100)], "AQ"), authorized("o1")],
                &["-", "ShipmentFailed"],
            ),
            (
                "the carrier timed out",
                vec![(
                    schedule_key("o1"),
                    Err(Failure {
                        service: "carrier",
                        message: "no answer within 5000 ms".into(),
                        retryable: true,
                        unavailable: false,
                    }),
                )],
                vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
                &["-", "fail:provider"],
            ),
            (
                "authorized for an order shipping never saw",
                vec![],
                vec![authorized("o1")],
                &["fail:rule"],
            ),
            (
                "a second shipment is refused",
                vec![scheduled("o1")],
                vec![
                    created("o1", &[("A", 1, 100)], "DE"),
                    authorized("o1"),
                    given::event("o1", "authorized-again", authorized("o1").body),
                ],
                &["-", "ShipmentScheduled", "fail:rule"],
            ),
            (
                "given up before shipping: failed without asking",
                vec![],
                vec![
                    created("o1", &[("A", 1, 100)], "DE"),
                    timed_out("o1", "payment"),
                    authorized("o1"),
                ],
                &["-", "-", "ShipmentFailed"],
            ),
            (
                "cancelled after scheduling: called off, once",
                vec![scheduled("o1"), (cancel_key, Ok(Answer::Cancelled))],
                vec![
                    created("o1", &[("A", 1, 100)], "DE"),
                    authorized("o1"),
                    cancel_accepted("o1"),
                    timed_out("o1", "shipping"),
                ],
                &["-", "ShipmentScheduled", "ShipmentCancelled", "-"],
            ),
            (
                "cancelled with nothing scheduled",
                vec![],
                vec![created("o1", &[("A", 1, 100)], "DE"), cancel_accepted("o1")],
                &["-", "-"],
            ),
        ];
        for (name, answers, events, outcomes) in cases {
            let mut known = Answers::new();
            for (key, answer) in answers {
                known.insert(key, answer);
            }
            let mut state = State::default();
            let got: Vec<String> = events
                .iter()
                .map(|e| given::describe(decide("post", &mut state, e, &known)))
                .collect();
            assert_eq!(got, outcomes, "{name}");
        }
    }

    #[test]
    fn the_question_names_the_destination_and_a_duplicate_order_keeps_the_first() {
        let mut state = State::default();
        decide(
            "post",
            &mut state,
            &created("o1", &[("A", 1, 1)], "FR"),
            &Answers::new(),
        )
        .unwrap();
        let again = given::event("o1", "again", created("o1", &[("A", 1, 1)], "AQ").body);
        decide("post", &mut state, &again, &Answers::new()).unwrap();
        let asked = decide("post", &mut state, &authorized("o1"), &Answers::new());
        let Err(Decline::Ask(Call::Schedule(request))) = asked else {
            panic!("expected a question, got {asked:?}");
        };
        assert_eq!(request.country, "FR");
        assert_eq!(request.shipment_id, schedule_key("o1"));
    }

    /// `created` of `order` for customer `c1`, sealed under `key` as if for order `sealed_for`
    /// (another id than `order` swaps the order id), then changed by `change`.
    fn sealed_created(
        order: &str,
        sealed_for: &str,
        key: &privacy::DataKey,
        change: impl Fn(&mut SealedPersonal),
    ) -> Event {
        let mut event = created(order, &[("A", 1, 100)], "DE");
        let EventBody::OrderCreated(created) = &mut event.body else {
            unreachable!()
        };
        created.shipping_address.name = "Ada Lovelace".into();
        privacy::seal(created, sealed_for, key).unwrap();
        change(created.sealed.as_mut().unwrap());
        event
    }

    fn forgotten(customer: &str, keys: Vec<Uuid>) -> Event {
        given::event(
            &events::customer_key(customer),
            "forgotten",
            EventBody::CustomerForgotten(events::CustomerForgotten {
                customer_id: customer.into(),
                key_ids: keys,
            }),
        )
    }

    /// Sealed addresses: given the key's state, when these events arrive, then these outcomes
    /// (a refusal names its typed reason), and the address the carrier is asked with.
    #[test]
    fn sealed_addresses() {
        let key = privacy::DataKey::generate("c1");
        let other = privacy::DataKey::generate("c1");
        let unchanged = |_: &mut SealedPersonal| {};
        type Case = (
            &'static str,
            Option<KeyState>,
            Vec<Event>,
            &'static [&'static str],
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "opened in memory for the carrier",
                Some(KeyState::Live(key.clone())),
                vec![
                    sealed_created("o1", "o1", &key, unchanged),
                    authorized("o1"),
                ],
                &["-", "ask"],
                Some("Ada Lovelace"),
            ),
            (
                "a changed ciphertext byte is refused",
                Some(KeyState::Live(key.clone())),
                vec![sealed_created("o1", "o1", &key, |s| s.ciphertext[3] ^= 1)],
                &["fail:rule (tampered)"],
                None,
            ),
            (
                "sealed for another order id (swapped) is refused",
                Some(KeyState::Live(key.clone())),
                vec![sealed_created("o1", "o2", &key, unchanged)],
                &["fail:rule (tampered)"],
                None,
            ),
            (
                "naming another live key of the customer is refused",
                Some(KeyState::Live(key.clone())),
                vec![sealed_created("o1", "o1", &key, |s| {
                    s.key_id = other.id.to_string()
                })],
                &["fail:rule (tampered)"],
                None,
            ),
            (
                "a key id that is no UUID is refused",
                Some(KeyState::Live(key.clone())),
                vec![sealed_created("o1", "o1", &key, |s| s.key_id = "k".into())],
                &["fail:rule (bad_key_id)"],
                None,
            ),
            (
                "an unknown algorithm is refused",
                Some(KeyState::Live(key.clone())),
                vec![sealed_created("o1", "o1", &key, |s| {
                    s.algorithm = "ROT13".into()
                })],
                &["fail:rule (unknown_algorithm)"],
                None,
            ),
            (
                "a destroyed key: kept as erased, the carrier asked without an address",
                Some(KeyState::Destroyed),
                vec![
                    sealed_created("o1", "o1", &key, unchanged),
                    authorized("o1"),
                ],
                &["-", "ask"],
                None,
            ),
            (
                "forgotten mid-flight: erased before the carrier is asked",
                Some(KeyState::Live(key.clone())),
                vec![
                    sealed_created("o1", "o1", &key, unchanged),
                    forgotten("c1", vec![key.id]),
                    authorized("o1"),
                ],
                &["-", "-", "ask"],
                None,
            ),
            (
                "no key here (a restore without the key backup): kept, not opened",
                None,
                vec![
                    sealed_created("o1", "o1", &key, unchanged),
                    authorized("o1"),
                ],
                &["-", "ask"],
                None,
            ),
            (
                "a plain (legacy) order: its clear address, as before",
                None,
                vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
                &["-", "ask"],
                Some("N"),
            ),
        ];
        for (name, key_state, events, outcomes, asked_name) in cases {
            let mut state = State::default();
            if let Some(k) = key_state {
                state.keys.insert(key.id, k);
            }
            state.keys.insert(other.id, KeyState::Live(other.clone()));
            let mut asked = None;
            let got: Vec<String> = events
                .iter()
                .map(|e| match decide("post", &mut state, e, &Answers::new()) {
                    Err(Decline::Fail(HandlerError::Rule(message))) => {
                        assert!(message.contains("order o1"), "{name}: {message}");
                        let reason = message.split(['(', ')']).nth(1).unwrap_or("?");
                        format!("fail:rule ({reason})")
                    }
                    Err(Decline::Ask(Call::Schedule(request))) => {
                        asked = Some(request);
                        "ask".into()
                    }
                    other => given::describe(other),
                })
                .collect();
            assert_eq!(got, outcomes, "{name}");
            if let Some(request) = asked {
                assert_eq!(
                    request.address.as_ref().map(|a| a.name.as_str()),
                    asked_name,
                    "{name}"
                );
                // The simulated carrier refuses to ship without an address.
                let decision = futures::executor::block_on(
                    SimulatedCarrier::new("post".into(), vec![]).schedule(&request),
                )
                .unwrap();
                let refused = matches!(&decision, CarrierDecision::Refused { reason } if reason == ADDRESS_ERASED);
                assert_eq!(refused, asked_name.is_none(), "{name}: {decision:?}");
                assert!(
                    !format!("{request:?}").contains("Ada"),
                    "{name}: Debug leaks"
                );
            }
        }
    }

    #[test]
    fn an_erased_address_fails_the_shipment_and_a_forget_scrubs_kept_copies() {
        let key = privacy::DataKey::generate("c1");
        let mut state = State::default();
        state.keys.insert(key.id, KeyState::Live(key.clone()));
        let created = sealed_created("o1", "o1", &key, |_| {});
        decide("post", &mut state, &created, &Answers::new()).unwrap();
        assert!(matches!(state.destinations["o1"].kept, Kept::Sealed(_)));
        decide(
            "post",
            &mut state,
            &forgotten("c1", vec![key.id]),
            &Answers::new(),
        )
        .unwrap();
        assert_eq!(state.destinations["o1"].kept, Kept::Erased);
        assert_eq!(state.destinations["o1"].kept.to_column(), None);
        assert_eq!(state.forgotten, vec!["c1".to_string()]);
        let answers = {
            let mut a = Answers::new();
            a.insert(
                schedule_key("o1"),
                Ok(Answer::Schedule(CarrierDecision::Refused {
                    reason: ADDRESS_ERASED.into(),
                })),
            );
            a
        };
        let replies = decide("post", &mut state, &authorized("o1"), &answers).unwrap();
        assert!(
            matches!(&replies[..], [EventBody::ShipmentFailed(f)] if f.reason == ADDRESS_ERASED),
            "{replies:?}"
        );
        // A kept sealed copy reads back as what was stored.
        let EventBody::OrderCreated(order) = &created.body else {
            unreachable!()
        };
        let kept = Kept::Sealed(order.sealed.clone().unwrap());
        assert_eq!(Kept::from_column(kept.to_column()), kept);
        let plain = Kept::Plain(serde_json::json!({"name": "N"}));
        assert_eq!(Kept::from_column(plain.to_column()), plain);
        // An address scrubbed in clear is no address either.
        let scrubbed = ShipmentRequest {
            shipment_id: Uuid::nil(),
            order_id: "o1".into(),
            country: "DE".into(),
            address: Some(Box::new(Address {
                name: privacy::personal::ERASED.into(),
                line1: privacy::personal::ERASED.into(),
                line2: None,
                city: privacy::personal::ERASED.into(),
                postal_code: privacy::personal::ERASED.into(),
                country: "DE".into(),
            })),
        };
        assert_eq!(
            futures::executor::block_on(
                SimulatedCarrier::new("post".into(), vec![]).schedule(&scrubbed)
            )
            .unwrap(),
            CarrierDecision::Refused {
                reason: ADDRESS_ERASED.into()
            }
        );
    }
}

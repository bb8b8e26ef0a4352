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
mod tests;

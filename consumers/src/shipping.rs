//! The shipping step: remembers each order's address from `OrderCreated` and schedules a
//! shipment with the carrier once payment is authorized; calls a scheduled shipment off when
//! the saga gives the order up (see [`crate::give_up`]).
//!
//! The carrier is a trait; [`SimulatedCarrier`] fails by one documented rule: it does not
//! deliver to the countries listed in `shipping.unserved_countries` (default `AQ`), and
//! answers `destination_not_served`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use events::{Event, EventBody, EventType, ShipmentCancelled, ShipmentFailed, ShipmentScheduled};
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentRequest {
    pub shipment_id: Uuid,
    pub order_id: String,
    pub country: String,
}

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

/// The shipping step: its carrier, behind a timeout and a circuit breaker.
pub struct Shipping {
    carrier: Arc<dyn Carrier>,
    guard: Guard,
}

impl Shipping {
    /// With the default call settings (`[shipping.calls]`).
    pub fn new(carrier: Arc<dyn Carrier>) -> Self {
        Shipping::with_calls(carrier, &CallSettings::default())
    }

    /// The step as `[shipping]` configures it: the simulated carrier behind the section's
    /// call settings.
    pub fn simulated(settings: &ShippingSettings) -> Self {
        Shipping::with_calls(
            Arc::new(SimulatedCarrier::new(
                settings.carrier.clone(),
                settings.unserved_countries.clone(),
            )),
            &settings.calls,
        )
    }

    pub fn with_calls(carrier: Arc<dyn Carrier>, calls: &CallSettings) -> Self {
        Shipping {
            carrier,
            guard: Guard::new("carrier", calls).measured(NAME, "carrier"),
        }
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

/// Where an order goes (from its `OrderCreated`); `address` is set only for a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub country: String,
    address: Option<serde_json::Value>,
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub destinations: HashMap<String, Destination>,
    pub shipments: HashMap<String, Shipment>,
    pub abandoned: Abandoned,
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
            EventType::OrderCreated | EventType::PaymentAuthorized
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
        let destinations: Vec<(String, String)> = sqlx::query_as(
            "SELECT order_id, country FROM shipping.orders WHERE order_id = ANY($1)",
        )
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
        for (order_id, country) in destinations {
            state.destinations.insert(
                order_id,
                Destination {
                    country,
                    address: None,
                },
            );
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
            let address = serde_json::to_value(&order.shipping_address).map_err(|e| {
                HandlerError::Rule(format!("address of order {order_id} cannot be stored: {e}"))
            })?;
            // A duplicate OrderCreated: the first one stands.
            state
                .destinations
                .entry(order_id.clone())
                .or_insert(Destination {
                    country: order.shipping_address.country.clone(),
                    address: Some(address),
                });
            Ok(Vec::new())
        }
        EventBody::PaymentAuthorized(_) => schedule(carrier, state, event, answers),
        body => match give_up::reason(body) {
            Some(reason) => {
                state.abandoned.note(event, reason);
                cancel(state, event, reason, answers)
            }
            None => Ok(Vec::new()),
        },
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

/// Write what a batch decided: new destinations, new and changed shipments, give-ups; one
/// statement per table.
async fn store(tx: &mut PgConnection, state: &State) -> Result<(), sqlx::Error> {
    let new: Vec<(&String, &Destination, &serde_json::Value)> = state
        .destinations
        .iter()
        .filter_map(|(o, d)| Some((o, d, d.address.as_ref()?)))
        .collect();
    if !new.is_empty() {
        let orders: Vec<&str> = new.iter().map(|n| n.0.as_str()).collect();
        let addresses: Vec<&serde_json::Value> = new.iter().map(|n| n.2).collect();
        let countries: Vec<&str> = new.iter().map(|n| n.1.country.as_str()).collect();
        sqlx::query(
            "INSERT INTO shipping.orders (order_id, address, country)
             SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::text[])
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&orders)
        .bind(&addresses)
        .bind(&countries)
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
}

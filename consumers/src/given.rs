//! Given/when/then for the deciders' table tests: events of one order built from short specs,
//! and a runner that feeds them to a decider one by one and describes each outcome in a word.

use chrono::{TimeZone, Utc};
use events::{
    Address, Event, EventBody, InventoryReserved, Metadata, OrderCancellationAccepted,
    OrderCreated, OrderLine, PaymentAuthorized, PaymentDeclined, SagaStepTimedOut, ShipmentFailed,
    SkuQuantity,
};
use uuid::Uuid;

use crate::ports::Answers;
use crate::step::{Decider, Decline, Question};

/// An event of `order`, its id derived from `order` and `label` (stable across runs).
pub fn event(order: &str, label: &str, body: EventBody) -> Event {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{order}/{label}").as_bytes());
    let root = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{order}/created").as_bytes());
    Event {
        meta: Metadata {
            event_id: id,
            order_id: order.to_string(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap(),
            correlation_id: root,
            causation_id: root,
        },
        body,
    }
}

/// `OrderCreated` for customer `c1` shipping to `country`, lines `(sku, quantity, unit price)`.
pub fn created(order: &str, lines: &[(&str, i32, i64)], country: &str) -> Event {
    event(
        order,
        "created",
        EventBody::OrderCreated(OrderCreated {
            customer_id: "c1".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity, price)| OrderLine {
                    sku: sku.to_string(),
                    quantity: *quantity,
                    unit_price_minor: *price,
                })
                .collect(),
            currency: "EUR".into(),
            shipping_address: Address {
                name: "N".into(),
                line1: "L".into(),
                line2: None,
                city: "C".into(),
                postal_code: "1".into(),
                country: country.into(),
            },
            contact: None,
            sealed: None,
        }),
    )
}

pub fn reserved(order: &str) -> Event {
    event(
        order,
        "reserved",
        EventBody::InventoryReserved(InventoryReserved {
            reservation_id: Uuid::nil(),
            items: vec![SkuQuantity {
                sku: "A".into(),
                quantity: 1,
            }],
        }),
    )
}

pub fn authorized(order: &str) -> Event {
    event(
        order,
        "authorized",
        EventBody::PaymentAuthorized(PaymentAuthorized {
            payment_id: Uuid::nil(),
            customer_id: "c1".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            provider_reference: "ref".into(),
        }),
    )
}

pub fn declined(order: &str) -> Event {
    event(
        order,
        "declined",
        EventBody::PaymentDeclined(PaymentDeclined {
            customer_id: "c1".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            reason: "amount_over_limit".into(),
        }),
    )
}

pub fn ship_failed(order: &str) -> Event {
    event(
        order,
        "ship-failed",
        EventBody::ShipmentFailed(ShipmentFailed {
            carrier: "post".into(),
            reason: "destination_not_served".into(),
        }),
    )
}

pub fn timed_out(order: &str, step: &str) -> Event {
    event(
        order,
        &format!("timed-out-{step}"),
        EventBody::SagaStepTimedOut(SagaStepTimedOut {
            step: step.into(),
            deadline: Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap(),
            attempts: 1,
        }),
    )
}

pub fn cancel_accepted(order: &str) -> Event {
    event(
        order,
        "cancel-accepted",
        EventBody::OrderCancellationAccepted(OrderCancellationAccepted {
            reason: "changed_mind".into(),
            requested_by: "c1".into(),
        }),
    )
}

/// Feed `events` to `decider` in order against `state`, answering questions from `answers`;
/// one word per event: the reply types joined by `+`, `-` for no reply, `ask` for a question,
/// `fail:<kind>` for a failure.
pub fn run<D: Decider>(
    decider: &D,
    state: &mut D::State,
    answers: &Answers<D::Answer>,
    events: &[Event],
) -> Vec<String> {
    events
        .iter()
        .map(|event| describe(decider.decide(state, event, answers)))
        .collect()
}

pub fn describe<Q: Question>(outcome: Result<Vec<EventBody>, Decline<Q>>) -> String {
    match outcome {
        Ok(bodies) if bodies.is_empty() => "-".into(),
        Ok(bodies) => bodies
            .iter()
            .map(|b| b.event_type().as_str())
            .collect::<Vec<_>>()
            .join("+"),
        Err(Decline::Ask(_)) => "ask".into(),
        Err(Decline::Fail(error)) => format!("fail:{}", error.kind()),
    }
}

/// The command id a table test's stock or customer event is appended under.
fn command(label: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("command/{label}").as_bytes())
}

/// `StockAdjusted` of `sku` by `delta` (its id stable per `label`).
pub fn adjusted(sku: &str, delta: i64, label: &str) -> Event {
    let at = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
    crate::commands::stock_adjusted(command(label), sku, delta, "count", at)
}

/// `CustomerBlocked` of `customer` (its id stable per `label`).
pub fn blocked(customer: &str, label: &str) -> Event {
    let at = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
    crate::commands::customer_blocked(command(label), customer, "fraud", at)
}

/// `CustomerUnblocked` of `customer` (its id stable per `label`).
pub fn unblocked(customer: &str, label: &str) -> Event {
    let at = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
    crate::commands::customer_unblocked(command(label), customer, at)
}

//! The pure part of the projection: how events change an `analytics.orders` row, and what an
//! `analytics.order_events` row says about each event. No I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::{Event, EventBody};
use serde_json::json;

/// Statuses after which no event changes an order's status.
pub const TERMINAL: [&str; 2] = ["completed", "cancelled"];

/// The `analytics.orders.status` an event moves an order to, if any.
pub fn status_after(body: &EventBody) -> Option<&'static str> {
    Some(match body {
        EventBody::OrderCreated(_) => "pending",
        EventBody::InventoryReserved(_) => "stock_reserved",
        EventBody::PaymentAuthorized(_) => "paid",
        EventBody::ShipmentScheduled(_) => "shipment_scheduled",
        EventBody::InventoryRejected(_)
        | EventBody::PaymentDeclined(_)
        | EventBody::ShipmentFailed(_)
        | EventBody::OrderCancellationAccepted(_)
        | EventBody::SagaStepTimedOut(_) => "cancelling",
        EventBody::OrderCompleted(_) => "completed",
        EventBody::OrderCancelled(_) => "cancelled",
        // Compensations confirm a cancellation in progress; the status stays.
        EventBody::InventoryReleased(_)
        | EventBody::PaymentVoided(_)
        | EventBody::ShipmentCancelled(_) => return None,
        // A request changes nothing until the saga accepts it; a refusal changes nothing.
        EventBody::OrderCancellationRequested(_) | EventBody::OrderCancellationRejected(_) => {
            return None
        }
    })
}

/// A full `analytics.orders` row, for orders created within the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    pub status: String,
    pub total_minor: i64,
    pub currency: String,
    pub line_count: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub last_event_type: String,
    pub last_event_at: DateTime<Utc>,
}

/// Changes to an order created in an earlier batch. `None` leaves a column as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPatch {
    pub status: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub last_event_type: String,
    pub last_event_at: DateTime<Utc>,
}

/// The effect of a batch of new events on `analytics.orders`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    pub created: BTreeMap<String, OrderRow>,
    pub patches: BTreeMap<String, OrderPatch>,
}

fn next_status(current: Option<&str>, body: &EventBody) -> Option<String> {
    if current.is_some_and(|s| TERMINAL.contains(&s)) {
        return current.map(str::to_string);
    }
    status_after(body)
        .map(str::to_string)
        .or_else(|| current.map(str::to_string))
}

/// Fold events (new ones only, in log order) into new rows and patches.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Folded {
    let mut out = Folded::default();
    for event in events {
        let order_id = &event.meta.order_id;
        let at = event.meta.occurred_at;
        let type_name = event.event_type().as_str().to_string();
        if let EventBody::OrderCreated(order) = &event.body {
            if out.created.contains_key(order_id) || out.patches.contains_key(order_id) {
                // A second OrderCreated for one order id: the first one stands.
                continue;
            }
            out.created.insert(
                order_id.clone(),
                OrderRow {
                    order_id: order_id.clone(),
                    customer_id: order.customer_id.clone(),
                    status: "pending".into(),
                    total_minor: order.total_minor(),
                    currency: order.currency.clone(),
                    line_count: i32::try_from(order.lines.len()).unwrap_or(i32::MAX),
                    created_at: at,
                    completed_at: None,
                    cancelled_at: None,
                    cancel_reason: None,
                    last_event_type: type_name,
                    last_event_at: at,
                },
            );
            continue;
        }
        if let Some(row) = out.created.get_mut(order_id) {
            row.status =
                next_status(Some(&row.status), &event.body).unwrap_or_else(|| row.status.clone());
            apply_times(
                &event.body,
                at,
                &mut row.completed_at,
                &mut row.cancelled_at,
                &mut row.cancel_reason,
            );
            row.last_event_type = type_name;
            row.last_event_at = at;
            continue;
        }
        let patch = out
            .patches
            .entry(order_id.clone())
            .or_insert_with(|| OrderPatch {
                status: None,
                completed_at: None,
                cancelled_at: None,
                cancel_reason: None,
                last_event_type: type_name.clone(),
                last_event_at: at,
            });
        patch.status = next_status(patch.status.as_deref(), &event.body);
        apply_times(
            &event.body,
            at,
            &mut patch.completed_at,
            &mut patch.cancelled_at,
            &mut patch.cancel_reason,
        );
        patch.last_event_type = type_name;
        patch.last_event_at = at;
    }
    out
}

fn apply_times(
    body: &EventBody,
    at: DateTime<Utc>,
    completed_at: &mut Option<DateTime<Utc>>,
    cancelled_at: &mut Option<DateTime<Utc>>,
    cancel_reason: &mut Option<String>,
) {
    match body {
        EventBody::OrderCompleted(_) if completed_at.is_none() && cancelled_at.is_none() => {
            *completed_at = Some(at)
        }
        EventBody::OrderCancelled(c) if completed_at.is_none() && cancelled_at.is_none() => {
            *cancelled_at = Some(at);
            *cancel_reason = Some(c.reason.clone());
        }
        _ => {}
    }
}

/// What an analyst wants to see of an event in the timeline, beyond its type and time.
pub fn detail(body: &EventBody) -> serde_json::Value {
    match body {
        EventBody::OrderCreated(o) => json!({
            "customer_id": o.customer_id, "currency": o.currency, "total_minor": o.total_minor(),
            "lines": o.lines.len(), "country": o.shipping_address.country,
        }),
        EventBody::InventoryReserved(r) => {
            json!({ "reservation_id": r.reservation_id, "skus": r.items.len() })
        }
        EventBody::InventoryRejected(r) => json!({
            "reason": r.reason,
            "short_skus": r.shortages.iter().map(|s| s.sku.as_str()).collect::<Vec<_>>(),
        }),
        EventBody::InventoryReleased(r) => {
            json!({ "reservation_id": r.reservation_id, "reason": r.reason })
        }
        EventBody::PaymentAuthorized(p) => {
            json!({ "payment_id": p.payment_id, "amount_minor": p.amount_minor, "currency": p.currency })
        }
        EventBody::PaymentDeclined(p) => {
            json!({ "reason": p.reason, "amount_minor": p.amount_minor, "currency": p.currency })
        }
        EventBody::PaymentVoided(p) => {
            json!({ "payment_id": p.payment_id, "amount_minor": p.amount_minor, "reason": p.reason })
        }
        EventBody::ShipmentScheduled(s) => {
            json!({ "shipment_id": s.shipment_id, "carrier": s.carrier, "tracking_number": s.tracking_number })
        }
        EventBody::ShipmentFailed(s) => json!({ "carrier": s.carrier, "reason": s.reason }),
        EventBody::OrderCompleted(c) => {
            json!({ "total_minor": c.total_minor, "currency": c.currency })
        }
        EventBody::OrderCancelled(c) => json!({ "reason": c.reason, "detail": c.detail }),
        EventBody::ShipmentCancelled(s) => {
            json!({ "shipment_id": s.shipment_id, "carrier": s.carrier, "reason": s.reason })
        }
        EventBody::OrderCancellationRequested(r) => {
            json!({ "reason": r.reason, "requested_by": r.requested_by })
        }
        EventBody::OrderCancellationAccepted(a) => {
            json!({ "reason": a.reason, "requested_by": a.requested_by })
        }
        EventBody::OrderCancellationRejected(r) => json!({ "reason": r.reason, "detail": r.detail }),
        EventBody::SagaStepTimedOut(t) => {
            json!({ "step": t.step, "deadline": t.deadline, "attempts": t.attempts })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use events::*;
    use uuid::Uuid;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, second)
            .single()
            .expect("valid time")
    }

    fn event(order: &str, second: u32, body: EventBody) -> Event {
        Event {
            meta: Metadata {
                event_id: Uuid::new_v4(),
                order_id: order.into(),
                occurred_at: at(second),
                correlation_id: Uuid::nil(),
                causation_id: Uuid::nil(),
            },
            body,
        }
    }

    fn created() -> EventBody {
        EventBody::OrderCreated(OrderCreated {
            customer_id: "c".into(),
            lines: vec![
                OrderLine {
                    sku: "A".into(),
                    quantity: 2,
                    unit_price_minor: 150,
                },
                OrderLine {
                    sku: "B".into(),
                    quantity: 1,
                    unit_price_minor: 1000,
                },
            ],
            currency: "EUR".into(),
            shipping_address: Address {
                name: "n".into(),
                line1: "l".into(),
                line2: None,
                city: "c".into(),
                postal_code: "p".into(),
                country: "DE".into(),
            },
        })
    }

    fn cancelled(reason: &str) -> EventBody {
        EventBody::OrderCancelled(OrderCancelled {
            reason: reason.into(),
            detail: String::new(),
        })
    }

    #[test]
    fn an_order_created_and_finished_in_one_batch_is_one_full_row() {
        let events = [
            event("o1", 0, created()),
            event(
                "o1",
                1,
                EventBody::InventoryReserved(InventoryReserved {
                    reservation_id: Uuid::nil(),
                    items: vec![],
                }),
            ),
            event(
                "o1",
                2,
                EventBody::OrderCompleted(OrderCompleted {
                    total_minor: 1300,
                    currency: "EUR".into(),
                }),
            ),
        ];
        let folded = fold(&events);
        assert!(folded.patches.is_empty());
        let row = &folded.created["o1"];
        assert_eq!(row.status, "completed");
        assert_eq!(row.total_minor, 1300);
        assert_eq!(row.line_count, 2);
        assert_eq!(row.created_at, at(0));
        assert_eq!(row.completed_at, Some(at(2)));
        assert_eq!(row.last_event_type, "OrderCompleted");
    }

    #[test]
    fn later_events_of_an_older_order_become_a_patch() {
        let events = [
            event(
                "o2",
                5,
                EventBody::ShipmentFailed(ShipmentFailed {
                    carrier: "c".into(),
                    reason: "r".into(),
                }),
            ),
            event(
                "o2",
                6,
                EventBody::InventoryReleased(InventoryReleased {
                    reservation_id: Uuid::nil(),
                    items: vec![],
                    reason: "r".into(),
                }),
            ),
            event("o2", 7, cancelled("shipment_failed")),
            // A late event after the end changes nothing but the last-event columns.
            event(
                "o2",
                8,
                EventBody::PaymentVoided(PaymentVoided {
                    payment_id: Uuid::nil(),
                    amount_minor: 1,
                    currency: "EUR".into(),
                    reason: "r".into(),
                }),
            ),
        ];
        let folded = fold(&events);
        let patch = &folded.patches["o2"];
        assert_eq!(patch.status.as_deref(), Some("cancelled"));
        assert_eq!(patch.cancelled_at, Some(at(7)));
        assert_eq!(patch.cancel_reason.as_deref(), Some("shipment_failed"));
        assert_eq!(patch.completed_at, None);
        assert_eq!(patch.last_event_type, "PaymentVoided");
        assert_eq!(patch.last_event_at, at(8));
    }

    #[test]
    fn statuses_per_event_type() {
        let table = [
            (created(), Some("pending")),
            (cancelled("x"), Some("cancelled")),
            (
                EventBody::InventoryRejected(InventoryRejected {
                    reason: "r".into(),
                    shortages: vec![],
                }),
                Some("cancelling"),
            ),
            (
                EventBody::InventoryReleased(InventoryReleased {
                    reservation_id: Uuid::nil(),
                    items: vec![],
                    reason: "r".into(),
                }),
                None,
            ),
        ];
        for (body, want) in table {
            assert_eq!(status_after(&body), want, "{:?}", body.event_type());
        }
    }

    #[test]
    fn a_second_order_created_does_not_reset_the_row() {
        let events = [
            event("o3", 0, created()),
            event("o3", 1, cancelled("out_of_stock")),
            event("o3", 2, created()),
        ];
        let folded = fold(&events);
        assert_eq!(folded.created["o3"].status, "cancelled");
    }
}

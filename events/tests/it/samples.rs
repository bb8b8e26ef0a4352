//! One sample event of every type, shared by the tests. Samples are valid; tests that need an
//! invalid event change one thing in a sample.

use chrono::{DateTime, Utc};
use events::*;
use uuid::Uuid;

pub fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0000 | n)
}

/// A timestamp with a non-zero microsecond part, so truncation would show.
pub fn at(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).expect("test timestamp in range")
}

pub fn meta() -> Metadata {
    Metadata {
        event_id: uuid(1),
        order_id: "ord-2024-000042".to_owned(),
        occurred_at: at(1_717_171_717_123_456),
        correlation_id: uuid(1),
        causation_id: uuid(1),
    }
}

pub fn order(line2: Option<&str>) -> OrderCreated {
    OrderCreated {
        customer_id: "cust-7".to_owned(),
        lines: vec![
            OrderLine {
                sku: "ABC-1".to_owned(),
                quantity: 2,
                unit_price_minor: 1999,
            },
            OrderLine {
                sku: "XYZ-ü9".to_owned(),
                quantity: 1,
                unit_price_minor: 0,
            },
        ],
        currency: "EUR".to_owned(),
        shipping_address: Address {
            name: "Zoë Müller".to_owned(),
            line1: "Hauptstraße 1".to_owned(),
            line2: line2.map(str::to_owned),
            city: "Berlin".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        },
        contact: None,
        sealed: None,
    }
}

/// The sample order with every field v2 added: a contact with a phone and sealed data.
pub fn order_with_personal_data() -> OrderCreated {
    OrderCreated {
        contact: Some(Contact {
            email: "zoe.mueller@example.com".to_owned(),
            phone: Some("+49 30 1234567".to_owned()),
        }),
        sealed: Some(SealedPersonal {
            key_id: "cust-7/1".to_owned(),
            algorithm: "AES-256-GCM".to_owned(),
            nonce: vec![0; 12],
            ciphertext: (0..=255).collect(),
        }),
        ..order(None)
    }
}

pub fn order_created(line2: Option<&str>) -> Event {
    Event {
        meta: meta(),
        body: EventBody::OrderCreated(order(line2)),
    }
}

/// A follow-up event with the given body, caused by the sample order.
pub fn follow_up(n: u128, body: EventBody) -> Event {
    Event::caused_by(
        &order_created(None),
        uuid(100 + n),
        at(1_717_171_717_123_456 + 1_000_001 * n as i64),
        body,
    )
}

/// One valid sample per event type, plus the `line2` variant of `OrderCreated` and one with a
/// contact and sealed data.
pub fn all() -> Vec<Event> {
    let items = vec![
        SkuQuantity {
            sku: "ABC-1".to_owned(),
            quantity: 2,
        },
        SkuQuantity {
            sku: "XYZ-ü9".to_owned(),
            quantity: 1,
        },
    ];
    vec![
        order_created(None),
        order_created(Some("Hinterhaus, 3. OG")),
        Event {
            meta: meta(),
            body: EventBody::OrderCreated(order_with_personal_data()),
        },
        follow_up(
            1,
            EventBody::InventoryReserved(InventoryReserved {
                reservation_id: uuid(11),
                items: items.clone(),
            }),
        ),
        follow_up(
            2,
            EventBody::InventoryRejected(InventoryRejected {
                reason: "out_of_stock".to_owned(),
                shortages: vec![Shortage {
                    sku: "ABC-1".to_owned(),
                    requested: 2,
                    available: 0,
                }],
            }),
        ),
        follow_up(
            3,
            EventBody::InventoryReleased(InventoryReleased {
                reservation_id: uuid(11),
                items,
                reason: "payment_declined".to_owned(),
            }),
        ),
        follow_up(
            4,
            EventBody::PaymentAuthorized(PaymentAuthorized {
                payment_id: uuid(12),
                customer_id: "cust-7".to_owned(),
                amount_minor: 3998,
                currency: "EUR".to_owned(),
                provider_reference: "psp_ref_0001".to_owned(),
            }),
        ),
        follow_up(
            5,
            EventBody::PaymentDeclined(PaymentDeclined {
                customer_id: "cust-7".to_owned(),
                amount_minor: 3998,
                currency: "EUR".to_owned(),
                reason: "amount_over_limit".to_owned(),
            }),
        ),
        follow_up(
            6,
            EventBody::PaymentVoided(PaymentVoided {
                payment_id: uuid(12),
                amount_minor: 3998,
                currency: "EUR".to_owned(),
                reason: "shipment_failed".to_owned(),
            }),
        ),
        follow_up(
            7,
            EventBody::ShipmentScheduled(ShipmentScheduled {
                shipment_id: uuid(13),
                carrier: "DHL".to_owned(),
                tracking_number: "JJD000390007".to_owned(),
            }),
        ),
        follow_up(
            8,
            EventBody::ShipmentFailed(ShipmentFailed {
                carrier: "DHL".to_owned(),
                reason: "destination_not_served".to_owned(),
            }),
        ),
        follow_up(
            9,
            EventBody::OrderCompleted(OrderCompleted {
                total_minor: 3998,
                currency: "EUR".to_owned(),
            }),
        ),
        follow_up(
            10,
            EventBody::OrderCancelled(OrderCancelled {
                reason: "payment_declined".to_owned(),
                detail: "card issuer said no".to_owned(),
            }),
        ),
        follow_up(
            11,
            EventBody::ShipmentCancelled(ShipmentCancelled {
                shipment_id: uuid(13),
                carrier: "DHL".to_owned(),
                reason: "order_cancelled".to_owned(),
            }),
        ),
        follow_up(
            12,
            EventBody::OrderCancellationRequested(OrderCancellationRequested {
                reason: "customer_request".to_owned(),
                requested_by: "cust-7".to_owned(),
            }),
        ),
        follow_up(
            13,
            EventBody::OrderCancellationAccepted(OrderCancellationAccepted {
                reason: "customer_request".to_owned(),
                requested_by: "cust-7".to_owned(),
            }),
        ),
        follow_up(
            14,
            EventBody::OrderCancellationRejected(OrderCancellationRejected {
                reason: "already_shipped".to_owned(),
                detail: "the shipment was scheduled at 2024-05-31T16:08:37Z".to_owned(),
            }),
        ),
        follow_up(
            15,
            EventBody::SagaStepTimedOut(SagaStepTimedOut {
                step: "payment".to_owned(),
                deadline: at(1_717_171_999_654_321),
                attempts: 1,
            }),
        ),
        standalone(
            16,
            EventBody::StockAdjusted(StockAdjusted {
                sku: "XYZ-ü9".to_owned(),
                delta: -3,
                reason: "counted: two broken, one lost".to_owned(),
            }),
        ),
        standalone(
            17,
            EventBody::CustomerBlocked(CustomerBlocked {
                customer_id: "cust-7".to_owned(),
                note: "chargeback 2024-05".to_owned(),
            }),
        ),
        standalone(
            18,
            EventBody::CustomerUnblocked(CustomerUnblocked {
                customer_id: "cust-7".to_owned(),
            }),
        ),
        standalone(
            19,
            EventBody::CustomerForgotten(CustomerForgotten {
                customer_id: "cust-7".to_owned(),
                key_ids: vec![uuid(900), uuid(901)],
            }),
        ),
    ]
}

/// A stock or customer event: its own key as order id, its own id as correlation and cause.
pub fn standalone(n: u128, body: EventBody) -> Event {
    let order_id = match &body {
        EventBody::StockAdjusted(b) => stock_key(&b.sku),
        EventBody::CustomerBlocked(b) => customer_key(&b.customer_id),
        EventBody::CustomerUnblocked(b) => customer_key(&b.customer_id),
        EventBody::CustomerForgotten(b) => customer_key(&b.customer_id),
        other => panic!("{:?} is an order's event", other.event_type()),
    };
    Event {
        meta: Metadata {
            event_id: uuid(100 + n),
            order_id,
            occurred_at: at(1_717_171_717_123_456 + 1_000_001 * n as i64),
            correlation_id: uuid(100 + n),
            causation_id: uuid(100 + n),
        },
        body,
    }
}

/// The sample of one event type.
pub fn of(event_type: EventType) -> Event {
    all()
        .into_iter()
        .find(|e| e.event_type() == event_type)
        .expect("a sample for every type")
}

pub fn encoded(event_type: EventType) -> Vec<u8> {
    encode(&of(event_type)).expect("samples encode")
}

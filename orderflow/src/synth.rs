//! `orderflow synth-log`: write complete, realistic order histories straight onto the log,
//! without running the steps — a large log in seconds, for measuring replay and archive speed.
//! Never point it at a production topic: it invents replies that no step gave.
//!
//! Per order (deterministic for a seed): about 85 % complete (created, reserved, authorized,
//! scheduled, completed), 7 % run out of stock (created, rejected, cancelled), 8 % are declined
//! (created, reserved, declined, released, cancelled). Orders are spread evenly over `days`
//! days before now; each event follows the previous one by a few seconds.

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use events::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::settings::Settings;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub orders: usize,
    pub seed: u64,
    pub days: u32,
}

/// Orders published per produce round.
const CHUNK: usize = 5_000;

/// Publish the histories; returns the number of events written.
pub async fn run(settings: &Settings, options: &SynthOptions) -> anyhow::Result<u64> {
    let publisher = producers::Publisher::new(&settings.kafka, "orderflow-synth")?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let span = Duration::days(i64::from(options.days.max(1)));
    let start = Utc::now() - span;
    let step = span / i32::try_from(options.orders.max(1)).unwrap_or(i32::MAX);
    let mut written = 0u64;
    let mut index = 0;
    while index < options.orders {
        let end = (index + CHUNK).min(options.orders);
        let mut events = Vec::with_capacity((end - index) * 5);
        for i in index..end {
            let placed = start + step * i32::try_from(i).unwrap_or(i32::MAX);
            events.extend(history(i, placed, &mut rng));
        }
        let failures = publisher.publish(&events).await;
        anyhow::ensure!(
            failures.is_empty(),
            "{} events failed to publish, first: {:?}",
            failures.len(),
            failures.first()
        );
        written += events.len() as u64;
        index = end;
    }
    publisher
        .flush_all(std::time::Duration::from_secs(60))
        .context("flushing the synthetic log")?;
    Ok(written)
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// The events of order `i`, placed at `placed` (also the raw records of `orderflow bench`).
pub fn history(i: usize, placed: DateTime<Utc>, rng: &mut StdRng) -> Vec<Event> {
    let order_id = format!("synth-{i:09}");
    let currency = if i % 4 == 0 { "USD" } else { "EUR" };
    let lines: Vec<OrderLine> = (0..rng.random_range(1..=3))
        .map(|_| OrderLine {
            sku: format!("SKU-{:03}", rng.random_range(0..200)),
            quantity: rng.random_range(1..=4),
            unit_price_minor: rng.random_range(100..20_000),
        })
        .collect();
    let customer_id = format!("cust-{:05}", rng.random_range(0..20_000));
    let total: i64 = lines
        .iter()
        .map(|l| i64::from(l.quantity) * l.unit_price_minor)
        .sum();
    let items: Vec<SkuQuantity> = lines
        .iter()
        .map(|l| SkuQuantity {
            sku: l.sku.clone(),
            quantity: l.quantity,
        })
        .collect();
    let created = EventBody::OrderCreated(OrderCreated {
        customer_id: customer_id.clone(),
        lines,
        currency: currency.into(),
        shipping_address: Address {
            name: "Synthetic Customer".into(),
            line1: "1 Load Street".into(),
            line2: None,
            city: "Testville".into(),
            postal_code: "12345".into(),
            country: if i % 3 == 0 { "FR" } else { "DE" }.into(),
        },
        contact: None,
        sealed: None,
    });
    let roll: u32 = rng.random_range(0..100);
    let reservation_id = uuid(rng);
    let reserved = EventBody::InventoryReserved(InventoryReserved {
        reservation_id,
        items: items.clone(),
    });
    let bodies: Vec<EventBody> = if roll < 7 {
        vec![
            created,
            EventBody::InventoryRejected(InventoryRejected {
                reason: "out_of_stock".into(),
                shortages: vec![Shortage {
                    sku: items[0].sku.clone(),
                    requested: items[0].quantity,
                    available: 0,
                }],
            }),
            EventBody::OrderCancelled(OrderCancelled {
                reason: "out_of_stock".into(),
                detail: "synthetic".into(),
            }),
        ]
    } else if roll < 15 {
        vec![
            created,
            reserved,
            EventBody::PaymentDeclined(PaymentDeclined {
                customer_id,
                amount_minor: total,
                currency: currency.into(),
                reason: "amount_over_limit".into(),
            }),
            EventBody::InventoryReleased(InventoryReleased {
                reservation_id,
                items,
                reason: "payment_declined".into(),
            }),
            EventBody::OrderCancelled(OrderCancelled {
                reason: "payment_declined".into(),
                detail: "synthetic".into(),
            }),
        ]
    } else {
        vec![
            created,
            reserved,
            EventBody::PaymentAuthorized(PaymentAuthorized {
                payment_id: uuid(rng),
                customer_id,
                amount_minor: total,
                currency: currency.into(),
                provider_reference: format!("synth-{i}"),
            }),
            EventBody::ShipmentScheduled(ShipmentScheduled {
                shipment_id: uuid(rng),
                carrier: "simulated-post".into(),
                tracking_number: format!("SP{i:09}"),
            }),
            EventBody::OrderCompleted(OrderCompleted {
                total_minor: total,
                currency: currency.into(),
            }),
        ]
    };
    let correlation_id = uuid(rng);
    let mut previous = correlation_id;
    let mut at = placed;
    bodies
        .into_iter()
        .enumerate()
        .map(|(n, body)| {
            let event_id = if n == 0 { correlation_id } else { uuid(rng) };
            let event = Event {
                meta: Metadata {
                    event_id,
                    order_id: order_id.clone(),
                    occurred_at: at,
                    correlation_id,
                    causation_id: previous,
                },
                body,
            };
            previous = event_id;
            at += Duration::milliseconds(rng.random_range(200..5_000));
            event
        })
        .collect()
}

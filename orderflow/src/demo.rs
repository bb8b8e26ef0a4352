//! `orderflow demo`: publish N generated orders with a realistic mix of outcomes, wait until
//! every one is terminal in the read model, and summarise from the read models.
//!
//! Orders go out at once, or at a bounded rate (`--rate`, orders per second) so that the
//! pipeline is measured, and faults are injected, under a steady flow rather than one burst. A
//! paced order is stamped (`occurred_at`) when it is published, so event times show latency.
//!
//! The mix (deterministic for a seed): about 80 % succeed; about 7 % ask for a sku with no
//! stock (`out_of_stock`), 7 % exceed the payment limit (`payment_declined`) and 6 % ship to a
//! country the simulated carrier does not serve (`shipment_failed`).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use events::{Address, Contact, Event, OrderLine};
use indicatif::{ProgressBar, ProgressStyle};
use producers::{OrderInput, Publisher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use crate::settings::Settings;

/// Skus with plenty of stock; the demo tops them up before publishing.
pub const STOCKED_SKUS: usize = 50;
/// A sku that never has stock: an order asking for it is cancelled `out_of_stock`.
pub const EMPTY_SKU: &str = "DEMO-EMPTY";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub orders: usize,
    pub timeout: Duration,
    pub seed: u64,
    /// Orders per second to publish; `None` publishes them all at once.
    pub rate_per_sec: Option<NonZeroU32>,
}

/// What the demo read back from the read models.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub completed: i64,
    pub cancelled_by_reason: BTreeMap<String, i64>,
}

impl Summary {
    pub fn terminal(&self) -> i64 {
        self.completed + self.cancelled_by_reason.values().sum::<i64>()
    }
}

/// The intended outcome of a generated order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Succeeds,
    OutOfStock,
    Declined,
    ShippingFails,
}

pub fn stocked_sku(i: usize) -> String {
    format!("DEMO-{i:04}")
}

/// Generate order `index` of a run. Prices keep normal orders well under the default payment
/// limit (5,000.00); declined orders are far above it.
pub fn generate(run: &str, index: usize, rng: &mut StdRng) -> (OrderInput, Kind) {
    let roll: u32 = rng.random_range(0..100);
    let kind = match roll {
        0..=6 => Kind::OutOfStock,
        7..=13 => Kind::Declined,
        14..=19 => Kind::ShippingFails,
        _ => Kind::Succeeds,
    };
    let line_count = rng.random_range(1..=3);
    let mut lines: Vec<OrderLine> = (0..line_count)
        .map(|_| OrderLine {
            sku: stocked_sku(rng.random_range(0..STOCKED_SKUS)),
            quantity: rng.random_range(1..=3),
            unit_price_minor: rng.random_range(199..=9_999),
        })
        .collect();
    match kind {
        Kind::OutOfStock => lines.push(OrderLine {
            sku: EMPTY_SKU.into(),
            quantity: 1,
            unit_price_minor: 500,
        }),
        Kind::Declined => lines[0].unit_price_minor = 900_000,
        Kind::Succeeds | Kind::ShippingFails => {}
    }
    let country = match kind {
        Kind::ShippingFails => "AQ",
        _ => ["DE", "FR", "NL", "SE", "ES", "IT"][rng.random_range(0..6)],
    };
    let input = OrderInput {
        order_id: format!("{run}-{index:07}"),
        customer_id: format!("cust-{:05}", rng.random_range(0..2_000)),
        currency: "EUR".into(),
        lines,
        shipping_address: Address {
            name: format!("Customer {index}"),
            line1: format!("{} Demo Street", index % 200 + 1),
            line2: None,
            city: "Demo City".into(),
            postal_code: format!("{:05}", index % 99_999),
            country: country.into(),
        },
        // Every demo order carries a contact, so the demo writes what v2 adds.
        contact: Some(Contact {
            email: format!("customer{index}@example.com"),
            phone: None,
        }),
        correlation_id: None,
    };
    (input, kind)
}

/// Give every stocked sku enough stock for `orders` orders, as `orderflow stock set` does
/// (`StockAdjusted` events on the log), and wait until the inventory step has applied them:
/// orders published before would race the stock in other partitions. The empty sku gets none.
pub async fn seed_stock(settings: &Settings, pool: &PgPool, orders: usize) -> anyhow::Result<()> {
    // At most 3 lines of at most 3 units each, spread over STOCKED_SKUS skus: 9 units per order
    // per sku is a safe upper bound.
    let per_sku = i64::try_from(orders.max(1) * 9).unwrap_or(i64::MAX);
    let mut stock: Vec<(String, i64)> = (0..STOCKED_SKUS)
        .map(|i| (stocked_sku(i), per_sku))
        .collect();
    stock.push((EMPTY_SKU.to_string(), 0));
    let change = crate::operator::Change::SetStock(stock);
    let appended =
        crate::operator::apply(settings, pool, uuid::Uuid::new_v4(), &change, "demo stock").await?;
    let ids: Vec<uuid::Uuid> = appended.iter().map(|e| e.meta.event_id).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pipeline.inbox WHERE step = $1 AND event_id = ANY($2)",
        )
        .bind(consumers::inventory::NAME)
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if applied == ids.len() as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the inventory step applied {applied} of the {} stock adjustments within 120 s; is \
             it running (orderflow run)?",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publish, wait, summarise. The components must be running (in this process or elsewhere).
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    options: &DemoOptions,
) -> anyhow::Result<Summary> {
    let run_id = format!("demo-{}", Utc::now().format("%Y%m%d%H%M%S%3f"));
    seed_stock(settings, pool, options.orders)
        .await
        .context("seeding demo stock")?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let now = Utc::now();
    let mut events: Vec<Event> = (0..options.orders)
        .map(|i| generate(&run_id, i, &mut rng).0.into_event(now))
        .collect::<Result<_, _>>()
        .context("a generated demo order is invalid (a bug in the generator)")?;

    let started = Instant::now();
    // Like an upstream system: plain orders to the intake, which seals and appends them.
    let publisher = Publisher::intake(&settings.kafka, "orderflow-demo")?;
    match options.rate_per_sec {
        None => publish_all(&publisher, &events, 0).await?,
        Some(rate) => {
            eprintln!(
                "publishing {} orders as {run_id}-* at {rate} orders/s",
                events.len()
            );
            let mut published = 0;
            while published < events.len() {
                let due = due_by(rate, started.elapsed()).min(events.len());
                if due > published {
                    // Stamped when they go out, not when generated: an order's latency (and
                    // the terminal-latency histogram built from event times) starts at its
                    // publish, as it would for an upstream system's order.
                    let now = Utc::now();
                    for event in &mut events[published..due] {
                        event.meta.occurred_at = now;
                    }
                    publish_all(&publisher, &events[published..due], published).await?;
                    published = due;
                } else {
                    tokio::time::sleep(PACING_TICK).await;
                }
            }
        }
    }
    eprintln!(
        "published {} orders as {run_id}-* in {:.1?}",
        events.len(),
        started.elapsed()
    );

    let total = u64::try_from(options.orders).unwrap_or(u64::MAX);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} terminal  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = started + options.timeout;
    let mut summary = Summary::default();
    loop {
        // A restart of Postgres (the crash test makes one) only delays the answer.
        match summarise(pool, &run_id).await {
            Ok(now) => summary = now,
            Err(e)
                if e.downcast_ref::<sqlx::Error>()
                    .is_some_and(platform::db::is_retryable) =>
            {
                bar.println(format!("reading the read model failed, retrying: {e:#}"));
            }
            Err(e) => return Err(e),
        }
        bar.set_position(u64::try_from(summary.terminal()).unwrap_or(0));
        if summary.terminal() >= i64::try_from(options.orders).unwrap_or(i64::MAX) {
            break;
        }
        if Instant::now() >= deadline {
            bar.abandon();
            let stuck = describe_stuck(pool, &run_id)
                .await
                .unwrap_or_else(|e| format!("(could not inspect: {e:#})"));
            anyhow::bail!(
                "timed out after {:?}: {} of {} orders terminal.\n{stuck}",
                options.timeout,
                summary.terminal(),
                options.orders
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish();
    let elapsed = started.elapsed();
    println!("orders:        {}", options.orders);
    println!("completed:     {}", summary.completed);
    for (reason, count) in &summary.cancelled_by_reason {
        println!("cancelled:     {count} ({reason})");
    }
    println!("elapsed:       {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput:    {:.0} orders/s",
        options.orders as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
    );
    Ok(summary)
}

/// How often a paced demo checks whether more orders are due.
const PACING_TICK: Duration = Duration::from_millis(20);

/// How many orders a run paced at `rate` orders/s should have published `elapsed` after it
/// began. The first order is due at once.
pub fn due_by(rate: NonZeroU32, elapsed: Duration) -> usize {
    let due = elapsed.as_secs_f64() * f64::from(rate.get());
    // Truncation is intended: an order is due once its whole interval has begun.
    usize::try_from(due as u64)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

/// Publish `events`, failing on the first that the broker did not accept; `first_index` is
/// the position of `events[0]` in the run, for the error message.
async fn publish_all(
    publisher: &Publisher,
    events: &[Event],
    first_index: usize,
) -> anyhow::Result<()> {
    let failures = publisher.publish(events).await;
    if let Some((index, reason)) = failures.first() {
        anyhow::bail!(
            "{} of {} demo orders could not be published; first: order {}: {reason}",
            failures.len(),
            events.len(),
            first_index + index
        );
    }
    Ok(())
}

/// Completed and cancelled-by-reason counts of one run's orders, from `analytics.orders`.
pub async fn summarise(pool: &PgPool, run_id: &str) -> anyhow::Result<Summary> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, cancel_reason, count(*) FROM analytics.orders
         WHERE order_id LIKE $1 || '-%' AND status IN ('completed', 'cancelled')
         GROUP BY status, cancel_reason",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .context("reading the orders read model")?;
    let mut summary = Summary::default();
    for (status, reason, count) in rows {
        if status == "completed" {
            summary.completed += count;
        } else {
            *summary
                .cancelled_by_reason
                .entry(reason.unwrap_or_else(|| "unknown".into()))
                .or_default() += count;
        }
    }
    Ok(summary)
}

/// Where the non-terminal orders of a run are: per saga state and step awaited, plus orders
/// the saga or the projection never saw, with examples.
async fn describe_stuck(pool: &PgPool, run_id: &str) -> anyhow::Result<String> {
    let by_state: Vec<(String, Option<String>, i64, Option<String>)> = sqlx::query_as(
        "SELECT state, awaiting, count(*), min(order_id) FROM saga.orders
         WHERE order_id LIKE $1 || '-%' AND state NOT IN ('completed', 'cancelled')
         GROUP BY state, awaiting ORDER BY count(*) DESC",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let (saga_seen, projected): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM saga.orders WHERE order_id LIKE $1 || '-%'),
                (SELECT count(*) FROM analytics.orders WHERE order_id LIKE $1 || '-%')",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await?;
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM pipeline.dead_letters")
        .fetch_one(pool)
        .await?;
    let mut text = String::new();
    for (state, awaiting, count, example) in by_state {
        text.push_str(&format!(
            "  {count} orders in saga state {state}, waiting for {} (e.g. {})\n",
            awaiting.unwrap_or_else(|| "nothing".into()),
            example.unwrap_or_default()
        ));
    }
    text.push_str(&format!(
        "  the saga has seen {saga_seen} of the run's orders, the projection {projected}; \
         {rejected} records are set aside in pipeline.dead_letters.\n  \
         Check that every component runs (orderflow run) and look at their logs."
    ));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_run_publishes_at_its_rate() {
        let rate = NonZeroU32::new(200).expect("200 is not zero");
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_millis(4), 1),
            (Duration::from_millis(5), 2),
            (Duration::from_millis(999), 200),
            (Duration::from_secs(1), 201),
            (Duration::from_secs(50), 10_001),
        ];
        for (elapsed, want) in cases {
            assert_eq!(due_by(rate, elapsed), want, "after {elapsed:?}");
        }
        let slow = NonZeroU32::new(1).expect("1 is not zero");
        assert_eq!(due_by(slow, Duration::from_millis(1_500)), 2);
    }

    #[test]
    fn the_mix_is_realistic_and_every_order_valid() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut kinds = BTreeMap::new();
        for i in 0..2_000 {
            let (input, kind) = generate("t", i, &mut rng);
            input
                .into_event(Utc::now())
                .expect("generated orders are valid");
            *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
        }
        let share = |k: &str| f64::from(kinds[k]) / 2_000.0;
        assert!(
            share("Succeeds") > 0.7 && share("Succeeds") < 0.9,
            "{kinds:?}"
        );
        for k in ["OutOfStock", "Declined", "ShippingFails"] {
            assert!(share(k) > 0.03 && share(k) < 0.11, "{kinds:?}");
        }
    }
}

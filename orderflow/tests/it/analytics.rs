//! The analysts' read models and their generations, on the real broker and Postgres: each model
//! against hand-computed rows, the watermark, blue/green rebuilds with verification, the atomic
//! switch, point-in-time builds and the analyst role.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use events::*;
use orderflow::components::Component;
use projections::rebuild::{self, Options, Outcome, Until};
use uuid::Uuid;

use crate::support::{order, TestEnv};

fn at(day: u32, hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, hour, minute, second)
        .single()
        .expect("valid time")
}

fn event(order_id: &str, when: DateTime<Utc>, body: EventBody) -> Event {
    Event {
        meta: Metadata {
            event_id: Uuid::new_v4(),
            order_id: order_id.into(),
            occurred_at: when,
            correlation_id: Uuid::new_v4(),
            causation_id: Uuid::new_v4(),
        },
        body,
    }
}

fn created(customer: &str, currency: &str, lines: &[(&str, i32, i64)]) -> EventBody {
    EventBody::OrderCreated(OrderCreated {
        customer_id: customer.into(),
        currency: currency.into(),
        lines: lines
            .iter()
            .map(|(sku, quantity, price)| OrderLine {
                sku: sku.to_string(),
                quantity: *quantity,
                unit_price_minor: *price,
            })
            .collect(),
        shipping_address: Address {
            name: "A. Customer".into(),
            line1: "Street 1".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
        contact: None,
        sealed: None,
    })
}

fn reserved() -> EventBody {
    EventBody::InventoryReserved(InventoryReserved {
        reservation_id: Uuid::new_v4(),
        items: vec![SkuQuantity {
            sku: "A".into(),
            quantity: 1,
        }],
    })
}

fn authorized(amount: i64, currency: &str) -> EventBody {
    EventBody::PaymentAuthorized(PaymentAuthorized {
        payment_id: Uuid::new_v4(),
        customer_id: "c".into(),
        amount_minor: amount,
        currency: currency.into(),
        provider_reference: "ref".into(),
    })
}

fn scheduled() -> EventBody {
    EventBody::ShipmentScheduled(ShipmentScheduled {
        shipment_id: Uuid::new_v4(),
        carrier: "dhl".into(),
        tracking_number: "T1".into(),
    })
}

fn completed(total: i64, currency: &str) -> EventBody {
    EventBody::OrderCompleted(OrderCompleted {
        total_minor: total,
        currency: currency.into(),
    })
}

fn cancelled(reason: &str) -> EventBody {
    EventBody::OrderCancelled(OrderCancelled {
        reason: reason.into(),
        detail: "test".into(),
    })
}

/// Four orders over two days with every kind of outcome.
pub(crate) fn fixed_orders() -> Vec<Event> {
    vec![
        // o1: c1 EUR 2×A@150 + 1×B@1000 = 1300, completed on day 1.
        event(
            "o1",
            at(1, 10, 0, 0),
            created("c1", "EUR", &[("A", 2, 150), ("B", 1, 1000)]),
        ),
        event("o1", at(1, 10, 0, 1), reserved()),
        event("o1", at(1, 10, 0, 3), authorized(1300, "EUR")),
        event("o1", at(1, 10, 0, 6), scheduled()),
        event("o1", at(1, 10, 0, 7), completed(1300, "EUR")),
        // o2: c1 EUR 1×A@150, payment declined, stock released, cancelled on day 1.
        event(
            "o2",
            at(1, 11, 0, 0),
            created("c1", "EUR", &[("A", 1, 150)]),
        ),
        event("o2", at(1, 11, 0, 1), reserved()),
        event(
            "o2",
            at(1, 11, 0, 2),
            EventBody::PaymentDeclined(PaymentDeclined {
                customer_id: "c1".into(),
                amount_minor: 150,
                currency: "EUR".into(),
                reason: "insufficient_funds".into(),
            }),
        ),
        event(
            "o2",
            at(1, 11, 0, 3),
            EventBody::InventoryReleased(InventoryReleased {
                reservation_id: Uuid::new_v4(),
                items: vec![SkuQuantity {
                    sku: "A".into(),
                    quantity: 1,
                }],
                reason: "payment_declined".into(),
            }),
        ),
        event("o2", at(1, 11, 0, 4), cancelled("payment_declined")),
        // o3: c2 USD 3×C@500 = 1500, out of stock, cancelled on day 2.
        event("o3", at(2, 9, 0, 0), created("c2", "USD", &[("C", 3, 500)])),
        event(
            "o3",
            at(2, 9, 0, 2),
            EventBody::InventoryRejected(InventoryRejected {
                reason: "out_of_stock".into(),
                shortages: vec![Shortage {
                    sku: "C".into(),
                    requested: 3,
                    available: 1,
                }],
            }),
        ),
        event("o3", at(2, 9, 0, 3), cancelled("out_of_stock")),
        // o4: c2 USD 1×C@500, placed just before midnight of day 1, completed on day 2.
        event(
            "o4",
            at(1, 23, 59, 59),
            created("c2", "USD", &[("C", 1, 500)]),
        ),
        event("o4", at(2, 0, 0, 1), reserved()),
        event("o4", at(2, 0, 0, 4), authorized(500, "USD")),
        event("o4", at(2, 0, 0, 9), scheduled()),
        event("o4", at(2, 0, 0, 10), completed(500, "USD")),
    ]
}

async fn publish_events(env: &TestEnv, events: &[Event]) {
    let publisher =
        producers::Publisher::new(&env.settings.kafka, "test-analytics").expect("publisher");
    let failures = publisher.publish(events).await;
    assert!(failures.is_empty(), "publish failed: {failures:?}");
}

/// Rows of `sql` as text, one string per row: columns joined with `|`, NULL as nothing. (The
/// test data has no commas or quotes in values.)
async fn rows(env: &TestEnv, sql: &str) -> Vec<String> {
    let texts: Vec<String> = sqlx::query_scalar(&format!("SELECT r::text FROM ({sql}) r"))
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    texts
        .iter()
        .map(|t| {
            t.trim_matches(|c| c == '(' || c == ')')
                .replace('"', "")
                .replace(',', "|")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_read_model_matches_hand_computed_rows() {
    let mut env = TestEnv::new().await;
    env.start(&[Component::Projections]);
    publish_events(&env, &fixed_orders()).await;
    env.wait_count("SELECT count(*) FROM analytics.order_events", 18)
        .await;
    let utc = "AT TIME ZONE 'UTC'";

    assert_eq!(
        rows(
            &env,
            &format!(
                "SELECT order_id, customer_id, status, currency, total_minor, line_count, units,
                    to_char(created_at {utc}, 'DD HH24:MI:SS'), carrier, cancel_reason, event_count,
                    last_event_type, completed_at IS NOT NULL, cancelled_at IS NOT NULL
             FROM analytics.orders ORDER BY order_id"
            )
        )
        .await,
        [
            "o1|c1|completed|EUR|1300|2|3|01 10:00:00|dhl||5|OrderCompleted|t|f",
            "o2|c1|cancelled|EUR|150|1|1|01 11:00:00||payment_declined|5|OrderCancelled|f|t",
            "o3|c2|cancelled|USD|1500|1|3|02 09:00:00||out_of_stock|3|OrderCancelled|f|t",
            "o4|c2|completed|USD|500|1|1|01 23:59:59|dhl||5|OrderCompleted|t|f",
        ]
    );
    assert_eq!(
        rows(
            &env,
            "SELECT order_id, line_no, sku, quantity, unit_price_minor, line_total_minor, currency
                    FROM analytics.order_lines ORDER BY order_id, line_no"
        )
        .await,
        [
            "o1|1|A|2|150|300|EUR",
            "o1|2|B|1|1000|1000|EUR",
            "o2|1|A|1|150|150|EUR",
            "o3|1|C|3|500|1500|USD",
            "o4|1|C|1|500|500|USD"
        ]
    );
    assert_eq!(
        rows(&env, "SELECT order_id, string_agg(event_type, ' ' ORDER BY \"offset\")
                    FROM analytics.order_events WHERE order_id IN ('o2', 'o3') GROUP BY 1 ORDER BY 1").await,
        [
            "o2|OrderCreated InventoryReserved PaymentDeclined InventoryReleased OrderCancelled",
            "o3|OrderCreated InventoryRejected OrderCancelled",
        ]
    );
    assert_eq!(
        rows(
            &env,
            &format!(
                "SELECT customer_id, currency, orders_placed, orders_completed, orders_cancelled,
                    payment_declines, revenue_minor, to_char(first_order_at {utc}, 'DD HH24:MI:SS'),
                    to_char(last_order_at {utc}, 'DD HH24:MI:SS')
             FROM analytics.customer_summary ORDER BY 1, 2"
            )
        )
        .await,
        [
            "c1|EUR|2|1|1|1|1300|01 10:00:00|01 11:00:00",
            "c2|USD|2|1|1|0|500|01 23:59:59|02 09:00:00"
        ]
    );
    assert_eq!(
        rows(&env, "SELECT to_char(day, 'DD'), currency, orders_placed, orders_completed, orders_cancelled,
                           revenue_minor FROM analytics.daily_sales ORDER BY 1, 2").await,
        ["01|EUR|2|1|1|1300", "01|USD|1|0|0|0", "02|USD|1|1|1|500"]
    );
    assert_eq!(
        rows(
            &env,
            "SELECT to_char(day, 'DD'), sku, currency, units_ordered, units_sold, revenue_minor
                    FROM analytics.sku_daily_sales ORDER BY 1, 2, 3"
        )
        .await,
        [
            "01|A|EUR|3|2|300",
            "01|B|EUR|1|1|1000",
            "01|C|USD|1|0|0",
            "02|C|USD|3|1|500"
        ]
    );
    assert_eq!(
        rows(
            &env,
            "SELECT to_char(day, 'DD'), reason, currency, orders_cancelled, value_minor
                    FROM analytics.cancellations_daily ORDER BY 1, 2"
        )
        .await,
        [
            "01|payment_declined|EUR|1|150",
            "02|out_of_stock|USD|1|1500"
        ]
    );
    assert_eq!(
        rows(
            &env,
            "SELECT order_id, step, outcome, duration_ms FROM analytics.saga_step_durations
                    ORDER BY order_id, started_at, step"
        )
        .await,
        [
            "o1|inventory|reserved|1000",
            "o1|payment|authorized|2000",
            "o1|shipping|scheduled|3000",
            "o2|inventory|reserved|1000",
            "o2|payment|declined|1000",
            "o3|inventory|rejected|2000",
            "o4|inventory|reserved|2000",
            "o4|payment|authorized|3000",
            "o4|shipping|scheduled|5000",
        ]
    );
    // The freshness view covers every model, all at the same position.
    assert_eq!(
        env.count("SELECT count(DISTINCT model) FROM analytics.watermarks")
            .await,
        8
    );
    assert_eq!(
        env.count(
            "SELECT sum(next_offset)::bigint FROM analytics.watermarks WHERE model = 'daily_sales'"
        )
        .await,
        18
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watermark_is_never_ahead_of_the_applied_events() {
    let mut env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 1_000)]).await;
    env.start_all();
    let orders: Vec<_> = (0..60)
        .map(|i| order(&format!("o-w{i}"), &[("SKU-A", 1, 100)], "DE"))
        .collect();
    let env = Arc::new(env);
    let done = Arc::new(AtomicBool::new(false));
    // A reader checking, in single statements while the projector works, that every record
    // before each partition's watermark is in the timeline.
    let reader = {
        let (env, done) = (env.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            let mut violations = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let found: Vec<(i32, i64, i64)> = sqlx::query_as(
                    "SELECT w.partition, w.next_offset,
                            (SELECT count(*) FROM analytics.order_events e
                             WHERE e.partition = w.partition AND e.\"offset\" < w.next_offset)
                     FROM analytics.watermarks w WHERE w.model = 'orders'",
                )
                .fetch_all(&env.pool)
                .await
                .expect("watermark query");
                for (partition, next, applied) in found {
                    samples += 1;
                    if applied != next {
                        violations.push(format!(
                            "partition {partition}: watermark {next}, {applied} events below it"
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (samples, violations)
        })
    };
    env.publish(&orders).await;
    for i in 0..60 {
        env.wait_terminal(&format!("o-w{i}")).await;
    }
    done.store(true, Ordering::Relaxed);
    let (samples, violations) = reader.await.expect("reader");
    assert!(samples > 20, "only {samples} watermark samples");
    assert!(
        violations.is_empty(),
        "watermark ahead of the data: {violations:?}"
    );
    Arc::into_inner(env).expect("one owner").finish().await;
}

fn options() -> Options {
    Options {
        stall: Duration::from_secs(20),
        ..Options::default()
    }
}

async fn live_schema(env: &TestEnv) -> String {
    sqlx::query_scalar(
        "SELECT schema_name FROM analytics_meta.generations g JOIN analytics_meta.live USING (generation)",
    )
    .fetch_one(&env.pool)
    .await
    .expect("live generation")
}

async fn run_orders(env: &mut TestEnv, prefix: &str, n: usize) {
    let orders: Vec<_> = (0..n)
        .map(|i| {
            order(
                &format!("{prefix}{i}"),
                &[("SKU-A", 1, 100 + i as i64)],
                "DE",
            )
        })
        .collect();
    env.publish(&orders).await;
    for i in 0..n {
        env.wait_terminal(&format!("{prefix}{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_that_differs_is_refused_and_an_equal_one_switches() {
    let mut env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 1_000)]).await;
    env.start_all();
    run_orders(&mut env, "o-r", 12).await;

    // Inject a difference into the live generation.
    sqlx::query(
        "UPDATE analytics_g1.orders SET total_minor = total_minor + 1 WHERE order_id = 'o-r3'",
    )
    .execute(&env.pool)
    .await
    .expect("tamper");
    let report = rebuild::replay(&env.settings.kafka, &env.pool, &options(), &|_| {})
        .await
        .expect("replay runs");
    assert_eq!(report.outcome, Outcome::Refused, "{report}");
    let verification = report.verification.as_ref().expect("verified");
    let orders = verification
        .tables
        .iter()
        .find(|t| t.table == "orders")
        .expect("orders checked");
    assert!(!orders.matches());
    assert!(
        orders.only_live.iter().any(|r| r.starts_with("(o-r3,")),
        "{report}"
    );
    assert!(
        orders.only_rebuilt.iter().any(|r| r.starts_with("(o-r3,")),
        "{report}"
    );
    assert!(
        verification
            .tables
            .iter()
            .filter(|t| t.table != "orders")
            .all(|t| t.matches()),
        "{report}"
    );
    assert_eq!(live_schema(&env).await, "analytics_g1");
    assert_eq!(
        env.count("SELECT count(*) FROM analytics_meta.generations WHERE state = 'failed'")
            .await,
        1
    );

    // Undo it: the next rebuild verifies equal and the analysts' views and the projector move.
    sqlx::query(
        "UPDATE analytics_g1.orders SET total_minor = total_minor - 1 WHERE order_id = 'o-r3'",
    )
    .execute(&env.pool)
    .await
    .expect("untamper");
    let report = rebuild::replay(&env.settings.kafka, &env.pool, &options(), &|_| {})
        .await
        .expect("replay runs");
    assert_eq!(
        report.outcome,
        Outcome::Switched { forced: false },
        "{report}"
    );
    let new_schema = report.generation.schema_name.clone();
    assert_eq!(live_schema(&env).await, new_schema);
    assert_eq!(
        env.count("SELECT min(generation)::bigint FROM analytics.watermarks")
            .await,
        i64::from(report.generation.generation)
    );
    // The projector, still running, now writes the new generation.
    run_orders(&mut env, "o-after", 3).await;
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {new_schema}.orders WHERE order_id LIKE 'o-after%'"
        ))
        .await,
        3
    );
    assert_eq!(
        env.count("SELECT count(*) FROM analytics_g1.orders WHERE order_id LIKE 'o-after%'")
            .await,
        0,
        "the retired generation stays as it was at the switch"
    );
    // The retired generation is kept until dropped; the live one cannot be dropped.
    assert!(
        projections::generations::drop(&env.pool, report.generation.generation)
            .await
            .is_err()
    );
    projections::generations::drop(&env.pool, 1)
        .await
        .expect("drop retired");
    assert_eq!(
        env.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'analytics_g1'")
            .await,
        0
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_see_the_switch_all_at_once() {
    let mut env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 1_000)]).await;
    env.start_all();
    run_orders(&mut env, "o-s", 10).await;
    env.stop().await;
    // Make the live generation differ from a rebuild while staying consistent in itself: one
    // order less in orders and in the placed counts.
    let mut tx = env.pool.begin().await.expect("begin");
    for sql in [
        "DELETE FROM analytics_g1.orders WHERE order_id = 'o-s0'",
        "UPDATE analytics_g1.daily_sales SET orders_placed = orders_placed - 1
         WHERE (day, currency) = (SELECT (created_at AT TIME ZONE 'UTC')::date, currency FROM analytics_g1.order_lines WHERE order_id = 'o-s0')",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.expect("tamper");
    }
    tx.commit().await.expect("commit");

    let env = Arc::new(env);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (env, done) = (env.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = BTreeMap::<(i64, i64), u32>::new();
            while !done.load(Ordering::Relaxed) {
                let pair: (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM analytics.orders),
                            (SELECT sum(orders_placed)::bigint FROM analytics.daily_sales)",
                )
                .fetch_one(&env.pool)
                .await
                .expect("a reader query never fails during a switch");
                *seen.entry(pair).or_default() += 1;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forced = Options {
        force_switch: true,
        ..options()
    };
    let report = rebuild::replay(&env.settings.kafka, &env.pool, &forced, &|_| {})
        .await
        .expect("replay runs");
    assert_eq!(
        report.outcome,
        Outcome::Switched { forced: true },
        "{report}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let seen = reader.await.expect("reader");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        [(9, 9), (10, 10)],
        "readers saw exactly the old and the new generation, never a mix: {seen:?}"
    );
    Arc::into_inner(env).expect("one owner").finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_builds_equal_the_live_models_at_that_moment() {
    let mut env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 1_000)]).await;
    env.start_all();
    run_orders(&mut env, "o-early", 8).await;
    // Let the projector settle, then take the moment.
    let mut last = -1;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = env
            .count("SELECT coalesce(sum(next_offset), 0)::bigint FROM analytics_g1.positions")
            .await;
        if now == last {
            break;
        }
        last = now;
    }
    let moment = Utc::now();
    let then = env.model_digests("analytics_g1").await;
    let positions: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM analytics_g1.positions")
            .fetch_all(&env.pool)
            .await
            .expect("positions");
    tokio::time::sleep(Duration::from_millis(20)).await;
    run_orders(&mut env, "o-late", 5).await;
    assert_ne!(
        env.model_digests("analytics_g1").await,
        then,
        "the live models moved on"
    );

    let mut at_positions: BTreeMap<i32, i64> =
        (0..crate::support::PARTITIONS).map(|p| (p, 0)).collect();
    at_positions.extend(positions);
    for until in [Until::Positions(at_positions), Until::Time(moment)] {
        let report = rebuild::replay(
            &env.settings.kafka,
            &env.pool,
            &Options {
                until: Some(until.clone()),
                ..options()
            },
            &|_| {},
        )
        .await
        .expect("point-in-time replay");
        assert_eq!(report.outcome, Outcome::PointInTime);
        let schema = &report.generation.schema_name;
        assert!(schema.starts_with("analytics_pit_"), "{schema}");
        assert_eq!(
            env.model_digests(schema).await,
            then,
            "until {until}: {report}"
        );
    }
    assert_eq!(live_schema(&env).await, "analytics_g1", "live untouched");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_analyst_role_reads_the_views_and_nothing_else() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.expect("connection");
    sqlx::query("SET ROLE orderflow_analyst")
        .execute(&mut *conn)
        .await
        .expect("set role");
    for view in projections::fold::MODELS.iter().chain(&["watermarks"]) {
        sqlx::query(&format!("SELECT count(*) FROM analytics.{view}"))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("analysts can read analytics.{view}: {e}"));
    }
    for denied in [
        "SELECT count(*) FROM analytics_g1.orders",
        "SELECT count(*) FROM pipeline.inbox",
        "SELECT count(*) FROM payment.ledger",
        "SELECT count(*) FROM analytics_meta.generations",
        "DELETE FROM analytics.orders",
        "CREATE TABLE analytics.mine (x int)",
    ] {
        let error = sqlx::query(denied)
            .execute(&mut *conn)
            .await
            .expect_err(denied);
        assert!(
            error.to_string().contains("permission denied"),
            "{denied}: {error}"
        );
    }
    sqlx::query("RESET ROLE")
        .execute(&mut *conn)
        .await
        .expect("reset");
    drop(conn);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_catches_up_with_what_the_live_projector_applied_meanwhile() {
    let mut env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 1_000)]).await;
    env.start_all();
    run_orders(&mut env, "o-c", 6).await;

    // While the rebuild is in its bulk phase (held there by its progress callback), more
    // orders go through the live pipeline; the rebuild must apply them before it switches.
    let later: Vec<_> = (0..6)
        .map(|i| order(&format!("o-late{i}"), &[("SKU-A", 1, 100)], "DE"))
        .collect();
    env.publish(&later).await;
    let env = Arc::new(env);
    let held = AtomicBool::new(false);
    let waiter = {
        let env = env.clone();
        tokio::spawn(async move {
            for i in 0..6 {
                env.wait_terminal(&format!("o-late{i}")).await;
            }
        })
    };
    let hold = |_: rebuild::Progress| {
        if !held.swap(true, Ordering::SeqCst) {
            // Blocks one runtime worker; the pipeline runs on the others.
            std::thread::sleep(Duration::from_secs(8));
        }
    };
    let report = rebuild::replay(&env.settings.kafka, &env.pool, &options(), &hold)
        .await
        .expect("replay runs");
    waiter.await.expect("late orders terminal");
    assert!(
        held.load(Ordering::SeqCst),
        "the bulk phase reported progress"
    );
    assert!(report.catch_up_events > 0, "{report}");
    assert_eq!(
        report.outcome,
        Outcome::Switched { forced: false },
        "{report}"
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {}.orders WHERE order_id LIKE 'o-late%' AND status = 'completed'",
            report.generation.schema_name
        ))
        .await,
        6
    );
    Arc::into_inner(env).expect("one owner").finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_start_on_a_backlog_gives_the_models_a_rebuild_gives() {
    // A backlog the projector starts on: catch-up batches far larger than
    // consumer.batch_max_events, each written by two transactions with disjoint partitions,
    // orders whose events straddle batches (stored rows updated, not created), and the whole
    // backlog once more at later offsets (the same event ids: all duplicates).
    let mut env = TestEnv::with_partitions(4).await;
    let synth = orderflow::synth::SynthOptions {
        orders: 2_000,
        seed: 11,
        days: 3,
    };
    let written = orderflow::synth::run(&env.settings, &synth)
        .await
        .expect("synthetic log");
    let again = orderflow::synth::run(&env.settings, &synth)
        .await
        .expect("the same log again");
    assert_eq!(again, written);
    env.start(&[Component::Projections]);
    let watermarks = "FROM analytics.watermarks WHERE model = 'orders'";
    env.wait_count(
        &format!("SELECT coalesce(sum(next_offset), 0)::bigint {watermarks}"),
        i64::try_from(written * 2).expect("fits"),
    )
    .await;
    assert_eq!(
        env.count(&format!("SELECT sum(events_applied)::bigint {watermarks}"))
            .await,
        i64::try_from(written).expect("fits"),
        "each event applied once"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM analytics.order_events")
            .await,
        i64::try_from(written).expect("fits")
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM analytics.orders WHERE status IN ('completed', 'cancelled')"
        )
        .await,
        2_000
    );
    let verify = Options {
        verify_only: true,
        ..options()
    };
    let report = rebuild::replay(&env.settings.kafka, &env.pool, &verify, &|_| {})
        .await
        .expect("verify-only rebuild runs");
    assert_eq!(
        report.outcome,
        Outcome::Verified { equal: true },
        "{report}"
    );
    env.finish().await;
}

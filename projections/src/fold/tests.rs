use super::*;
use chrono::TimeZone;
use events::*;

fn at(hour: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, second)
        .single()
        .expect("valid time")
}

fn event(order: &str, when: DateTime<Utc>, body: EventBody) -> Event {
    Event {
        meta: Metadata {
            event_id: Uuid::new_v4(),
            order_id: order.into(),
            occurred_at: when,
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
        },
        body,
    }
}

fn created(customer: &str) -> EventBody {
    EventBody::OrderCreated(OrderCreated {
        customer_id: customer.into(),
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
        contact: None,
        sealed: None,
    })
}

fn reserved() -> EventBody {
    EventBody::InventoryReserved(InventoryReserved {
        reservation_id: Uuid::nil(),
        items: vec![],
    })
}

fn authorized() -> EventBody {
    EventBody::PaymentAuthorized(PaymentAuthorized {
        payment_id: Uuid::nil(),
        customer_id: "c".into(),
        amount_minor: 1300,
        currency: "EUR".into(),
        provider_reference: "r".into(),
    })
}

fn declined() -> EventBody {
    EventBody::PaymentDeclined(PaymentDeclined {
        customer_id: "c".into(),
        amount_minor: 1300,
        currency: "EUR".into(),
        reason: "insufficient_funds".into(),
    })
}

fn scheduled() -> EventBody {
    EventBody::ShipmentScheduled(ShipmentScheduled {
        shipment_id: Uuid::nil(),
        carrier: "dhl".into(),
        tracking_number: "t".into(),
    })
}

fn completed() -> EventBody {
    EventBody::OrderCompleted(OrderCompleted {
        total_minor: 1300,
        currency: "EUR".into(),
    })
}

fn cancelled(reason: &str) -> EventBody {
    EventBody::OrderCancelled(OrderCancelled {
        reason: reason.into(),
        detail: String::new(),
    })
}

fn timed_out(step: &str) -> EventBody {
    EventBody::SagaStepTimedOut(SagaStepTimedOut {
        step: step.into(),
        deadline: at(0, 0),
        attempts: 1,
    })
}

fn fold_all(events: &[Event]) -> Changes {
    let mut fold = Fold::new();
    for event in events {
        fold.apply(event);
    }
    fold.into_changes()
}

fn day() -> NaiveDate {
    at(0, 0).date_naive()
}

#[test]
fn a_completed_order_fills_every_model() {
    let changes = fold_all(&[
        event("o1", at(0, 0), created("c1")),
        event("o1", at(0, 1), reserved()),
        event("o1", at(0, 3), authorized()),
        event("o1", at(0, 6), scheduled()),
        event("o1", at(0, 7), completed()),
    ]);
    let order = &changes.orders.created[0];
    assert_eq!(
        (
            order.status.as_str(),
            order.total_minor,
            order.units,
            order.event_count
        ),
        ("completed", 1300, 3, 5)
    );
    assert_eq!(
        (
            order.reserved_at,
            order.paid_at,
            order.shipment_scheduled_at,
            order.completed_at
        ),
        (
            Some(at(0, 1)),
            Some(at(0, 3)),
            Some(at(0, 6)),
            Some(at(0, 7))
        )
    );
    assert_eq!(order.carrier.as_deref(), Some("dhl"));
    assert_eq!(changes.lines.len(), 2);
    assert_eq!(changes.lines[0].line_total_minor, 300);
    let steps: Vec<(&str, Option<i64>, Option<&str>)> = changes
        .steps
        .created
        .iter()
        .map(|s| {
            (
                s.step.as_str(),
                s.ended_at.map(|e| (e - s.started_at).num_seconds()),
                s.outcome.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("inventory", Some(1), Some("reserved")),
            ("payment", Some(2), Some("authorized")),
            ("shipping", Some(3), Some("scheduled")),
        ]
    );
    let customer = &changes.customers[&("c1".to_string(), "EUR".to_string())];
    assert_eq!(
        (
            customer.orders_placed,
            customer.orders_completed,
            customer.revenue_minor
        ),
        (1, 1, 1300)
    );
    let daily = &changes.daily[&(day(), "EUR".to_string())];
    assert_eq!(
        (
            daily.orders_placed,
            daily.orders_completed,
            daily.orders_cancelled,
            daily.revenue_minor
        ),
        (1, 1, 0, 1300)
    );
    let sku_a = &changes.sku_daily[&(day(), "A".to_string(), "EUR".to_string())];
    assert_eq!(
        (sku_a.units_ordered, sku_a.units_sold, sku_a.revenue_minor),
        (2, 2, 300)
    );
    assert!(changes.cancellations.is_empty());
}

#[test]
fn a_declined_order_counts_as_a_decline_and_a_cancellation() {
    let changes = fold_all(&[
        event("o2", at(0, 0), created("c2")),
        event("o2", at(0, 1), reserved()),
        event("o2", at(0, 2), declined()),
        event("o2", at(0, 4), cancelled("payment_declined")),
    ]);
    let order = &changes.orders.created[0];
    assert_eq!(order.status, "cancelled");
    assert_eq!(order.cancel_reason.as_deref(), Some("payment_declined"));
    let customer = &changes.customers[&("c2".to_string(), "EUR".to_string())];
    assert_eq!(
        (
            customer.payment_declines,
            customer.orders_cancelled,
            customer.revenue_minor
        ),
        (1, 1, 0)
    );
    let reason =
        &changes.cancellations[&(day(), "payment_declined".to_string(), "EUR".to_string())];
    assert_eq!((reason.orders_cancelled, reason.value_minor), (1, 1300));
    assert_eq!(changes.steps.len(), 2, "no shipping step after a decline");
    let sku_a = &changes.sku_daily[&(day(), "A".to_string(), "EUR".to_string())];
    assert_eq!((sku_a.units_ordered, sku_a.units_sold), (2, 0));
}

#[test]
fn a_reply_after_a_timeout_neither_ends_the_step_again_nor_starts_the_next() {
    let changes = fold_all(&[
        event("o3", at(0, 0), created("c3")),
        event("o3", at(0, 1), reserved()),
        event("o3", at(0, 30), timed_out("payment")),
        event("o3", at(0, 31), authorized()),
    ]);
    let payment = changes
        .steps
        .created
        .iter()
        .find(|s| s.step == "payment")
        .expect("payment row");
    assert_eq!(payment.outcome.as_deref(), Some("timed_out"));
    assert_eq!(payment.ended_at, Some(at(0, 30)));
    assert!(changes.steps.created.iter().all(|s| s.step != "shipping"));
    assert_eq!(changes.orders.created[0].status, "cancelling");
}

#[test]
fn terminal_orders_keep_their_first_outcome() {
    let changes = fold_all(&[
        event("o4", at(0, 0), created("c4")),
        event("o4", at(0, 1), cancelled("out_of_stock")),
        event("o4", at(0, 2), completed()),
        event("o4", at(0, 3), created("someone else")),
    ]);
    let order = &changes.orders.created[0];
    assert_eq!(
        (order.status.as_str(), order.completed_at),
        ("cancelled", None)
    );
    assert_eq!(order.customer_id, "c4");
    assert_eq!(
        order.event_count, 3,
        "a second OrderCreated is not the order's event"
    );
    assert_eq!(
        changes.daily[&(day(), "EUR".to_string())].orders_completed,
        0
    );
}

#[test]
fn events_of_unknown_orders_change_no_model() {
    let changes = fold_all(&[event("ghost", at(0, 0), completed())]);
    assert_eq!(changes, Changes::default());
}

/// Stored rows after `first`, then the rows `second` created and changed on top of them.
fn merged<T: Clone>(first: &Rows<T>, second: &Rows<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut rows: BTreeMap<String, T> = BTreeMap::new();
    for row in first.created.iter().chain(&first.changed) {
        rows.insert(key(row), row.clone());
    }
    for row in &second.changed {
        assert!(
            rows.contains_key(&key(row)),
            "changed {} was not stored",
            key(row)
        );
        rows.insert(key(row), row.clone());
    }
    for row in &second.created {
        assert!(
            rows.insert(key(row), row.clone()).is_none(),
            "created {} was already stored",
            key(row)
        );
    }
    rows.into_values().collect()
}

/// Deltas of several folds added up per key, as the writer adds them to stored rows.
fn sum<'a, K: Ord + Clone + 'a, D: Default + 'a>(
    parts: impl IntoIterator<Item = &'a BTreeMap<K, D>>,
    add: fn(&mut D, &D),
) -> BTreeMap<K, D> {
    let mut total = BTreeMap::new();
    for part in parts {
        for (key, delta) in part {
            add(total.entry(key.clone()).or_default(), delta);
        }
    }
    total
}

fn add_daily(a: &mut DailyDelta, b: &DailyDelta) {
    a.orders_placed += b.orders_placed;
    a.orders_completed += b.orders_completed;
    a.orders_cancelled += b.orders_cancelled;
    a.revenue_minor += b.revenue_minor;
}

fn add_customer(a: &mut CustomerDelta, b: &CustomerDelta) {
    a.orders_placed += b.orders_placed;
    a.orders_completed += b.orders_completed;
    a.orders_cancelled += b.orders_cancelled;
    a.payment_declines += b.payment_declines;
    a.revenue_minor += b.revenue_minor;
    // LEAST in SQL: NULL only when both are.
    a.first_order_at = match (a.first_order_at, b.first_order_at) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    a.last_order_at = a.last_order_at.max(b.last_order_at);
}

fn add_sku(a: &mut SkuDelta, b: &SkuDelta) {
    a.units_ordered += b.units_ordered;
    a.units_sold += b.units_sold;
    a.revenue_minor += b.revenue_minor;
}

fn add_cancellation(a: &mut CancellationDelta, b: &CancellationDelta) {
    a.orders_cancelled += b.orders_cancelled;
    a.value_minor += b.value_minor;
}

#[test]
fn folding_in_batches_onto_stored_rows_equals_folding_at_once() {
    let histories: [(&str, Vec<Event>); 4] = [
        (
            "completed across midnight",
            vec![
                event("o5", at(0, 0), created("c5")),
                event("o5", at(0, 1), reserved()),
                event("o5", at(0, 2), authorized()),
                event("o5", at(23, 59), scheduled()),
                event("o5", at(23, 59), completed()),
            ],
        ),
        (
            "declined",
            vec![
                event("o6", at(0, 0), created("c6")),
                event("o6", at(0, 1), reserved()),
                event("o6", at(0, 2), declined()),
                event("o6", at(0, 4), cancelled("payment_declined")),
            ],
        ),
        (
            "late reply after a timeout",
            vec![
                event("o7", at(0, 0), created("c7")),
                event("o7", at(0, 1), reserved()),
                event("o7", at(0, 30), timed_out("payment")),
                event("o7", at(0, 31), authorized()),
                event("o7", at(0, 40), cancelled("timed_out")),
            ],
        ),
        (
            "two orders interleaved, one customer",
            vec![
                event("o8", at(0, 0), created("c8")),
                event("o9", at(0, 1), created("c8")),
                event("o8", at(0, 2), reserved()),
                event("o9", at(0, 3), reserved()),
                event("o9", at(0, 4), declined()),
                event("o8", at(0, 5), authorized()),
                event("o8", at(0, 6), scheduled()),
                event("o9", at(0, 7), cancelled("payment_declined")),
                event("o8", at(0, 8), completed()),
            ],
        ),
    ];
    for (name, events) in &histories {
        let whole = fold_all(events);
        assert!(whole.orders.changed.is_empty() && whole.steps.changed.is_empty());
        for split in 0..=events.len() {
            let first = fold_all(&events[..split]);
            let mut second = Fold::resume(
                first.orders.created.clone(),
                first.lines.clone(),
                first.steps.created.clone(),
            );
            for event in &events[split..] {
                second.apply(event);
            }
            let second = second.into_changes();
            let case = format!("{name}, stored after {split} events");
            let order_key = |o: &OrderRow| o.order_id.clone();
            let step_key = |s: &StepRow| format!("{}/{}", s.order_id, s.step);
            assert_eq!(
                merged(&first.orders, &second.orders, order_key),
                whole.orders.created,
                "{case}: orders"
            );
            assert_eq!(
                merged(&first.steps, &second.steps, step_key),
                whole.steps.created,
                "{case}: steps"
            );
            let mut lines = first.lines.clone();
            lines.extend(second.lines.clone());
            assert_eq!(lines, whole.lines, "{case}: lines");
            assert_eq!(
                sum([&first.daily, &second.daily], add_daily),
                whole.daily,
                "{case}: daily"
            );
            assert_eq!(
                sum([&first.customers, &second.customers], add_customer),
                whole.customers,
                "{case}: customers"
            );
            assert_eq!(
                sum([&first.sku_daily, &second.sku_daily], add_sku),
                whole.sku_daily,
                "{case}: skus"
            );
            assert_eq!(
                sum(
                    [&first.cancellations, &second.cancellations],
                    add_cancellation
                ),
                whole.cancellations,
                "{case}: cancellations"
            );
        }
    }
}

#[test]
fn rows_of_stored_orders_are_changed_and_the_others_created() {
    // (stored before the batch, batch) -> (orders created, orders changed, steps created,
    // steps changed), each as order or order/step keys.
    type Keys = Vec<&'static str>;
    let stored = fold_all(&[
        event("s1", at(0, 0), created("c")),
        event("s2", at(0, 0), created("c")),
        event("s2", at(0, 1), reserved()),
    ]);
    let table: [(Vec<Event>, Keys, Keys, Keys, Keys); 4] = [
        (
            vec![event("n1", at(1, 0), created("c"))],
            vec!["n1"],
            vec![],
            vec!["n1/inventory"],
            vec![],
        ),
        (
            vec![event("s1", at(1, 0), reserved())],
            vec![],
            vec!["s1"],
            vec!["s1/payment"],
            vec!["s1/inventory"],
        ),
        (
            vec![
                event("s2", at(1, 0), authorized()),
                event("n2", at(1, 0), created("c")),
                event("n2", at(1, 1), reserved()),
            ],
            vec!["n2"],
            vec!["s2"],
            vec!["n2/inventory", "n2/payment", "s2/shipping"],
            vec!["s2/payment"],
        ),
        (
            // A second OrderCreated and an event of an unknown order change nothing.
            vec![
                event("s1", at(1, 0), created("someone else")),
                event("ghost", at(1, 0), completed()),
            ],
            vec![],
            vec![],
            vec![],
            vec![],
        ),
    ];
    for (batch, orders_created, orders_changed, steps_created, steps_changed) in table {
        let mut fold = Fold::resume(
            stored.orders.created.clone(),
            stored.lines.clone(),
            stored.steps.created.clone(),
        );
        for event in &batch {
            fold.apply(event);
        }
        let changes = fold.into_changes();
        let orders = |rows: &[OrderRow]| -> Vec<String> {
            rows.iter().map(|o| o.order_id.clone()).collect()
        };
        let steps = |rows: &[StepRow]| -> Vec<String> {
            rows.iter()
                .map(|s| format!("{}/{}", s.order_id, s.step))
                .collect()
        };
        let owned = |keys: &Keys| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let case = format!(
            "{:?}",
            batch.iter().map(|e| &e.meta.order_id).collect::<Vec<_>>()
        );
        assert_eq!(
            orders(&changes.orders.created),
            owned(&orders_created),
            "{case}"
        );
        assert_eq!(
            orders(&changes.orders.changed),
            owned(&orders_changed),
            "{case}"
        );
        assert_eq!(
            steps(&changes.steps.created),
            owned(&steps_created),
            "{case}"
        );
        assert_eq!(
            steps(&changes.steps.changed),
            owned(&steps_changed),
            "{case}"
        );
    }
}

#[test]
fn statuses_per_event_type() {
    let table = [
        (created("c"), Some("pending")),
        (reserved(), Some("stock_reserved")),
        (authorized(), Some("paid")),
        (scheduled(), Some("shipment_scheduled")),
        (declined(), Some("cancelling")),
        (timed_out("payment"), Some("cancelling")),
        (completed(), Some("completed")),
        (cancelled("x"), Some("cancelled")),
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

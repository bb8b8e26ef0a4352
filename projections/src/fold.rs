//! The pure part of the projection: how new events change the read models. No I/O.
//!
//! [`Fold`] holds the state of the orders it knows (loaded from the target generation for an
//! incremental batch, or empty for a rebuild) and accumulates what the events change: full rows
//! for `orders` and `saga_step_durations` (split into rows it created and stored rows it changed,
//! so the writer inserts the first and updates the second without asking the table), new
//! `order_lines`, and additive deltas for the aggregate models. Folding a whole log from empty
//! and folding it batch by batch onto stored rows give the same tables; `orderflow replay`
//! verifies exactly that.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use events::{Event, EventBody};
use serde_json::json;
use uuid::Uuid;

/// Statuses after which no event changes an order's status.
pub const TERMINAL: [&str; 2] = ["completed", "cancelled"];

/// The read models, in the order their tables are written and verified.
pub const MODELS: [&str; 8] = [
    "orders",
    "order_lines",
    "order_events",
    "customer_summary",
    "daily_sales",
    "sku_daily_sales",
    "cancellations_daily",
    "saga_step_durations",
];

/// The `orders.status` an event moves an order to, if any.
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
        // Not an order's event; the projections skip them before folding (`apply`, `bulk`).
        EventBody::StockAdjusted(_)
        | EventBody::CustomerBlocked(_)
        | EventBody::CustomerUnblocked(_)
        | EventBody::CustomerForgotten(_) => return None,
    })
}

/// An `orders` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    pub status: String,
    pub currency: String,
    pub total_minor: i64,
    pub line_count: i32,
    pub units: i64,
    pub ship_country: String,
    pub created_at: DateTime<Utc>,
    pub reserved_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub shipment_scheduled_at: Option<DateTime<Utc>>,
    pub carrier: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub event_count: i32,
    pub last_event_type: String,
    pub last_event_at: DateTime<Utc>,
}

impl OrderRow {
    fn is_terminal(&self) -> bool {
        self.completed_at.is_some() || self.cancelled_at.is_some()
    }

    /// Neither finished nor being given up: a reply may still start the next step.
    fn is_progressing(&self) -> bool {
        !TERMINAL.contains(&self.status.as_str()) && self.status != "cancelling"
    }
}

/// An `order_lines` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    pub order_id: String,
    pub line_no: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

/// A `saga_step_durations` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StepRow {
    pub order_id: String,
    pub step: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

/// An `order_events` row.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event_id: Uuid,
    pub order_id: String,
    pub event_type: &'static str,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub detail: serde_json::Value,
}

/// Where a record sits in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The timeline row of `event` found at `position`.
pub fn timeline_row(event: &Event, position: &LogPosition<'_>) -> EventRow {
    EventRow {
        event_id: event.meta.event_id,
        order_id: event.meta.order_id.clone(),
        event_type: event.event_type().as_str(),
        schema_version: i32::try_from(event.event_type().current_version()).unwrap_or(i32::MAX),
        occurred_at: event.meta.occurred_at,
        correlation_id: event.meta.correlation_id,
        causation_id: event.meta.causation_id,
        topic: position.topic.to_string(),
        partition: position.partition,
        offset: position.offset,
        detail: detail(&event.body),
    }
}

/// Added to a `customer_summary` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerDelta {
    pub orders_placed: i64,
    pub orders_completed: i64,
    pub orders_cancelled: i64,
    pub payment_declines: i64,
    pub revenue_minor: i64,
    pub first_order_at: Option<DateTime<Utc>>,
    pub last_order_at: Option<DateTime<Utc>>,
}

/// Added to a `daily_sales` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyDelta {
    pub orders_placed: i64,
    pub orders_completed: i64,
    pub orders_cancelled: i64,
    pub revenue_minor: i64,
}

/// Added to a `sku_daily_sales` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuDelta {
    pub units_ordered: i64,
    pub units_sold: i64,
    pub revenue_minor: i64,
}

/// Added to a `cancellations_daily` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancellationDelta {
    pub orders_cancelled: i64,
    pub value_minor: i64,
}

/// Full rows of one table that a fold touched, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows<T> {
    /// Rows the folded events created: not in the table before (insert).
    pub created: Vec<T>,
    /// Stored rows (given to [`Fold::resume`]) the folded events changed (update).
    pub changed: Vec<T>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Rows {
            created: Vec::new(),
            changed: Vec::new(),
        }
    }
}

impl<T> Rows<T> {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.changed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.created.len() + self.changed.len()
    }
}

/// What a fold changes, ready to be written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// Full rows of every order an event touched.
    pub orders: Rows<OrderRow>,
    /// Lines of orders created by these events (always new: lines come with `OrderCreated`).
    pub lines: Vec<LineRow>,
    /// Full rows of every step row an event touched.
    pub steps: Rows<StepRow>,
    /// Keyed by (customer_id, currency).
    pub customers: BTreeMap<(String, String), CustomerDelta>,
    /// Keyed by (day, currency).
    pub daily: BTreeMap<(NaiveDate, String), DailyDelta>,
    /// Keyed by (day, sku, currency).
    pub sku_daily: BTreeMap<(NaiveDate, String, String), SkuDelta>,
    /// Keyed by (day, reason, currency).
    pub cancellations: BTreeMap<(NaiveDate, String, String), CancellationDelta>,
}

/// Folds new events onto the state of the orders they belong to.
#[derive(Debug, Default)]
pub struct Fold {
    orders: HashMap<String, OrderRow>,
    lines: HashMap<String, Vec<LineRow>>,
    steps: HashMap<(String, &'static str), StepRow>,
    /// Keys of the rows given to [`Fold::resume`]: these exist in the table.
    stored_orders: HashSet<String>,
    stored_steps: HashSet<(String, &'static str)>,
    touched_orders: HashSet<String>,
    touched_steps: HashSet<(String, &'static str)>,
    new_lines: Vec<LineRow>,
    customers: BTreeMap<(String, String), CustomerDelta>,
    daily: BTreeMap<(NaiveDate, String), DailyDelta>,
    sku_daily: BTreeMap<(NaiveDate, String, String), SkuDelta>,
    cancellations: BTreeMap<(NaiveDate, String, String), CancellationDelta>,
}

/// The saga steps timed in `saga_step_durations`, in the order an order goes through them.
const STEPS: [&str; 3] = ["inventory", "payment", "shipping"];

fn step_name(name: &str) -> Option<&'static str> {
    STEPS.iter().copied().find(|s| *s == name)
}

impl Fold {
    /// A fold that knows nothing yet: for rebuilding from the start of the log.
    pub fn new() -> Fold {
        Fold::default()
    }

    /// A fold that continues from stored rows: every order the new events belong to (with its
    /// lines and step rows). Orders not given are unknown to it.
    pub fn resume(orders: Vec<OrderRow>, lines: Vec<LineRow>, steps: Vec<StepRow>) -> Fold {
        let mut fold = Fold::new();
        for order in orders {
            fold.stored_orders.insert(order.order_id.clone());
            fold.orders.insert(order.order_id.clone(), order);
        }
        for line in lines {
            fold.lines
                .entry(line.order_id.clone())
                .or_default()
                .push(line);
        }
        for step in steps {
            if let Some(name) = step_name(&step.step) {
                fold.stored_steps.insert((step.order_id.clone(), name));
                fold.steps.insert((step.order_id.clone(), name), step);
            }
        }
        fold
    }

    /// Fold one event that no earlier fold of this target has seen.
    pub fn apply(&mut self, event: &Event) {
        if !event.event_type().concerns_order() {
            // Stock and customer events are the steps' state, not an order's history.
            return;
        }
        let order_id = &event.meta.order_id;
        let at = event.meta.occurred_at;
        if let EventBody::OrderCreated(created) = &event.body {
            if !self.orders.contains_key(order_id) {
                self.create(order_id, created, at, event.event_type().as_str());
            }
            // A second OrderCreated for one order id: the first one stands.
            return;
        }
        let Some(mut order) = self.orders.remove(order_id) else {
            // No OrderCreated for this id (e.g. a cancellation request for an unknown order):
            // only the timeline shows it.
            return;
        };
        self.touched_orders.insert(order_id.clone());
        let progressing = order.is_progressing();
        let was_terminal = order.is_terminal();
        match &event.body {
            EventBody::InventoryReserved(_) => {
                order.reserved_at.get_or_insert(at);
                self.end_step(order_id, "inventory", at, "reserved");
                if progressing {
                    self.start_step(order_id, "payment", at);
                }
            }
            EventBody::InventoryRejected(_) => self.end_step(order_id, "inventory", at, "rejected"),
            EventBody::PaymentAuthorized(_) => {
                order.paid_at.get_or_insert(at);
                self.end_step(order_id, "payment", at, "authorized");
                if progressing {
                    self.start_step(order_id, "shipping", at);
                }
            }
            EventBody::PaymentDeclined(_) => {
                self.end_step(order_id, "payment", at, "declined");
                self.customer(&order).payment_declines += 1;
            }
            EventBody::ShipmentScheduled(s) => {
                order.shipment_scheduled_at.get_or_insert(at);
                order.carrier.get_or_insert_with(|| s.carrier.clone());
                self.end_step(order_id, "shipping", at, "scheduled");
            }
            EventBody::ShipmentFailed(_) => self.end_step(order_id, "shipping", at, "failed"),
            EventBody::SagaStepTimedOut(t) => {
                if let Some(step) = step_name(&t.step) {
                    self.end_step(order_id, step, at, "timed_out");
                }
            }
            EventBody::OrderCompleted(done) if !was_terminal => {
                order.completed_at = Some(at);
                let day = at.date_naive();
                let customer = self.customer(&order);
                customer.orders_completed += 1;
                customer.revenue_minor += done.total_minor;
                let daily = self.daily.entry((day, done.currency.clone())).or_default();
                daily.orders_completed += 1;
                daily.revenue_minor += done.total_minor;
                for line in self.lines.get(order_id).into_iter().flatten() {
                    let sku = self
                        .sku_daily
                        .entry((day, line.sku.clone(), line.currency.clone()))
                        .or_default();
                    sku.units_sold += i64::from(line.quantity);
                    sku.revenue_minor += line.line_total_minor;
                }
            }
            EventBody::OrderCancelled(cancelled) if !was_terminal => {
                order.cancelled_at = Some(at);
                order.cancel_reason = Some(cancelled.reason.clone());
                let day = at.date_naive();
                self.customer(&order).orders_cancelled += 1;
                self.daily
                    .entry((day, order.currency.clone()))
                    .or_default()
                    .orders_cancelled += 1;
                let reason = self
                    .cancellations
                    .entry((day, cancelled.reason.clone(), order.currency.clone()))
                    .or_default();
                reason.orders_cancelled += 1;
                reason.value_minor += order.total_minor;
            }
            _ => {}
        }
        if let Some(status) = status_after(&event.body) {
            // Finished orders keep their status; an order being given up only moves to an end
            // (a late success reply does not make it look as if it were progressing).
            if progressing || (!was_terminal && TERMINAL.contains(&status)) {
                order.status = status.to_string();
            }
        }
        order.event_count = order.event_count.saturating_add(1);
        order.last_event_type = event.event_type().as_str().to_string();
        order.last_event_at = at;
        self.orders.insert(order_id.clone(), order);
    }

    fn create(
        &mut self,
        order_id: &str,
        created: &events::OrderCreated,
        at: DateTime<Utc>,
        type_name: &str,
    ) {
        let order = OrderRow {
            order_id: order_id.to_string(),
            customer_id: created.customer_id.clone(),
            status: "pending".into(),
            currency: created.currency.clone(),
            total_minor: created.total_minor(),
            line_count: i32::try_from(created.lines.len()).unwrap_or(i32::MAX),
            units: created.lines.iter().map(|l| i64::from(l.quantity)).sum(),
            ship_country: created.shipping_address.country.clone(),
            created_at: at,
            reserved_at: None,
            paid_at: None,
            shipment_scheduled_at: None,
            carrier: None,
            completed_at: None,
            cancelled_at: None,
            cancel_reason: None,
            event_count: 1,
            last_event_type: type_name.to_string(),
            last_event_at: at,
        };
        let day = at.date_naive();
        let lines: Vec<LineRow> = created
            .lines
            .iter()
            .enumerate()
            .map(|(i, line)| LineRow {
                order_id: order_id.to_string(),
                line_no: i32::try_from(i + 1).unwrap_or(i32::MAX),
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price_minor: line.unit_price_minor,
                line_total_minor: i64::from(line.quantity).saturating_mul(line.unit_price_minor),
                currency: created.currency.clone(),
                created_at: at,
            })
            .collect();
        for line in &lines {
            self.sku_daily
                .entry((day, line.sku.clone(), line.currency.clone()))
                .or_default()
                .units_ordered += i64::from(line.quantity);
        }
        let customer = self.customer(&order);
        customer.orders_placed += 1;
        customer.first_order_at = Some(customer.first_order_at.map_or(at, |t| t.min(at)));
        customer.last_order_at = Some(customer.last_order_at.map_or(at, |t| t.max(at)));
        self.daily
            .entry((day, order.currency.clone()))
            .or_default()
            .orders_placed += 1;
        self.new_lines.extend(lines.iter().cloned());
        self.lines.insert(order_id.to_string(), lines);
        self.start_step(order_id, "inventory", at);
        self.touched_orders.insert(order_id.to_string());
        self.orders.insert(order_id.to_string(), order);
    }

    fn customer(&mut self, order: &OrderRow) -> &mut CustomerDelta {
        self.customers
            .entry((order.customer_id.clone(), order.currency.clone()))
            .or_default()
    }

    fn start_step(&mut self, order_id: &str, step: &'static str, at: DateTime<Utc>) {
        let key = (order_id.to_string(), step);
        if self.steps.contains_key(&key) {
            return;
        }
        self.steps.insert(
            key.clone(),
            StepRow {
                order_id: order_id.to_string(),
                step: step.to_string(),
                started_at: at,
                ended_at: None,
                outcome: None,
            },
        );
        self.touched_steps.insert(key);
    }

    /// Close a step's row with its first outcome; a later reply (after a timeout) changes nothing.
    fn end_step(&mut self, order_id: &str, step: &'static str, at: DateTime<Utc>, outcome: &str) {
        let key = (order_id.to_string(), step);
        if let Some(row) = self.steps.get_mut(&key) {
            if row.ended_at.is_none() {
                row.ended_at = Some(at);
                row.outcome = Some(outcome.to_string());
                self.touched_steps.insert(key);
            }
        }
    }

    /// Everything the folded events changed.
    pub fn into_changes(mut self) -> Changes {
        let mut orders = Rows::default();
        for id in &self.touched_orders {
            if let Some(row) = self.orders.remove(id) {
                if self.stored_orders.contains(id) {
                    orders.changed.push(row);
                } else {
                    orders.created.push(row);
                }
            }
        }
        let mut steps = Rows::default();
        for key in &self.touched_steps {
            if let Some(row) = self.steps.remove(key) {
                if self.stored_steps.contains(key) {
                    steps.changed.push(row);
                } else {
                    steps.created.push(row);
                }
            }
        }
        for rows in [&mut orders.created, &mut orders.changed] {
            rows.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        }
        for rows in [&mut steps.created, &mut steps.changed] {
            rows.sort_by(|a, b| (&a.order_id, &a.step).cmp(&(&b.order_id, &b.step)));
        }
        Changes {
            orders,
            lines: self.new_lines,
            steps,
            customers: self.customers,
            daily: self.daily,
            sku_daily: self.sku_daily,
            cancellations: self.cancellations,
        }
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
        EventBody::OrderCancellationRejected(r) => {
            json!({ "reason": r.reason, "detail": r.detail })
        }
        EventBody::SagaStepTimedOut(t) => {
            json!({ "step": t.step, "deadline": t.deadline, "attempts": t.attempts })
        }
        // Never in a timeline (the projections skip them); described for completeness.
        EventBody::StockAdjusted(a) => {
            json!({ "sku": a.sku, "delta": a.delta, "reason": a.reason })
        }
        EventBody::CustomerBlocked(b) => json!({ "customer_id": b.customer_id, "note": b.note }),
        EventBody::CustomerUnblocked(u) => json!({ "customer_id": u.customer_id }),
        EventBody::CustomerForgotten(f) => {
            json!({ "customer_id": f.customer_id, "keys": f.key_ids.len() })
        }
    }
}

#[cfg(test)]
mod tests;

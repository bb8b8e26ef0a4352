//! The inventory step: reserves stock for a new order, all lines or none, and releases the
//! reservation when a later step fails (payment declined, shipment failed) or the saga gives
//! the order up (see [`crate::give_up`]).
//!
//! Stock lives in `inventory.stock` and changes only by `StockAdjusted` events on the log
//! (appended by `orderflow stock set|adjust` and the operator API through
//! [`crate::commands`]), which this step applies, once each, in every mode; each decided
//! order has one row in `inventory.reservations`. It never calls other services.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use events::{
    Event, EventBody, EventType, InventoryRejected, InventoryReleased, InventoryReserved, Shortage,
    SkuQuantity,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::give_up::{self, Abandoned};
use crate::ports::Answers;
use crate::step::{Decider, Decline, Never};
use crate::HandlerError;

pub const NAME: &str = "inventory";
const SCHEMA: &str = "inventory";

/// A reservation decision the step took before, as its reply recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reserved,
    Rejected {
        reason: String,
        shortages: Vec<Shortage>,
    },
}

/// Recorded decisions by the id of the `OrderCreated` they answered.
pub type Decisions = HashMap<Uuid, Decision>;

/// The inventory step. Live, it decides from the stock it holds and books every reservation
/// and release on `inventory.stock` at once. When restoring ([`Inventory::replaying`]) it
/// applies the decision recorded in the archive instead, because the order in which orders of
/// different partitions met the stock is not on the log; for the same reason it leaves
/// `inventory.stock` alone and books what the reservations hold once at the end
/// ([`settle_replayed_stock`]), which does not depend on that order.
#[derive(Default)]
pub struct Inventory {
    recorded: Option<Arc<Decisions>>,
}

impl Inventory {
    pub fn new() -> Self {
        Inventory::default()
    }

    /// Apply `recorded` decisions where there is one; decide from stock where there is none
    /// (an answer the archive lost).
    pub fn replaying(recorded: Arc<Decisions>) -> Self {
        Inventory {
            recorded: Some(recorded),
        }
    }
}

/// A reservation as the decider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: Uuid,
    pub status: Status,
    pub items: Vec<SkuQuantity>,
    /// Decided or changed in this batch: to store.
    changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Reserved,
    Rejected,
    Released,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Reserved => "reserved",
            Status::Rejected => "rejected",
            Status::Released => "released",
        }
    }

    fn parse(text: &str) -> Result<Status, HandlerError> {
        Ok(match text {
            "reserved" => Status::Reserved,
            "rejected" => Status::Rejected,
            "released" => Status::Released,
            other => {
                return Err(HandlerError::Rule(format!(
                    "inventory.reservations holds an unknown status {other:?}"
                )))
            }
        })
    }
}

/// A sku's stock as the decider sees it: what can be reserved, how much this batch moved
/// from available to reserved (negative: back), and how much its `StockAdjusted` events added
/// (negative: took away).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Level {
    pub available: i64,
    pub moved: i64,
    pub adjusted: i64,
}

/// The inventory state of one batch: its orders' reservations and give-ups, and the stock of
/// every sku they name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub reservations: HashMap<String, Reservation>,
    pub abandoned: Abandoned,
    pub stock: BTreeMap<String, Level>,
}

impl State {
    /// Stock for tests and restores: `(sku, available)`.
    pub fn with_stock(stock: &[(&str, i64)]) -> Self {
        State {
            stock: stock
                .iter()
                .map(|(sku, available)| {
                    (
                        sku.to_string(),
                        Level {
                            available: *available,
                            ..Level::default()
                        },
                    )
                })
                .collect(),
            ..State::default()
        }
    }
}

#[async_trait]
impl Decider for Inventory {
    type State = State;
    type Question = Never;
    type Answer = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderCreated
                | EventType::PaymentDeclined
                | EventType::ShipmentFailed
                | EventType::StockAdjusted
        ) || give_up::is_marker(event_type)
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
        lock: bool,
    ) -> Result<State, HandlerError> {
        let orders = crate::step::order_ids(events);
        let rows: Vec<(String, Uuid, String, serde_json::Value)> = sqlx::query_as(if lock {
            "SELECT order_id, reservation_id, status, items FROM inventory.reservations
             WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
        } else {
            "SELECT order_id, reservation_id, status, items FROM inventory.reservations
             WHERE order_id = ANY($1)"
        })
        .persistent(false)
        .bind(&orders)
        .fetch_all(&mut *conn)
        .await?;
        let mut state = State::default();
        for (order_id, reservation_id, status, items) in rows {
            state.reservations.insert(
                order_id,
                Reservation {
                    reservation_id,
                    status: Status::parse(&status)?,
                    items: items_from_json(&items),
                    changed: false,
                },
            );
        }
        state.abandoned = Abandoned::load(conn, SCHEMA, &orders).await?;
        // Every sku the batch may reserve or release, sorted: concurrent batches lock stock
        // rows in the same order.
        let mut skus: Vec<&str> = events
            .iter()
            .flat_map(|e| match &e.body {
                EventBody::OrderCreated(order) => {
                    order.lines.iter().map(|l| l.sku.as_str()).collect()
                }
                EventBody::StockAdjusted(adjusted) => vec![adjusted.sku.as_str()],
                _ => Vec::new(),
            })
            .chain(
                state
                    .reservations
                    .values()
                    .flat_map(|r| r.items.iter().map(|i| i.sku.as_str())),
            )
            .collect();
        skus.sort_unstable();
        skus.dedup();
        let levels: Vec<(String, i64)> = match (&self.recorded, lock) {
            (None, true) => {
                sqlx::query_as(
                    "SELECT sku, available FROM inventory.stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
                )
                .bind(&skus)
                .fetch_all(&mut *conn)
                .await?
            }
            (None, false) => {
                sqlx::query_as("SELECT sku, available FROM inventory.stock WHERE sku = ANY($1)")
                    .bind(&skus)
                    .fetch_all(&mut *conn)
                    .await?
            }
            // Restoring: the stock given before the archive began, less what the reservations
            // rebuilt so far hold (booked once at the end, see settle_replayed_stock).
            (Some(_), _) => {
                sqlx::query_as(&format!(
                    "SELECT s.sku, s.available - COALESCE(h.qty, 0) FROM inventory.stock s
                     LEFT JOIN ({HELD}) h USING (sku) WHERE s.sku = ANY($1)"
                ))
                .persistent(false)
                .bind(&skus)
                .fetch_all(&mut *conn)
                .await?
            }
        };
        state.stock = levels
            .into_iter()
            .map(|(sku, available)| {
                (
                    sku,
                    Level {
                        available,
                        ..Level::default()
                    },
                )
            })
            .collect();
        drop(skus);
        Ok(state)
    }

    fn decide(
        &self,
        state: &mut State,
        event: &Event,
        _answers: &Answers<()>,
    ) -> Result<Vec<EventBody>, Decline<Never>> {
        let recorded = self
            .recorded
            .as_ref()
            .map(|decisions| decisions.get(&event.meta.event_id));
        Ok(match &event.body {
            EventBody::OrderCreated(order) => reserve(state, event, &order.lines, recorded)?,
            // The order failed after its stock was reserved: give the stock back.
            EventBody::PaymentDeclined(_) => release(state, event, "payment_declined")?,
            EventBody::ShipmentFailed(_) => release(state, event, "shipment_failed")?,
            // A fact, applied in every mode (restoring too): no decision, no reply.
            EventBody::StockAdjusted(adjusted) => {
                adjust(state, &adjusted.sku, adjusted.delta);
                Vec::new()
            }
            body => match give_up::reason(body) {
                Some(reason) => {
                    state.abandoned.note(event, reason);
                    release(state, event, reason)?
                }
                None => Vec::new(),
            },
        })
    }

    async fn store(&self, tx: &mut PgConnection, state: &State) -> Result<(), HandlerError> {
        let changed: Vec<(&String, &Reservation)> = state
            .reservations
            .iter()
            .filter(|(_, r)| r.changed)
            .collect();
        if !changed.is_empty() {
            let orders: Vec<&str> = changed.iter().map(|(o, _)| o.as_str()).collect();
            let ids: Vec<Uuid> = changed.iter().map(|(_, r)| r.reservation_id).collect();
            let statuses: Vec<&str> = changed.iter().map(|(_, r)| r.status.as_str()).collect();
            let items: Vec<serde_json::Value> =
                changed.iter().map(|(_, r)| items_json(&r.items)).collect();
            sqlx::query(
                "INSERT INTO inventory.reservations (order_id, reservation_id, status, items)
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::jsonb[])
                 ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()",
            )
            .bind(&orders)
            .bind(&ids)
            .bind(&statuses)
            .bind(&items)
            .execute(&mut *tx)
            .await?;
        }
        state.abandoned.store(tx, SCHEMA).await?;
        // Adjustments first, in every mode: they may create the sku's row. Restoring, the
        // table holds the sum of the adjustments replayed so far, less nothing: what the
        // reservations hold is booked once at the end (settle_replayed_stock).
        let adjusted: Vec<(&str, i64)> = state
            .stock
            .iter()
            .filter(|(_, l)| l.adjusted != 0)
            .map(|(sku, l)| (sku.as_str(), l.adjusted))
            .collect();
        if !adjusted.is_empty() {
            let skus: Vec<&str> = adjusted.iter().map(|a| a.0).collect();
            let deltas: Vec<i64> = adjusted.iter().map(|a| a.1).collect();
            sqlx::query(
                "INSERT INTO inventory.stock AS s (sku, available)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[])
                 ON CONFLICT (sku) DO UPDATE SET available = s.available + EXCLUDED.available,
                     updated_at = now()",
            )
            .bind(&skus)
            .bind(&deltas)
            .execute(&mut *tx)
            .await?;
        }
        // Restoring, the stock is booked once at the end (settle_replayed_stock).
        if self.recorded.is_none() {
            let moved: Vec<(&str, i64)> = state
                .stock
                .iter()
                .filter(|(_, l)| l.moved != 0)
                .map(|(sku, l)| (sku.as_str(), l.moved))
                .collect();
            if !moved.is_empty() {
                let skus: Vec<&str> = moved.iter().map(|m| m.0).collect();
                let quantities: Vec<i64> = moved.iter().map(|m| m.1).collect();
                sqlx::query(
                    "UPDATE inventory.stock AS s SET available = s.available - w.qty,
                         reserved = s.reserved + w.qty, updated_at = now()
                     FROM UNNEST($1::text[], $2::bigint[]) AS w(sku, qty) WHERE s.sku = w.sku",
                )
                .bind(&skus)
                .bind(&quantities)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}

/// Quantities per sku, lines of the same sku added up; sorted.
fn wanted_per_sku(lines: &[events::OrderLine]) -> BTreeMap<String, i64> {
    let mut wanted = BTreeMap::new();
    for line in lines {
        *wanted.entry(line.sku.clone()).or_insert(0i64) += i64::from(line.quantity);
    }
    wanted
}

/// Units per sku held by reservations in status `reserved` (of the skus in `$1`).
const HELD: &str = "SELECT i->>'sku' AS sku, sum((i->>'quantity')::bigint)::bigint AS qty
     FROM inventory.reservations r, jsonb_array_elements(r.items) i
     WHERE r.status = 'reserved' AND i->>'sku' = ANY($1) GROUP BY 1";

/// Decide an `OrderCreated`: reserve every line or none. `recorded` is `None` live, and
/// `Some(decision the archive holds, if any)` when restoring.
fn reserve(
    state: &mut State,
    event: &Event,
    lines: &[events::OrderLine],
    recorded: Option<Option<&Decision>>,
) -> Result<Vec<EventBody>, HandlerError> {
    let order_id = &event.meta.order_id;
    if let Some(seen) = state.reservations.get(order_id) {
        // A second OrderCreated for the same order id (with a different event id): the first
        // one decided; this one must not reserve again.
        return Err(HandlerError::Rule(format!(
            "order {order_id} was already created (reservation is {}); duplicate OrderCreated ignored",
            seen.status.as_str()
        )));
    }
    let wanted = wanted_per_sku(lines);
    let abandoned = state.abandoned.reason(order_id).map(str::to_string);
    let reservation_id = events::reply_event_id(event.meta.event_id, "inventory-reservation");
    let items: Vec<SkuQuantity> = wanted
        .iter()
        .map(|(sku, &qty)| SkuQuantity {
            sku: sku.clone(),
            quantity: clamp_i32(qty),
        })
        .collect();
    let shortages: Vec<Shortage> = wanted
        .iter()
        .filter_map(|(sku, &qty)| {
            let have = state.stock.get(sku).map_or(0, |l| l.available);
            (have < qty).then(|| Shortage {
                sku: sku.clone(),
                requested: clamp_i32(qty),
                available: clamp_i32(have),
            })
        })
        .collect();
    let reply = match recorded {
        Some(Some(Decision::Reserved)) => {
            if let Some(why) = &abandoned {
                return Err(HandlerError::Diverged(format!(
                    "order {order_id} was reserved, but the rebuilt state has it given up ({why})"
                )));
            }
            // The sku's adjustments may sit in another partition, replayed later: the stock
            // is settled once at the end, when every adjustment is in.
            None
        }
        Some(Some(Decision::Rejected { reason, shortages })) => {
            Some(EventBody::InventoryRejected(InventoryRejected {
                reason: reason.clone(),
                shortages: shortages.clone(),
            }))
        }
        // The saga gave the order up before this step got to it (e.g. the OrderCreated was
        // redriven from the dead-letter topic after a timeout): reserve nothing.
        _ if abandoned.is_some() => Some(EventBody::InventoryRejected(InventoryRejected {
            reason: format!(
                "{}: the order was given up ({})",
                give_up::REFUSED,
                abandoned.as_deref().unwrap_or_default()
            ),
            shortages: Vec::new(),
        })),
        _ if !shortages.is_empty() => {
            let skus: Vec<&str> = shortages.iter().map(|s| s.sku.as_str()).collect();
            Some(EventBody::InventoryRejected(InventoryRejected {
                reason: format!("insufficient stock for {}", skus.join(", ")),
                shortages,
            }))
        }
        _ => None,
    };
    let status = if reply.is_some() {
        Status::Rejected
    } else {
        for (sku, qty) in &wanted {
            let level = state.stock.entry(sku.clone()).or_default();
            level.available -= qty;
            level.moved += qty;
        }
        Status::Reserved
    };
    state.reservations.insert(
        order_id.clone(),
        Reservation {
            reservation_id,
            status,
            items: items.clone(),
            changed: true,
        },
    );
    Ok(vec![reply.unwrap_or(EventBody::InventoryReserved(
        InventoryReserved {
            reservation_id,
            items,
        },
    ))])
}

/// Apply a `StockAdjusted`: the sku's available units change by `delta`, whatever the level
/// (below zero when units were taken away that orders hold; nothing reserves then).
fn adjust(state: &mut State, sku: &str, delta: i64) {
    let level = state.stock.entry(sku.to_string()).or_default();
    level.available = level.available.saturating_add(delta);
    level.adjusted = level.adjusted.saturating_add(delta);
}

/// Compensation: return a reserved order's stock. Releasing twice, or releasing an order that
/// holds nothing, emits nothing.
fn release(state: &mut State, event: &Event, reason: &str) -> Result<Vec<EventBody>, HandlerError> {
    let order_id = &event.meta.order_id;
    let Some(reservation) = state.reservations.get_mut(order_id) else {
        if give_up::is_marker(event.event_type()) {
            // Given up before this step decided anything: nothing is held.
            return Ok(Vec::new());
        }
        return Err(HandlerError::Rule(format!(
            "order {order_id} has no reservation to release"
        )));
    };
    if reservation.status != Status::Reserved {
        tracing::info!(%order_id, status = reservation.status.as_str(), "nothing to release");
        return Ok(Vec::new());
    }
    reservation.status = Status::Released;
    reservation.changed = true;
    for item in &reservation.items {
        let qty = i64::from(item.quantity);
        let level = state.stock.entry(item.sku.clone()).or_default();
        level.available += qty;
        level.moved -= qty;
    }
    Ok(vec![EventBody::InventoryReleased(InventoryReleased {
        reservation_id: reservation.reservation_id,
        items: reservation.items.clone(),
        reason: reason.to_string(),
    })])
}

fn items_json(items: &[SkuQuantity]) -> serde_json::Value {
    serde_json::Value::Array(
        items
            .iter()
            .map(|i| serde_json::json!({ "sku": i.sku, "quantity": i.quantity }))
            .collect(),
    )
}

fn items_from_json(items: &serde_json::Value) -> Vec<SkuQuantity> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    Some(SkuQuantity {
                        sku: i.get("sku")?.as_str()?.to_string(),
                        quantity: i32::try_from(i.get("quantity")?.as_i64()?).ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn clamp_i32(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// End of a restore: book what the rebuilt reservations hold on the stock, which holds the
/// sum of the archive's `StockAdjusted` events (available -= held, reserved += held) — what
/// the live step's levels are, whatever order reservations and adjustments met in. Fails,
/// naming the skus, when reservations hold a sku the archive never adjusted (stock set outside
/// the log, before stock became events).
pub async fn settle_replayed_stock(tx: &mut PgConnection) -> Result<(), HandlerError> {
    let held = "SELECT i->>'sku' AS sku, sum((i->>'quantity')::bigint)::bigint AS qty
         FROM inventory.reservations r, jsonb_array_elements(r.items) i
         WHERE r.status = 'reserved' GROUP BY 1";
    let missing: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT h.sku, h.qty FROM ({held}) h LEFT JOIN inventory.stock s USING (sku)
         WHERE s.sku IS NULL ORDER BY h.sku LIMIT 10"
    ))
    .fetch_all(&mut *tx)
    .await?;
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(sku, held)| format!("{sku} (reservations hold {held})"))
            .collect();
        return Err(HandlerError::Diverged(format!(
            "the archive holds no StockAdjusted for skus its reservations hold: {}; their stock \
             was set outside the log, so this archive cannot restore it",
            list.join(", ")
        )));
    }
    sqlx::query(&format!(
        "UPDATE inventory.stock AS s SET available = s.available - h.qty, reserved = s.reserved + h.qty,
             updated_at = now()
         FROM ({held}) h WHERE s.sku = h.sku"
    ))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Write the available quantity of skus straight into `inventory.stock`, bypassing the log.
/// Only for tests seeding state a restore need not see: operators change stock with
/// [`crate::commands`] (`StockAdjusted` events), and a restore knows nothing of this.
pub async fn set_stock(tx: &mut PgConnection, stock: &[(String, i64)]) -> Result<(), sqlx::Error> {
    let skus: Vec<&str> = stock.iter().map(|(s, _)| s.as_str()).collect();
    let qty: Vec<i64> = stock.iter().map(|(_, q)| *q).collect();
    sqlx::query(
        "INSERT INTO inventory.stock (sku, available) SELECT * FROM UNNEST($1::text[], $2::bigint[])
         ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, updated_at = now()",
    )
    .bind(&skus)
    .bind(&qty)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One sku's stock as operators read it (`GET /v1/stock`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StockLevel {
    pub sku: String,
    /// Free to reserve.
    pub available: i64,
    /// Held by reservations not yet released.
    pub reserved: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// At most `limit` skus' stock in sku order, after `after` (keyset pagination); only `skus`
/// when given.
pub async fn stock_levels(
    conn: &mut PgConnection,
    skus: Option<&[String]>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<StockLevel>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, available, reserved, updated_at FROM inventory.stock
         WHERE ($1::text[] IS NULL OR sku = ANY($1)) AND ($2::text IS NULL OR sku > $2)
         ORDER BY sku LIMIT $3",
    )
    .bind(skus)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{
        self, adjusted, cancel_accepted, created, declined, ship_failed, timed_out,
    };
    use events::OrderLine;

    #[test]
    fn lines_of_one_sku_add_up_and_sort() {
        let line = |sku: &str, quantity| OrderLine {
            sku: sku.into(),
            quantity,
            unit_price_minor: 100,
        };
        let wanted = wanted_per_sku(&[line("B", 2), line("A", 1), line("B", 3)]);
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            vec![("A".to_string(), 1), ("B".to_string(), 5)]
        );
    }

    /// Given stock, when these events arrive, then these outcomes and this stock (available,
    /// moved to reserved) per sku.
    #[test]
    fn live_decisions() {
        type Case = (
            &'static str,
            &'static [(&'static str, i64)],
            Vec<Event>,
            &'static [&'static str],
            &'static [(&'static str, i64, i64)],
        );
        let cases: Vec<Case> = vec![
            (
                "reserves every line from stock",
                &[("A", 5), ("B", 1)],
                vec![created(
                    "o1",
                    &[("A", 2, 100), ("B", 1, 50), ("A", 1, 100)],
                    "DE",
                )],
                &["InventoryReserved"],
                &[("A", 2, 3), ("B", 0, 1)],
            ),
            (
                "all lines or none",
                &[("A", 5), ("B", 0)],
                vec![created("o1", &[("A", 1, 100), ("B", 1, 100)], "DE")],
                &["InventoryRejected"],
                &[("A", 5, 0), ("B", 0, 0)],
            ),
            (
                "a sku without stock is a shortage",
                &[("A", 5)],
                vec![created("o1", &[("Z", 1, 100)], "DE")],
                &["InventoryRejected"],
                &[("A", 5, 0)],
            ),
            (
                "two orders of one batch compete for the last unit; the first wins",
                &[("A", 1)],
                vec![
                    created("o1", &[("A", 1, 100)], "DE"),
                    created("o2", &[("A", 1, 100)], "DE"),
                ],
                &["InventoryReserved", "InventoryRejected"],
                &[("A", 0, 1)],
            ),
            (
                "a second OrderCreated for the order is refused",
                &[("A", 5)],
                vec![
                    created("o1", &[("A", 1, 100)], "DE"),
                    given::event(
                        "o1",
                        "created-again",
                        created("o1", &[("A", 3, 100)], "DE").body,
                    ),
                ],
                &["InventoryReserved", "fail:rule"],
                &[("A", 4, 1)],
            ),
            (
                "payment declined gives the stock back, once",
                &[("A", 5)],
                vec![
                    created("o1", &[("A", 2, 100)], "DE"),
                    declined("o1"),
                    timed_out("o1", "payment"),
                ],
                &["InventoryReserved", "InventoryReleased", "-"],
                &[("A", 5, 0)],
            ),
            (
                "shipment failed gives the stock back",
                &[("A", 5)],
                vec![created("o1", &[("A", 2, 100)], "DE"), ship_failed("o1")],
                &["InventoryReserved", "InventoryReleased"],
                &[("A", 5, 0)],
            ),
            (
                "a rejected order releases nothing",
                &[("A", 0)],
                vec![created("o1", &[("A", 2, 100)], "DE"), declined("o1")],
                &["InventoryRejected", "-"],
                &[("A", 0, 0)],
            ),
            (
                "a failure reply for an order never seen is a rule violation",
                &[("A", 5)],
                vec![ship_failed("o9")],
                &["fail:rule"],
                &[("A", 5, 0)],
            ),
            (
                "given up before deciding: nothing held, a late OrderCreated is refused",
                &[("A", 5)],
                vec![
                    timed_out("o1", "inventory"),
                    created("o1", &[("A", 1, 100)], "DE"),
                ],
                &["-", "InventoryRejected"],
                &[("A", 5, 0)],
            ),
            (
                "cancelled after the reservation: released",
                &[("A", 5)],
                vec![created("o1", &[("A", 3, 100)], "DE"), cancel_accepted("o1")],
                &["InventoryReserved", "InventoryReleased"],
                &[("A", 5, 0)],
            ),
        ];
        for (name, stock, events, outcomes, levels) in cases {
            let mut state = State::with_stock(stock);
            let got = given::run(&Inventory::new(), &mut state, &Answers::new(), &events);
            assert_eq!(got, outcomes, "{name}");
            for (sku, available, moved) in levels {
                let level = state.stock.get(*sku).copied().unwrap_or_default();
                assert_eq!(
                    (level.available, level.moved),
                    (*available, *moved),
                    "{name}: stock of {sku}"
                );
            }
        }
    }

    /// Given stock, when adjustments (and orders) arrive, then these outcomes and, per sku,
    /// (available, moved, adjusted). Adjustments reply nothing and apply in every mode.
    #[test]
    fn adjustments() {
        type Case = (
            &'static str,
            &'static [(&'static str, i64)],
            Vec<Event>,
            &'static [&'static str],
            &'static [(&'static str, i64, i64, i64)],
        );
        let cases: Vec<Case> = vec![
            (
                "the first level of a sku is an adjustment from nothing",
                &[],
                vec![adjusted("A", 5, "a1")],
                &["-"],
                &[("A", 5, 0, 5)],
            ),
            (
                "deltas add up, up and down",
                &[("A", 2)],
                vec![adjusted("A", 5, "a1"), adjusted("A", -3, "a2")],
                &["-", "-"],
                &[("A", 4, 0, 2)],
            ),
            (
                "an order reserves what an adjustment just added",
                &[],
                vec![
                    adjusted("A", 2, "a1"),
                    created("o1", &[("A", 2, 100)], "DE"),
                ],
                &["-", "InventoryReserved"],
                &[("A", 0, 2, 2)],
            ),
            (
                "units taken while reserved leave the level below zero; nothing reserves",
                &[("A", 3)],
                vec![
                    created("o1", &[("A", 2, 100)], "DE"),
                    adjusted("A", -3, "a1"),
                    created("o2", &[("A", 1, 100)], "DE"),
                ],
                &["InventoryReserved", "-", "InventoryRejected"],
                &[("A", -2, 2, -3)],
            ),
            (
                "a release after an adjustment gives the units back on top",
                &[("A", 2)],
                vec![
                    created("o1", &[("A", 2, 100)], "DE"),
                    adjusted("A", 4, "a1"),
                    declined("o1"),
                ],
                &["InventoryReserved", "-", "InventoryReleased"],
                &[("A", 6, 0, 4)],
            ),
        ];
        for (name, stock, events, outcomes, levels) in cases {
            for inventory in [Inventory::new(), Inventory::replaying(Arc::default())] {
                let replaying = inventory.recorded.is_some();
                let mut state = State::with_stock(stock);
                let got = given::run(&inventory, &mut state, &Answers::new(), &events);
                if !replaying {
                    assert_eq!(got, outcomes, "{name}");
                }
                for (sku, available, moved, adjusted) in levels {
                    let level = state.stock.get(*sku).copied().unwrap_or_default();
                    if replaying {
                        // Restoring, orders without a recorded answer are decided from stock
                        // like live ones; the adjustments are the same facts.
                        assert_eq!(level.adjusted, *adjusted, "{name} (replaying): {sku}");
                    } else {
                        assert_eq!(
                            (level.available, level.moved, level.adjusted),
                            (*available, *moved, *adjusted),
                            "{name}: stock of {sku}"
                        );
                    }
                }
            }
        }
        // Adjustments commute: any order of one batch's adjustments, the same level.
        let deltas = [
            adjusted("A", 5, "a1"),
            adjusted("A", -2, "a2"),
            adjusted("A", 9, "a3"),
        ];
        let mut seen = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]] {
            let mut state = State::default();
            let events: Vec<Event> = order.iter().map(|i| deltas[*i].clone()).collect();
            given::run(&Inventory::new(), &mut state, &Answers::new(), &events);
            seen.push(state.stock["A"]);
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(Inventory::new().wants(EventType::StockAdjusted));
    }

    #[test]
    fn replies_carry_what_was_decided() {
        let mut state = State::with_stock(&[("A", 1)]);
        let inventory = Inventory::new();
        let order = created("o1", &[("A", 3, 100)], "DE");
        let reply = inventory
            .decide(&mut state, &order, &Answers::new())
            .unwrap();
        assert_eq!(
            reply,
            vec![EventBody::InventoryRejected(InventoryRejected {
                reason: "insufficient stock for A".into(),
                shortages: vec![Shortage {
                    sku: "A".into(),
                    requested: 3,
                    available: 1,
                }],
            })]
        );
        let given_up = timed_out("o2", "inventory");
        inventory
            .decide(&mut state, &given_up, &Answers::new())
            .unwrap();
        let late = created("o2", &[("A", 1, 100)], "DE");
        let reply = inventory
            .decide(&mut state, &late, &Answers::new())
            .unwrap();
        assert!(
            matches!(&reply[..], [EventBody::InventoryRejected(r)] if r.reason.starts_with("order_abandoned")),
            "{reply:?}"
        );
        assert_eq!(state.abandoned.reason("o2"), Some("step_timed_out"));
    }

    /// Restoring: the archive's decision stands, whatever the stock says, and stock is never
    /// booked by the batch (it is settled once at the end).
    #[test]
    fn replayed_decisions() {
        let reserved = created("o1", &[("A", 3, 100)], "DE");
        let rejected = created("o2", &[("A", 1, 100)], "DE");
        let lost = created("o3", &[("A", 1, 100)], "DE");
        let mut recorded = Decisions::new();
        recorded.insert(reserved.meta.event_id, Decision::Reserved);
        recorded.insert(
            rejected.meta.event_id,
            Decision::Rejected {
                reason: "insufficient stock for A".into(),
                shortages: Vec::new(),
            },
        );
        let inventory = Inventory::replaying(Arc::new(recorded));
        // Stock 2 < 3 reserved in the archive: the archive wins (live, another partition got
        // there first). o3's answer was lost: decided from what is left (nothing).
        let mut state = State::with_stock(&[("A", 2)]);
        let got = given::run(
            &inventory,
            &mut state,
            &Answers::new(),
            &[reserved, rejected.clone(), lost],
        );
        assert_eq!(
            got,
            [
                "InventoryReserved",
                "InventoryRejected",
                "InventoryRejected"
            ]
        );
        // A reservation of a sku whose adjustments are not replayed yet (another partition)
        // stands: the stock is settled once at the end, when every adjustment is in.
        let mut state = State::with_stock(&[("B", 2)]);
        let mut recorded = Decisions::new();
        let order = created("o4", &[("A", 1, 100)], "DE");
        recorded.insert(order.meta.event_id, Decision::Reserved);
        let got = given::run(
            &Inventory::replaying(Arc::new(recorded.clone())),
            &mut state,
            &Answers::new(),
            std::slice::from_ref(&order),
        );
        assert_eq!(got, ["InventoryReserved"]);
        let mut state = State::with_stock(&[("A", 2)]);
        let got = given::run(
            &Inventory::replaying(Arc::new(recorded)),
            &mut state,
            &Answers::new(),
            &[cancel_accepted("o4"), order],
        );
        assert_eq!(got, ["-", "fail:diverged"]);
    }
}

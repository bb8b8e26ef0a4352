//! The inventory step: reserves stock for a new order, all lines or none, and releases the
//! reservation when a later step fails (payment declined, shipment failed) or the saga gives
//! the order up (see [`crate::give_up`]).
//!
//! Stock lives in `inventory.stock` (seeded with `orderflow stock set`); each decided order
//! has one row in `inventory.reservations`. It never calls other services.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use events::{
    Event, EventBody, EventType, InventoryRejected, InventoryReleased, InventoryReserved, Shortage,
    SkuQuantity,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{give_up, HandlerError, Step};

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

#[async_trait]
impl Step for Inventory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderCreated | EventType::PaymentDeclined | EventType::ShipmentFailed
        ) || give_up::is_marker(event_type)
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let live = self.recorded.is_none();
        match &event.body {
            EventBody::OrderCreated(order) => {
                let recorded = self
                    .recorded
                    .as_ref()
                    .and_then(|r| r.get(&event.meta.event_id));
                let booking = match &self.recorded {
                    None => Booking::Live,
                    Some(_) => Booking::Replay(recorded),
                };
                reserve(tx, event, &order.lines, booking).await
            }
            // The order failed after its stock was reserved: give the stock back.
            EventBody::PaymentDeclined(_) => release(tx, event, "payment_declined", live).await,
            EventBody::ShipmentFailed(_) => release(tx, event, "shipment_failed", live).await,
            body => match give_up::reason(body) {
                Some(reason) => {
                    give_up::record(tx, SCHEMA, event, reason).await?;
                    release(tx, event, reason, live).await
                }
                None => Ok(Vec::new()),
            },
        }
    }
}

/// Quantities per sku, lines of the same sku added up; sorted, so that concurrent batches lock
/// rows in the same order.
fn wanted_per_sku(lines: &[events::OrderLine]) -> BTreeMap<String, i64> {
    let mut wanted = BTreeMap::new();
    for line in lines {
        *wanted.entry(line.sku.clone()).or_insert(0i64) += i64::from(line.quantity);
    }
    wanted
}

/// How a reservation is decided and booked.
#[derive(Clone, Copy)]
enum Booking<'a> {
    /// From the stock, booked on it at once.
    Live,
    /// Restoring: the recorded decision, if the archive holds one, else from the stock minus
    /// what the reservations rebuilt so far hold; booked at the end.
    Replay(Option<&'a Decision>),
}

/// Units per sku held by reservations in status `reserved` (of the skus in `$1`).
const HELD: &str = "SELECT i->>'sku' AS sku, sum((i->>'quantity')::bigint)::bigint AS qty
     FROM inventory.reservations r, jsonb_array_elements(r.items) i
     WHERE r.status = 'reserved' AND i->>'sku' = ANY($1) GROUP BY 1";

async fn reserve(
    tx: &mut PgConnection,
    event: &Event,
    lines: &[events::OrderLine],
    booking: Booking<'_>,
) -> Result<Vec<EventBody>, HandlerError> {
    let order_id = &event.meta.order_id;
    let seen: Option<String> =
        sqlx::query_scalar("SELECT status FROM inventory.reservations WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(status) = seen {
        // A second OrderCreated for the same order id (with a different event id): the first
        // one decided; this one must not reserve again.
        return Err(HandlerError::Rule(format!(
            "order {order_id} was already created (reservation is {status}); duplicate OrderCreated ignored"
        )));
    }
    let wanted = wanted_per_sku(lines);
    let abandoned = give_up::abandoned(tx, SCHEMA, order_id).await?;
    let skus: Vec<&str> = wanted.keys().map(String::as_str).collect();
    let rows: Vec<(String, i64)> = match booking {
        Booking::Live | Booking::Replay(Some(_)) => {
            sqlx::query_as(
                "SELECT sku, available FROM inventory.stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
            )
            .bind(&skus)
            .fetch_all(&mut *tx)
            .await?
        }
        Booking::Replay(None) => {
            sqlx::query_as(&format!(
                "SELECT s.sku, s.available - COALESCE(h.qty, 0) FROM inventory.stock s
                 LEFT JOIN ({HELD}) h USING (sku) WHERE s.sku = ANY($1) ORDER BY s.sku"
            ))
            .persistent(false)
            .bind(&skus)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    let available: BTreeMap<String, i64> = rows.into_iter().collect();
    let shortages: Vec<Shortage> = wanted
        .iter()
        .filter_map(|(sku, &qty)| {
            let have = available.get(sku).copied().unwrap_or(0);
            (have < qty).then(|| Shortage {
                sku: sku.clone(),
                requested: clamp_i32(qty),
                available: clamp_i32(have),
            })
        })
        .collect();
    let reservation_id = events::reply_event_id(event.meta.event_id, "inventory-reservation");
    let items: Vec<SkuQuantity> = wanted
        .iter()
        .map(|(sku, &qty)| SkuQuantity {
            sku: sku.clone(),
            quantity: clamp_i32(qty),
        })
        .collect();
    let items_json = serde_json::Value::Array(
        items
            .iter()
            .map(|i| serde_json::json!({ "sku": i.sku, "quantity": i.quantity }))
            .collect(),
    );
    let mut rejection = None;
    match booking {
        Booking::Live | Booking::Replay(None) => {}
        Booking::Replay(Some(Decision::Reserved)) => {
            if let Some(why) = &abandoned {
                return Err(HandlerError::Diverged(format!(
                    "order {order_id} was reserved, but the rebuilt state has it given up ({why})"
                )));
            }
            if let Some(sku) = wanted.keys().find(|sku| !available.contains_key(*sku)) {
                return Err(HandlerError::Diverged(format!(
                    "order {order_id} reserved sku {sku}, which has no stock row; give its stock \
                     before the archive began (orderflow restore --stock)"
                )));
            }
        }
        Booking::Replay(Some(Decision::Rejected {
            reason,
            shortages: recorded,
        })) => {
            rejection = Some((reason.clone(), recorded.clone()));
        }
    }
    let recorded_reserved = matches!(booking, Booking::Replay(Some(Decision::Reserved)));
    let status = if (recorded_reserved || shortages.is_empty())
        && abandoned.is_none()
        && rejection.is_none()
    {
        "reserved"
    } else {
        "rejected"
    };
    sqlx::query("INSERT INTO inventory.reservations (order_id, reservation_id, status, items) VALUES ($1, $2, $3, $4)")
        .bind(order_id)
        .bind(reservation_id)
        .bind(status)
        .bind(&items_json)
        .execute(&mut *tx)
        .await?;
    if let Some((reason, shortages)) = rejection {
        return Ok(vec![EventBody::InventoryRejected(InventoryRejected {
            reason,
            shortages,
        })]);
    }
    if let Some(why) = abandoned {
        // The saga gave the order up before this step got to it (e.g. the OrderCreated was
        // redriven from the dead-letter topic after a timeout): reserve nothing.
        return Ok(vec![EventBody::InventoryRejected(InventoryRejected {
            reason: format!("{}: the order was given up ({why})", give_up::REFUSED),
            shortages: Vec::new(),
        })]);
    }
    if !recorded_reserved && !shortages.is_empty() {
        let skus: Vec<&str> = shortages.iter().map(|s| s.sku.as_str()).collect();
        return Ok(vec![EventBody::InventoryRejected(InventoryRejected {
            reason: format!("insufficient stock for {}", skus.join(", ")),
            shortages,
        })]);
    }
    if !matches!(booking, Booking::Live) {
        // Booked on the stock by settle_replayed_stock at the end of the restore.
        return Ok(vec![EventBody::InventoryReserved(InventoryReserved {
            reservation_id,
            items,
        })]);
    }
    let quantities: Vec<i64> = wanted.values().copied().collect();
    sqlx::query(
        "UPDATE inventory.stock AS s SET available = s.available - w.qty, reserved = s.reserved + w.qty, updated_at = now()
         FROM UNNEST($1::text[], $2::bigint[]) AS w(sku, qty) WHERE s.sku = w.sku",
    )
    .bind(&skus)
    .bind(&quantities)
    .execute(&mut *tx)
    .await?;
    Ok(vec![EventBody::InventoryReserved(InventoryReserved {
        reservation_id,
        items,
    })])
}

/// Compensation: return a reserved order's stock. Releasing twice, or releasing an order that
/// holds nothing, emits nothing.
async fn release(
    tx: &mut PgConnection,
    event: &Event,
    reason: &str,
    live: bool,
) -> Result<Vec<EventBody>, HandlerError> {
    let order_id = &event.meta.order_id;
    let row: Option<(uuid::Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT reservation_id, status, items FROM inventory.reservations WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((reservation_id, status, items_json)) = row else {
        if give_up::is_marker(event.event_type()) {
            // Given up before this step decided anything: nothing is held.
            return Ok(Vec::new());
        }
        return Err(HandlerError::Rule(format!(
            "order {order_id} has no reservation to release"
        )));
    };
    if status != "reserved" {
        tracing::info!(%order_id, status, "nothing to release");
        return Ok(Vec::new());
    }
    let items: Vec<SkuQuantity> = items_json
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
        .unwrap_or_default();
    let skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
    let quantities: Vec<i64> = items.iter().map(|i| i64::from(i.quantity)).collect();
    // Replaying, the stock is booked once at the end (settle_replayed_stock).
    if live {
        sqlx::query(
            "UPDATE inventory.stock AS s SET available = s.available + w.qty, reserved = s.reserved - w.qty, updated_at = now()
             FROM UNNEST($1::text[], $2::bigint[]) AS w(sku, qty) WHERE s.sku = w.sku",
        )
        .bind(&skus)
        .bind(&quantities)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE inventory.reservations SET status = 'released', updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    Ok(vec![EventBody::InventoryReleased(InventoryReleased {
        reservation_id,
        items,
        reason: reason.to_string(),
    })])
}

fn clamp_i32(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// End of a restore: book what the rebuilt reservations hold on the stock, which holds the
/// levels given before the archive began (available -= held, reserved += held). Fails, naming
/// the skus, when the stock given cannot cover what the archived reservations hold.
pub async fn settle_replayed_stock(tx: &mut PgConnection) -> Result<(), HandlerError> {
    let held = "SELECT i->>'sku' AS sku, sum((i->>'quantity')::bigint)::bigint AS qty
         FROM inventory.reservations r, jsonb_array_elements(r.items) i
         WHERE r.status = 'reserved' GROUP BY 1";
    let short: Vec<(String, i64, Option<i64>)> = sqlx::query_as(&format!(
        "SELECT h.sku, h.qty, s.available FROM ({held}) h LEFT JOIN inventory.stock s USING (sku)
         WHERE s.available IS NULL OR s.available < h.qty ORDER BY h.sku LIMIT 10"
    ))
    .fetch_all(&mut *tx)
    .await?;
    if !short.is_empty() {
        let list: Vec<String> = short
            .iter()
            .map(|(sku, held, given)| match given {
                Some(given) => format!("{sku} (reservations hold {held}, stock given {given})"),
                None => format!("{sku} (reservations hold {held}, no stock given)"),
            })
            .collect();
        return Err(HandlerError::Diverged(format!(
            "the stock given does not cover what the archived reservations hold: {}; pass the \
             stock before the archive began with orderflow restore --stock",
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

/// Set the available quantity of skus (the documented way to seed stock).
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

#[cfg(test)]
mod tests {
    use super::*;
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
}

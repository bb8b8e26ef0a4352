//! Operators' changes to stock and customer blocks, as events on the order log.
//!
//! Stock levels (`inventory.stock`) and blocked customers (`payment.blocked_customers`) change
//! only by `StockAdjusted`, `CustomerBlocked` and `CustomerUnblocked` events, which the
//! inventory and payment steps apply through the engine like every other event (inbox, once
//! each, in restores too). This module is the one way to append them, for `orderflow stock` /
//! `orderflow customers` and the operator API alike: it writes the events into
//! `pipeline.outbox` in the caller's transaction and nothing else — no step table. Whoever
//! owns the outbox step publishes them (the CLI right after its commit with
//! `platform::outbox::relay`, the API with its relay).
//!
//! Event ids come from a command id ([`event_id`]): a command retried with the same id
//! inserts nothing new (the outbox's `(step, event_id)` key), and a record produced twice is
//! applied once (the steps' inboxes).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::{
    customer_key, stock_key, CustomerBlocked, CustomerForgotten, CustomerUnblocked, Event,
    EventBody, EventType, Metadata, OrderCreated, StockAdjusted,
};
use platform::outbox::{OutboxRecord, OutboxRow};
use privacy::personal::ERASED;
use privacy::KeyRing;
use sqlx::PgConnection;
use uuid::Uuid;

/// The outbox step of the CLI's commands (the API uses its own, which its relay publishes).
pub const OUTBOX_STEP: &str = "operator";

/// Why a command appended nothing. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command breaks an event's rule (a blank sku, a zero delta, ...): the message says
    /// which, for the operator to fix the command (a 400 over HTTP).
    #[error("{0}")]
    Invalid(String),
    /// Postgres failed; retry the command with the same command id.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The id of the event of type `event_type` a command appends under `key` (`stock:A`,
/// `customer:c1`): a UUID v5 of the command id, the type and the key, so a retried command
/// names the same events and one command id never names two.
pub fn event_id(command_id: Uuid, event_type: EventType, key: &str) -> Uuid {
    Uuid::new_v5(&command_id, format!("{event_type}/{key}").as_bytes())
}

/// A stock or customer event: keyed by `key`, its own id as correlation and causation (a
/// command caused it, not another event).
fn standalone(command_id: Uuid, key: String, at: DateTime<Utc>, body: EventBody) -> Event {
    let id = event_id(command_id, body.event_type(), &key);
    Event {
        meta: Metadata {
            event_id: id,
            order_id: key,
            occurred_at: at,
            correlation_id: id,
            causation_id: id,
        },
        body,
    }
}

/// `StockAdjusted` of `sku` by `delta`, for `command_id`.
pub fn stock_adjusted(
    command_id: Uuid,
    sku: &str,
    delta: i64,
    reason: &str,
    at: DateTime<Utc>,
) -> Event {
    let body = EventBody::StockAdjusted(StockAdjusted {
        sku: sku.to_string(),
        delta,
        reason: reason.to_string(),
    });
    standalone(command_id, stock_key(sku), at, body)
}

/// `CustomerBlocked` of `customer_id`, for `command_id`.
pub fn customer_blocked(
    command_id: Uuid,
    customer_id: &str,
    note: &str,
    at: DateTime<Utc>,
) -> Event {
    let body = EventBody::CustomerBlocked(CustomerBlocked {
        customer_id: customer_id.to_string(),
        note: note.to_string(),
    });
    standalone(command_id, customer_key(customer_id), at, body)
}

/// `CustomerUnblocked` of `customer_id`, for `command_id`.
pub fn customer_unblocked(command_id: Uuid, customer_id: &str, at: DateTime<Utc>) -> Event {
    let body = EventBody::CustomerUnblocked(CustomerUnblocked {
        customer_id: customer_id.to_string(),
    });
    standalone(command_id, customer_key(customer_id), at, body)
}

/// Put `events` into the outbox under `step` for `topic`, in the caller's transaction; returns
/// the rows that are new (none when the command ran before with the same id). Each event is
/// encoded (so validated) first: an invalid one fails the whole command.
pub async fn append(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    events: &[Event],
) -> Result<Vec<OutboxRow>, CommandError> {
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        let payload = events::encode(event).map_err(|e| match e {
            events::EncodeError::Invalid(rule) => {
                CommandError::Invalid(format!("{}: {rule}", event.meta.order_id))
            }
            other => CommandError::Invalid(other.to_string()),
        })?;
        records.push(OutboxRecord {
            event_id: event.meta.event_id,
            event_type: event.event_type().as_str().to_string(),
            order_id: event.meta.order_id.clone(),
            topic: topic.to_string(),
            key: None,
            payload: Some(payload),
            headers: vec![
                ("event_type".into(), event.event_type().as_str().into()),
                ("event_id".into(), event.meta.event_id.to_string()),
            ],
        });
    }
    Ok(platform::outbox::insert(tx, step, records).await?)
}

/// Each sku's available units as the inventory step will have them once it has applied every
/// adjustment appended so far: `inventory.stock` plus the `StockAdjusted` events in the outbox
/// that its inbox does not hold yet. Skus never adjusted are 0.
pub async fn expected_levels(
    conn: &mut PgConnection,
    skus: &[&str],
) -> Result<BTreeMap<String, i64>, CommandError> {
    let mut levels: BTreeMap<String, i64> = skus.iter().map(|s| (s.to_string(), 0)).collect();
    let applied: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, available FROM inventory.stock WHERE sku = ANY($1)")
            .bind(skus)
            .fetch_all(&mut *conn)
            .await?;
    for (sku, available) in applied {
        levels.insert(sku, available);
    }
    let keys: Vec<String> = skus.iter().map(|s| stock_key(s)).collect();
    // Appended but not yet applied: a second `stock set` right after a first one must not add
    // the first one's delta again.
    let pending: Vec<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT o.payload FROM pipeline.outbox o
         WHERE o.event_type = $1 AND o.order_id = ANY($2)
           AND NOT EXISTS (SELECT 1 FROM pipeline.inbox i
                           WHERE i.step = $3 AND i.event_id = o.event_id)",
    )
    .bind(EventType::StockAdjusted.as_str())
    .bind(&keys)
    .bind(crate::inventory::NAME)
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    for payload in pending.into_iter().flatten() {
        if let Ok(Event {
            body: EventBody::StockAdjusted(adjusted),
            ..
        }) = events::decode(&payload)
        {
            *levels.entry(adjusted.sku).or_default() += adjusted.delta;
        }
    }
    Ok(levels)
}

/// The adjustments that take each sku from its `current` level to the `wanted` one, in sku
/// order; a sku already at its level needs none. Pure.
pub fn deltas_to(current: &BTreeMap<String, i64>, wanted: &[(String, i64)]) -> Vec<(String, i64)> {
    // By sku: a sku named twice takes its last level.
    let wanted: BTreeMap<&str, i64> = wanted.iter().map(|(s, q)| (s.as_str(), *q)).collect();
    let mut deltas = Vec::new();
    for (sku, level) in wanted {
        let delta = level.saturating_sub(current.get(sku).copied().unwrap_or(0));
        if delta != 0 {
            deltas.push((sku.to_string(), delta));
        }
    }
    deltas
}

/// `orderflow stock set`: append the adjustments that bring each sku's available units to
/// the level given, computed against [`expected_levels`]. Returns the events appended (none
/// when every sku is at its level already, or the command ran before).
///
/// The level is what the inventory step has applied, so an order reserved between this read
/// and the adjustment's application takes its units from the new level too: `set` is exact
/// only while no order of the sku is in flight. `adjust` has no such race.
pub async fn set_stock(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    command_id: Uuid,
    levels: &[(String, i64)],
    reason: &str,
) -> Result<Vec<Event>, CommandError> {
    if let Some((sku, qty)) = levels.iter().find(|(_, q)| *q < 0) {
        return Err(CommandError::Invalid(format!(
            "{sku}={qty}: a level is a whole number >= 0 (to take units away, use adjust)"
        )));
    }
    let skus: Vec<&str> = levels.iter().map(|(s, _)| s.as_str()).collect();
    let current = expected_levels(tx, &skus).await?;
    adjust_stock(
        tx,
        step,
        topic,
        command_id,
        &deltas_to(&current, levels),
        reason,
    )
    .await
}

/// `orderflow stock adjust`: append one `StockAdjusted` per `(sku, delta)`. Returns the events
/// (also when the command ran before and they were already appended).
pub async fn adjust_stock(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    command_id: Uuid,
    deltas: &[(String, i64)],
    reason: &str,
) -> Result<Vec<Event>, CommandError> {
    let at = Utc::now();
    let events: Vec<Event> = deltas
        .iter()
        .map(|(sku, delta)| stock_adjusted(command_id, sku, *delta, reason, at))
        .collect();
    append(tx, step, topic, &events).await?;
    Ok(events)
}

/// `orderflow customers block`: append `CustomerBlocked`.
pub async fn block_customer(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    command_id: Uuid,
    customer_id: &str,
    note: &str,
) -> Result<Event, CommandError> {
    let event = customer_blocked(command_id, customer_id, note, Utc::now());
    append(tx, step, topic, std::slice::from_ref(&event)).await?;
    Ok(event)
}

/// `orderflow customers unblock`: append `CustomerUnblocked`.
pub async fn unblock_customer(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    command_id: Uuid,
    customer_id: &str,
) -> Result<Event, CommandError> {
    let event = customer_unblocked(command_id, customer_id, Utc::now());
    append(tx, step, topic, std::slice::from_ref(&event)).await?;
    Ok(event)
}

/// `CustomerForgotten` of `customer_id`, for `command_id`.
pub fn customer_forgotten(
    command_id: Uuid,
    customer_id: &str,
    key_ids: Vec<Uuid>,
    at: DateTime<Utc>,
) -> Event {
    let body = EventBody::CustomerForgotten(CustomerForgotten {
        customer_id: customer_id.to_string(),
        key_ids,
    });
    standalone(command_id, customer_key(customer_id), at, body)
}

/// What `orderflow customers forget` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The `CustomerForgotten` appended (or appended by an earlier run of the same command).
    pub event: Event,
    /// False when the command ran before: nothing was changed or appended this time.
    pub new: bool,
    /// Rows scrubbed, by where they were.
    pub scrubbed: Vec<(&'static str, u64)>,
}

/// `orderflow customers forget` and `POST /v1/customers/{id}/forget`, in the caller's one
/// transaction: lock and destroy the customer's data keys (every sealed copy of their personal
/// fields — log, archive, backups — then reads as erased), scrub the personal fields Postgres
/// keeps in clear or sealed ([`scrub_customer`]), and append `CustomerForgotten` (naming the
/// destroyed keys, so a restore destroys them again) to the outbox. A customer never seen is
/// no error: the event is appended with no keys. A repeat with the same command id changes
/// nothing and appends nothing.
pub async fn forget_customer(
    tx: &mut PgConnection,
    step: &str,
    topic: &str,
    command_id: Uuid,
    customer_id: &str,
) -> Result<Forgotten, CommandError> {
    if customer_id.trim().is_empty() {
        return Err(CommandError::Invalid(
            "the customer id must not be blank".into(),
        ));
    }
    let key = customer_key(customer_id);
    let id = event_id(command_id, EventType::CustomerForgotten, &key);
    KeyRing::lock_customers(tx, &[customer_id]).await?;
    let earlier: Option<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT payload FROM pipeline.outbox WHERE step = $1 AND event_id = $2")
            .bind(step)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(payload) = earlier {
        let event = payload
            .as_deref()
            .and_then(|p| events::decode(p).ok())
            .filter(|e| matches!(&e.body, EventBody::CustomerForgotten(f) if f.customer_id == customer_id))
            .ok_or_else(|| {
                CommandError::Invalid(format!(
                    "command {command_id} was used before for another change; give a new --command-id"
                ))
            })?;
        return Ok(Forgotten {
            event,
            new: false,
            scrubbed: Vec::new(),
        });
    }
    let key_ids = KeyRing::destroy_customer(tx, customer_id).await?;
    let scrubbed = scrub_customer(tx, customer_id, command_id).await?;
    let event = customer_forgotten(command_id, customer_id, key_ids, Utc::now());
    append(tx, step, topic, std::slice::from_ref(&event)).await?;
    Ok(Forgotten {
        event,
        new: true,
        scrubbed,
    })
}

/// `order` with its personal fields erased (a clear order of a forgotten customer).
fn erase(order: &mut OrderCreated) {
    let a = &mut order.shipping_address;
    for field in [&mut a.name, &mut a.line1, &mut a.city, &mut a.postal_code] {
        *field = ERASED.to_string();
    }
    a.line2 = None;
    order.contact = None;
}

/// What to do with a stored record `payload` of a forgotten customer: `Some(new bytes)` to
/// replace it, `None` to keep it. A clear `OrderCreated` of the customer is re-encoded erased;
/// a sealed one (its key is destroyed), another customer's record or another event is kept;
/// bytes that do not decode but hold the customer id are replaced by a note (they may hold
/// anything the customer sent). Pure.
pub fn scrubbed_payload(payload: &[u8], customer_id: &str, command_id: Uuid) -> Option<Vec<u8>> {
    match events::decode(payload) {
        Ok(mut event) => {
            let EventBody::OrderCreated(order) = &mut event.body else {
                return None;
            };
            if order.customer_id != customer_id || order.sealed.is_some() {
                return None;
            }
            erase(order);
            events::encode(&event).ok()
        }
        Err(_) => {
            let needle = customer_id.as_bytes();
            payload
                .windows(needle.len().max(1))
                .any(|w| w == needle)
                .then(|| {
                    format!("{ERASED}: customer forgotten (command {command_id})").into_bytes()
                })
        }
    }
}

/// A JSON document of an order (`api.idempotency`'s request and response) with its personal
/// fields erased; `None` when it holds none. Pure.
pub fn scrubbed_document(value: &serde_json::Value) -> Option<serde_json::Value> {
    fn walk(v: &mut serde_json::Value) -> bool {
        let mut changed = false;
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(address)) = map.get_mut("shipping_address") {
                    for field in ["name", "line1", "city", "postal_code"] {
                        if let Some(f) = address.get_mut(field) {
                            if f.as_str() != Some(ERASED) {
                                *f = serde_json::Value::String(ERASED.into());
                                changed = true;
                            }
                        }
                    }
                    if address.get("line2").is_some_and(|l| !l.is_null()) {
                        address.insert("line2".into(), serde_json::Value::Null);
                        changed = true;
                    }
                }
                if map.get("contact").is_some_and(|c| !c.is_null()) {
                    map.insert("contact".into(), serde_json::Value::Null);
                    changed = true;
                }
                for (_, child) in map.iter_mut() {
                    changed |= walk(child);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    changed |= walk(item);
                }
            }
            _ => {}
        }
        changed
    }
    let mut copy = value.clone();
    walk(&mut copy).then_some(copy)
}

/// Scrub `customer_id`'s personal fields wherever Postgres keeps them: the shipping step's
/// kept addresses, dead letters and outbox rows whose bytes hold the customer's clear order
/// (or undecodable bytes naming them; a dead letter keeps its row and gets a history entry
/// saying so), parked clear orders (retried erased), and the API's idempotency records. Returns rows scrubbed per place.
pub async fn scrub_customer(
    tx: &mut PgConnection,
    customer_id: &str,
    command_id: Uuid,
) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let mut scrubbed = Vec::new();
    let shipping = crate::shipping::scrub(tx, &[customer_id.to_string()]).await?;
    scrubbed.push(("shipping.orders", shipping));

    let needle = customer_id.as_bytes();
    let letters: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, payload FROM pipeline.dead_letters
         WHERE payload IS NOT NULL AND position($1::bytea IN payload) > 0",
    )
    .bind(needle)
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for (id, payload) in letters {
        let Some(new) = scrubbed_payload(&payload, customer_id, command_id) else {
            continue;
        };
        let note = serde_json::json!([{
            "at": Utc::now(),
            "class": "permanent",
            "kind": "erased",
            "error": format!("payload scrubbed: customer forgotten (command {command_id})"),
        }]);
        sqlx::query(
            "UPDATE pipeline.dead_letters SET payload = $2, history = history || $3 WHERE id = $1",
        )
        .bind(id)
        .bind(&new)
        .bind(&note)
        .execute(&mut *tx)
        .await?;
        count += 1;
    }
    scrubbed.push(("pipeline.dead_letters", count));

    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, payload FROM pipeline.outbox
         WHERE payload IS NOT NULL AND position($1::bytea IN payload) > 0",
    )
    .bind(needle)
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for (id, payload) in rows {
        let Some(new) = scrubbed_payload(&payload, customer_id, command_id) else {
            continue;
        };
        sqlx::query("UPDATE pipeline.outbox SET payload = $2 WHERE id = $1")
            .bind(id)
            .bind(&new)
            .execute(&mut *tx)
            .await?;
        count += 1;
    }
    scrubbed.push(("pipeline.outbox", count));

    // A parked record waits for its retry: a clear order of the customer is retried erased;
    // anything else parked stays as it is (it must still apply).
    let parked: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, payload FROM pipeline.parked WHERE position($1::bytea IN payload) > 0",
    )
    .bind(needle)
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for (seq, payload) in parked {
        if events::decode(&payload).is_err() {
            continue;
        }
        let Some(new) = scrubbed_payload(&payload, customer_id, command_id) else {
            continue;
        };
        sqlx::query("UPDATE pipeline.parked SET payload = $2 WHERE seq = $1")
            .bind(seq)
            .bind(&new)
            .execute(&mut *tx)
            .await?;
        count += 1;
    }
    scrubbed.push(("pipeline.parked", count));

    let records: Vec<(String, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT order_id, request, response FROM api.idempotency WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut count = 0;
    for (order_id, request, response) in records {
        let (new_request, new_response) =
            (scrubbed_document(&request), scrubbed_document(&response));
        if new_request.is_none() && new_response.is_none() {
            continue;
        }
        sqlx::query("UPDATE api.idempotency SET request = $2, response = $3 WHERE order_id = $1")
            .bind(&order_id)
            .bind(new_request.unwrap_or(request))
            .bind(new_response.unwrap_or(response))
            .execute(&mut *tx)
            .await?;
        count += 1;
    }
    scrubbed.push(("api.idempotency", count));
    Ok(scrubbed)
}

#[cfg(test)]
mod tests;

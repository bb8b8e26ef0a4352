//! Typed event values as the rest of the workspace sees them. No wire-format concerns here.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What every event on the order log carries, whatever its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Unique per event; inboxes deduplicate on it.
    pub event_id: Uuid,
    /// The partitioning key: all events of one order share it and stay in order.
    pub order_id: String,
    /// When the fact happened, at microsecond precision.
    pub occurred_at: DateTime<Utc>,
    /// Shared by every event that descends from the same `OrderCreated`.
    pub correlation_id: Uuid,
    /// The event that caused this one; a root event (`OrderCreated`) names itself.
    pub causation_id: Uuid,
}

/// One event of the order log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub meta: Metadata,
    pub body: EventBody,
}

impl Event {
    /// Build an event caused by `cause`: same order, same correlation, `cause` as causation.
    pub fn caused_by(
        cause: &Event,
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
        body: EventBody,
    ) -> Event {
        Event {
            meta: Metadata {
                event_id,
                order_id: cause.meta.order_id.clone(),
                occurred_at,
                correlation_id: cause.meta.correlation_id,
                causation_id: cause.meta.event_id,
            },
            body,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }
}

/// The type tag of an event, as written in logs, headers and the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderCreated,
    InventoryReserved,
    InventoryRejected,
    InventoryReleased,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentVoided,
    ShipmentScheduled,
    ShipmentFailed,
    OrderCompleted,
    OrderCancelled,
    ShipmentCancelled,
    OrderCancellationRequested,
    OrderCancellationAccepted,
    OrderCancellationRejected,
    SagaStepTimedOut,
    StockAdjusted,
    CustomerBlocked,
    CustomerUnblocked,
    CustomerForgotten,
}

impl EventType {
    pub const ALL: [EventType; 20] = [
        EventType::OrderCreated,
        EventType::InventoryReserved,
        EventType::InventoryRejected,
        EventType::InventoryReleased,
        EventType::PaymentAuthorized,
        EventType::PaymentDeclined,
        EventType::PaymentVoided,
        EventType::ShipmentScheduled,
        EventType::ShipmentFailed,
        EventType::OrderCompleted,
        EventType::OrderCancelled,
        EventType::ShipmentCancelled,
        EventType::OrderCancellationRequested,
        EventType::OrderCancellationAccepted,
        EventType::OrderCancellationRejected,
        EventType::SagaStepTimedOut,
        EventType::StockAdjusted,
        EventType::CustomerBlocked,
        EventType::CustomerUnblocked,
        EventType::CustomerForgotten,
    ];

    /// Whether events of this type belong to an order's history. `StockAdjusted`,
    /// `CustomerBlocked`, `CustomerUnblocked` and `CustomerForgotten` do not: they share the order log so that the
    /// log and its archive hold the whole truth, under a key of their own ([`stock_key`],
    /// [`customer_key`]); every consumer skips or applies them explicitly (ARCHITECTURE.md).
    pub fn concerns_order(self) -> bool {
        !matches!(
            self,
            EventType::StockAdjusted
                | EventType::CustomerBlocked
                | EventType::CustomerUnblocked
                | EventType::CustomerForgotten
        )
    }

    /// The name used in schemas (`orderflow.events.<name>`), headers and read models.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "OrderCreated",
            EventType::InventoryReserved => "InventoryReserved",
            EventType::InventoryRejected => "InventoryRejected",
            EventType::InventoryReleased => "InventoryReleased",
            EventType::PaymentAuthorized => "PaymentAuthorized",
            EventType::PaymentDeclined => "PaymentDeclined",
            EventType::PaymentVoided => "PaymentVoided",
            EventType::ShipmentScheduled => "ShipmentScheduled",
            EventType::ShipmentFailed => "ShipmentFailed",
            EventType::OrderCompleted => "OrderCompleted",
            EventType::OrderCancelled => "OrderCancelled",
            EventType::ShipmentCancelled => "ShipmentCancelled",
            EventType::OrderCancellationRequested => "OrderCancellationRequested",
            EventType::OrderCancellationAccepted => "OrderCancellationAccepted",
            EventType::OrderCancellationRejected => "OrderCancellationRejected",
            EventType::SagaStepTimedOut => "SagaStepTimedOut",
            EventType::StockAdjusted => "StockAdjusted",
            EventType::CustomerBlocked => "CustomerBlocked",
            EventType::CustomerUnblocked => "CustomerUnblocked",
            EventType::CustomerForgotten => "CustomerForgotten",
        }
    }

    /// The schema version this build writes for the type, and the one every older version is
    /// upcast to when read (`schemas/<Type>.v<N>.avsc`; docs/schema-evolution.md).
    pub fn current_version(self) -> u32 {
        match self {
            EventType::OrderCreated => 2,
            _ => 1,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of an event, one variant per event type.
// `OrderCreated` (with the contact and sealed data of v2) is far larger than the others; it is
// also the most common event, decoded once per record and moved a handful of times, so
// boxing it would add an allocation to every decode to shrink the rare small ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    OrderCreated(OrderCreated),
    InventoryReserved(InventoryReserved),
    InventoryRejected(InventoryRejected),
    InventoryReleased(InventoryReleased),
    PaymentAuthorized(PaymentAuthorized),
    PaymentDeclined(PaymentDeclined),
    PaymentVoided(PaymentVoided),
    ShipmentScheduled(ShipmentScheduled),
    ShipmentFailed(ShipmentFailed),
    OrderCompleted(OrderCompleted),
    OrderCancelled(OrderCancelled),
    ShipmentCancelled(ShipmentCancelled),
    OrderCancellationRequested(OrderCancellationRequested),
    OrderCancellationAccepted(OrderCancellationAccepted),
    OrderCancellationRejected(OrderCancellationRejected),
    SagaStepTimedOut(SagaStepTimedOut),
    StockAdjusted(StockAdjusted),
    CustomerBlocked(CustomerBlocked),
    CustomerUnblocked(CustomerUnblocked),
    CustomerForgotten(CustomerForgotten),
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::OrderCreated(_) => EventType::OrderCreated,
            EventBody::InventoryReserved(_) => EventType::InventoryReserved,
            EventBody::InventoryRejected(_) => EventType::InventoryRejected,
            EventBody::InventoryReleased(_) => EventType::InventoryReleased,
            EventBody::PaymentAuthorized(_) => EventType::PaymentAuthorized,
            EventBody::PaymentDeclined(_) => EventType::PaymentDeclined,
            EventBody::PaymentVoided(_) => EventType::PaymentVoided,
            EventBody::ShipmentScheduled(_) => EventType::ShipmentScheduled,
            EventBody::ShipmentFailed(_) => EventType::ShipmentFailed,
            EventBody::OrderCompleted(_) => EventType::OrderCompleted,
            EventBody::OrderCancelled(_) => EventType::OrderCancelled,
            EventBody::ShipmentCancelled(_) => EventType::ShipmentCancelled,
            EventBody::OrderCancellationRequested(_) => EventType::OrderCancellationRequested,
            EventBody::OrderCancellationAccepted(_) => EventType::OrderCancellationAccepted,
            EventBody::OrderCancellationRejected(_) => EventType::OrderCancellationRejected,
            EventBody::SagaStepTimedOut(_) => EventType::SagaStepTimedOut,
            EventBody::StockAdjusted(_) => EventType::StockAdjusted,
            EventBody::CustomerBlocked(_) => EventType::CustomerBlocked,
            EventBody::CustomerUnblocked(_) => EventType::CustomerUnblocked,
            EventBody::CustomerForgotten(_) => EventType::CustomerForgotten,
        }
    }
}

/// One line of an order. Prices are in the currency's minor units (cents for EUR).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Address {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
}

/// How to reach the customer about an order. Personal data: see docs/schema-evolution.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// 3 to 254 characters, one `@` with a dotted domain after it.
    pub email: String,
    /// 3 to 32 characters of digits, spaces and `+ - ( ) .`, at least 3 of them digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// An order's personal fields, encrypted with the customer's data key (an AEAD, the order id
/// as associated data). This crate only carries it: it never encrypts or decrypts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPersonal {
    /// Which data key sealed the fields; never a key itself.
    pub key_id: String,
    /// The AEAD algorithm, e.g. `AES-256-GCM`.
    pub algorithm: String,
    pub nonce: Vec<u8>,
    /// The encrypted fields with the AEAD tag.
    pub ciphertext: Vec<u8>,
}

/// An order as the current model sees it (schema version 2). A version 1 record reads as this
/// with `contact` and `sealed` both `None` (the codec's `upcast_order_created_v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCreated {
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    /// ISO 4217 code, upper case.
    pub currency: String,
    pub shipping_address: Address,
    /// The customer's contact, when the order came with one (since v2).
    pub contact: Option<Contact>,
    /// The personal fields, encrypted, once the intake has sealed them (since v2); `None` from
    /// upstream producers and in every v1 record.
    pub sealed: Option<SealedPersonal>,
}

impl OrderCreated {
    /// Sum of quantity × unit price over all lines, in minor units.
    pub fn total_minor(&self) -> i64 {
        self.lines
            .iter()
            .map(|l| i64::from(l.quantity).saturating_mul(l.unit_price_minor))
            .fold(0i64, i64::saturating_add)
    }
}

/// A quantity of one sku, as reserved or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuQuantity {
    pub sku: String,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryReserved {
    pub reservation_id: uuid::Uuid,
    pub items: Vec<SkuQuantity>,
}

/// A sku that could not be reserved in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub sku: String,
    pub requested: i32,
    pub available: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryRejected {
    pub reason: String,
    pub shortages: Vec<Shortage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryReleased {
    pub reservation_id: uuid::Uuid,
    pub items: Vec<SkuQuantity>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAuthorized {
    pub payment_id: uuid::Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub provider_reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentDeclined {
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// A stable code, e.g. `amount_over_limit`, `customer_blocked`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentVoided {
    pub payment_id: uuid::Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentScheduled {
    pub shipment_id: uuid::Uuid,
    pub carrier: String,
    pub tracking_number: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentFailed {
    pub carrier: String,
    /// A stable code, e.g. `destination_not_served`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCompleted {
    pub total_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancelled {
    /// A stable code: `out_of_stock`, `payment_declined`, `shipment_failed`, ...
    pub reason: String,
    /// Human-readable detail for operators.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentCancelled {
    pub shipment_id: uuid::Uuid,
    pub carrier: String,
    /// A stable code, e.g. `order_cancelled`, `step_timed_out`.
    pub reason: String,
}

/// Someone asked to cancel the order; the saga decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancellationRequested {
    /// A stable code from the requester, e.g. `customer_request`.
    pub reason: String,
    /// A customer id, an operator or a service name.
    pub requested_by: String,
}

/// The saga accepted a cancellation: every step undoes what it holds and refuses further work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancellationAccepted {
    pub reason: String,
    pub requested_by: String,
}

/// The saga refused a cancellation request; the order goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancellationRejected {
    /// `already_shipped`, `already_cancelled`, `already_cancelling` or `unknown_order`.
    pub reason: String,
    pub detail: String,
}

/// A step missed its deadline: the saga gives the order up, like an accepted cancellation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStepTimedOut {
    /// `inventory`, `payment` or `shipping`.
    pub step: String,
    pub deadline: DateTime<Utc>,
    /// Deadlines the order has missed, this one included.
    pub attempts: i32,
}

/// The key, and the envelope's `order_id`, of a sku's `StockAdjusted` events: `stock:<sku>`.
/// One sku's adjustments share a partition and stay in order.
pub fn stock_key(sku: &str) -> String {
    format!("{STOCK_KEY_PREFIX}{sku}")
}

/// The key, and the envelope's `order_id`, of a customer's `CustomerBlocked` and
/// `CustomerUnblocked` events: `customer:<customer id>`. One customer's blocks and unblocks
/// share a partition and stay in order, which is what makes the last one win on a replay.
pub fn customer_key(customer_id: &str) -> String {
    format!("{CUSTOMER_KEY_PREFIX}{customer_id}")
}

/// What [`stock_key`] puts before the sku.
pub const STOCK_KEY_PREFIX: &str = "stock:";
/// What [`customer_key`] puts before the customer id.
pub const CUSTOMER_KEY_PREFIX: &str = "customer:";

/// The units of one sku that can be reserved changed by `delta` (not an order's event; keyed
/// by [`stock_key`]). The first level of a sku is an adjustment from nothing. Deltas commute:
/// applying a sku's adjustments in any order gives the same level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockAdjusted {
    pub sku: String,
    /// Units added (> 0) or taken away (< 0); never 0.
    pub delta: i64,
    /// Why, as the operator or tool wrote it; never blank.
    pub reason: String,
}

/// The payment provider declines the customer from now on (not an order's event; keyed by
/// [`customer_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerBlocked {
    pub customer_id: String,
    /// Why, as the operator wrote it; may be empty.
    pub note: String,
}

/// The payment provider authorizes the customer again (keyed by [`customer_key`]); payments
/// declined while blocked stay declined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerUnblocked {
    pub customer_id: String,
}

/// The customer was forgotten (keyed by [`customer_key`]): the data keys `key_ids` were
/// destroyed, so every personal field sealed under them reads as erased, and consumers scrub
/// what they kept of the customer's personal data. The customer id itself stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerForgotten {
    pub customer_id: String,
    /// The destroyed keys (possibly none: a customer who never had a sealed order).
    pub key_ids: Vec<uuid::Uuid>,
}

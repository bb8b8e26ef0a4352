//! What the HTTP API reads from the read models: one order with its lines, its timeline, a
//! filtered page of orders in (created_at, order_id) order, and the freshness of a partition.
//! Read-only, through the analysts' views (`analytics.*`, the live generation), each query a
//! key lookup or an index range: `orders` by primary key, `order_lines` by its primary key's
//! prefix, `order_events (order_id, partition, offset)`, and the pages by `orders (created_at,
//! order_id)` (the whole keyset, migration 20261129000030) or `orders (customer_id,
//! created_at)`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// One order as the read models hold it.
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

const ORDER_COLUMNS: &str =
    "order_id, customer_id, status, currency, total_minor, line_count, units,
    ship_country, created_at, reserved_at, paid_at, shipment_scheduled_at, carrier, completed_at,
    cancelled_at, cancel_reason, event_count, last_event_type, last_event_at";

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LineRow {
    pub line_no: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// One event of an order's timeline.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: uuid::Uuid,
    pub causation_id: uuid::Uuid,
    pub partition: i32,
    pub offset: i64,
    pub detail: serde_json::Value,
}

/// The order `order_id`, if the read models have it.
pub async fn order(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM analytics.orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

/// The lines of `order_id`, in line order.
pub async fn lines(conn: &mut PgConnection, order_id: &str) -> Result<Vec<LineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT line_no, sku, quantity, unit_price_minor, line_total_minor
         FROM analytics.order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// The timeline of `order_id`, in log order (one partition per order).
pub async fn events(conn: &mut PgConnection, order_id: &str) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, event_type, occurred_at, correlation_id, causation_id, partition,
                \"offset\", detail
         FROM analytics.order_events WHERE order_id = $1 ORDER BY partition, \"offset\"",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// Filters of a page of orders; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub customer_id: Option<String>,
    pub status: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// Up to `limit` orders matching `filter`, in (created_at, order_id) order, strictly after
/// `after` (the last of the page before). Ties on created_at are broken by order id, so a
/// walk page by page sees every order once.
pub async fn page(
    conn: &mut PgConnection,
    filter: &OrderFilter,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    // Unfiltered, a page is one range of `orders (created_at, order_id)` read in page order,
    // the cursor's row comparison its start; with a customer, `(customer_id, created_at)`
    // bounds the scan and the row comparison drops the ties already shown. Planned per call:
    // which index fits depends on the filters.
    sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM analytics.orders
         WHERE ($1::text IS NULL OR customer_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
           AND ($5::timestamptz IS NULL OR (created_at >= $5 AND (created_at, order_id) > ($5, $6)))
         ORDER BY created_at, order_id
         LIMIT $7"
    ))
    .persistent(false)
    .bind(filter.customer_id.as_deref())
    .bind(filter.status.as_deref())
    .bind(filter.created_from)
    .bind(filter.created_to)
    .bind(after.map(|(t, _)| t))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How fresh the read models are for the partition holding `order_id`'s events: when the
/// newest applied event of that partition occurred (`None` when the order is not projected or
/// nothing of its partition is applied). Two key lookups.
pub async fn order_watermark(
    conn: &mut PgConnection,
    topic: &str,
    order_id: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let row: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT last_event_at FROM analytics.watermarks
         WHERE model = 'orders' AND topic = $1
           AND partition = (SELECT partition FROM analytics.order_events WHERE order_id = $2 LIMIT 1)",
    )
    .bind(topic)
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.flatten())
}

/// The oldest of the partitions' newest applied event times: every partition has applied its
/// events up to at least this time (`None` when nothing is applied).
pub async fn watermark(
    conn: &mut PgConnection,
    topic: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(last_event_at) FROM analytics.watermarks WHERE model = 'orders' AND topic = $1",
    )
    .bind(topic)
    .fetch_one(conn)
    .await
}

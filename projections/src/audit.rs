//! What `orderflow check` and `orderflow status` read from the read models: the live
//! generation's positions and watermarks, the timeline's events, orders completed lately, and
//! orders' outcomes against given rules. Read-only queries through the analysts' views
//! (`analytics.*`), except the positions, which come from the live generation.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use crate::generations::{self, Generation};
use crate::store;

pub use platform::audit::Found;

/// Example rows returned with a count.
const EXAMPLES: i64 = 10;

/// Distinct events in the timeline (`analytics.order_events`).
pub async fn events(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM analytics.order_events")
        .fetch_one(conn)
        .await
}

/// Timeline rows beyond the first per (order, event type), for event types other than
/// `repeatable`; examples count orders per event type.
pub async fn timeline_duplicates(
    conn: &mut PgConnection,
    repeatable: &[&str],
) -> Result<Found, sqlx::Error> {
    let rows: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT event_type, count(*), sum(c - 1)::bigint, min(order_id) FROM
             (SELECT order_id, event_type, count(*) AS c FROM analytics.order_events
              WHERE event_type <> ALL($1) GROUP BY order_id, event_type HAVING count(*) > 1) x
         GROUP BY event_type ORDER BY event_type",
    )
    .bind(repeatable)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Found {
        count: rows.iter().map(|(_, _, extra, _)| extra).sum(),
        examples: rows
            .iter()
            .map(|(event_type, orders, _, example)| {
                format!(
                    "timeline: {orders} orders with more than one {event_type} (e.g. {example})"
                )
            })
            .collect(),
    })
}

/// The live generation and its stored positions in `topic` (partition → next offset).
pub async fn live_positions(
    conn: &mut PgConnection,
    topic: &str,
) -> anyhow::Result<(Generation, BTreeMap<i32, i64>)> {
    let live = generations::live(&mut *conn, false).await?;
    let positions = store::positions(&mut *conn, &live.target()?, false)
        .await?
        .into_iter()
        .filter(|p| p.topic == topic)
        .map(|p| (p.partition, p.next_offset))
        .collect();
    Ok((live, positions))
}

/// How far the live generation has applied one partition of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub partition: i32,
    /// Every record before this offset is applied.
    pub next_offset: i64,
    /// When the newest applied event of this partition occurred (`None`: nothing applied).
    pub last_event_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The live generation and its watermark per partition of `topic`: one row per partition from
/// its `positions` table (the freshness every read model shares, since the projector writes
/// them all in the transaction that moves the positions).
pub async fn watermarks(
    conn: &mut PgConnection,
    topic: &str,
) -> anyhow::Result<(Generation, Vec<Watermark>)> {
    let live = generations::live(&mut *conn, false).await?;
    let sql = format!(
        "SELECT partition, next_offset, last_event_at FROM {} WHERE topic = $1 ORDER BY partition",
        live.target()?.table("positions")
    );
    let rows: Vec<(i32, i64, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(&sql)
        .bind(topic)
        .fetch_all(&mut *conn)
        .await?;
    let marks = rows
        .into_iter()
        .map(|(partition, next_offset, last_event_at)| Watermark {
            partition,
            next_offset,
            last_event_at,
        })
        .collect();
    Ok((live, marks))
}

/// Orders the read model shows completed at or after `since` (event time): the pipeline's
/// output rate as analysts see it. Reads the partial index on `completed_at`.
pub async fn completed_since(
    conn: &mut PgConnection,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM analytics.orders WHERE completed_at >= $1")
        .bind(since)
        .fetch_one(&mut *conn)
        .await
}

/// What decides an order's outcome, in the order the pipeline asks: stock, then payment, then
/// the carrier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeRules {
    /// An order with a line of one of these skus is cancelled `out_of_stock`.
    pub out_of_stock_skus: Vec<String>,
    /// An order whose total is above this is cancelled `payment_declined`.
    pub decline_over_minor: i64,
    /// An order shipped to one of these countries is cancelled `shipment_failed`.
    pub unserved_countries: Vec<String>,
}

/// Orders whose id starts with `prefix` (all when `None`): how many, and those whose status
/// and cancel reason in the read model differ from what `rules` dictate.
pub async fn outcomes(
    conn: &mut PgConnection,
    prefix: Option<&str>,
    rules: &OutcomeRules,
) -> Result<(i64, Found), sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "WITH x AS (
             SELECT o.order_id, o.status || '/' || coalesce(o.cancel_reason, '') AS got,
                    CASE WHEN EXISTS (SELECT 1 FROM analytics.order_lines l
                                      WHERE l.order_id = o.order_id AND l.sku = ANY($2))
                             THEN 'cancelled/out_of_stock'
                         WHEN o.total_minor > $3 THEN 'cancelled/payment_declined'
                         WHEN o.ship_country = ANY($4) THEN 'cancelled/shipment_failed'
                         ELSE 'completed/' END AS expected
             FROM analytics.orders o WHERE left(o.order_id, length($1)) = $1)
         SELECT order_id || ': got ' || got || ', the rules say ' || expected, count(*) OVER ()
         FROM x WHERE got <> expected ORDER BY order_id LIMIT $5",
    )
    .bind(prefix.unwrap_or(""))
    .bind(&rules.out_of_stock_skus)
    .bind(rules.decline_over_minor)
    .bind(&rules.unserved_countries)
    .bind(EXAMPLES)
    .fetch_all(&mut *conn)
    .await?;
    let checked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics.orders WHERE left(order_id, length($1)) = $1",
    )
    .bind(prefix.unwrap_or(""))
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        checked,
        Found {
            count: rows.first().map_or(0, |(_, n)| *n),
            examples: rows.into_iter().map(|(line, _)| line).collect(),
        },
    ))
}

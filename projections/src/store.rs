//! Reading and writing the read models of one generation schema: the loads and writes of a
//! batch (the live projector and a rebuild's catch-up), positions. The SQL of every model is
//! here, but for the `COPY` of a bulk rebuild (`copy.rs`).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::{Changes, EventRow, LineRow, OrderRow, Rows, StepRow};

/// A generation schema the projection code may write: `analytics_g<N>` or a point-in-time
/// `analytics_pit_<N>`. The name is checked once here, so SQL can embed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    schema: String,
}

impl Target {
    pub fn new(schema: &str) -> anyhow::Result<Target> {
        let valid = schema.len() <= 63
            && schema.starts_with("analytics_")
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        anyhow::ensure!(
            valid,
            "{schema:?} is not a read-model schema name (analytics_<lowercase letters, digits, _>)"
        );
        Ok(Target {
            schema: schema.to_string(),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `"schema".table`
    pub(crate) fn table(&self, table: &str) -> String {
        format!("\"{}\".{table}", self.schema)
    }
}

/// How far a generation has applied one partition.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// What a batch adds to a partition's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub events_applied: i64,
}

/// Stored positions of `target`, optionally only for `partitions` of `topic`, locked for the
/// transaction when `lock` is set (writers of one generation then take turns per partition).
pub async fn positions(
    conn: &mut PgConnection,
    target: &Target,
    lock: bool,
) -> Result<Vec<Position>, sqlx::Error> {
    let sql = format!(
        "SELECT topic, partition, next_offset FROM {} ORDER BY topic, partition{}",
        target.table("positions"),
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as(&sql).fetch_all(conn).await
}

/// Move positions forward (never backwards) and count what was applied.
pub async fn advance(
    conn: &mut PgConnection,
    target: &Target,
    advances: &[Advance],
) -> Result<(), sqlx::Error> {
    if advances.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {t} AS p (topic, partition, next_offset, last_event_at, events_applied)
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::timestamptz[], $5::bigint[])
         ON CONFLICT (topic, partition) DO UPDATE SET
             next_offset = GREATEST(p.next_offset, EXCLUDED.next_offset),
             last_event_at = GREATEST(p.last_event_at, EXCLUDED.last_event_at),
             events_applied = p.events_applied + EXCLUDED.events_applied,
             updated_at = now()",
        t = target.table("positions")
    );
    sqlx::query(&sql)
        .bind(
            advances
                .iter()
                .map(|a| a.topic.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(advances.iter().map(|a| a.partition).collect::<Vec<_>>())
        .bind(advances.iter().map(|a| a.next_offset).collect::<Vec<_>>())
        .bind(advances.iter().map(|a| a.last_event_at).collect::<Vec<_>>())
        .bind(
            advances
                .iter()
                .map(|a| a.events_applied)
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    Ok(())
}

/// Insert timeline rows; returns the ids that were new (the others were applied before).
pub async fn insert_events(
    conn: &mut PgConnection,
    target: &Target,
    rows: &[&EventRow],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "INSERT INTO {} (event_id, order_id, event_type, schema_version, occurred_at, correlation_id,
                         causation_id, topic, partition, \"offset\", detail)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::uuid[],
                              $7::uuid[], $8::text[], $9::int[], $10::bigint[], $11::jsonb[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
        target.table("order_events")
    );
    let fresh: Vec<Uuid> = sqlx::query_scalar(&sql)
        .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_type).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.schema_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.correlation_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.causation_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.partition).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.offset).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| &r.detail).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    Ok(fresh.into_iter().collect())
}

/// Plan every read of the caller's transaction as the lookup by key it is. While a table's
/// statistics lag its growth (a cold start, a new generation filling up, autovacuum behind or
/// never yet there) the planner estimates a list of keys to match much of the table and scans
/// it whole, so every batch gets slower than the last: on a 1M-event cold start the loads took
/// 15-27 ms per batch instead of 3. Every read of a batch has an index on its key, so a scan is
/// never the better plan. `on` for the statements of a batch, then off again (a rebuild verifies
/// whole tables in the same transaction after its last batch).
pub async fn plan_key_lookups(conn: &mut PgConnection, on: bool) -> Result<(), sqlx::Error> {
    let sql = if on {
        "SET LOCAL enable_seqscan = off"
    } else {
        "RESET enable_seqscan"
    };
    sqlx::query(sql).execute(conn).await?;
    Ok(())
}

/// The stored state of `order_ids`: their order rows, lines and step rows.
///
/// These statements are planned on every call (`persistent(false)`): a cached generic plan made
/// while the tables were small keeps scanning them whole as they grow, which makes every batch
/// slower than the last.
pub async fn load(
    conn: &mut PgConnection,
    target: &Target,
    order_ids: &[&str],
) -> Result<(Vec<OrderRow>, Vec<LineRow>, Vec<StepRow>), sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(Default::default());
    }
    let orders = sqlx::query_as(&format!(
        "SELECT * FROM {} WHERE order_id = ANY($1) FOR UPDATE",
        target.table("orders")
    ))
    .persistent(false)
    .bind(order_ids)
    .fetch_all(&mut *conn)
    .await?;
    let lines = sqlx::query_as(&format!(
        "SELECT * FROM {} WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        target.table("order_lines")
    ))
    .persistent(false)
    .bind(order_ids)
    .fetch_all(&mut *conn)
    .await?;
    let steps = sqlx::query_as(&format!(
        "SELECT order_id, step, started_at, ended_at, outcome FROM {} WHERE order_id = ANY($1)",
        target.table("saga_step_durations")
    ))
    .persistent(false)
    .bind(order_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok((orders, lines, steps))
}

/// Write a batch's changes: created rows are inserted and stored rows updated (the fold knows
/// which is which, so no statement asks the table), aggregates add up. At most one statement
/// per table and kind of change, none for what did not change.
pub async fn write(
    conn: &mut PgConnection,
    target: &Target,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    write_orders(conn, target, &changes.orders).await?;
    insert_lines(conn, target, &changes.lines).await?;
    write_steps(conn, target, &changes.steps).await?;
    write_customers(conn, target, &changes.customers).await?;
    write_daily(conn, target, changes).await?;
    Ok(())
}

async fn write_orders(
    conn: &mut PgConnection,
    target: &Target,
    rows: &Rows<OrderRow>,
) -> Result<(), sqlx::Error> {
    if !rows.created.is_empty() {
        let sql = format!(
            "INSERT INTO {}
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::int[],
                                  $7::bigint[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                                  $11::timestamptz[], $12::timestamptz[], $13::text[], $14::timestamptz[],
                                  $15::timestamptz[], $16::text[], $17::int[], $18::text[], $19::timestamptz[])",
            target.table("orders")
        );
        let rows = &rows.created;
        let text = |f: fn(&OrderRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let time =
            |f: fn(&OrderRow) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&sql)
            .bind(text(|r| &r.order_id))
            .bind(text(|r| &r.customer_id))
            .bind(text(|r| &r.status))
            .bind(text(|r| &r.currency))
            .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.line_count).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.units).collect::<Vec<_>>())
            .bind(text(|r| &r.ship_country))
            .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
            .bind(time(|r| r.reserved_at))
            .bind(time(|r| r.paid_at))
            .bind(time(|r| r.shipment_scheduled_at))
            .bind(
                rows.iter()
                    .map(|r| r.carrier.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(time(|r| r.completed_at))
            .bind(time(|r| r.cancelled_at))
            .bind(
                rows.iter()
                    .map(|r| r.cancel_reason.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| r.event_count).collect::<Vec<_>>())
            .bind(text(|r| &r.last_event_type))
            .bind(rows.iter().map(|r| r.last_event_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !rows.changed.is_empty() {
        // Only what an event after `OrderCreated` can change.
        let sql = format!(
            "UPDATE {} AS o SET
                 status = d.status, reserved_at = d.reserved_at, paid_at = d.paid_at,
                 shipment_scheduled_at = d.shipment_scheduled_at, carrier = d.carrier,
                 completed_at = d.completed_at, cancelled_at = d.cancelled_at,
                 cancel_reason = d.cancel_reason, event_count = d.event_count,
                 last_event_type = d.last_event_type, last_event_at = d.last_event_at
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
                         $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::int[],
                         $11::text[], $12::timestamptz[])
                  AS d(order_id, status, reserved_at, paid_at, shipment_scheduled_at, carrier,
                       completed_at, cancelled_at, cancel_reason, event_count, last_event_type,
                       last_event_at)
             WHERE o.order_id = d.order_id",
            target.table("orders")
        );
        let rows = &rows.changed;
        let time =
            |f: fn(&OrderRow) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&sql)
            .persistent(false)
            .bind(rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
            .bind(time(|r| r.reserved_at))
            .bind(time(|r| r.paid_at))
            .bind(time(|r| r.shipment_scheduled_at))
            .bind(
                rows.iter()
                    .map(|r| r.carrier.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(time(|r| r.completed_at))
            .bind(time(|r| r.cancelled_at))
            .bind(
                rows.iter()
                    .map(|r| r.cancel_reason.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| r.event_count).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| r.last_event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| r.last_event_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_lines(
    conn: &mut PgConnection,
    target: &Target,
    rows: &[LineRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {}
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::int[], $5::bigint[], $6::bigint[],
                              $7::text[], $8::timestamptz[])",
        target.table("order_lines")
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.line_no).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.quantity).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.unit_price_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.line_total_minor).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

async fn write_steps(
    conn: &mut PgConnection,
    target: &Target,
    rows: &Rows<StepRow>,
) -> Result<(), sqlx::Error> {
    let table = target.table("saga_step_durations");
    let statements = [
        (
            &rows.created,
            format!(
                "INSERT INTO {table} (order_id, step, started_at, ended_at, outcome)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])"
            ),
        ),
        (
            &rows.changed,
            format!(
                "UPDATE {table} AS s SET started_at = d.started_at, ended_at = d.ended_at, outcome = d.outcome
                 FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])
                      AS d(order_id, step, started_at, ended_at, outcome)
                 WHERE s.order_id = d.order_id AND s.step = d.step"
            ),
        ),
    ];
    for (rows, sql) in statements {
        if rows.is_empty() {
            continue;
        }
        sqlx::query(&sql)
            .persistent(false)
            .bind(rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.step.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.ended_at).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| r.outcome.as_deref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn write_customers(
    conn: &mut PgConnection,
    target: &Target,
    deltas: &BTreeMap<(String, String), crate::fold::CustomerDelta>,
) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} AS c
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                              $7::bigint[], $8::timestamptz[], $9::timestamptz[])
         ON CONFLICT (customer_id, currency) DO UPDATE SET
             orders_placed = c.orders_placed + EXCLUDED.orders_placed,
             orders_completed = c.orders_completed + EXCLUDED.orders_completed,
             orders_cancelled = c.orders_cancelled + EXCLUDED.orders_cancelled,
             payment_declines = c.payment_declines + EXCLUDED.payment_declines,
             revenue_minor = c.revenue_minor + EXCLUDED.revenue_minor,
             first_order_at = LEAST(c.first_order_at, EXCLUDED.first_order_at),
             last_order_at = GREATEST(c.last_order_at, EXCLUDED.last_order_at)",
        target.table("customer_summary")
    );
    let values: Vec<_> = deltas.values().collect();
    sqlx::query(&sql)
        .bind(deltas.keys().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(deltas.keys().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .bind(values.iter().map(|d| d.orders_placed).collect::<Vec<_>>())
        .bind(
            values
                .iter()
                .map(|d| d.orders_completed)
                .collect::<Vec<_>>(),
        )
        .bind(
            values
                .iter()
                .map(|d| d.orders_cancelled)
                .collect::<Vec<_>>(),
        )
        .bind(
            values
                .iter()
                .map(|d| d.payment_declines)
                .collect::<Vec<_>>(),
        )
        .bind(values.iter().map(|d| d.revenue_minor).collect::<Vec<_>>())
        .bind(values.iter().map(|d| d.first_order_at).collect::<Vec<_>>())
        .bind(values.iter().map(|d| d.last_order_at).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

async fn write_daily(
    conn: &mut PgConnection,
    target: &Target,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    if !changes.daily.is_empty() {
        let sql = format!(
            "INSERT INTO {} AS d
             SELECT * FROM UNNEST($1::date[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
             ON CONFLICT (day, currency) DO UPDATE SET
                 orders_placed = d.orders_placed + EXCLUDED.orders_placed,
                 orders_completed = d.orders_completed + EXCLUDED.orders_completed,
                 orders_cancelled = d.orders_cancelled + EXCLUDED.orders_cancelled,
                 revenue_minor = d.revenue_minor + EXCLUDED.revenue_minor",
            target.table("daily_sales")
        );
        let (keys, values): (Vec<_>, Vec<_>) = changes.daily.iter().unzip();
        sqlx::query(&sql)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
            .bind(values.iter().map(|d| d.orders_placed).collect::<Vec<_>>())
            .bind(
                values
                    .iter()
                    .map(|d| d.orders_completed)
                    .collect::<Vec<_>>(),
            )
            .bind(
                values
                    .iter()
                    .map(|d| d.orders_cancelled)
                    .collect::<Vec<_>>(),
            )
            .bind(values.iter().map(|d| d.revenue_minor).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !changes.sku_daily.is_empty() {
        let sql = format!(
            "INSERT INTO {} AS s
             SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
             ON CONFLICT (day, sku, currency) DO UPDATE SET
                 units_ordered = s.units_ordered + EXCLUDED.units_ordered,
                 units_sold = s.units_sold + EXCLUDED.units_sold,
                 revenue_minor = s.revenue_minor + EXCLUDED.revenue_minor",
            target.table("sku_daily_sales")
        );
        let (keys, values): (Vec<_>, Vec<_>) = changes.sku_daily.iter().unzip();
        sqlx::query(&sql)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
            .bind(values.iter().map(|d| d.units_ordered).collect::<Vec<_>>())
            .bind(values.iter().map(|d| d.units_sold).collect::<Vec<_>>())
            .bind(values.iter().map(|d| d.revenue_minor).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !changes.cancellations.is_empty() {
        let sql = format!(
            "INSERT INTO {} AS c
             SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
             ON CONFLICT (day, reason, currency) DO UPDATE SET
                 orders_cancelled = c.orders_cancelled + EXCLUDED.orders_cancelled,
                 value_minor = c.value_minor + EXCLUDED.value_minor",
            target.table("cancellations_daily")
        );
        let (keys, values): (Vec<_>, Vec<_>) = changes.cancellations.iter().unzip();
        sqlx::query(&sql)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
            .bind(
                values
                    .iter()
                    .map(|d| d.orders_cancelled)
                    .collect::<Vec<_>>(),
            )
            .bind(values.iter().map(|d| d.value_minor).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_model_schema_names_are_targets() {
        for (name, ok) in [
            ("analytics_g1", true),
            ("analytics_pit_3", true),
            ("analytics", false),
            ("public", false),
            ("analytics_g1; drop table x", false),
            ("analytics_G1", false),
        ] {
            assert_eq!(Target::new(name).is_ok(), ok, "{name}");
        }
    }
}

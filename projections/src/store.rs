//! Reading and writing the read models of one generation schema: the loads of a batch, the
//! writer of a fold's changes (the live projector, a rebuild's catch-up and its bulk load),
//! positions, secondary indexes. The SQL of every model is here; the rows a fold created go in
//! with `COPY` (`copy.rs`).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::copy;
use crate::fold::{Changes, EventRow, LineRow, OrderRow, StepRow};

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

/// Write a fold's changes: the rows it created with `COPY`, the stored rows it changed with one
/// `UPDATE ... FROM UNNEST` per table, the aggregates added to with one upsert per table. The
/// fold knows which rows are new, so no statement asks the table; none runs for what did not
/// change. The live projector, a rebuild's catch-up and a rebuild's bulk load all write here.
pub async fn write(
    conn: &mut PgConnection,
    target: &Target,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    copy::orders(conn, &target.table("orders"), &changes.orders.created).await?;
    update_orders(conn, target, &changes.orders.changed).await?;
    copy::lines(conn, &target.table("order_lines"), &changes.lines).await?;
    copy::steps(
        conn,
        &target.table("saga_step_durations"),
        &changes.steps.created,
    )
    .await?;
    update_steps(conn, target, &changes.steps.changed).await?;
    write_customers(conn, target, &changes.customers).await?;
    write_daily(conn, target, changes).await?;
    Ok(())
}

/// Only what an event after `OrderCreated` can change.
async fn update_orders(
    conn: &mut PgConnection,
    target: &Target,
    rows: &[OrderRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
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
    let time = |f: fn(&OrderRow) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
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
    Ok(())
}

async fn update_steps(
    conn: &mut PgConnection,
    target: &Target,
    rows: &[StepRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE {} AS s SET started_at = d.started_at, ended_at = d.ended_at, outcome = d.outcome
         FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])
              AS d(order_id, step, started_at, ended_at, outcome)
         WHERE s.order_id = d.order_id AND s.step = d.step",
        target.table("saga_step_durations")
    );
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

/// Drop the secondary indexes of `target`'s tables (those neither primary nor unique) and
/// return their definitions, for [`create_indexes`] after a bulk load: one sort per index
/// instead of a tree insert per row.
pub async fn drop_secondary_indexes(
    conn: &mut PgConnection,
    target: &Target,
) -> Result<Vec<String>, sqlx::Error> {
    let secondary: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('%I.%I', n.nspname, ic.relname), pg_get_indexdef(i.indexrelid)
         FROM pg_index i
         JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = $1 AND NOT i.indisprimary AND NOT i.indisunique",
    )
    .bind(target.schema())
    .fetch_all(&mut *conn)
    .await?;
    for (index, _) in &secondary {
        sqlx::query(&format!("DROP INDEX {index}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(secondary
        .into_iter()
        .map(|(_, definition)| definition)
        .collect())
}

/// Build indexes from their definitions (as [`drop_secondary_indexes`] returned them).
pub async fn create_indexes(
    conn: &mut PgConnection,
    definitions: &[String],
) -> Result<(), sqlx::Error> {
    for definition in definitions {
        sqlx::query(definition).execute(&mut *conn).await?;
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

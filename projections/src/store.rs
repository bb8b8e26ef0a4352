//! Reading and writing the read models of one generation schema: incremental upserts for the
//! live projector and catch-up, `COPY` for bulk rebuilds. The SQL of every model is here.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

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
    fn table(&self, table: &str) -> String {
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
    rows: &[EventRow],
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
        .bind(rows.iter().map(|r| r.detail.clone()).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    Ok(fresh.into_iter().collect())
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

/// Write a batch's changes onto stored rows: full rows replace, aggregates add up.
pub async fn write(
    conn: &mut PgConnection,
    target: &Target,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    write_orders(conn, target, &changes.orders).await?;
    write_lines(conn, target, &changes.lines).await?;
    write_steps(conn, target, &changes.steps).await?;
    write_customers(conn, target, &changes.customers).await?;
    write_daily(conn, target, changes).await?;
    Ok(())
}

async fn write_orders(
    conn: &mut PgConnection,
    target: &Target,
    rows: &[OrderRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} AS o
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::int[],
                              $7::bigint[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                              $11::timestamptz[], $12::timestamptz[], $13::text[], $14::timestamptz[],
                              $15::timestamptz[], $16::text[], $17::int[], $18::text[], $19::timestamptz[])
         ON CONFLICT (order_id) DO UPDATE SET
             status = EXCLUDED.status, reserved_at = EXCLUDED.reserved_at, paid_at = EXCLUDED.paid_at,
             shipment_scheduled_at = EXCLUDED.shipment_scheduled_at, carrier = EXCLUDED.carrier,
             completed_at = EXCLUDED.completed_at, cancelled_at = EXCLUDED.cancelled_at,
             cancel_reason = EXCLUDED.cancel_reason, event_count = EXCLUDED.event_count,
             last_event_type = EXCLUDED.last_event_type, last_event_at = EXCLUDED.last_event_at",
        target.table("orders")
    );
    let text = |f: fn(&OrderRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let time = |f: fn(&OrderRow) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
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
        .execute(conn)
        .await?;
    Ok(())
}

async fn write_lines(
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
                              $7::text[], $8::timestamptz[])
         ON CONFLICT DO NOTHING",
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
    rows: &[StepRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} (order_id, step, started_at, ended_at, outcome)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])
         ON CONFLICT (order_id, step) DO UPDATE SET
             started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, outcome = EXCLUDED.outcome",
        target.table("saga_step_durations")
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.step.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.ended_at).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.outcome.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(conn)
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

/// Bulk-load a fold from empty into empty tables with `COPY`: the rebuild's speed path.
/// Secondary indexes are dropped first and built again at the end (one sort each instead of a
/// tree insert per row), inside the caller's transaction. Returns the number of rows written.
pub async fn copy_all(
    conn: &mut PgConnection,
    target: &Target,
    changes: &Changes,
    events: &[EventRow],
) -> Result<u64, sqlx::Error> {
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
    let rows = copy_tables(conn, target, changes, events).await?;
    for (_, definition) in &secondary {
        sqlx::query(definition).execute(&mut *conn).await?;
    }
    Ok(rows)
}

async fn copy_tables(
    conn: &mut PgConnection,
    target: &Target,
    changes: &Changes,
    events: &[EventRow],
) -> Result<u64, sqlx::Error> {
    let mut rows = 0;
    rows += copy_events(conn, &target.table("order_events"), events).await?;
    rows += copy(conn, &target.table("orders"),
        "order_id, customer_id, status, currency, total_minor, line_count, units, ship_country, created_at, reserved_at, paid_at, shipment_scheduled_at, carrier, completed_at, cancelled_at, cancel_reason, event_count, last_event_type, last_event_at",
        &changes.orders, |w, r| {
            w.text(&r.order_id).text(&r.customer_id).text(&r.status).text(&r.currency)
                .int(r.total_minor).int(r.line_count.into()).int(r.units).text(&r.ship_country)
                .time(Some(r.created_at)).time(r.reserved_at).time(r.paid_at)
                .time(r.shipment_scheduled_at).opt_text(r.carrier.as_deref()).time(r.completed_at)
                .time(r.cancelled_at).opt_text(r.cancel_reason.as_deref()).int(r.event_count.into())
                .text(&r.last_event_type).time(Some(r.last_event_at));
        }).await?;
    rows += copy(conn, &target.table("order_lines"),
        "order_id, line_no, sku, quantity, unit_price_minor, line_total_minor, currency, created_at",
        &changes.lines, |w, r| {
            w.text(&r.order_id).int(r.line_no.into()).text(&r.sku).int(r.quantity.into())
                .int(r.unit_price_minor).int(r.line_total_minor).text(&r.currency)
                .time(Some(r.created_at));
        }).await?;
    rows += copy(
        conn,
        &target.table("saga_step_durations"),
        "order_id, step, started_at, ended_at, outcome",
        &changes.steps,
        |w, r| {
            w.text(&r.order_id)
                .text(&r.step)
                .time(Some(r.started_at))
                .time(r.ended_at)
                .opt_text(r.outcome.as_deref());
        },
    )
    .await?;
    let customers: Vec<_> = changes.customers.iter().collect();
    rows += copy(conn, &target.table("customer_summary"),
        "customer_id, currency, orders_placed, orders_completed, orders_cancelled, payment_declines, revenue_minor, first_order_at, last_order_at",
        &customers, |w, (k, d)| {
            w.text(&k.0).text(&k.1).int(d.orders_placed).int(d.orders_completed)
                .int(d.orders_cancelled).int(d.payment_declines).int(d.revenue_minor)
                .time(d.first_order_at).time(d.last_order_at);
        }).await?;
    let daily: Vec<_> = changes.daily.iter().collect();
    rows += copy(
        conn,
        &target.table("daily_sales"),
        "day, currency, orders_placed, orders_completed, orders_cancelled, revenue_minor",
        &daily,
        |w, (k, d)| {
            w.text(&k.0.to_string())
                .text(&k.1)
                .int(d.orders_placed)
                .int(d.orders_completed)
                .int(d.orders_cancelled)
                .int(d.revenue_minor);
        },
    )
    .await?;
    let skus: Vec<_> = changes.sku_daily.iter().collect();
    rows += copy(
        conn,
        &target.table("sku_daily_sales"),
        "day, sku, currency, units_ordered, units_sold, revenue_minor",
        &skus,
        |w, (k, d)| {
            w.text(&k.0.to_string())
                .text(&k.1)
                .text(&k.2)
                .int(d.units_ordered)
                .int(d.units_sold)
                .int(d.revenue_minor);
        },
    )
    .await?;
    let reasons: Vec<_> = changes.cancellations.iter().collect();
    rows += copy(
        conn,
        &target.table("cancellations_daily"),
        "day, reason, currency, orders_cancelled, value_minor",
        &reasons,
        |w, (k, d)| {
            w.text(&k.0.to_string())
                .text(&k.1)
                .text(&k.2)
                .int(d.orders_cancelled)
                .int(d.value_minor);
        },
    )
    .await?;
    Ok(rows)
}

/// `COPY` timeline rows into `table` (a qualified name with the `order_events` columns).
pub async fn copy_events(
    conn: &mut PgConnection,
    table: &str,
    events: &[EventRow],
) -> Result<u64, sqlx::Error> {
    copy(conn, table,
        "event_id, order_id, event_type, schema_version, occurred_at, correlation_id, causation_id, topic, partition, \"offset\", detail",
        events, |w, r| {
            w.uuid(r.event_id).text(&r.order_id).text(r.event_type).int(r.schema_version.into())
                .time(Some(r.occurred_at)).uuid(r.correlation_id).uuid(r.causation_id).text(&r.topic)
                .int(r.partition.into()).int(r.offset).text(&r.detail.to_string());
        }).await
}

/// Bytes sent to the server per `COPY` message.
const COPY_CHUNK: usize = 1 << 20;

async fn copy<R>(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: &[R],
    write_row: impl Fn(&mut CopyRow<'_>, &R),
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let statement = format!("COPY {table} ({columns}) FROM STDIN");
    let mut copy = conn.copy_in_raw(&statement).await?;
    let mut buffer = Vec::with_capacity(COPY_CHUNK + 4096);
    for row in rows {
        let mut line = CopyRow {
            out: &mut buffer,
            first: true,
        };
        write_row(&mut line, row);
        buffer.push(b'\n');
        if buffer.len() >= COPY_CHUNK {
            copy.send(std::mem::take(&mut buffer)).await?;
            buffer.reserve(COPY_CHUNK + 4096);
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer).await?;
    }
    copy.finish().await
}

/// One line of `COPY ... FROM STDIN` text format: tab-separated, `\N` for NULL, backslash
/// escapes for the characters the format reserves.
struct CopyRow<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl CopyRow<'_> {
    fn sep(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b'\t');
        }
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.sep();
        for byte in value.bytes() {
            match byte {
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\t' => self.out.extend_from_slice(b"\\t"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                other => self.out.push(other),
            }
        }
        self
    }

    fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    fn null(&mut self) -> &mut Self {
        self.sep();
        self.out.extend_from_slice(b"\\N");
        self
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.sep();
        self.out.extend_from_slice(value.to_string().as_bytes());
        self
    }

    fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.sep();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.out
            .extend_from_slice(value.hyphenated().encode_lower(&mut buf).as_bytes());
        self
    }

    /// Microsecond precision with an explicit UTC offset, so the session time zone is irrelevant.
    fn time(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(t) => {
                self.sep();
                self.out
                    .extend_from_slice(t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string().as_bytes());
                self
            }
            None => self.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_the_format_reserves() {
        let mut out = Vec::new();
        let mut row = CopyRow {
            out: &mut out,
            first: true,
        };
        row.text("a\tb\\c\nd").null().int(-5).opt_text(None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\\\c\\nd\t\\N\t-5\t\\N"
        );
    }

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

//! The rebuild's speed path: a fold from empty written into the empty tables of a generation
//! with `COPY ... FROM STDIN` (text format), secondary indexes built after the load.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::{Changes, EventRow};
use crate::store::Target;

/// Bulk-load a fold from empty into empty tables with `COPY`: the rebuild's speed path. A fold
/// from empty only creates rows, so every row of `changes` is new.
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
    debug_assert!(changes.orders.changed.is_empty() && changes.steps.changed.is_empty());
    let mut rows = 0;
    rows += copy_events(conn, &target.table("order_events"), events).await?;
    rows += copy(conn, &target.table("orders"),
        "order_id, customer_id, status, currency, total_minor, line_count, units, ship_country, created_at, reserved_at, paid_at, shipment_scheduled_at, carrier, completed_at, cancelled_at, cancel_reason, event_count, last_event_type, last_event_at",
        &changes.orders.created, |w, r| {
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
        &changes.steps.created,
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
}

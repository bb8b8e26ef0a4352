//! `COPY ... FROM STDIN` (text format) of rows that are new to their table: the orders, lines
//! and step rows a fold created, and timeline rows. The writer of both the live projector
//! (`store::write`, for the rows each batch creates) and a rebuild's bulk load (every row).
//! Nothing here asks whether a row exists; callers know it does not.

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::{EventRow, LineRow, OrderRow, StepRow};

/// `COPY` `orders` rows into `table` (a qualified name).
pub async fn orders(
    conn: &mut PgConnection,
    table: &str,
    rows: &[OrderRow],
) -> Result<u64, sqlx::Error> {
    copy(conn, table,
        "order_id, customer_id, status, currency, total_minor, line_count, units, ship_country, created_at, reserved_at, paid_at, shipment_scheduled_at, carrier, completed_at, cancelled_at, cancel_reason, event_count, last_event_type, last_event_at",
        rows, |w, r| {
            w.text(&r.order_id).text(&r.customer_id).text(&r.status).text(&r.currency)
                .int(r.total_minor).int(r.line_count.into()).int(r.units).text(&r.ship_country)
                .time(Some(r.created_at)).time(r.reserved_at).time(r.paid_at)
                .time(r.shipment_scheduled_at).opt_text(r.carrier.as_deref()).time(r.completed_at)
                .time(r.cancelled_at).opt_text(r.cancel_reason.as_deref()).int(r.event_count.into())
                .text(&r.last_event_type).time(Some(r.last_event_at));
        }).await
}

/// `COPY` `order_lines` rows into `table` (a qualified name).
pub async fn lines(
    conn: &mut PgConnection,
    table: &str,
    rows: &[LineRow],
) -> Result<u64, sqlx::Error> {
    copy(conn, table,
        "order_id, line_no, sku, quantity, unit_price_minor, line_total_minor, currency, created_at",
        rows, |w, r| {
            w.text(&r.order_id).int(r.line_no.into()).text(&r.sku).int(r.quantity.into())
                .int(r.unit_price_minor).int(r.line_total_minor).text(&r.currency)
                .time(Some(r.created_at));
        }).await
}

/// `COPY` `saga_step_durations` rows into `table` (a qualified name).
pub async fn steps(
    conn: &mut PgConnection,
    table: &str,
    rows: &[StepRow],
) -> Result<u64, sqlx::Error> {
    copy(
        conn,
        table,
        "order_id, step, started_at, ended_at, outcome",
        rows,
        |w, r| {
            w.text(&r.order_id)
                .text(&r.step)
                .time(Some(r.started_at))
                .time(r.ended_at)
                .opt_text(r.outcome.as_deref());
        },
    )
    .await
}

/// `COPY` timeline rows into `table` (a qualified name with the `order_events` columns).
pub async fn events(
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
        // Writing into a Vec cannot fail.
        let _ = write!(self.out, "{value}");
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
                // Written field by field: chrono's `format` parses its pattern on every call,
                // a measurable part of a live batch's CPU.
                let _ = write!(
                    self.out,
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                    t.year(),
                    t.month(),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    // A leap second's nanoseconds run past 10^9; the text format has no place
                    // for them.
                    (t.nanosecond() / 1000).min(999_999)
                );
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
    fn copy_text_writes_times_as_chrono_formats_them() {
        use chrono::TimeZone;
        for micros in [
            0,
            1,
            999_999,
            1_764_417_600_123_456,
            -1_000_001,
            253_402_300_799_999_999,
        ] {
            let t = Utc.timestamp_micros(micros).single().expect("in range");
            let mut out = Vec::new();
            CopyRow {
                out: &mut out,
                first: true,
            }
            .time(Some(t));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                "{micros}"
            );
        }
    }
}

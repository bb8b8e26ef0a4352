//! `orderflow state digest`: a row count and an order-independent checksum of every table that
//! holds pipeline state — the steps' schemas, the pipeline's inbox/outbox/dead letters, the
//! customers' data keys and the analysts' read models — so that two databases can be compared row by row (the DR drill
//! compares the state before a disaster with the state restored from the archive).
//!
//! Compared is what the log determines. Left out are the times this database did its own work
//! (`created_at`, `processed_at`, ...: a restore does that work again, later), surrogate keys
//! drawn from sequences, and the bytes of outbox rows (a rebuilt reply carries the time it was
//! rebuilt; its archived copy is the one on the log). Publication times are compared as
//! published or not. The outbox rows of the log's front doors — the HTTP API's (`api`), the
//! operator commands' (`operator`: stock adjustments, customer blocks) and the intake's
//! (`intake`: upstream orders, sealed) — are left out: they carried commands or upstream records
//! onto the log, where their records are, and a restore replays the log, not the commands. For
//! the intake, so are its inbox rows and dead letters: they are about the intake topic, which
//! is not archived (it keeps records a day), not about the log.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use sqlx::PgPool;

/// Schemas whose tables are compared, and the analysts' schema, whose views are.
/// `privacy` is the data keys: restored from a key backup, not from the log, and compared so
/// that the drill shows the backup brought back every key (wrapped bytes included).
const STATE_SCHEMAS: [&str; 6] = [
    "inventory",
    "payment",
    "shipping",
    "saga",
    "pipeline",
    "privacy",
];
const ANALYTICS: &str = "analytics";

/// Columns holding the time this database did something, never compared.
const OWN_TIMES: [&str; 11] = [
    "created_at",
    "updated_at",
    "processed_at",
    "recorded_at",
    "parked_at",
    "next_attempt_at",
    "abandoned_at",
    "dead_lettered_at",
    "first_failed_at",
    "last_failed_at",
    // Every attempt with its time.
    "history",
];

/// Columns compared only as set or not.
const SET_OR_NOT: [&str; 3] = ["published_at", "redriven_at", "destroyed_at"];

/// Columns left out of one table.
const TABLE_COLUMNS_LEFT_OUT: [(&str, &str); 5] = [
    ("pipeline.outbox", "payload"),
    ("pipeline.outbox", "headers"),
    // The span that decided a row: a new one in every run, none in a restore's replay.
    ("pipeline.outbox", "trace_context"),
    // Which generation serves analysts depends on the rebuilds a database went through.
    ("analytics.watermarks", "generation"),
    ("analytics.watermarks", "updated_at"),
];

/// Rows left out of one table (an SQL condition the compared rows meet).
const TABLE_ROWS: [(&str, &str); 3] = [
    (
        "pipeline.outbox",
        "step NOT IN ('api', 'operator', 'intake')",
    ),
    ("pipeline.inbox", "step <> 'intake'"),
    ("pipeline.dead_letters", "consumer <> 'intake'"),
];

/// The `WHERE` clause of `table`'s compared rows (empty: all).
fn rows_of(table: &str) -> String {
    TABLE_ROWS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, condition)| format!(" WHERE {condition}"))
        .unwrap_or_default()
}

/// One table's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub table: String,
    pub rows: i64,
    pub checksum: String,
}

/// Every compared table, with the expression of its compared columns.
async fn tables(pool: &PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let columns: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT c.table_schema, c.table_name, c.column_name, c.column_default
         FROM information_schema.columns c
         JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE (c.table_schema = ANY($1) AND t.table_type = 'BASE TABLE')
            OR (c.table_schema = $2 AND t.table_type = 'VIEW')
         ORDER BY c.table_schema, c.table_name, c.ordinal_position",
    )
    .bind(STATE_SCHEMAS)
    .bind(ANALYTICS)
    .fetch_all(pool)
    .await
    .context("listing the state tables")?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (schema, table, column, default) in columns {
        let name = format!("{schema}.{table}");
        let left_out = OWN_TIMES.contains(&column.as_str())
            || default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("))
            || TABLE_COLUMNS_LEFT_OUT.contains(&(name.as_str(), column.as_str()));
        if out.last().is_none_or(|(n, _)| *n != name) {
            out.push((name, Vec::new()));
        }
        if left_out {
            continue;
        }
        let quoted = format!("\"{}\"", column.replace('"', "\"\""));
        let expression = if SET_OR_NOT.contains(&column.as_str()) {
            format!("({quoted} IS NOT NULL)")
        } else {
            quoted
        };
        if let Some((_, exprs)) = out.last_mut() {
            exprs.push(expression);
        }
    }
    Ok(out
        .into_iter()
        .filter(|(_, exprs)| !exprs.is_empty())
        .map(|(name, exprs)| (name, format!("ROW({})", exprs.join(", "))))
        .collect())
}

/// Row count and checksum (sum of the rows' 64-bit md5 prefixes) of every compared table.
pub async fn digests(pool: &PgPool) -> anyhow::Result<Vec<TableDigest>> {
    let mut out = Vec::new();
    for (table, row) in tables(pool).await? {
        let (rows, checksum): (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), COALESCE(sum(('x' || substr(md5({row}::text), 1, 16))::bit(64)::bigint::numeric), 0)::text
             FROM {table}{}",
            rows_of(&table)
        ))
        .fetch_one(pool)
        .await
        .with_context(|| format!("digesting {table}"))?;
        out.push(TableDigest {
            table,
            rows,
            checksum,
        });
    }
    Ok(out)
}

/// Every compared table with its rows as text, sorted.
pub async fn rows(pool: &PgPool) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    for (table, row) in tables(pool).await? {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT {row}::text AS r FROM {table}{} ORDER BY r",
            rows_of(&table)
        ))
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading {table}"))?;
        out.push((table, rows));
    }
    Ok(out)
}

/// Write every compared table's rows, as text and sorted, to `dir/<table>.rows`, for `diff`.
pub async fn dump(pool: &PgPool, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (table, rows) in rows(pool).await? {
        let mut text = String::new();
        for row in rows {
            let _ = writeln!(text, "{row}");
        }
        let path = dir.join(format!("{table}.rows"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

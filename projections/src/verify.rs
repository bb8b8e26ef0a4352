//! Comparing two generations table by table: row counts, an order-independent checksum, and
//! for tables that differ the first rows found on only one side.

use std::fmt;

use sqlx::PgConnection;

use crate::fold::MODELS;
use crate::store::Target;

/// How one table compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    pub table: &'static str,
    /// Row count and checksum (a decimal number as text).
    pub live: (i64, String),
    pub rebuilt: (i64, String),
    /// Up to a few rows (as text) present only in the live table.
    pub only_live: Vec<String>,
    /// Up to a few rows (as text) present only in the rebuilt table.
    pub only_rebuilt: Vec<String>,
}

impl TableCheck {
    pub fn matches(&self) -> bool {
        self.live == self.rebuilt
    }
}

/// The comparison of every read model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub tables: Vec<TableCheck>,
}

impl Verification {
    pub fn matches(&self) -> bool {
        self.tables.iter().all(TableCheck::matches)
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            let verdict = if t.matches() { "same" } else { "DIFFERENT" };
            writeln!(
                f,
                "  {:<20} live {:>9} rows {:>22}   rebuilt {:>9} rows {:>22}   {verdict}",
                t.table, t.live.0, t.live.1, t.rebuilt.0, t.rebuilt.1
            )?;
            for row in &t.only_live {
                writeln!(f, "      only in live:    {row}")?;
            }
            for row in &t.only_rebuilt {
                writeln!(f, "      only in rebuilt: {row}")?;
            }
        }
        Ok(())
    }
}

/// Rows of each side shown when a table differs.
const DIFF_ROWS: i64 = 5;

/// Count and checksum of a table of `target`.
pub async fn digest(
    conn: &mut PgConnection,
    target: &Target,
    table: &str,
) -> Result<(i64, String), sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0)::text
         FROM \"{}\".{table} t",
        target.schema()
    ))
    .fetch_one(conn)
    .await
}

/// Compare every read model of `rebuilt` with `live`, in the caller's transaction (which must
/// keep both still, e.g. by holding the live lock).
pub async fn compare(
    conn: &mut PgConnection,
    live: &Target,
    rebuilt: &Target,
) -> Result<Verification, sqlx::Error> {
    let mut tables = Vec::with_capacity(MODELS.len());
    for table in MODELS {
        let live_digest = digest(conn, live, table).await?;
        let rebuilt_digest = digest(conn, rebuilt, table).await?;
        let mut check = TableCheck {
            table,
            live: live_digest,
            rebuilt: rebuilt_digest,
            only_live: Vec::new(),
            only_rebuilt: Vec::new(),
        };
        if !check.matches() {
            check.only_live = only_in(conn, live, rebuilt, table).await?;
            check.only_rebuilt = only_in(conn, rebuilt, live, table).await?;
        }
        tables.push(check);
    }
    Ok(Verification { tables })
}

/// The first rows (by their text, which starts with the key columns) of `a.table` not in
/// `b.table`.
async fn only_in(
    conn: &mut PgConnection,
    a: &Target,
    b: &Target,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT d::text FROM (SELECT * FROM \"{}\".{table} EXCEPT ALL SELECT * FROM \"{}\".{table}) d
         ORDER BY 1 LIMIT {DIFF_ROWS}",
        a.schema(),
        b.schema()
    ))
    .fetch_all(conn)
    .await
}

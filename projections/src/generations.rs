//! Generations of the read models: physical schemas `analytics_g<N>` (and point-in-time
//! `analytics_pit_<N>`) registered in `analytics_meta.generations`, one of them live. The
//! analysts' views in `analytics` point at the live one; [`switch`] moves them all in the
//! caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::store::Target;

/// What a generation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Built to replace the live generation.
    Live,
    /// Built with `--until` for investigation; never served through the views.
    PointInTime,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Live => "live",
            Purpose::PointInTime => "point_in_time",
        }
    }
}

/// A row of `analytics_meta.generations`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Generation {
    pub generation: i32,
    pub schema_name: String,
    pub purpose: String,
    pub state: String,
    pub until_spec: Option<String>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub switched_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

impl Generation {
    pub fn target(&self) -> anyhow::Result<Target> {
        Target::new(&self.schema_name)
    }
}

const COLUMNS: &str = "generation, schema_name, purpose, state, until_spec, note, created_at, \
                       switched_at, retired_at";

/// The live generation. With `share_lock`, holds the `analytics_meta.live` row for the
/// transaction so that no switch happens until it ends: every projector batch does this.
pub async fn live(conn: &mut PgConnection, share_lock: bool) -> anyhow::Result<Generation> {
    let sql = format!(
        "SELECT {COLUMNS} FROM analytics_meta.generations
         WHERE generation = (SELECT generation FROM analytics_meta.live{})",
        if share_lock { " FOR SHARE" } else { "" }
    );
    sqlx::query_as(&sql)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no live read-model generation in analytics_meta.live; run `orderflow migrate`"
            )
        })
}

/// Lock the `analytics_meta.live` row for a switch: waits for running projector batches and
/// holds new ones back until the transaction ends. Returns the live generation.
pub async fn lock_live(conn: &mut PgConnection) -> anyhow::Result<Generation> {
    sqlx::query("SELECT generation FROM analytics_meta.live FOR UPDATE")
        .execute(&mut *conn)
        .await?;
    live(conn, false).await
}

/// Register a new generation and create its empty tables.
pub async fn create(
    pool: &PgPool,
    purpose: Purpose,
    until_spec: Option<&str>,
    note: &str,
) -> anyhow::Result<Generation> {
    let mut tx = pool.begin().await?;
    let number: i64 = sqlx::query_scalar("SELECT nextval('analytics_meta.generation_seq')")
        .fetch_one(&mut *tx)
        .await?;
    let schema = match purpose {
        Purpose::Live => format!("analytics_g{number}"),
        Purpose::PointInTime => format!("analytics_pit_{number}"),
    };
    let generation: Generation = sqlx::query_as(&format!(
        "INSERT INTO analytics_meta.generations (generation, schema_name, purpose, state, until_spec, note)
         VALUES ($1, $2, $3, 'building', $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(i32::try_from(number)?)
    .bind(&schema)
    .bind(purpose.as_str())
    .bind(until_spec)
    .bind(note)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT analytics_meta.create_models($1)")
        .bind(&schema)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(generation)
}

/// Make `next` live in the caller's transaction (which holds [`lock_live`]): the views move,
/// the previous live generation is retired (kept until [`drop`]).
pub async fn switch(conn: &mut PgConnection, next: &Generation) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE analytics_meta.generations SET state = 'retired', retired_at = now()
         WHERE state = 'live' AND generation <> $1",
    )
    .bind(next.generation)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE analytics_meta.generations SET state = 'live', switched_at = now() WHERE generation = $1",
    )
    .bind(next.generation)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE analytics_meta.live SET generation = $1")
        .bind(next.generation)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT analytics_meta.point_views($1, $2)")
        .bind(&next.schema_name)
        .bind(next.generation)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Record a generation's new state (`ready`, `failed`) and why.
pub async fn set_state(
    pool: &PgPool,
    generation: i32,
    state: &str,
    note: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE analytics_meta.generations SET state = $2, note = $3 WHERE generation = $1",
    )
    .bind(generation)
    .bind(state)
    .bind(note)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every generation, newest first.
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<Generation>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM analytics_meta.generations ORDER BY generation DESC"
    ))
    .fetch_all(pool)
    .await?)
}

/// Drop a generation's schema and forget it. The live generation cannot be dropped.
pub async fn drop(pool: &PgPool, generation: i32) -> anyhow::Result<Generation> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT generation FROM analytics_meta.live FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let found: Option<Generation> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM analytics_meta.generations WHERE generation = $1 FOR UPDATE"
    ))
    .bind(generation)
    .fetch_optional(&mut *tx)
    .await?;
    let found = found.ok_or_else(|| {
        anyhow::anyhow!("no read-model generation {generation}; see `orderflow generations list`")
    })?;
    anyhow::ensure!(
        found.state != "live",
        "generation {generation} is live; switch to another one (orderflow replay) before dropping it"
    );
    let target = found.target()?;
    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", target.schema()))
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM analytics_meta.generations WHERE generation = $1")
        .bind(generation)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(found)
}

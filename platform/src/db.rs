//! The Postgres pool and the schema migrations (the `migrations/` folder at the workspace
//! root). Every component runs [`migrate`] at start; sqlx serialises concurrent runs.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::{redact_url, DatabaseSettings};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Begin a transaction on a pooled connection, timing the wait for the connection (and its
/// `BEGIN`, one round trip on an idle connection) as `orderflow_db_pool_acquire_seconds`. The
/// engine begins every batch this way, so the histogram shows when the pool runs dry.
pub async fn begin(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let started = std::time::Instant::now();
    let tx = pool.begin().await;
    ::metrics::histogram!(crate::metrics::names::DB_POOL_ACQUIRE).record(started.elapsed());
    tx
}

/// A pooled connection, its wait timed like [`begin`]'s.
pub async fn acquire(
    pool: &PgPool,
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
    let started = std::time::Instant::now();
    let conn = pool.acquire().await;
    ::metrics::histogram!(crate::metrics::names::DB_POOL_ACQUIRE).record(started.elapsed());
    conn
}

/// Connect a pool. Fails with a message that names the URL (password hidden) and what to do.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .parse::<PgConnectOptions>()
        .with_context(|| {
            format!(
                "database.url {} is not a valid postgres URL",
                redact_url(&settings.url)
            )
        })?
        // Statement logging at INFO would drown the logs at thousands of events per second.
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_with(options)
        .await
        .map_err(|e| {
            let hint = connect_hint(&e);
            anyhow::Error::new(e).context(format!(
                "cannot connect to Postgres at {} ({hint})",
                redact_url(&settings.url)
            ))
        })
}

/// What to do about a failed connection. A failed TLS handshake or login is about the
/// certificates or the password, not about a server that is down.
fn connect_hint(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Tls(_) => {
            "the TLS handshake failed: check sslrootcert (the CA that signed the server's \
             certificate), sslmode and the host name in database.url"
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "28P01" || c == "28000") => {
            "the server refused the login: check the user and password in database.url"
        }
        _ => "is it running? start it with scripts/dev-up, or set ORDERFLOW_DATABASE__URL",
    }
}

/// Create the database named in `url` if it does not exist, using the server's `postgres`
/// database. Used by the demo and the tests; production databases are provisioned by operators.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("{} is not a valid postgres URL", redact_url(url)))?;
    let name = options
        .get_database()
        .context("the database URL names no database")?
        .to_string();
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(|e| {
            let hint = connect_hint(&e);
            anyhow::Error::new(e).context(format!(
                "cannot connect to Postgres at {} ({hint})",
                redact_url(url)
            ))
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it the way Postgres does.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let created = sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await;
        if let Err(e) = created {
            // Another process may have created it between our check and our create.
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|code| code == "42P04");
            if !duplicate {
                return Err(e).context("CREATE DATABASE failed");
            }
        }
    }
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("running database migrations")
}

/// Whether a database error is worth retrying: connection loss, timeouts, serialization
/// failures and deadlocks are; constraint violations and syntax errors are not.
pub fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization_failure, 40P01 deadlock_detected, class 08 connection
            // exceptions, 57P01..03 admin shutdown / crash shutdown / cannot connect now,
            // 53300 too_many_connections.
            code == "40001"
                || code == "40P01"
                || code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
        }),
        _ => false,
    }
}

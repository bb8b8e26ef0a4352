//! `orderflow serve`: the HTTP API (`api`) as its own process, with the admin listener like
//! every long-running process, and [`start`], which `orderflow run --api` uses to run it beside
//! the components. Graceful: on SIGINT/SIGTERM the listener stops accepting and in-flight
//! requests are answered before the process exits.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::components;
use crate::settings::Settings;

/// Start the API of `settings` on `pool`; a server that fails cancels `shutdown`, stopping the
/// rest of the process with it.
pub async fn start(
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let api = api::start(
        &settings.api,
        &settings.kafka,
        pool.clone(),
        shutdown.clone(),
    )
    .await?;
    eprintln!("HTTP API listening on http://{}", api.address);
    let token = shutdown.clone();
    Ok(tokio::spawn(async move {
        let result = api.wait().await;
        if result.is_err() {
            token.cancel();
        }
        result
    }))
}

/// `orderflow serve`: migrate, start the admin listener and the API, serve until a signal.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    // Refuse a server without authentication before touching anything.
    settings.api.check()?;
    let pool = components::prepare_database(settings, false).await?;
    let shutdown = platform::shutdown::on_signals();
    let readiness = platform::admin::Readiness::default();
    let admin = components::admin(settings, &pool, &readiness, &shutdown).await?;
    let served = start(settings, &pool, &shutdown).await?;
    let result = served.await;
    drop(admin);
    result.map_err(|e| anyhow::anyhow!("the API task panicked: {e}"))?
}

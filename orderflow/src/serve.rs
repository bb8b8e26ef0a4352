//! `orderflow serve`: the HTTP API (`api`) as its own process, with the admin listener like
//! every long-running process, and [`start`], which `orderflow run --api` uses to run it beside
//! the components. Graceful: on SIGINT/SIGTERM the listener stops accepting and in-flight
//! requests are answered before the process exits. [`StepOperations`] is how the API's
//! operator endpoints reach the steps (redrive), built here as `orderflow dlq` builds them.

use std::sync::Arc;

use api::operations::{OperationFuture, Operations};
use consumers::redrive::RedriveReport;
use platform::kafka::Producer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::components::{self, Component};
use crate::settings::Settings;

/// The API's [`Operations`]: redrives run the step [`components::step`] builds from
/// `settings`, as `orderflow dlq redrive` does, one at a time in this process.
pub struct StepOperations {
    settings: Settings,
    pool: PgPool,
    producer: Producer,
    /// One redrive at a time: two at once would apply the same letter twice over.
    running: tokio::sync::Mutex<()>,
}

impl StepOperations {
    pub fn new(settings: &Settings, pool: &PgPool) -> anyhow::Result<Arc<StepOperations>> {
        Ok(Arc::new(StepOperations {
            settings: settings.clone(),
            pool: pool.clone(),
            producer: platform::kafka::producer(&settings.kafka, "orderflow-api-redrive")?,
            running: tokio::sync::Mutex::new(()),
        }))
    }
}

/// Components that may dead-letter records: every one the pipeline runs.
fn dead_lettering() -> impl Iterator<Item = Component> {
    Component::ALL.into_iter()
}

impl Operations for StepOperations {
    fn consumers(&self) -> Vec<&'static str> {
        dead_lettering().map(Component::name).collect()
    }

    fn steps(&self) -> Vec<&'static str> {
        dead_lettering()
            .filter(|c| c.is_step())
            .map(Component::name)
            .collect()
    }

    fn redrive<'a>(
        &'a self,
        step: &'a str,
        ids: &'a [Uuid],
        dry_run: bool,
    ) -> OperationFuture<'a, Vec<RedriveReport>> {
        Box::pin(async move {
            let component = dead_lettering()
                .find(|c| c.name() == step)
                .ok_or_else(|| anyhow::anyhow!("{step} is not a component"))?;
            let built = components::step(component, &self.settings, &self.pool)?
                .ok_or_else(|| anyhow::anyhow!("{step} is not a step; nothing to redrive"))?;
            let _one_at_a_time = self.running.lock().await;
            consumers::redrive::redrive(
                built.as_ref(),
                &self.settings.kafka,
                &self.pool,
                &self.producer,
                ids,
                dry_run,
            )
            .await
        })
    }
}

/// Start the API of `settings` on `pool`; a server that fails cancels `shutdown`, stopping the
/// rest of the process with it.
pub async fn start(
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    // Orders accepted over HTTP are sealed like the intake's: the master key is read once here,
    // and a missing or wrong one stops the start with the setting's name.
    let sealing = if settings.privacy.seal {
        Some(settings.privacy.key_ring()?)
    } else {
        tracing::warn!(
            "privacy.seal is off: orders accepted over HTTP carry their personal fields in clear"
        );
        None
    };
    let api = api::start_sealing(
        &settings.api,
        &settings.kafka,
        pool.clone(),
        StepOperations::new(settings, pool)?,
        sealing,
        shutdown.clone(),
    )
    .await?;
    let scheme = if settings.api.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!("HTTP API listening on {scheme}://{}", api.address);
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

//! The long-running components and how they are started: the intake, every saga step and the
//! projector, all in one process or one per process (`orderflow run --only <name>`), all in the
//! same consumer groups so that processes scale out.

use std::sync::Arc;

use anyhow::Context;
use consumers::intake::Intake;
use consumers::inventory::Inventory;
use consumers::payment::Payment;
use consumers::saga::OrderSaga;
use consumers::shipping::Shipping;
use consumers::{RunnerOptions, Step, StepRunner};
use platform::admin::{Admin, Probes, Readiness};
use platform::kafka_stats::Assignment;
use projections::Projector;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

/// A component `orderflow run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Component {
    /// Reads upstream orders from the intake topic (`kafka.intake_topic`), seals their personal
    /// fields and appends them to the log.
    Intake,
    Inventory,
    Payment,
    Shipping,
    Saga,
    Projections,
    /// Copies the log into the archive (`archive.dir`); not among [`Component::ALL`]: `orderflow
    /// run` adds it when `archive.dir` is set.
    Archiver,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::Intake,
        Component::Inventory,
        Component::Payment,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Intake => consumers::intake::NAME,
            Component::Inventory => consumers::inventory::NAME,
            Component::Payment => consumers::payment::NAME,
            Component::Shipping => consumers::shipping::NAME,
            Component::Saga => consumers::saga::NAME,
            Component::Projections => projections::NAME,
            Component::Archiver => "archiver",
        }
    }

    /// Whether the component is a step of the engine (dead letters, parking, redrive).
    pub fn is_step(self) -> bool {
        !matches!(self, Component::Projections | Component::Archiver)
    }
}

/// The step behind a component, wired to the simulated providers its own section of
/// `settings` configures; `None` for the projector and the archiver. The intake loads the
/// master key here (`[privacy]`): a missing or bad key is an error naming the setting, never
/// showing the key.
pub fn step(
    component: Component,
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<Option<Arc<dyn Step>>> {
    Ok(Some(match component {
        Component::Intake if settings.privacy.seal => {
            let keys = settings
                .privacy
                .key_ring()
                .map_err(|e| anyhow::anyhow!("the intake cannot seal orders: {e}"))?;
            consumers::step(Intake::sealing(keys))
        }
        Component::Intake => consumers::step(Intake::unsealed()),
        Component::Inventory => consumers::step(Inventory::new()),
        Component::Payment => consumers::step(Payment::simulated(pool.clone(), &settings.payment)),
        Component::Shipping => consumers::step(Shipping::simulated(
            &settings.shipping,
            shipping_keys(settings),
        )),
        Component::Saga => consumers::step(OrderSaga::new(settings.saga.clone())),
        Component::Projections | Component::Archiver => return Ok(None),
    }))
}

/// The key ring the shipping step opens sealed addresses with; without a master key it has
/// none, and says so (sealed orders' shipments then fail with `address_erased`).
fn shipping_keys(settings: &Settings) -> Option<privacy::KeyRing> {
    match settings.privacy.key_ring() {
        Ok(ring) => Some(ring),
        Err(e) => {
            tracing::warn!(error = %e, "shipping runs without a key ring: sealed addresses cannot be opened and their shipments will fail");
            None
        }
    }
}

/// Start `components` as tasks. Each finishes when `shutdown` is cancelled; a component that
/// fails returns its error through the set.
pub fn start(
    components: &[Component],
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<JoinSet<anyhow::Result<Component>>> {
    start_with(
        components,
        settings,
        pool,
        shutdown,
        &RunnerOptions::default(),
    )
}

/// [`start`] with runner options (fault injection in crash tests).
pub fn start_with(
    components: &[Component],
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    options: &RunnerOptions,
) -> anyhow::Result<JoinSet<anyhow::Result<Component>>> {
    launch(components, settings, pool, shutdown, options, None)
}

/// [`start`], each component reporting to `readiness` whether it holds its partitions (the
/// archiver assigns itself its partitions: idle by design, always settled).
pub fn start_watched(
    components: &[Component],
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    readiness: &Readiness,
) -> anyhow::Result<JoinSet<anyhow::Result<Component>>> {
    let options = RunnerOptions::default();
    launch(
        components,
        settings,
        pool,
        shutdown,
        &options,
        Some(readiness),
    )
}

/// The admin listener of a process that runs components (`admin.listen`; `None` when off):
/// `/metrics`, `/healthz`, and `/readyz` probing `settings`' Postgres and brokers and the
/// components tracked in `readiness`. Start it before the components, so that their metric
/// handles are made with the recorder installed. Dropping it stops the listener.
pub async fn admin(
    settings: &Settings,
    pool: &PgPool,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Admin>> {
    let probes = Probes {
        database: Some(settings.database.clone()),
        kafka: Some(settings.kafka.clone()),
        pool: Some(pool.clone()),
    };
    Ok(
        platform::admin::start(&settings.admin, readiness.clone(), probes, shutdown.clone())
            .await?,
    )
}

fn launch(
    components: &[Component],
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    options: &RunnerOptions,
    readiness: Option<&Readiness>,
) -> anyhow::Result<JoinSet<anyhow::Result<Component>>> {
    let track = |name: &'static str, assignment: Assignment| {
        if let Some(readiness) = readiness {
            readiness.track(name, assignment);
        }
    };
    let mut set = JoinSet::new();
    for &component in components {
        let token = shutdown.clone();
        match step(component, settings, pool)? {
            Some(step) => {
                let runner = StepRunner::new(
                    step,
                    &settings.kafka,
                    &settings.consumer,
                    pool.clone(),
                    options.clone(),
                )
                .with_context(|| format!("starting {}", component.name()))?;
                track(component.name(), runner.assignment());
                if component == Component::Saga {
                    let (pool, token) = (pool.clone(), token.clone());
                    let (kafka, saga) = (settings.kafka.clone(), settings.saga.clone());
                    set.spawn(async move {
                        consumers::saga::watch_deadlines(pool, kafka, saga, token)
                            .await
                            .map(|()| component)
                    });
                }
                set.spawn(async move { runner.run(token).await.map(|()| component) });
            }
            None if component == Component::Archiver => {
                let archiver = archive::Archiver::open(&settings.kafka, &settings.archive)
                    .context("starting the archiver")?;
                track(component.name(), Assignment::settled());
                let kafka = settings.kafka.clone();
                set.spawn(
                    async move { archiver.run(&kafka, false, token).await.map(|_| component) },
                );
            }
            None => {
                let projector = Projector::new(&settings.kafka, &settings.consumer, pool.clone())
                    .with_context(|| format!("starting {}", component.name()))?;
                track(
                    projections::projector::METRICS_COMPONENT,
                    projector.assignment(),
                );
                set.spawn(async move { projector.run(token).await.map(|()| component) });
            }
        }
    }
    Ok(set)
}

/// Connect to Postgres (creating the database when `create` is set) and run the migrations.
pub async fn prepare_database(settings: &Settings, create: bool) -> anyhow::Result<PgPool> {
    if create {
        platform::db::ensure_database(&settings.database.url).await?;
    }
    let pool = platform::db::connect(&settings.database).await?;
    platform::db::migrate(&pool).await?;
    Ok(pool)
}

/// Wait for every component; the first failure cancels the others and is returned.
pub async fn supervise(
    mut set: JoinSet<anyhow::Result<Component>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(component)) => tracing::info!(component = component.name(), "component stopped"),
            Ok(Err(error)) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "component failed; stopping the others"
                );
                shutdown.cancel();
                first_error.get_or_insert(error);
            }
            Err(join_error) => {
                shutdown.cancel();
                first_error.get_or_insert(anyhow::anyhow!("component task panicked: {join_error}"));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Create the order log, the intake topic and the intake's dead-letter topic (short retention:
/// `INTAKE_RETENTION_MS`) and the dead-letter topic of every other component's group, each with `partitions` partitions (dead
/// letters keep their original key, so they partition alike). A component's dead letters go
/// to `<the topic it reads>.dlq.<group>`.
pub async fn ensure_topics(settings: &Settings, partitions: i32) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    platform::kafka::ensure_topic(kafka, &kafka.topic, partitions).await?;
    let retention = platform::config::kafka::INTAKE_RETENTION_MS.to_string();
    platform::kafka::ensure_topic_with(
        kafka,
        &kafka.intake_topic,
        partitions,
        &[("retention.ms", retention.as_str())],
    )
    .await?;
    for component in Component::ALL {
        let source = match component {
            Component::Intake => &kafka.intake_topic,
            _ => &kafka.topic,
        };
        let dlq = platform::deadletter::dlq_topic(source, &settings.group_id(component.name()));
        // The intake's refusals are upstream records, personal fields in clear: their topic
        // keeps them no longer than the intake topic does (pipeline.dead_letters keeps the
        // bytes for a redrive, and a forget scrubs them there).
        let configs: &[(&str, &str)] = match component {
            Component::Intake => &[("retention.ms", retention.as_str())],
            _ => &[],
        };
        platform::kafka::ensure_topic_with(kafka, &dlq, partitions, configs).await?;
    }
    Ok(())
}

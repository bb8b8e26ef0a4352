//! `orderflow restore`: everything back from an archive alone, into an empty topic and a
//! freshly migrated database — the log at its original offsets, the read models, the steps'
//! state (without repeating a side effect; see [`consumers::restore`]) and the steps' group
//! offsets at the archive's end, so that the live components resume right after it.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use archive::{ArchiveReader, Republished};
use consumers::restore::{Recorded, StepReplay, StepTotals};
use projections::restore::RestoredModels;
use sqlx::PgPool;

use crate::settings::Settings;

/// Tables that hold the steps' state: a restore refuses to write into a database where any of
/// them has a row.
const STEP_TABLES: [&str; 11] = [
    "pipeline.inbox",
    "pipeline.outbox",
    "pipeline.parked",
    "inventory.stock",
    "inventory.reservations",
    "payment.blocked_customers",
    "payment.orders",
    "payment.payments",
    "shipping.orders",
    "shipping.shipments",
    "saga.orders",
];

/// Records per step transaction while replaying: big, since every step loads and stores a
/// batch's state with one statement per table.
const BATCH: usize = 10_000;

/// How often the steps' replay logs how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What a restore did, and how long each part took.
#[derive(Debug)]
pub struct Report {
    pub archived: u64,
    pub republished: Republished,
    pub models: RestoredModels,
    pub steps: Vec<(&'static str, StepTotals)>,
    pub steps_took: Duration,
    /// The key backup imported (`--keys`), if any.
    pub keys: Option<crate::keys::Imported>,
    /// Keys destroyed after the replay because an archived `CustomerForgotten` names them.
    pub keys_destroyed: u64,
    /// Customers the archive shows forgotten.
    pub forgotten: usize,
    pub took: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "restored {} archived records", self.archived)?;
        writeln!(
            f,
            "  log: republished {} records at their offsets in {:.1} s",
            self.republished.records,
            self.republished.took.as_secs_f64()
        )?;
        writeln!(
            f,
            "  read models: {} events folded into {} rows in {:.1} s",
            self.models.events_read,
            self.models.rows,
            self.models.took.as_secs_f64()
        )?;
        writeln!(
            f,
            "  steps: replayed in {:.1} s, no provider or carrier called",
            self.steps_took.as_secs_f64()
        )?;
        for (name, t) in &self.steps {
            writeln!(
                f,
                "    {name:<10} applied {:>8}  duplicates {:>4}  dead-lettered {:>4}  parked {:>4}  \
                 replies from archive {:>8}  left to publish {:>4}",
                t.applied,
                t.duplicates,
                t.dead_lettered,
                t.parked,
                t.replies_archived,
                t.left_to_publish
            )?;
        }
        match &self.keys {
            Some(k) => writeln!(
                f,
                "  keys: {} records imported ({} added, {} destroyed by the backup); {} more destroyed for {} customers the archive shows forgotten",
                k.records, k.added, k.destroyed, self.keys_destroyed, self.forgotten
            )?,
            None => writeln!(
                f,
                "  keys: no key backup given (--keys FILE): sealed personal fields read as erased, \
                 and the shipments of open orders will fail (address_erased); restore again with \
                 the latest `orderflow keys export` to keep them"
            )?,
        }
        writeln!(f, "  total {:.1} s", self.took.as_secs_f64())
    }
}

/// Restore everything from the archive in `dir`, and nothing else: stock and customer blocks
/// are events on the log (`StockAdjusted`, `CustomerBlocked`, `CustomerUnblocked`), which the
/// steps' replay applies like the live steps did. No key backup: sealed personal fields read
/// as erased (see [`restore_with_keys`]).
pub async fn restore(settings: &Settings, pool: &PgPool, dir: &Path) -> anyhow::Result<Report> {
    restore_with_keys(settings, pool, dir, None).await
}

/// [`restore`], with the data keys from the backup at `keys` (`orderflow keys export`): they
/// are imported before the steps replay, and after it every key an archived
/// `CustomerForgotten` names is destroyed, so a customer forgotten before the archive's end
/// stays forgotten whatever the backup's age.
pub async fn restore_with_keys(
    settings: &Settings,
    pool: &PgPool,
    dir: &Path,
    keys: Option<&Path>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let topic = settings.kafka.topic.as_str();
    let manifest = archive::load_checked(dir, topic, "restored")?;
    ensure_no_state(pool).await?;
    if let Some(path) = keys {
        // Checked before anything is written.
        crate::keys::read(path)?;
    }

    tracing::info!(
        records = manifest.records(),
        "archive checked; republishing the log"
    );
    let republished = archive::republish(&settings.kafka, dir).await?;
    tracing::info!(records = republished.records, "log republished");
    let models = projections::restore::read_models(&settings.kafka, pool, dir).await?;
    tracing::info!(rows = models.rows, "read models restored");

    tracing::info!("replaying the steps over the archive");
    let steps_started = Instant::now();
    // First pass: what the steps decided, as the archive records it; records that do not
    // decode are set aside for the projections group, as the live projector did.
    let mut recorded = Recorded::default();
    let projections_group = settings.group_id(projections::NAME);
    let mut reader = ArchiveReader::new(dir, &manifest);
    while let Some(batch) = reader.next_batch(BATCH)? {
        for record in batch {
            let message = archive::message(record);
            if let Err(reason) = recorded.observe(&message) {
                let mut tx = pool.begin().await?;
                projections::projector::dead_letter_undecodable(
                    &mut tx,
                    &projections_group,
                    &message,
                    reason,
                )
                .await?;
                tx.commit().await?;
            }
        }
    }
    let forgotten = std::mem::take(&mut recorded.forgotten);
    let imported = match keys {
        Some(path) => Some(crate::keys::import(settings, pool, path).await?),
        None => None,
    };
    let mut replay = StepReplay::new(
        &settings.kafka,
        &settings.shipping,
        &settings.saga,
        recorded,
        settings.privacy.key_ring().ok(),
    );
    let mut reader = ArchiveReader::new(dir, &manifest);
    let total = reader.total();
    // The next batch is read from the archive while the steps apply this one.
    let (batches, mut next) = tokio::sync::mpsc::channel(2);
    let read_ahead = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        while let Some(batch) = reader.next_batch(BATCH)? {
            let messages: Vec<_> = batch.into_iter().map(archive::message).collect();
            if batches.blocking_send(messages).is_err() {
                break;
            }
        }
        Ok(())
    });
    let (mut done, mut logged) = (0u64, Instant::now());
    while let Some(messages) = next.recv().await {
        replay.apply(pool, &messages).await?;
        done += messages.len() as u64;
        if logged.elapsed() >= PROGRESS_EVERY {
            let rate = done as f64 / steps_started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                done,
                total,
                per_sec = rate.round(),
                eta_secs = ((total - done) as f64 / rate.max(1.0)).round(),
                "replaying the steps"
            );
            logged = Instant::now();
        }
    }
    read_ahead
        .await
        .context("the archive reader stopped")?
        .context("reading the archive")?;
    replay.finish(pool).await?;
    let steps_took = steps_started.elapsed();
    // Erasures the archive holds win over the key backup, whatever its age.
    let mut keys_destroyed = 0;
    let mut tx = pool.begin().await?;
    for (customer_id, key_ids) in &forgotten {
        keys_destroyed += privacy::KeyRing::destroy_ids(&mut tx, customer_id, key_ids).await?;
    }
    tx.commit().await?;

    let ends: Vec<(String, i32, i64)> = manifest
        .partitions
        .iter()
        .map(|(partition, archived)| (topic.to_string(), *partition, archived.next_offset))
        .collect();
    for group in replay.groups() {
        commit_when_coordinator_ready(settings, &group, &ends)
            .await
            .with_context(|| {
                format!("setting the offsets of group {group} to the archive's end")
            })?;
    }
    Ok(Report {
        archived: manifest.records(),
        republished,
        models,
        steps: replay.totals(),
        steps_took,
        keys: imported,
        keys_destroyed,
        forgotten: forgotten.len(),
        took: started.elapsed(),
    })
}

async fn ensure_no_state(pool: &PgPool) -> anyhow::Result<()> {
    for table in STEP_TABLES {
        let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
            .fetch_one(pool)
            .await
            .with_context(|| format!("looking into {table}"))?;
        anyhow::ensure!(
            !any,
            "{table} is not empty; a restore writes only into a freshly migrated database \
             (create an empty one and run `orderflow migrate`)"
        );
    }
    Ok(())
}

/// Commit `group`'s offsets, retrying for up to a minute while the broker is still loading or
/// moving the group's coordinator: on a new cluster the first commit creates the offsets topic,
/// and its coordinator answers "load in progress" until it has loaded.
async fn commit_when_coordinator_ready(
    settings: &Settings,
    group: &str,
    ends: &[(String, i32, i64)],
) -> anyhow::Result<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let error = match platform::kafka::commit_group_offsets(&settings.kafka, group, ends) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let not_ready = error.chain().any(|cause| {
            cause
                .downcast_ref::<KafkaError>()
                .and_then(KafkaError::rdkafka_error_code)
                .is_some_and(|code| {
                    matches!(
                        code,
                        RDKafkaErrorCode::CoordinatorLoadInProgress
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                            | RDKafkaErrorCode::NotCoordinator
                    )
                })
        });
        if !not_ready || std::time::Instant::now() >= deadline {
            return Err(error);
        }
        tracing::info!(group, %error, "group coordinator not ready; retrying the commit");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

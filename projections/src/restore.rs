//! The read-model part of a restore: fold an archive into the read models of an empty
//! database, with the positions at the archive's end, so the projector resumes right after
//! the restored part of the log. Putting the log back is `archive::republish`, the steps'
//! state `consumers::restore`; `orderflow restore` runs all of it.
//!
//! It refuses to run on read models that already hold positions, so a mistaken restore never
//! mixes an archive into live data.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use archive::{Manifest, Range};
use platform::config::KafkaSettings;
use sqlx::PgPool;

use crate::generations;
use crate::store;

/// What [`read_models`] rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredModels {
    pub events_read: u64,
    pub rows: u64,
    pub took: Duration,
}

/// Fold the archive into the read models of the live generation, which must be empty (a freshly
/// migrated database), with its positions at the archive's end: the projector then resumes
/// right after the restored part of the log.
pub async fn read_models(
    kafka: &KafkaSettings,
    pool: &PgPool,
    dir: &Path,
) -> anyhow::Result<RestoredModels> {
    let started = Instant::now();
    let topic = kafka.topic.as_str();
    let mut conn = pool.acquire().await?;
    let live = generations::live(&mut conn, false).await?;
    let target = live.target()?;
    let held = store::positions(&mut conn, &target, false).await?;
    drop(conn);
    anyhow::ensure!(
        held.is_empty(),
        "the read models in {} already hold log positions; restore into a freshly migrated database",
        target.schema()
    );
    let manifest = Manifest::load(dir, topic)?;
    let ranges: BTreeMap<i32, Range> = manifest
        .partitions
        .iter()
        .map(|(p, a)| {
            (
                *p,
                Range {
                    start: 0,
                    stop: a.next_offset,
                },
            )
        })
        .collect();
    let reading = crate::bulk::Reading {
        archive: Some(dir),
        ..crate::bulk::Reading::default()
    };
    let bulk = crate::bulk::read_and_fold(kafka, &reading, &|_| {}, &ranges, None).await?;
    let (loaded, rows) = crate::bulk::load(pool, &target, topic, bulk).await?;
    Ok(RestoredModels {
        events_read: loaded.read,
        rows,
        took: started.elapsed(),
    })
}

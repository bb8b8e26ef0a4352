//! `orderflow keys export|import FILE`: a backup of the customers' data keys
//! (`privacy.data_keys`), the one piece of state that is not on the log.
//!
//! The file is JSON: `{"format": "orderflow-data-keys", "version": 1, "keys": [KeyRecord..]}`.
//! It holds only wrapped keys (useless without the master key, which it never contains) and
//! the tombstones of destroyed ones, so importing an older backup never revives a key that
//! a newer one shows destroyed. `orderflow restore --keys FILE` imports one before the steps
//! replay (see `crate::restore`).

use std::path::Path;

use anyhow::Context;
use privacy::KeyRecord;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::settings::Settings;

const FORMAT: &str = "orderflow-data-keys";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    format: String,
    version: u32,
    keys: Vec<KeyRecord>,
}

/// Write every key, live and destroyed, to `path` (replaced whole: written beside it, then
/// renamed). Returns how many.
pub async fn export(pool: &PgPool, path: &Path) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    let keys = privacy::KeyRing::export(&mut conn)
        .await
        .context("reading privacy.data_keys")?;
    let backup = Backup {
        format: FORMAT.into(),
        version: VERSION,
        keys,
    };
    let text = serde_json::to_vec_pretty(&backup).expect("key records serialize");
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(backup.keys.len())
}

/// The key records of the backup at `path`, checked for form (not yet against the master key).
pub fn read(path: &Path) -> anyhow::Result<Vec<KeyRecord>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let backup: Backup = serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a key backup written by `orderflow keys export`: {e}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        backup.format == FORMAT && backup.version == VERSION,
        "{} is a {:?} file of version {}; this build reads {FORMAT:?} version {VERSION}",
        path.display(),
        backup.format,
        backup.version
    );
    Ok(backup.keys)
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub records: usize,
    /// Keys that were not here.
    pub added: u64,
    /// Keys live here that the backup shows destroyed (an erasure is never undone).
    pub destroyed: u64,
}

/// Import the backup at `path` in one transaction; every wrapped key must unwrap with the
/// configured master key, or nothing is imported.
pub async fn import(settings: &Settings, pool: &PgPool, path: &Path) -> anyhow::Result<Imported> {
    let records = read(path)?;
    let ring = settings.privacy.key_ring().map_err(|e| {
        anyhow::anyhow!("importing keys needs the master key they were wrapped with: {e}")
    })?;
    let mut tx = pool.begin().await?;
    let (added, destroyed) = ring
        .import(&mut tx, &records)
        .await
        .map_err(|e| anyhow::anyhow!("{}: nothing imported: {e}", path.display()))?;
    tx.commit().await?;
    Ok(Imported {
        records: records.len(),
        added,
        destroyed,
    })
}

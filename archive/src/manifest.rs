//! The archive's manifest, `manifest.json`: per partition, the files that hold the log, each
//! with its offset range, record count and SHA-256.
//!
//! Layout: `<dir>/<topic>/p<partition>/<window start>/<start>-<next>.avro`, where a file holds
//! the records of offsets `start..next` (Kafka may leave offsets unused, so `records` can be
//! smaller than `next - start`). Per partition, each file starts where the previous one ended:
//! the files tile the log without gaps or overlaps.
//!
//! The manifest is the truth: it names only files that are completely on disk, and is replaced
//! atomically (`write_atomically`). Only the archiver writes it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name inside the archive directory.
pub const MANIFEST: &str = "manifest.json";

/// What the archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub topic: String,
    /// Keyed by partition.
    pub partitions: BTreeMap<i32, PartitionArchive>,
}

/// The archived part of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionArchive {
    /// Every record before this offset is archived.
    pub next_offset: i64,
    pub segments: Vec<Segment>,
}

/// One archive file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Path relative to the archive directory.
    pub file: String,
    pub start_offset: i64,
    pub next_offset: i64,
    pub records: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub min_timestamp_ms: Option<i64>,
    pub max_timestamp_ms: Option<i64>,
    pub window_start: DateTime<Utc>,
    pub bytes: u64,
    pub sha256: String,
    pub written_at: DateTime<Utc>,
}

impl Manifest {
    pub fn empty(topic: &str) -> Manifest {
        Manifest {
            format: 1,
            topic: topic.to_string(),
            partitions: BTreeMap::new(),
        }
    }

    /// Read `<dir>/manifest.json`, or an empty manifest when the directory has none yet.
    pub fn load(dir: &Path, topic: &str) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Ok(Manifest::empty(topic));
        }
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading the archive manifest {}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an orderflow archive manifest", path.display()))?;
        anyhow::ensure!(
            manifest.topic == topic,
            "the archive in {} holds topic {}, not {topic}; use another archive.dir",
            dir.display(),
            manifest.topic
        );
        Ok(manifest)
    }

    /// Records the archive holds.
    pub fn records(&self) -> u64 {
        self.partitions
            .values()
            .flat_map(|p| &p.segments)
            .map(|s| s.records)
            .sum()
    }

    /// Replace `<dir>/manifest.json` with this one, atomically.
    pub(crate) fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        write_atomically(dir, &dir.join(MANIFEST), &text)
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old file or the new one.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(path.parent().unwrap_or(dir))
}

/// Make a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// A file's checksum as the manifest records it: SHA-256, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn a_directory_without_a_manifest_is_an_empty_archive() {
        let dir = fixture::dir("manifest-none");
        let manifest = Manifest::load(&dir, "orders.events").expect("load");
        assert_eq!(manifest, Manifest::empty("orders.events"));
        assert_eq!(manifest.records(), 0);
    }

    #[test]
    fn a_saved_manifest_loads_as_it_was_and_only_for_its_topic() {
        let dir = fixture::dir("manifest-topic");
        let written = fixture::write(&dir, "orders.events", &[(0, vec![vec![0, 1], vec![2]])]);
        assert_eq!(written.records(), 3);
        assert_eq!(
            Manifest::load(&dir, "orders.events").expect("load"),
            written
        );
        assert!(
            !dir.join("manifest.tmp").exists(),
            "the temporary file is renamed"
        );
        let error = Manifest::load(&dir, "other.events").expect_err("another topic");
        assert!(
            error.to_string().contains("holds topic orders.events"),
            "{error}"
        );
    }
}

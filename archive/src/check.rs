//! Verifying an archive against its manifest (`orderflow archive --check`, and before a
//! restore or a rebuild reads it). Reads files only; repairs nothing.

use std::fs;
use std::path::Path;

use crate::manifest::{sha256_hex, Manifest};

/// What a check of the archive found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCheck {
    pub files: usize,
    pub records: u64,
    pub problems: Vec<String>,
}

/// The manifest of the archive in `dir` for `topic`, after checking every file against it;
/// a damaged archive is an error that lists its problems and says `nothing <done>`.
pub fn load_checked(dir: &Path, topic: &str, done: &str) -> anyhow::Result<Manifest> {
    let manifest = Manifest::load(dir, topic)?;
    let checked = check(dir, &manifest)?;
    anyhow::ensure!(
        checked.problems.is_empty(),
        "the archive in {} is damaged; nothing {done}:\n  {}",
        dir.display(),
        checked.problems.join("\n  ")
    );
    Ok(manifest)
}

/// Check the archive against its manifest: files tile each partition from its first offset
/// without gaps or overlaps, every file exists with its checksum, and holds exactly the
/// records the manifest says, in offset order, inside its range.
pub fn check(dir: &Path, manifest: &Manifest) -> anyhow::Result<ArchiveCheck> {
    let mut result = ArchiveCheck {
        files: 0,
        records: 0,
        problems: Vec::new(),
    };
    for (partition, archive) in &manifest.partitions {
        let mut expected_start = archive.segments.first().map_or(0, |s| s.start_offset);
        for segment in &archive.segments {
            result.files += 1;
            let at = format!("partition {partition}, {}", segment.file);
            if segment.start_offset != expected_start {
                result.problems.push(format!(
                    "{at}: starts at {} but the previous file ended before {expected_start}",
                    segment.start_offset
                ));
            }
            expected_start = segment.next_offset;
            let path = dir.join(&segment.file);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) => {
                    result.problems.push(format!("{at}: cannot read: {error}"));
                    continue;
                }
            };
            if sha256_hex(&bytes) != segment.sha256 {
                result
                    .problems
                    .push(format!("{at}: checksum differs from the manifest"));
                continue;
            }
            let records = match events::archive::read_segment(bytes.as_slice()) {
                Ok(records) => records,
                Err(error) => {
                    result.problems.push(format!("{at}: {error}"));
                    continue;
                }
            };
            result.records += records.len() as u64;
            if records.len() as u64 != segment.records {
                result.problems.push(format!(
                    "{at}: holds {} records, the manifest says {}",
                    records.len(),
                    segment.records
                ));
            }
            let mut previous = segment.start_offset - 1;
            for record in &records {
                if record.partition != *partition
                    || record.offset <= previous
                    || record.offset >= segment.next_offset
                {
                    result.problems.push(format!(
                        "{at}: record at partition {} offset {} is out of place",
                        record.partition, record.offset
                    ));
                    break;
                }
                previous = record.offset;
            }
        }
        if expected_start != archive.next_offset {
            result.problems.push(format!(
                "partition {partition}: files end before {expected_start}, the manifest says {}",
                archive.next_offset
            ));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    const TOPIC: &str = "orders.events";

    fn two_partitions(dir: &Path) -> Manifest {
        fixture::write(
            dir,
            TOPIC,
            &[(0, vec![vec![0, 1, 2], vec![3, 5]]), (1, vec![vec![0, 1]])],
        )
    }

    #[test]
    fn a_whole_archive_has_no_problems() {
        let dir = fixture::dir("check-whole");
        let manifest = two_partitions(&dir);
        let found = check(&dir, &manifest).expect("check");
        assert_eq!(
            found,
            ArchiveCheck {
                files: 3,
                records: 7,
                problems: vec![]
            }
        );
        assert_eq!(
            load_checked(&dir, TOPIC, "done").expect("checked"),
            manifest
        );
    }

    #[test]
    fn a_changed_file_fails_its_checksum_and_nothing_is_done() {
        let dir = fixture::dir("check-changed");
        let manifest = two_partitions(&dir);
        let path = dir.join(&manifest.partitions[&1].segments[0].file);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).expect("write");
        let found = check(&dir, &manifest).expect("check");
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert!(
            found.problems[0].contains("checksum"),
            "{:?}",
            found.problems
        );
        let error = load_checked(&dir, TOPIC, "restored").expect_err("damaged");
        assert!(error.to_string().contains("nothing restored"), "{error}");
    }

    #[test]
    fn a_gap_a_missing_file_and_a_wrong_count_are_problems() {
        let dir = fixture::dir("check-gap");
        let mut manifest = two_partitions(&dir);
        let partition = manifest.partitions.get_mut(&0).expect("partition 0");
        // The second file claims to start after the first one ended: a gap.
        partition.segments[1].start_offset = 4;
        partition.segments[1].records = 3;
        fs::remove_file(dir.join(&manifest.partitions[&1].segments[0].file)).expect("remove");
        let found = check(&dir, &manifest).expect("check");
        let problems = found.problems.join("\n");
        assert!(problems.contains("starts at 4"), "{problems}");
        assert!(
            problems.contains("holds 2 records, the manifest says 3"),
            "{problems}"
        );
        assert!(problems.contains("cannot read"), "{problems}");
    }

    #[test]
    fn files_that_end_before_the_manifests_next_offset_are_a_problem() {
        let dir = fixture::dir("check-short");
        let mut manifest = two_partitions(&dir);
        manifest
            .partitions
            .get_mut(&1)
            .expect("partition 1")
            .next_offset = 9;
        let found = check(&dir, &manifest).expect("check");
        assert_eq!(
            found.problems,
            vec!["partition 1: files end before 2, the manifest says 9".to_string()]
        );
    }
}

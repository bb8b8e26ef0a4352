//! Archives written straight to disk for this crate's tests, without a broker: files and a
//! manifest as the archiver would leave them.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::Utc;
use events::archive::{LogRecord, SegmentWriter};

use crate::manifest::{sha256_hex, Manifest, Segment};

/// An empty directory of the test's own under the system's temp dir.
pub fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("archive-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// A record of `topic` at (`partition`, `offset`) with a key, a value, a header and a
/// timestamp derived from its position.
pub fn record(topic: &str, partition: i32, offset: i64) -> LogRecord {
    LogRecord {
        topic: topic.to_string(),
        partition,
        offset,
        timestamp_ms: Some(1_700_000_000_000 + offset),
        key: Some(format!("o-{partition}-{offset}").into_bytes()),
        value: Some(vec![0xc3, 0x01, offset as u8]),
        headers: vec![
            ("event_type".to_string(), Some(b"OrderCreated".to_vec())),
            ("empty".to_string(), None),
        ],
    }
}

/// Write an archive of `topic` into `dir`: per partition, one file per list of offsets, the
/// files tiling the partition from its first offset. Returns the manifest, also saved.
pub fn write(dir: &Path, topic: &str, partitions: &[(i32, Vec<Vec<i64>>)]) -> Manifest {
    let mut manifest = Manifest::empty(topic);
    for (partition, files) in partitions {
        let archived = manifest.partitions.entry(*partition).or_default();
        for offsets in files {
            let start = match archived.segments.last() {
                Some(previous) => previous.next_offset,
                None => offsets[0],
            };
            let next = offsets.last().expect("a file holds records") + 1;
            let file = format!("{topic}/p{partition:03}/{start:020}-{next:020}.avro");
            let mut writer = SegmentWriter::new(Vec::new(), &[]).expect("writer");
            for offset in offsets {
                writer
                    .append(&record(topic, *partition, *offset))
                    .expect("append");
            }
            let bytes = writer.finish().expect("finish");
            let path = dir.join(&file);
            fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
            fs::write(&path, &bytes).expect("write file");
            archived.segments.push(Segment {
                file,
                start_offset: start,
                next_offset: next,
                records: offsets.len() as u64,
                first_offset: offsets[0],
                last_offset: next - 1,
                min_timestamp_ms: None,
                max_timestamp_ms: None,
                window_start: Utc::now(),
                bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
                written_at: Utc::now(),
            });
            archived.next_offset = next;
        }
    }
    manifest.save(dir).expect("save manifest");
    manifest
}

//! The log archive on the real broker: files tile the log without gaps or duplicates, also
//! after the archiver crashed between writing a file and recording it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

// `::archive` is the crate; `crate::archive` is this test module.
use ::archive::{check, ArchiveReader, ArchiveRun, Archiver, Manifest, Segment, MANIFEST};
use orderflow::settings::Settings;
use tokio_util::sync::CancellationToken;

use crate::support::{order, TestEnv};

fn archive_dir(env: &TestEnv) -> PathBuf {
    std::env::temp_dir().join(format!(
        "orderflow-archive-{}",
        env.settings.kafka.group_prefix
    ))
}

async fn publish(env: &TestEnv, prefix: &str, n: usize) {
    let orders: Vec<_> = (0..n)
        .map(|i| order(&format!("{prefix}{i}"), &[("SKU-A", 1, 100)], "DE"))
        .collect();
    env.publish(&orders).await;
}

/// Give `env` an empty archive directory of its own (archive.dir) and return it.
pub(crate) fn use_new_archive(env: &mut TestEnv) -> PathBuf {
    let dir = archive_dir(env);
    let _ = std::fs::remove_dir_all(&dir);
    env.settings.archive.dir = dir.display().to_string();
    dir
}

/// Archive the log of `settings` up to its end, in this process.
pub(crate) async fn archive_once(settings: &Settings) -> anyhow::Result<ArchiveRun> {
    Archiver::open(&settings.kafka, &settings.archive)?
        .run(&settings.kafka, true, CancellationToken::new())
        .await
}

/// Event ids of every archived record, in archive order; fails on an undecodable record.
fn archived_event_ids(dir: &Path, manifest: &Manifest) -> Vec<uuid::Uuid> {
    let mut reader = ArchiveReader::new(dir, manifest);
    let mut ids = Vec::new();
    while let Some(batch) = reader.next_batch(1000).expect("archive readable") {
        for record in batch {
            let event = events::decode(record.value.as_deref().expect("value")).expect("an event");
            ids.push(event.meta.event_id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_archive_has_no_gaps_or_duplicates_after_an_archiver_crash() {
    let mut env = TestEnv::new().await;
    let dir = use_new_archive(&mut env);
    env.settings.archive.segment_max_records = 4;
    env.settings.archive.flush_interval_ms = 100;
    publish(&env, "o-a", 30).await;

    // Run the archiver and kill it (drop its task) once some files are written.
    let settings = env.settings.clone();
    let running = tokio::spawn(async move {
        Archiver::open(&settings.kafka, &settings.archive)
            .expect("open")
            .run(&settings.kafka, false, CancellationToken::new())
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let manifest = Manifest::load(&dir, &env.settings.kafka.topic).expect("manifest");
        if manifest.records() >= 12 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "archiver wrote nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    let _ = running.await;

    // What a crash between writing a file and recording it leaves behind.
    let manifest = Manifest::load(&dir, &env.settings.kafka.topic).expect("manifest");
    let first = &manifest
        .partitions
        .values()
        .next()
        .expect("a partition")
        .segments[0];
    let stray = dir
        .join(&first.file)
        .with_file_name("99999999999999999999-99999999999999999999.avro");
    std::fs::copy(dir.join(&first.file), &stray).expect("plant a stray file");
    std::fs::write(dir.join("manifest.tmp"), b"{ half a manifest").expect("plant a temp file");

    publish(&env, "o-b", 20).await;
    let run = archive_once(&env.settings)
        .await
        .expect("archive to the end");
    assert!(run.records > 0);
    assert!(!stray.exists(), "stray file removed");
    assert!(!dir.join("manifest.tmp").exists(), "temp file removed");

    let manifest = Manifest::load(&dir, &env.settings.kafka.topic).expect("manifest");
    let found = check(&dir, &manifest).expect("check");
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(
        found.records,
        50,
        "{:?}",
        manifest
            .partitions
            .iter()
            .map(|(p, a)| (
                p,
                a.next_offset,
                a.segments
                    .iter()
                    .map(|s| (s.start_offset, s.next_offset, s.records))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    let ids = archived_event_ids(&dir, &manifest);
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (50, 50), "every record once");
    // Partition by partition, the files start at offset 0 and end at the log's end.
    let ends: i64 = manifest.partitions.values().map(|p| p.next_offset).sum();
    assert_eq!(ends, 50);
    for p in manifest.partitions.values() {
        assert_eq!(p.segments[0].start_offset, 0);
    }

    // A damaged file is reported, not read.
    let victim = dir.join(&manifest.partitions.values().next().unwrap().segments[0].file);
    let mut bytes = std::fs::read(&victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&victim, bytes).expect("damage");
    let found = check(&dir, &manifest).expect("check");
    assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
    assert!(
        found.problems[0].contains("checksum"),
        "{:?}",
        found.problems
    );

    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_from_the_archive_verifies_against_the_live_models() {
    let mut env = TestEnv::new().await;
    let dir = use_new_archive(&mut env);
    env.set_stock(&[("SKU-A", 100)]).await;
    env.start_all();
    publish(&env, "o-r", 10).await;
    for i in 0..10 {
        env.wait_terminal(&format!("o-r{i}")).await;
    }
    let run = archive_once(&env.settings).await.expect("archive");
    let options = projections::rebuild::Options {
        archive: Some(dir.clone()),
        stall: Duration::from_secs(20),
        ..Default::default()
    };
    let report = projections::rebuild::replay(&env.settings.kafka, &env.pool, &options, &|_| {})
        .await
        .expect("replay from the archive");
    assert_eq!(
        report.outcome,
        projections::rebuild::Outcome::Switched { forced: false },
        "{report}"
    );
    // The bulk part came from the archive (everything the live models had, at most what the
    // archive holds); the broker supplied only what the archive lacked.
    assert!(
        report.events_read > 0 && report.events_read <= run.records,
        "{report}"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}

/// Records the archive's manifest names (0 before the first file).
fn archived(dir: &Path, env: &TestEnv) -> u64 {
    // A manifest being replaced is read whole or not at all (rename), so this never sees half.
    Manifest::load(dir, &env.settings.kafka.topic).map_or(0, |m| m.records())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_archiver_processes_leave_no_gap_or_duplicate() {
    let mut env = TestEnv::new().await;
    let dir = use_new_archive(&mut env);
    publish(&env, "o-k", 300).await;
    // One file per record (two fsyncs and two renames each) and no waiting: the process is
    // still writing when it is killed.
    for round in 0..4u64 {
        let before = archived(&dir, &env);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["run", "--only", "archiver"])
            .env("ORDERFLOW_KAFKA__TOPIC", &env.settings.kafka.topic)
            .env(
                "ORDERFLOW_KAFKA__GROUP_PREFIX",
                &env.settings.kafka.group_prefix,
            )
            .env("ORDERFLOW_DATABASE__URL", &env.settings.database.url)
            .env("ORDERFLOW_ARCHIVE__DIR", &dir)
            .env("ORDERFLOW_ARCHIVE__SEGMENT_MAX_RECORDS", "1")
            .env("ORDERFLOW_ARCHIVE__FLUSH_INTERVAL_MS", "0")
            .env("ORDERFLOW_ADMIN__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the archiver");
        // Kill it once it is under way: a few more files than before.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while archived(&dir, &env) < before + 10 + 5 * round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the archiver made no progress"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().expect("SIGKILL the archiver");
        child.wait().expect("reap the archiver");
        publish(&env, &format!("o-k{round}-"), 100).await;
    }
    let archived_by_killed = archived(&dir, &env);
    assert!(
        archived_by_killed > 0 && archived_by_killed < 700,
        "the kills interrupted the archivers: {archived_by_killed} of 700 archived"
    );
    archive_once(&env.settings)
        .await
        .expect("archive to the end");
    let manifest = Manifest::load(&dir, &env.settings.kafka.topic).expect("manifest");
    let found = check(&dir, &manifest).expect("check");
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    let ids = archived_event_ids(&dir, &manifest);
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (700, 700), "every record once");
    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}

/// Count and checksum of every read model of the live generation of `env`, and its positions.
pub(crate) async fn live_digests(env: &TestEnv) -> (Vec<(i64, String)>, Vec<(i32, i64)>) {
    let mut conn = env.pool.acquire().await.expect("connection");
    let live = projections::generations::live(&mut conn, false)
        .await
        .expect("live generation");
    let positions =
        projections::store::positions(&mut conn, &live.target().expect("schema"), false)
            .await
            .expect("positions")
            .into_iter()
            .map(|p| (p.partition, p.next_offset))
            .collect();
    (env.model_digests(&live.schema_name).await, positions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_that_continues_past_the_log_is_refused() {
    let mut env = TestEnv::new().await;
    let dir = use_new_archive(&mut env);
    publish(&env, "o-w", 6).await;
    archive_once(&env.settings).await.expect("archive");
    // As if the broker had been wiped and refilled with a shorter log.
    let path = dir.join(MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    let partition = manifest["partitions"]
        .as_object()
        .and_then(|p| p.keys().next().cloned())
        .expect("a partition");
    manifest["partitions"][&partition]["next_offset"] = serde_json::json!(1000);
    std::fs::write(&path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    let error = archive_once(&env.settings)
        .await
        .expect_err("an archive ahead of the log");
    assert!(
        format!("{error:#}").contains("continues from offset 1000, but the log ends at"),
        "{error:#}"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_files_never_span_two_time_windows() {
    let mut env = TestEnv::new().await;
    let dir = use_new_archive(&mut env);
    env.settings.archive.window_secs = 1;
    env.settings.archive.flush_interval_ms = 60_000;
    for burst in 0..3 {
        publish(&env, &format!("o-t{burst}-"), 8).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    archive_once(&env.settings).await.expect("archive");
    let manifest = Manifest::load(&dir, &env.settings.kafka.topic).expect("manifest");
    let found = check(&dir, &manifest).expect("check");
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(found.records, 24);
    let segments: Vec<&Segment> = manifest
        .partitions
        .values()
        .flat_map(|p| &p.segments)
        .collect();
    for segment in &segments {
        let window = segment.window_start.timestamp_millis();
        let (min, max) = (
            segment.min_timestamp_ms.unwrap(),
            segment.max_timestamp_ms.unwrap(),
        );
        assert!(
            window <= min && max < window + 1_000,
            "{} holds {min}..{max}, outside its window {window}",
            segment.file
        );
    }
    // Three bursts a window apart: some partition got records of at least two of them.
    assert!(
        manifest.partitions.values().any(|p| p.segments.len() >= 2),
        "{segments:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.finish().await;
}

//! Putting an archive back into an empty topic at the offsets it had: the log part of
//! `orderflow restore`. The read models and the steps' state are rebuilt from the same archive
//! by `projections::restore` and `consumers::restore`.
//!
//! It refuses to produce into a topic that holds records, so a mistaken restore never mixes an
//! archive into a live log.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use platform::config::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::check::load_checked;
use crate::reader::ArchiveReader;

/// What [`republish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Republished {
    pub records: u64,
    pub took: Duration,
}

/// Records in flight at once while republishing.
const IN_FLIGHT_MAX: usize = 10_000;

/// Produce every archived record into `kafka.topic`, which must be empty, at the
/// partition and offset it had: same key, value, headers and timestamp, in order. Fails before
/// producing anything when the topic holds records or when the archive could not land at its
/// own offsets (it must start at offset 0 without gaps), and after producing when the broker
/// put a record anywhere else.
pub async fn republish(kafka: &KafkaSettings, dir: &Path) -> anyhow::Result<Republished> {
    let started = Instant::now();
    let topic = kafka.topic.as_str();
    let manifest = load_checked(dir, topic, "republished")?;
    for (partition, archived) in &manifest.partitions {
        let starts_at_zero = archived
            .segments
            .first()
            .is_none_or(|s| s.start_offset == 0);
        let records: u64 = archived.segments.iter().map(|s| s.records).sum();
        anyhow::ensure!(
            starts_at_zero && i64::try_from(records)? == archived.next_offset,
            "partition {partition} of the archive does not hold every offset from 0 to {} \
             ({records} records); republished records could not keep their offsets",
            archived.next_offset
        );
    }
    let partitions = platform::kafka::partition_count(kafka, topic)?;
    let needed = manifest.partitions.keys().max().map_or(0, |p| *p + 1);
    anyhow::ensure!(
        i32::try_from(partitions)? >= needed,
        "topic {topic} has {partitions} partitions, the archive needs {needed}; create it with \
         `orderflow topics --partitions {needed}`"
    );
    ensure_empty(kafka, topic, partitions)?;

    let producer: platform::kafka::Producer = platform::kafka::producer(kafka, "orderflow-restore")
        .context("creating the producer that republishes the archive")?;
    let mut reader = ArchiveReader::new(dir, &manifest);
    let mut records = 0u64;
    while let Some(batch) = reader.next_batch(IN_FLIGHT_MAX)? {
        let mut deliveries = Vec::with_capacity(batch.len());
        for record in &batch {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(record.partition)
                .headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                out = out.payload(value.as_slice());
            }
            if let Some(ts) = record.timestamp_ms {
                out = out.timestamp(ts);
            }
            let delivery = producer
                .send_result(out)
                .map_err(|(error, _)| anyhow::anyhow!("queueing a record for {topic}: {error}"))?;
            deliveries.push((record.partition, record.offset, delivery));
        }
        for (partition, offset, delivery) in deliveries {
            let delivered = delivery
                .await
                .map_err(|_| anyhow::anyhow!("the producer was dropped while republishing"))?
                .map_err(|(error, _)| {
                    anyhow::anyhow!("republishing partition {partition} offset {offset}: {error}")
                })?;
            anyhow::ensure!(
                (delivered.partition, delivered.offset) == (partition, offset),
                "the record archived at partition {partition} offset {offset} landed at partition {} \
                 offset {}; the topic was not empty or another producer wrote to it",
                delivered.partition,
                delivered.offset
            );
            records += 1;
        }
    }
    Ok(Republished {
        records,
        took: started.elapsed(),
    })
}

/// Fail unless every partition of `topic` is empty.
fn ensure_empty(kafka: &KafkaSettings, topic: &str, partitions: usize) -> anyhow::Result<()> {
    let probe: BaseConsumer = platform::kafka::probe(kafka)?;
    for partition in 0..i32::try_from(partitions)? {
        let (_, high) = probe
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the end of {topic} partition {partition}"))?;
        anyhow::ensure!(
            high == 0,
            "topic {topic} is not empty (partition {partition} ends at offset {high}); a restore \
             republishes only into an empty topic"
        );
    }
    Ok(())
}

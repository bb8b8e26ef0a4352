//! Kafka client construction. Every delivery-relevant librdkafka setting is set here on
//! purpose, with the reason next to it; no component builds a client any other way.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaSettings;

/// Settings for every producer: idempotent, so librdkafka's own retries never duplicate or
/// reorder a record within a partition.
pub fn producer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        // Exactly one copy per send, in order, per partition, across internal retries.
        .set("enable.idempotence", "true")
        // Required by idempotence, and what we want anyway: the write is acknowledged by
        // every in-sync replica before the outbox row is marked as published.
        .set("acks", "all")
        // Idempotence keeps order with up to 5 in-flight requests per connection.
        .set("max.in.flight.requests.per.connection", "5")
        // Bound how long one record may be retried before its delivery future fails; the
        // outbox keeps the record, so a failure here is retried later, never lost.
        .set("message.timeout.ms", kafka.delivery_timeout_ms.to_string())
        // Small linger: batches form under load without adding visible latency.
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Keys are order ids: murmur2 matches the Java client's default partitioner, so a
        // Java or Python producer that writes an order's first event lands on the same
        // partition as our replies.
        .set("partitioner", "murmur2_random");
    config
}

/// Settings for every consumer group member. Offsets are never committed or stored behind
/// our back: steps commit after their outbox is published, projections keep them in Postgres.
pub fn consumer_config(kafka: &KafkaSettings, group_id: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning of the log: every order must be seen.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        // Eager rebalancing: on any change every member gives up all partitions, so no
        // partition is ever processed by two members at once.
        .set("partition.assignment.strategy", "range")
        // Generous, so that a batch stuck on a database retry is not mistaken for a dead member
        // too early; the batch itself is bounded.
        .set("max.poll.interval.ms", "300000")
        // Our records are never transactional; read everything the broker has.
        .set("isolation.level", "read_uncommitted")
        .set("enable.partition.eof", "false");
    config
}

pub fn producer(kafka: &KafkaSettings, client_id: &str) -> anyhow::Result<FutureProducer> {
    producer_config(kafka, client_id)
        .create()
        .with_context(|| format!("creating Kafka producer for {}", kafka.brokers))
}

/// Create `topic` with the given partitions if it does not exist; an existing topic is left
/// as it is (with a warning when its partition count differs).
pub async fn ensure_topic(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .context("creating Kafka admin client")?;
    let new_topic = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| {
            format!(
                "cannot create topic {topic} on {} (is the broker running? start it with scripts/dev-up)",
                kafka.brokers
            )
        })?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists");
            }
            Err((name, code)) => anyhow::bail!("creating topic {name} failed: {code}"),
        }
    }
    Ok(())
}

/// Partition count of `topic`, read from broker metadata.
pub fn partition_count(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .context("creating Kafka metadata client")?;
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic} from {}", kafka.brokers))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not found; create it with `orderflow topics`"))?;
    Ok(found.partitions().len())
}

/// Longest [`poll_batch`] waits for a first record before returning an empty batch.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Wait for the first record (or shutdown, or an idle tick), then gather more until `max_events` are held or
/// `max_wait` has passed since the first one. Broker errors surfaced by the client are logged
/// and polling goes on: librdkafka reconnects by itself.
pub async fn poll_batch<C>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    max_events: usize,
    max_wait: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Vec<rdkafka::message::OwnedMessage>
where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    let mut batch = Vec::with_capacity(max_events.min(1024));
    // Wake up now and then while idle, so the caller can do its periodic work.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return batch,
        _ = tokio::time::sleep(IDLE_TICK) => return batch,
        received = consumer.recv() => received,
    };
    match first {
        Ok(message) => batch.push(message.detach()),
        Err(error) => {
            tracing::warn!(%error, "Kafka consumer error; polling again");
            // Avoid a hot loop while the broker is unreachable.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return batch;
        }
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max_events {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_elapsed) => break,
            Ok(Ok(message)) => batch.push(message.detach()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "Kafka consumer error while filling a batch");
                break;
            }
        }
    }
    batch
}

/// The next offset to consume per (topic, partition) after `batch`: highest offset + 1.
pub fn next_offsets(batch: &[rdkafka::message::OwnedMessage]) -> Vec<(String, i32, i64)> {
    use rdkafka::Message;
    let mut next: std::collections::BTreeMap<(String, i32), i64> =
        std::collections::BTreeMap::new();
    for message in batch {
        let entry = next
            .entry((message.topic().to_string(), message.partition()))
            .or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    next.into_iter().map(|((t, p), o)| (t, p, o)).collect()
}

/// Commit `offsets` to the group, synchronously. A failure (typically a rebalance that took
/// the partitions away) is logged, not fatal: the next owner re-reads from the last commit and
/// the inboxes absorb the repeats.
pub fn commit_offsets<C>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    offsets: &[(String, i32, i64)],
) where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::{CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        if let Err(error) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::error!(%error, topic, partition, offset, "cannot build offset commit");
            return;
        }
    }
    // A synchronous commit blocks this thread for one broker round trip; tell the runtime.
    let result = tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync));
    if let Err(error) = result {
        tracing::warn!(%error, "offset commit failed; records since the last commit will be re-delivered");
    }
}

/// Set `group`'s committed offsets to `offsets` (topic, partition, next offset) without joining
/// the group, as a restore does before the group's members start. Fails on any error: a restore
/// that could not place its groups must say so.
pub fn commit_group_offsets(
    kafka: &KafkaSettings,
    group: &str,
    offsets: &[(String, i32, i64)],
) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = consumer_config(kafka, group, "orderflow-restore")
        .create()
        .with_context(|| format!("creating a client for group {group}"))?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .with_context(|| format!("offset {offset} of {topic} partition {partition}"))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .with_context(|| format!("committing offsets for group {group}"))?;
    Ok(())
}

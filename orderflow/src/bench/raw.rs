//! The machine's own limits, measured in the same run as the pipeline: the broker alone
//! (records produced with the pipeline's producer settings into a scratch topic, then consumed
//! back with its consumer settings) and Postgres alone (rows in the engine's batch shape, with
//! no broker). Scratch objects are dropped afterwards, even when a measurement fails.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use platform::config::KafkaSettings;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// Rows per INSERT in the Postgres measurement: the engine's batch (consumer.batch_max_events).
pub const BATCH_ROWS: usize = 500;

/// One record of the raw measurements: a real encoded event of a synthetic order history.
pub struct RawRecord {
    pub key: String,
    pub event_type: &'static str,
    pub event_id: uuid::Uuid,
    pub payload: Vec<u8>,
}

/// Complete histories of `orders` synthetic orders (about five events each, as the pipeline
/// writes), encoded as they go on the log.
pub fn records(orders: usize, seed: u64) -> anyhow::Result<Vec<RawRecord>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let mut out = Vec::with_capacity(orders * 5);
    for i in 0..orders {
        for event in crate::synth::history(i, now, &mut rng) {
            out.push(RawRecord {
                key: event.meta.order_id.clone(),
                event_type: event.event_type().as_str(),
                event_id: event.meta.event_id,
                payload: events::encode(&event).context("encoding a synthetic event")?,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerLimit {
    pub topic: String,
    pub partitions: i32,
    pub records: usize,
    pub record_bytes_mean: f64,
    /// First send to last acknowledgement (idempotent producer, acks=all).
    pub produce_secs: f64,
    pub produce_records_per_s: f64,
    /// Assignment of every partition from the beginning to the last record received.
    pub consume_secs: f64,
    pub consume_records_per_s: f64,
}

/// Sends the producer may have unacknowledged before the measurement waits for the oldest.
const IN_FLIGHT_MAX: usize = 100_000;
/// Longest wait for the consumer to read back every record.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(300);

/// Produce `records` into `topic` (created with `partitions`) and consume them back.
pub async fn broker(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: i32,
    records: &[RawRecord],
) -> anyhow::Result<BrokerLimit> {
    platform::kafka::ensure_topic(kafka, topic, partitions)
        .await
        .with_context(|| format!("creating the scratch topic {topic}"))?;
    let producer = platform::kafka::producer(kafka, "orderflow-bench-raw")?;
    let started = Instant::now();
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(IN_FLIGHT_MAX);
    for record in records {
        let event_id = record.event_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_type",
                value: Some(record.event_type),
            })
            .insert(Header {
                key: "event_id",
                value: Some(event_id.as_str()),
            });
        let mut next = FutureRecord::to(topic)
            .key(record.key.as_bytes())
            .payload(&record.payload)
            .headers(headers);
        loop {
            match producer.send_result(next) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    next = back;
                    match in_flight.pop_front() {
                        Some(oldest) => check_delivery(oldest.await)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((error, _)) => anyhow::bail!("producing to {topic}: {error}"),
            }
        }
        if in_flight.len() >= IN_FLIGHT_MAX {
            if let Some(oldest) = in_flight.pop_front() {
                check_delivery(oldest.await)?;
            }
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        check_delivery(delivery.await)?;
    }
    let produce_secs = started.elapsed().as_secs_f64();

    let consumer: StreamConsumer =
        platform::kafka::consumer_config(kafka, group, "orderflow-bench-raw")
            .create()
            .context("creating the raw-limit consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .context("building the raw-limit assignment")?;
    }
    let started = Instant::now();
    consumer
        .assign(&assignment)
        .context("assigning the scratch topic")?;
    let mut received = 0usize;
    let deadline = tokio::time::Instant::now() + CONSUME_TIMEOUT;
    while received < records.len() {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => anyhow::bail!(
                "reading the scratch topic {topic} back: {received} of {} records within {}s",
                records.len(),
                CONSUME_TIMEOUT.as_secs()
            ),
            Ok(Ok(_)) => received += 1,
            Ok(Err(error)) => tracing::warn!(%error, "raw-limit consumer error; polling again"),
        }
    }
    let consume_secs = started.elapsed().as_secs_f64();
    let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    let n = records.len().max(1) as f64;
    Ok(BrokerLimit {
        topic: topic.to_string(),
        partitions,
        records: records.len(),
        record_bytes_mean: bytes as f64 / n,
        produce_secs,
        produce_records_per_s: n / produce_secs.max(1e-9),
        consume_secs,
        consume_records_per_s: n / consume_secs.max(1e-9),
    })
}

/// The outcome of one delivery future: acknowledged, refused by the broker, or dropped.
fn check_delivery<D, M, C>(result: Result<Result<D, (KafkaError, M)>, C>) -> anyhow::Result<()> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(anyhow::anyhow!(
            "the broker did not accept a record: {error}"
        )),
        Err(_) => Err(anyhow::anyhow!(
            "the producer dropped a record before delivery"
        )),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresLimit {
    pub table: String,
    pub rows: usize,
    pub batch_rows: usize,
    /// Connections writing batches side by side.
    pub writers: usize,
    pub secs: f64,
    pub rows_per_s: f64,
}

/// Write `records` as rows into a scratch table shaped like `pipeline.inbox`/`outbox` (step,
/// event id, type, order id, payload, time; primary key (step, event_id)), [`BATCH_ROWS`] per
/// `INSERT ... SELECT FROM UNNEST(arrays)`, each batch its own transaction, `writers`
/// connections at once. The table is dropped afterwards.
pub async fn postgres(
    pool: &PgPool,
    table: &str,
    writers: usize,
    records: &[RawRecord],
) -> anyhow::Result<PostgresLimit> {
    sqlx::query(&format!(
        "CREATE TABLE {table} (
             step        text        NOT NULL,
             event_id    uuid        NOT NULL,
             event_type  text        NOT NULL,
             order_id    text        NOT NULL,
             payload     bytea,
             created_at  timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (step, event_id)
         )"
    ))
    .execute(pool)
    .await
    .with_context(|| format!("creating the scratch table {table}"))?;
    let measured = write_rows(pool, table, writers, records).await;
    let dropped = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(pool)
        .await;
    let secs = measured?;
    dropped.with_context(|| format!("dropping the scratch table {table}"))?;
    Ok(PostgresLimit {
        table: table.to_string(),
        rows: records.len(),
        batch_rows: BATCH_ROWS,
        writers,
        secs,
        rows_per_s: records.len() as f64 / secs.max(1e-9),
    })
}

async fn write_rows(
    pool: &PgPool,
    table: &str,
    writers: usize,
    records: &[RawRecord],
) -> anyhow::Result<f64> {
    let statement = format!(
        "INSERT INTO {table} (step, event_id, event_type, order_id, payload)
         SELECT $1, e.id, e.ty, e.ord, e.p
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bytea[]) AS e(id, ty, ord, p)"
    );
    // Arrays built before the clock starts: the measurement is of Postgres, not of copying.
    type Batch = (
        Vec<uuid::Uuid>,
        Vec<&'static str>,
        Vec<String>,
        Vec<Vec<u8>>,
    );
    let batches: Arc<Vec<Batch>> = Arc::new(
        records
            .chunks(BATCH_ROWS)
            .map(|chunk| {
                (
                    chunk.iter().map(|r| r.event_id).collect(),
                    chunk.iter().map(|r| r.event_type).collect(),
                    chunk.iter().map(|r| r.key.clone()).collect(),
                    chunk.iter().map(|r| r.payload.clone()).collect(),
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers.max(1) {
        let (pool, batches, next, statement) = (
            pool.clone(),
            batches.clone(),
            next.clone(),
            statement.clone(),
        );
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((ids, types, orders, payloads)) = batches.get(index) else {
                    return anyhow::Ok(());
                };
                let mut tx = pool.begin().await.context("beginning a raw batch")?;
                sqlx::query(&statement)
                    .bind("bench")
                    .bind(ids)
                    .bind(types)
                    .bind(orders)
                    .bind(payloads)
                    .execute(&mut *tx)
                    .await
                    .context("inserting a raw batch")?;
                tx.commit().await.context("committing a raw batch")?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a raw-limit writer panicked")??;
    }
    Ok(started.elapsed().as_secs_f64())
}

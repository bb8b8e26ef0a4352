//! Offsets kept in Postgres: read on partition assignment, written with the rows.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};

/// Consumer context that starts each newly assigned partition at the offset stored in
/// Postgres, or at the beginning when none is stored.
///
/// The consumer uses eager rebalancing (see `platform::kafka::consumer_config`), so an
/// assignment is always a whole new set.
pub struct DbOffsets {
    pool: PgPool,
    consumer: String,
    runtime: tokio::runtime::Handle,
}

impl DbOffsets {
    pub fn new(pool: PgPool, consumer: String, runtime: tokio::runtime::Handle) -> Self {
        DbOffsets {
            pool,
            consumer,
            runtime,
        }
    }

    /// Look up stored offsets for `tpl`. Runs inside librdkafka's rebalance callback, which is
    /// synchronous; the lookup is one indexed query.
    fn stored(&self, tpl: &TopicPartitionList) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
        let topics: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| e.topic().to_string())
            .collect();
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let query = sqlx::query_as::<_, (String, i32, i64)>(
            "SELECT o.topic, o.partition, o.next_offset FROM pipeline.consumer_offsets o
             JOIN UNNEST($2::text[], $3::int[]) AS a(topic, partition) USING (topic, partition)
             WHERE o.consumer = $1",
        )
        .bind(&self.consumer)
        .bind(&topics)
        .bind(&partitions)
        .fetch_all(&self.pool);
        if tokio::runtime::Handle::try_current().is_ok() {
            // On a runtime worker (the usual case: the callback runs inside `recv`), tell the
            // runtime this thread blocks. Requires the multi-threaded runtime.
            tokio::task::block_in_place(|| self.runtime.block_on(query))
        } else {
            self.runtime.block_on(query)
        }
    }

    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> KafkaResult<()> {
        match self.stored(tpl) {
            Ok(stored) => {
                let elements: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (topic, partition) in elements {
                    let offset = stored
                        .iter()
                        .find(|(t, p, _)| *t == topic && *p == partition)
                        .map_or(Offset::Beginning, |(_, _, next)| Offset::Offset(*next));
                    tpl.set_partition_offset(&topic, partition, offset)?;
                }
                tracing::info!(consumer = %self.consumer, assigned = ?stored, "partitions assigned at stored offsets");
            }
            Err(error) => {
                // Fall back to the group's committed offsets, which never run ahead of the
                // stored ones (they are committed after the rows). Re-applied events are
                // absorbed by the event-id key of `order_events`.
                tracing::error!(consumer = %self.consumer, %error, "cannot read stored offsets; starting from committed offsets");
            }
        }
        consumer.assign(tpl)
    }
}

impl ClientContext for DbOffsets {}

impl ConsumerContext for DbOffsets {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => consumer.unassign(),
            other => {
                tracing::error!(consumer = %self.consumer, error = ?other, "rebalance error; dropping the assignment");
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(consumer = %self.consumer, %error, "applying the assignment failed");
        }
    }
}

/// Record the next offsets to read, never moving one backwards.
pub async fn store(
    tx: &mut PgConnection,
    consumer: &str,
    offsets: &[(String, i32, i64)],
) -> Result<(), sqlx::Error> {
    if offsets.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = offsets.iter().map(|(t, _, _)| t.as_str()).collect();
    let partitions: Vec<i32> = offsets.iter().map(|(_, p, _)| *p).collect();
    let next: Vec<i64> = offsets.iter().map(|(_, _, o)| *o).collect();
    sqlx::query(
        "INSERT INTO pipeline.consumer_offsets (consumer, topic, partition, next_offset)
         SELECT $1, t, p, o FROM UNNEST($2::text[], $3::int[], $4::bigint[]) AS x(t, p, o)
         ON CONFLICT (consumer, topic, partition)
         DO UPDATE SET next_offset = GREATEST(pipeline.consumer_offsets.next_offset, EXCLUDED.next_offset),
                       updated_at = now()",
    )
    .bind(consumer)
    .bind(&topics)
    .bind(&partitions)
    .bind(&next)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

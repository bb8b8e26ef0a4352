//! Offsets kept in Postgres (the live generation's `positions`, written with the rows), read on
//! partition assignment.

use platform::kafka_stats::Member;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::store;

/// Consumer context that starts each newly assigned partition at the live generation's stored
/// position, or at the beginning when none is stored.
///
/// The consumer uses eager rebalancing (see `platform::kafka::consumer_config`), so an
/// assignment is always a whole new set. Like every group member's context it also reports
/// librdkafka's statistics and whether the member holds its assignment (`member`).
pub struct DbOffsets {
    pool: PgPool,
    consumer: String,
    runtime: tokio::runtime::Handle,
    pub member: Member,
}

impl DbOffsets {
    /// `client_id` names the client in the statistics' gauges.
    pub fn new(
        pool: PgPool,
        consumer: String,
        client_id: &str,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        DbOffsets {
            pool,
            consumer,
            runtime,
            member: Member::new(client_id),
        }
    }

    /// Look up the live generation's stored positions for `tpl`. Runs inside librdkafka's
    /// rebalance callback, which is synchronous; the lookup is two small queries.
    fn stored(&self, tpl: &TopicPartitionList) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let pool = self.pool.clone();
        let query = async move {
            let mut conn = pool.acquire().await?;
            let live = crate::generations::live(&mut conn, false).await?;
            let stored = store::positions(&mut conn, &live.target()?, false).await?;
            Ok::<_, anyhow::Error>(
                stored
                    .into_iter()
                    .filter(|p| wanted.contains(&(p.topic.clone(), p.partition)))
                    .map(|p| (p.topic, p.partition, p.next_offset))
                    .collect(),
            )
        };
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
                tracing::error!(consumer = %self.consumer, error = %format!("{error:#}"), "cannot read stored offsets; starting from committed offsets");
            }
        }
        consumer.assign(tpl)
    }
}

impl ClientContext for DbOffsets {
    fn stats_raw(&self, statistics: &[u8]) {
        self.member.stats.record(statistics);
    }
}

impl ConsumerContext for DbOffsets {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = self.assign(consumer, tpl);
                self.member.assignment.set(assigned.is_ok());
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.member.assignment.set(false);
                consumer.unassign()
            }
            other => {
                self.member.assignment.set(false);
                tracing::error!(consumer = %self.consumer, error = ?other, "rebalance error; dropping the assignment");
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(consumer = %self.consumer, %error, "applying the assignment failed");
        }
    }
}

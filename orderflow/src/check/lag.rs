//! Lag, read from outside every consumer group: the broker's log ends and the steps'
//! committed offsets (`Probe`), the projector's stored positions, and the arithmetic that
//! turns them into records behind the log end per group and partition. Also the poll behind
//! `--wait-zero-lag`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use platform::audit::Found;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::settings::Settings;

/// How long one broker request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--wait-zero-lag` looks, and how often it says how far it is.
const WAIT_POLL: Duration = Duration::from_secs(1);
const WAIT_PROGRESS: Duration = Duration::from_secs(10);

/// One partition of a group: where the group is and where the log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The committed offset (steps) or stored position (projector); `None` if there is none.
    pub position: Option<i64>,
    pub end: i64,
}

impl PartitionLag {
    /// Records behind the log end; negative when the position is beyond it.
    pub fn lag(&self) -> i64 {
        self.end - self.position.unwrap_or(0)
    }
}

/// A group's lag on every partition of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    /// Lag of `group` on every partition in `ends` (partition → log end), given its positions.
    pub fn new(group: &str, ends: &BTreeMap<i32, i64>, positions: &BTreeMap<i32, i64>) -> Self {
        GroupLag {
            group: group.to_string(),
            partitions: ends
                .iter()
                .map(|(&partition, &end)| PartitionLag {
                    partition,
                    position: positions.get(&partition).copied(),
                    end,
                })
                .collect(),
        }
    }

    /// Records behind the log end, over every partition (positions beyond the end count 0).
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag().max(0)).sum()
    }

    /// The partition furthest from the log end (either way), if any is not at it.
    pub fn worst(&self) -> Option<PartitionLag> {
        self.partitions
            .iter()
            .filter(|p| p.lag() != 0)
            .max_by_key(|p| (p.lag().abs(), -p.partition))
            .copied()
    }

    pub fn at_end(&self) -> bool {
        self.worst().is_none()
    }

    /// `payment lag 12 (worst partition 2: at 100, log end 112)`.
    pub fn describe(&self) -> String {
        let Some(worst) = self.worst() else {
            return format!("{} lag 0", self.group);
        };
        let at = worst
            .position
            .map_or_else(|| "nothing committed".to_string(), |p| format!("at {p}"));
        let beyond = if worst.lag() < 0 {
            " BEYOND the log end: topic recreated or truncated?"
        } else {
            ""
        };
        format!(
            "{} lag {} (worst partition {}: {at}, log end {}{beyond})",
            self.group,
            self.total(),
            worst.partition,
            worst.end
        )
    }
}

/// What the broker and the database said at one moment about lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSnapshot {
    pub ends: BTreeMap<i32, i64>,
    pub groups: Vec<GroupLag>,
    pub unpublished: Found,
    /// The log end did not move while the positions were read: the snapshot is consistent.
    pub stable: bool,
    pub parked: i64,
}

impl LagSnapshot {
    /// Every group at the log end and nothing left to publish.
    pub fn zero(&self) -> bool {
        self.stable && self.unpublished.count == 0 && self.groups.iter().all(GroupLag::at_end)
    }

    /// One line: log end, lag per group, unpublished, parked.
    pub fn summary(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(GroupLag::describe).collect();
        format!(
            "log end {} over {} partitions; {}; unpublished outbox rows {}; parked {}{}",
            self.ends.values().sum::<i64>(),
            self.ends.len(),
            groups.join(", "),
            self.unpublished.count,
            self.parked,
            if self.stable {
                ""
            } else {
                "; the log end moved while positions were read"
            }
        )
    }
}

/// How `--wait-zero-lag` ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Waited {
    /// Zero lag after this long.
    Reached(Duration),
    /// Not within the limit.
    TimedOut(Duration),
}

/// The broker, asked from outside every group: log ends and the steps' committed offsets.
pub(super) struct Probe {
    topic: String,
    partitions: Vec<i32>,
    /// One reader per step group, in [`consumers::STEP_NAMES`] order.
    groups: Vec<(String, BaseConsumer)>,
}

impl Probe {
    pub(super) fn open(settings: &Settings) -> anyhow::Result<Probe> {
        let kafka = &settings.kafka;
        let topic = kafka.topic.clone();
        let count = platform::kafka::partition_count(kafka, &topic).with_context(|| {
            format!(
                "cannot read topic {topic} from the Kafka broker at {} (is it running? start it \
                 with scripts/dev-up, or set ORDERFLOW_KAFKA__BROKERS / ORDERFLOW_KAFKA__TOPIC)",
                kafka.brokers
            )
        })?;
        let partitions = (0..i32::try_from(count)?).collect();
        let client_id = format!("orderflow-check-{}", std::process::id());
        let groups = consumers::STEP_NAMES
            .iter()
            .map(|step| {
                let group = settings.group_id(step);
                // Never joins the group (members, generation and assignments stay as they
                // are); it only asks OffsetFetch and ListOffsets, and commits nothing.
                let reader = platform::kafka::group_offsets_client(kafka, &group, &client_id)?;
                Ok((group, reader))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Probe {
            topic,
            partitions,
            groups,
        })
    }

    /// Log end (high watermark: ListOffsets latest) per partition.
    fn ends(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let (_, reader) = &self.groups[0];
        self.partitions
            .iter()
            .map(|&p| {
                let (_, high) = reader
                    .fetch_watermarks(&self.topic, p, BROKER_TIMEOUT)
                    .with_context(|| {
                        format!("reading the log end of {} partition {p}", self.topic)
                    })?;
                Ok((p, high))
            })
            .collect()
    }

    /// Committed offsets of the group read by `reader` (OffsetFetch; no join).
    fn committed(&self, group: &str, reader: &BaseConsumer) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut wanted = TopicPartitionList::new();
        for &p in &self.partitions {
            wanted.add_partition(&self.topic, p);
        }
        let got = reader
            .committed_offsets(wanted, BROKER_TIMEOUT)
            .with_context(|| format!("reading the committed offsets of group {group}"))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }
}

/// Log ends, every group's positions, unpublished and parked, then the log ends again: if
/// they did not move, no reply was produced meanwhile and the snapshot is consistent.
pub(super) async fn lag_snapshot(pool: &PgPool, probe: &Probe) -> anyhow::Result<LagSnapshot> {
    // The broker calls block for a round trip each; tell the runtime.
    let before = tokio::task::block_in_place(|| probe.ends())?;
    let mut groups = Vec::new();
    for (group, reader) in &probe.groups {
        let committed = tokio::task::block_in_place(|| probe.committed(group, reader))?;
        groups.push(GroupLag::new(group, &before, &committed));
    }
    let mut conn = pool.acquire().await?;
    let (live, positions) = projections::audit::live_positions(&mut conn, &probe.topic).await?;
    groups.push(GroupLag::new(
        &format!("{} ({})", projections::NAME, live.schema_name),
        &before,
        &positions,
    ));
    let unpublished = platform::audit::unpublished(&mut conn).await?;
    let parked = consumers::audit::parked(&mut conn).await?.count;
    drop(conn);
    let after = tokio::task::block_in_place(|| probe.ends())?;
    Ok(LagSnapshot {
        stable: before == after,
        ends: before,
        groups,
        unpublished,
        parked,
    })
}

/// Poll until zero lag, nothing unpublished and nothing parked, or `limit`. Errors while
/// polling (a restarting broker or database) are reported and polled through.
pub(super) async fn wait_zero_lag(
    pool: &PgPool,
    probe: &Probe,
    limit: Duration,
) -> anyhow::Result<Waited> {
    let started = Instant::now();
    let mut last_progress = started;
    loop {
        let said = match lag_snapshot(pool, probe).await {
            Ok(snapshot) if snapshot.zero() && snapshot.parked == 0 => {
                let took = started.elapsed();
                eprintln!(
                    "check: zero lag after {:.1} s: {}",
                    took.as_secs_f64(),
                    snapshot.summary()
                );
                return Ok(Waited::Reached(took));
            }
            Ok(snapshot) => snapshot.summary(),
            Err(error) => format!("cannot read lag: {error:#}"),
        };
        if started.elapsed() >= limit {
            eprintln!("check: no zero lag within {} s: {said}", limit.as_secs());
            return Ok(Waited::TimedOut(limit));
        }
        if last_progress.elapsed() >= WAIT_PROGRESS {
            last_progress = Instant::now();
            eprintln!(
                "check: waiting for zero lag ({:.0} of {} s): {said}",
                started.elapsed().as_secs_f64(),
                limit.as_secs()
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_per_partition_against_the_log_end() {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 20), (2, 0)].into();
        // (positions, total, worst partition, at end)
        type Case = (Vec<(i32, i64)>, i64, Option<i32>, bool);
        let cases: Vec<Case> = vec![
            (vec![(0, 10), (1, 20), (2, 0)], 0, None, true),
            // Nothing committed on an empty partition is at its end.
            (vec![(0, 10), (1, 20)], 0, None, true),
            (vec![(0, 10)], 20, Some(1), false),
            (vec![(0, 7), (1, 18)], 5, Some(0), false),
            (vec![(0, 8), (1, 18)], 4, Some(0), false),
            (vec![], 30, Some(1), false),
            // Beyond the log end is not at it, and counts no lag.
            (vec![(0, 12), (1, 20)], 0, Some(0), false),
        ];
        for (positions, total, worst, at_end) in cases {
            let positions: BTreeMap<i32, i64> = positions.into_iter().collect();
            let lag = GroupLag::new("g", &ends, &positions);
            assert_eq!(lag.total(), total, "{positions:?}");
            assert_eq!(lag.worst().map(|w| w.partition), worst, "{positions:?}");
            assert_eq!(lag.at_end(), at_end, "{positions:?}");
        }
        let lag = GroupLag::new("orderflow.payment", &ends, &[(0, 7), (1, 18)].into());
        assert_eq!(
            lag.describe(),
            "orderflow.payment lag 5 (worst partition 0: at 7, log end 10)"
        );
        let lag = GroupLag::new("g", &ends, &[(1, 20)].into());
        assert_eq!(
            lag.describe(),
            "g lag 10 (worst partition 0: nothing committed, log end 10)"
        );
    }
}

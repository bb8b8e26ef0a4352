//! Where the facts come from: the broker (log ends and each step group's committed offsets,
//! asked through clients that never join a group) and Postgres (the queries that live next to
//! their tables), read separately so that the collector can set what one source gave when the
//! other is down, and assembled into a [`Status`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use consumers::parked::Parked;
use platform::config::redact_url;
use projections::audit::Watermark;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use super::{label, ArchiveStatus, ComponentStatus, PartitionPosition, SagaStatus, Status};
use crate::components::Component;
use crate::settings::Settings;

/// Longest one broker request may take. Short: a status that waits longer than this for one
/// answer is better off saying the broker does not answer.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A source that did not answer: the exit code 2 of `orderflow status`. The message names the
/// service, where it was looked for and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    Postgres(String),
    Kafka(String),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Postgres(message) | Unreachable::Kafka(message) => f.write_str(message),
        }
    }
}

impl Unreachable {
    fn postgres(settings: &Settings, error: impl fmt::Display) -> Unreachable {
        let url = redact_url(&settings.database.url);
        Unreachable::Postgres(format!(
            "cannot read from Postgres at {url}: {error} (is it running? start it with \
             scripts/dev-up, or point ORDERFLOW_DATABASE__URL at it)"
        ))
    }

    fn kafka(settings: &Settings, error: impl fmt::Display) -> Unreachable {
        Unreachable::Kafka(format!(
            "cannot read topic {} from the Kafka broker at {}: {error} (is it running? start it \
             with scripts/dev-up, or set ORDERFLOW_KAFKA__BROKERS / ORDERFLOW_KAFKA__TOPIC)",
            settings.kafka.topic, settings.kafka.brokers
        ))
    }
}

/// The broker's side: log ends and the committed offsets of the steps' groups.
struct Broker {
    topic: String,
    partitions: Vec<i32>,
    /// The intake topic and its partitions, when the intake is asked for: its group's
    /// positions are on that topic, not on the log.
    intake: Option<(String, Vec<i32>)>,
    /// Reads log ends; belongs to no group.
    probe: BaseConsumer,
    /// Per step component asked for: its group and a client of that group that never joins
    /// it (OffsetFetch only).
    groups: Vec<(Component, String, BaseConsumer)>,
}

impl Broker {
    fn open(settings: &Settings, which: &[Component]) -> anyhow::Result<Broker> {
        let kafka = &settings.kafka;
        let topic = kafka.topic.clone();
        let count = platform::kafka::partition_count(kafka, &topic)?;
        let intake = if which.contains(&Component::Intake) {
            let topic = kafka.intake_topic.clone();
            let count = platform::kafka::partition_count(kafka, &topic)?;
            Some((topic, (0..i32::try_from(count)?).collect()))
        } else {
            None
        };
        let client_id = format!("orderflow-status-{}", std::process::id());
        let groups = which
            .iter()
            .filter(|c| c.is_step())
            .map(|&component| {
                let group = settings.group_id(component.name());
                let client = platform::kafka::group_offsets_client(kafka, &group, &client_id)?;
                Ok((component, group, client))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Broker {
            topic,
            partitions: (0..i32::try_from(count)?).collect(),
            intake,
            probe: platform::kafka::probe(kafka)?,
            groups,
        })
    }

    /// Log end (high watermark, ListOffsets latest) per partition. Blocks.
    fn ends(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.ends_of(&self.topic, &self.partitions)
    }

    /// The intake topic's end per partition (empty when the intake is not asked for).
    fn intake_ends(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        match &self.intake {
            Some((topic, partitions)) => self.ends_of(topic, partitions),
            None => Ok(BTreeMap::new()),
        }
    }

    fn ends_of(&self, topic: &str, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, i64>> {
        partitions
            .iter()
            .map(|&p| {
                let (_, high) = self
                    .probe
                    .fetch_watermarks(topic, p, BROKER_TIMEOUT)
                    .with_context(|| format!("reading the end of {topic} partition {p}"))?;
                Ok((p, high))
            })
            .collect()
    }

    /// Committed offsets of each step group (OffsetFetch; no join), on the topic it reads.
    /// Blocks.
    fn committed(&self) -> anyhow::Result<HashMap<Component, BTreeMap<i32, i64>>> {
        let wanted_of = |topic: &str, partitions: &[i32]| {
            let mut wanted = TopicPartitionList::new();
            for &p in partitions {
                wanted.add_partition(topic, p);
            }
            wanted
        };
        let log = wanted_of(&self.topic, &self.partitions);
        let intake = self
            .intake
            .as_ref()
            .map(|(topic, partitions)| wanted_of(topic, partitions));
        let mut all = HashMap::new();
        for (component, group, client) in &self.groups {
            let wanted = match (component, &intake) {
                (Component::Intake, Some(intake)) => intake,
                _ => &log,
            };
            let got = client
                .committed_offsets(wanted.clone(), BROKER_TIMEOUT)
                .with_context(|| format!("reading the committed offsets of group {group}"))?;
            let offsets = got
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            all.insert(*component, offsets);
        }
        Ok(all)
    }
}

/// What the broker said.
#[derive(Debug, Clone, Default)]
pub struct BrokerFacts {
    pub ends: BTreeMap<i32, i64>,
    /// The intake topic's ends (when the intake is asked for).
    pub intake_ends: BTreeMap<i32, i64>,
    pub committed: HashMap<Component, BTreeMap<i32, i64>>,
}

/// What Postgres said. Maps are keyed by the name in the tables (`projections` for the
/// projector).
#[derive(Debug, Clone, Default)]
pub struct DatabaseFacts {
    pub now: DateTime<Utc>,
    pub dead_letters: HashMap<String, i64>,
    pub outbox: HashMap<String, (i64, f64)>,
    pub parked: HashMap<String, Parked>,
    /// When the saga is asked for.
    pub saga: Option<SagaFacts>,
    /// When the projector is asked for: the live generation's watermarks.
    pub watermarks: Option<Vec<Watermark>>,
}

/// The saga's facts: open orders per state, missed deadlines, orders completed in the last
/// minute.
#[derive(Debug, Clone, Default)]
pub struct SagaFacts {
    pub open: Vec<(String, i64)>,
    pub deadlines_missed: i64,
    pub completed_last_minute: i64,
}

/// The readers of every source, opened once and read again for each snapshot.
pub struct Sources {
    settings: Settings,
    pool: PgPool,
    broker: Arc<Broker>,
    /// Reads the first unarchived records, when `archive.dir` is set.
    peek: Option<Arc<archive::lag::Peek>>,
}

impl Sources {
    /// For `orderflow status`: connect to Postgres (no migration) and the broker.
    pub async fn open(settings: &Settings) -> Result<Sources, Unreachable> {
        let pool = platform::db::connect(&settings.database)
            .await
            .map_err(|e| Unreachable::Postgres(format!("{e:#}")))?;
        Sources::with_pool(settings, pool, &super::components(settings, None)).await
    }

    /// For a process that already has a pool: the broker clients `which` components need.
    pub async fn with_pool(
        settings: &Settings,
        pool: PgPool,
        which: &[Component],
    ) -> Result<Sources, Unreachable> {
        let (owned, which_owned) = (settings.clone(), which.to_vec());
        let broker = tokio::task::spawn_blocking(move || Broker::open(&owned, &which_owned))
            .await
            .map_err(|e| Unreachable::kafka(settings, e))?
            .map_err(|e| Unreachable::kafka(settings, format!("{e:#}")))?;
        let peek = if which.contains(&Component::Archiver) && !settings.archive.dir.is_empty() {
            let peek = archive::lag::Peek::open(&settings.kafka, &settings.kafka.topic)
                .map_err(|e| Unreachable::kafka(settings, format!("{e:#}")))?;
            Some(Arc::new(peek))
        } else {
            None
        };
        Ok(Sources {
            settings: settings.clone(),
            pool,
            broker: Arc::new(broker),
            peek,
        })
    }

    /// Log ends and the steps' committed offsets; the log ends first, so a position read
    /// after them is never counted beyond the end.
    pub async fn broker(&self) -> Result<BrokerFacts, Unreachable> {
        let broker = Arc::clone(&self.broker);
        tokio::task::spawn_blocking(move || -> anyhow::Result<BrokerFacts> {
            let ends = broker.ends()?;
            let intake_ends = broker.intake_ends()?;
            let committed = broker.committed()?;
            Ok(BrokerFacts {
                ends,
                intake_ends,
                committed,
            })
        })
        .await
        .map_err(|e| Unreachable::kafka(&self.settings, e))?
        .map_err(|e| Unreachable::kafka(&self.settings, format!("{e:#}")))
    }

    /// The database's facts for `which` components, on one connection.
    pub async fn database(&self, which: &[Component]) -> Result<DatabaseFacts, Unreachable> {
        self.read_database(which)
            .await
            .map_err(|e| Unreachable::postgres(&self.settings, format!("{e:#}")))
    }

    async fn read_database(&self, which: &[Component]) -> anyhow::Result<DatabaseFacts> {
        let mut conn = self.pool.acquire().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *conn)
            .await?;
        let dead_letters = platform::deadletter::open_per_consumer(&mut conn)
            .await?
            .into_iter()
            .collect();
        let outbox = platform::outbox::unpublished(&mut conn)
            .await?
            .into_iter()
            .map(|u| (u.step, (u.rows, u.oldest_age_secs)))
            .collect();
        let parked = consumers::parked::per_step(&mut conn)
            .await?
            .into_iter()
            .collect();
        let saga = if which.contains(&Component::Saga) {
            let open = consumers::saga::open_per_state(&mut conn).await?;
            let missed = consumers::saga::deadlines_missed(&mut conn, now).await?;
            let completed =
                projections::audit::completed_since(&mut conn, now - chrono::Duration::minutes(1))
                    .await?;
            Some(SagaFacts {
                open,
                deadlines_missed: missed,
                completed_last_minute: completed,
            })
        } else {
            None
        };
        let watermarks = if which.contains(&Component::Projections) {
            let (_, marks) =
                projections::audit::watermarks(&mut conn, &self.settings.kafka.topic).await?;
            Some(marks)
        } else {
            None
        };
        Ok(DatabaseFacts {
            now,
            dead_letters,
            outbox,
            parked,
            saga,
            watermarks,
        })
    }

    /// The archive's lag, when `archive.dir` is set: the manifest read from disk, the oldest
    /// unarchived record's time from the broker. A manifest that cannot be read is reported
    /// in the status, not as an unreachable service.
    pub async fn archive(&self, ends: &BTreeMap<i32, i64>) -> Option<ArchiveStatus> {
        let peek = Arc::clone(self.peek.as_ref()?);
        let dir = self.settings.archive.dir.clone();
        let topic = self.settings.kafka.topic.clone();
        let ends = ends.clone();
        let read =
            tokio::task::spawn_blocking(move || -> anyhow::Result<archive::lag::ArchiveLag> {
                let manifest = archive::Manifest::load(Path::new(&dir), &topic)?;
                peek.lag(&manifest, &ends)
            })
            .await;
        let dir = self.settings.archive.dir.clone();
        Some(match read {
            Ok(Ok(lag)) => ArchiveStatus {
                dir,
                records: lag.records,
                seconds: lag.seconds(Utc::now()),
                problem: None,
            },
            Ok(Err(error)) => ArchiveStatus {
                dir,
                records: 0,
                seconds: None,
                problem: Some(format!("{error:#}")),
            },
            Err(error) => ArchiveStatus {
                dir,
                records: 0,
                seconds: None,
                problem: Some(error.to_string()),
            },
        })
    }

    /// Every fact `which` components own, read now.
    pub async fn status(&self, which: &[Component]) -> Result<Status, Unreachable> {
        let broker = self.broker().await?;
        let database = self.database(which).await?;
        let archive = if which.contains(&Component::Archiver) {
            self.archive(&broker.ends).await
        } else {
            None
        };
        Ok(assemble(&self.settings, which, &broker, &database, archive))
    }
}

/// The snapshot from what each source said.
pub fn assemble(
    settings: &Settings,
    which: &[Component],
    broker: &BrokerFacts,
    database: &DatabaseFacts,
    archive: Option<ArchiveStatus>,
) -> Status {
    let components = which
        .iter()
        .filter(|c| **c != Component::Archiver)
        .map(|&component| {
            let name = component.name();
            let positions: BTreeMap<i32, i64> = match component {
                Component::Projections => database
                    .watermarks
                    .iter()
                    .flatten()
                    .map(|w| (w.partition, w.next_offset))
                    .collect(),
                _ => broker
                    .committed
                    .get(&component)
                    .cloned()
                    .unwrap_or_default(),
            };
            // The intake's positions are on the intake topic; every other's on the log.
            let ends = match component {
                Component::Intake => &broker.intake_ends,
                _ => &broker.ends,
            };
            let partitions: Vec<PartitionPosition> = ends
                .iter()
                .map(|(&partition, &end)| PartitionPosition {
                    partition,
                    position: positions.get(&partition).copied(),
                    end,
                })
                .collect();
            let parked = database.parked.get(name).copied().unwrap_or_default();
            let (outbox_unpublished, outbox_oldest_secs) =
                database.outbox.get(name).copied().unwrap_or((0, 0.0));
            let freshness_secs = (component == Component::Projections).then(|| {
                freshness(
                    database.now,
                    &partitions,
                    database.watermarks.as_deref().unwrap_or_default(),
                )
            });
            ComponentStatus {
                component: label(component),
                group: settings.group_id(name),
                lag: partitions.iter().map(PartitionPosition::lag).sum(),
                partitions,
                applied_per_sec: None,
                backlog: parked.records,
                parked: parked.orders,
                dead_letters: database.dead_letters.get(name).copied().unwrap_or(0),
                outbox_unpublished,
                outbox_oldest_secs,
                freshness_secs,
            }
        })
        .collect();
    let saga = database.saga.as_ref().map(|saga| SagaStatus {
        open: saga.open.iter().cloned().collect(),
        deadlines_missed: saga.deadlines_missed,
        completed_last_minute: saga.completed_last_minute,
    });
    Status {
        taken_at: database.now,
        topic: settings.kafka.topic.clone(),
        log_end: broker.ends.clone(),
        components,
        saga,
        archive,
    }
}

/// How stale the read models are at `now`: 0 when every partition is applied to its log end;
/// else, over the partitions that are behind, the largest age of the newest applied event.
/// A partition behind with nothing applied yet has no event time to age; its lag shows it.
pub fn freshness(now: DateTime<Utc>, partitions: &[PartitionPosition], marks: &[Watermark]) -> f64 {
    partitions
        .iter()
        .filter(|p| p.lag() > 0)
        .filter_map(|p| {
            marks
                .iter()
                .find(|m| m.partition == p.partition)
                .and_then(|m| m.last_event_at)
        })
        .map(|at| ((now - at).num_milliseconds() as f64 / 1000.0).max(0.0))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn freshness_is_zero_at_the_log_end_and_the_oldest_newest_event_behind_it() {
        let now = Utc.timestamp_opt(1_000, 0).unwrap();
        let at = |s| Some(Utc.timestamp_opt(s, 0).unwrap());
        let marks = vec![
            Watermark {
                partition: 0,
                next_offset: 10,
                last_event_at: at(990),
            },
            Watermark {
                partition: 1,
                next_offset: 5,
                last_event_at: at(700),
            },
        ];
        let position = |partition, position, end| PartitionPosition {
            partition,
            position: Some(position),
            end,
        };
        // (partitions, freshness)
        let cases = vec![
            // Both at the end: fresh, however old the newest event (a quiet log).
            (vec![position(0, 10, 10), position(1, 5, 5)], 0.0),
            // Partition 0 behind: its newest applied event is 10 s old.
            (vec![position(0, 10, 12), position(1, 5, 5)], 10.0),
            // Both behind: the staler one counts.
            (vec![position(0, 10, 12), position(1, 5, 9)], 300.0),
            // A partition behind with nothing applied has no event time to age.
            (
                vec![
                    position(0, 10, 10),
                    PartitionPosition {
                        partition: 2,
                        position: None,
                        end: 4,
                    },
                ],
                0.0,
            ),
        ];
        for (partitions, want) in cases {
            assert_eq!(freshness(now, &partitions, &marks), want, "{partitions:?}");
        }
    }
}

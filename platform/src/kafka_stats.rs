//! What long-running Kafka clients tell the admin listener: librdkafka's statistics as gauges
//! (`orderflow_kafka_producer_queue_messages`, `orderflow_kafka_request_latency_seconds`,
//! `orderflow_kafka_broker_up`) and, for group members, whether the group gave them their
//! partitions (readiness).
//!
//! The client contexts here ([`Stats`] for producers, [`Member`] for group members) are built by
//! `platform::kafka`'s constructors. librdkafka is asked for statistics
//! (`statistics.interval.ms`) only in a process whose metrics recorder is installed; elsewhere
//! these contexts are the default context plus an unused flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use serde::Deserialize;

use crate::metrics::names::{KAFKA_BROKER_UP, KAFKA_PRODUCER_QUEUE, KAFKA_REQUEST_LATENCY};

/// How often librdkafka emits statistics, when it is asked to.
pub const STATISTICS_INTERVAL_MS: u32 = 5_000;

/// Whether a group member holds its assignment: set when the group assigned it partitions (an
/// empty assignment too — a member beyond the partition count is idle by design), cleared while
/// a rebalance takes them away. Cheap to clone; every clone is the same flag.
#[derive(Debug, Clone, Default)]
pub struct Assignment(Arc<AtomicBool>);

impl Assignment {
    /// A flag that is already set: for components that assign themselves (the archiver).
    pub fn settled() -> Self {
        let flag = Assignment::default();
        flag.set(true);
        flag
    }

    pub fn is_settled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, settled: bool) {
        self.0.store(settled, Ordering::Relaxed);
    }
}

/// The `client` label of a client whose `client.id` is `client_id`: the role without the
/// `orderflow-` prefix and the process id (`orderflow-payment-4711` → `payment`), then the
/// client's kind (`payment-consumer`). Process ids would make a new series per restart.
pub fn client_label(client_id: &str, kind: &str) -> String {
    let role = client_id.strip_prefix("orderflow-").unwrap_or(client_id);
    let role = match role.rsplit_once('-') {
        Some((head, pid)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => role,
    };
    format!("{role}-{kind}")
}

/// The parts of librdkafka's statistics JSON that become gauges.
#[derive(Debug, Deserialize)]
struct RawStatistics {
    /// Messages in the producer's queue (0 for consumers).
    #[serde(default)]
    msg_cnt: u64,
    #[serde(default)]
    brokers: HashMap<String, RawBroker>,
}

#[derive(Debug, Deserialize)]
struct RawBroker {
    nodeid: i32,
    state: String,
    rtt: Option<RawWindow>,
}

#[derive(Debug, Deserialize)]
struct RawWindow {
    /// Microseconds.
    avg: i64,
    cnt: i64,
}

/// The gauge values of one statistics report.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    pub queue_messages: u64,
    /// Per broker (`host:port/id`, sorted): is it up, and the average round trip in seconds
    /// over the report's window (None when no request was answered in it).
    pub brokers: Vec<(String, bool, Option<f64>)>,
}

/// Read a statistics report; `None` when it is not the JSON librdkafka writes.
pub fn readings(json: &[u8]) -> Option<Readings> {
    let raw: RawStatistics = serde_json::from_slice(json).ok()?;
    let mut brokers: Vec<(String, bool, Option<f64>)> = raw
        .brokers
        .into_iter()
        // Bootstrap entries and the logical coordinator have no node id: they are not brokers.
        .filter(|(_, b)| b.nodeid >= 0)
        .map(|(name, b)| {
            let rtt = b
                .rtt
                .filter(|w| w.cnt > 0)
                .map(|w| w.avg as f64 / 1_000_000.0);
            (name, b.state == "UP", rtt)
        })
        .collect();
    brokers.sort_by(|a, b| a.0.cmp(&b.0));
    Some(Readings {
        queue_messages: raw.msg_cnt,
        brokers,
    })
}

/// Statistics of one client into the gauges, labelled with its [`client_label`].
#[derive(Debug, Clone)]
pub struct Stats {
    client: Arc<str>,
    producer: bool,
}

impl Stats {
    /// For a producer whose `client.id` is `client_id`.
    pub fn producer(client_id: &str) -> Self {
        Stats {
            client: client_label(client_id, "producer").into(),
            producer: true,
        }
    }

    /// For a consumer or reader whose `client.id` is `client_id`.
    pub fn consumer(client_id: &str) -> Self {
        Stats {
            client: client_label(client_id, "consumer").into(),
            producer: false,
        }
    }

    /// Set the gauges from one report (every few seconds, off the hot path).
    pub fn record(&self, json: &[u8]) {
        let Some(readings) = readings(json) else {
            tracing::debug!(client = %self.client, "librdkafka statistics not understood; skipped");
            return;
        };
        let client = self.client.to_string();
        if self.producer {
            metrics::gauge!(KAFKA_PRODUCER_QUEUE, "client" => client.clone())
                .set(readings.queue_messages as f64);
        }
        for (broker, up, rtt) in readings.brokers {
            let labels = [("client", client.clone()), ("broker", broker)];
            metrics::gauge!(KAFKA_BROKER_UP, &labels).set(if up { 1.0 } else { 0.0 });
            if let Some(seconds) = rtt {
                metrics::gauge!(KAFKA_REQUEST_LATENCY, &labels).set(seconds);
            }
        }
    }
}

impl ClientContext for Stats {
    fn stats_raw(&self, statistics: &[u8]) {
        self.record(statistics);
    }
}

/// The context of a consumer group member: its statistics, and its [`Assignment`] for readiness.
#[derive(Debug, Clone)]
pub struct Member {
    pub stats: Stats,
    pub assignment: Assignment,
}

impl Member {
    pub fn new(client_id: &str) -> Self {
        Member {
            stats: Stats::consumer(client_id),
            assignment: Assignment::default(),
        }
    }

    /// What a rebalance means for readiness: an assignment (even an empty one) settles the
    /// member; a revocation or an error unsettles it until the next assignment.
    pub fn rebalanced(&self, rebalance: &Rebalance<'_>) {
        self.assignment
            .set(matches!(rebalance, Rebalance::Assign(_)));
    }
}

impl ClientContext for Member {
    fn stats_raw(&self, statistics: &[u8]) {
        self.stats.record(statistics);
    }
}

impl ConsumerContext for Member {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalanced(rebalance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_labels_drop_the_prefix_and_the_pid() {
        let cases = [
            ("orderflow-payment-4711", "consumer", "payment-consumer"),
            (
                "orderflow-projections-12",
                "producer",
                "projections-producer",
            ),
            ("orderflow-archiver", "consumer", "archiver-consumer"),
            ("orderflow-bench-raw", "producer", "bench-raw-producer"),
            ("test-raw", "producer", "test-raw-producer"),
        ];
        for (id, kind, want) in cases {
            assert_eq!(client_label(id, kind), want, "{id}");
        }
    }

    #[test]
    fn readings_keep_real_brokers_with_their_state_and_round_trip() {
        let json = br#"{
            "name": "orderflow-payment-1#producer-1", "type": "producer", "msg_cnt": 42,
            "brokers": {
                "127.0.0.1:9092/bootstrap": {"nodeid": -1, "state": "UP", "rtt": {"avg": 0, "cnt": 0}},
                "GroupCoordinator": {"nodeid": -1, "state": "UP"},
                "127.0.0.1:9093/2": {"nodeid": 2, "state": "DOWN", "rtt": {"avg": 0, "cnt": 0}},
                "127.0.0.1:9092/1": {"nodeid": 1, "state": "UP", "rtt": {"avg": 1500, "cnt": 7}}
            }
        }"#;
        let got = readings(json).expect("librdkafka's shape");
        assert_eq!(got.queue_messages, 42);
        assert_eq!(
            got.brokers,
            vec![
                ("127.0.0.1:9092/1".to_string(), true, Some(0.0015)),
                ("127.0.0.1:9093/2".to_string(), false, None),
            ]
        );
        assert_eq!(readings(b"not json"), None);
    }

    #[test]
    fn an_assignment_settles_a_member_and_a_revocation_unsettles_it() {
        let member = Member::new("orderflow-saga-1");
        assert!(
            !member.assignment.is_settled(),
            "not before the first assignment"
        );
        let none = rdkafka::TopicPartitionList::new();
        member.rebalanced(&Rebalance::Assign(&none));
        assert!(
            member.assignment.is_settled(),
            "an empty assignment is idle by design"
        );
        member.rebalanced(&Rebalance::Revoke(&none));
        assert!(!member.assignment.is_settled());
        member.rebalanced(&Rebalance::Error(rdkafka::error::KafkaError::Canceled));
        assert!(!member.assignment.is_settled());
        assert!(Assignment::settled().is_settled());
    }
}

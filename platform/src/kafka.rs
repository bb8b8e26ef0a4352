//! Kafka client construction. Every delivery-relevant librdkafka setting is set here on
//! purpose, with the reason next to it; no component builds a client any other way.
//!
//! The shapes: group members ([`consumer_config`]), idempotent producers ([`producer`]),
//! group-less readers that assign themselves partitions ([`reader`], [`bulk_reader`]), a
//! group's offsets read or set from outside it ([`group_offsets_client`]), the log's ends and
//! metadata ([`probe`]), and topic administration ([`admin`]). All start from
//! [`client_config`], which carries the security settings.
//!
//! The long-running shapes (group members, producers, the log-following reader) carry a
//! context from [`crate::kafka_stats`]: in a process with a metrics recorder they ask librdkafka
//! for statistics and turn them into gauges, and a member reports whether it holds its
//! assignment (readiness).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaSettings;
use crate::kafka_stats::{Member, Stats, STATISTICS_INTERVAL_MS};

/// Every producer of orderflow: a `FutureProducer` whose context turns librdkafka's
/// statistics into gauges.
pub type Producer = FutureProducer<Stats>;

/// Ask librdkafka for statistics every few seconds, but only where a metrics recorder takes
/// them (the admin listener is on): one-shot commands and processes with `admin.listen = off`
/// pay nothing for them.
fn ask_for_statistics(config: &mut ClientConfig) {
    if crate::metrics::installed() {
        config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string());
    }
}

/// The base of every Kafka client: where the brokers are and how to talk to them securely
/// (`kafka.security_protocol`, SASL, TLS). Producers, consumers, admin and metadata clients all
/// start here; building a `ClientConfig` any other way would connect without these settings.
///
/// The returned config holds the SASL password: never log it (`ClientConfig`'s `Debug` prints
/// every value). A password file that cannot be read here (it was checked at startup) leaves
/// the password out, so the broker refuses the login and the client reports an authentication
/// failure; the reason is logged, naming the setting.
pub fn client_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("security.protocol", kafka.security_protocol.as_str());
    if kafka.security_protocol.uses_sasl() {
        config.set("sasl.mechanism", kafka.sasl_mechanism.as_str());
        if let Some(username) = &kafka.sasl_username {
            config.set("sasl.username", username);
        }
        match kafka.sasl_password() {
            Ok(Some(password)) => {
                config.set("sasl.password", password.expose());
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "Kafka client built without a SASL password"),
        }
    }
    if kafka.security_protocol.uses_tls() {
        if let Some(ca) = &kafka.ssl_ca_file {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let (Some(cert), Some(key)) = (&kafka.ssl_cert_file, &kafka.ssl_key_file) {
            config
                .set("ssl.certificate.location", cert.to_string_lossy())
                .set("ssl.key.location", key.to_string_lossy());
        }
        // Set on purpose rather than left to the library default: `https` checks that the
        // broker's certificate names the host (or IP) it was reached by.
        config.set(
            "ssl.endpoint.identification.algorithm",
            if kafka.ssl_verify_hostname {
                "https"
            } else {
                "none"
            },
        );
    }
    config
}

/// Settings for every producer: idempotent, so librdkafka's own retries never duplicate or
/// reorder a record within a partition.
pub fn producer_config(kafka: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = client_config(kafka);
    config
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
    ask_for_statistics(&mut config);
    config
}

/// Settings for every consumer group member. Offsets are never committed or stored behind
/// our back: steps commit after their outbox is published, projections keep them in Postgres.
pub fn consumer_config(kafka: &KafkaSettings, group_id: &str, client_id: &str) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning of the log: every order must be seen.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        // The classic group protocol, chosen rather than inherited: Kafka 4 brokers also serve
        // the new one (KIP-848), which is incremental only and assigns on the broker, while the
        // steps and the projector are written for the eager, client-assigned rebalances below
        // (docs/kafka.md).
        .set("group.protocol", "classic")
        // Eager rebalancing: on any change every member gives up all partitions, so no
        // partition is ever processed by two members at once.
        .set("partition.assignment.strategy", "range")
        // Generous, so that a batch stuck on a database retry is not mistaken for a dead member
        // too early; the batch itself is bounded.
        .set("max.poll.interval.ms", "300000")
        // Our records are never transactional; read everything the broker has.
        .set("isolation.level", "read_uncommitted")
        .set("enable.partition.eof", "false")
        // Bound what librdkafka prefetches per consumer (defaults: 100,000 records and 64 MB,
        // for each of the five groups of a process): a batch is at most a few thousand
        // records, and the next fetch overlaps with applying it either way.
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "8192");
    ask_for_statistics(&mut config);
    config
}

/// A member of consumer group `group` with [`consumer_config`]'s settings, subscribed to
/// nothing yet. Its context reports statistics and whether it holds its assignment
/// ([`crate::kafka_stats::Member`]).
pub fn group_member(
    kafka: &KafkaSettings,
    group: &str,
    client_id: &str,
) -> anyhow::Result<StreamConsumer<Member>> {
    consumer_config(kafka, group, client_id)
        .create_with_context(Member::new(client_id))
        .with_context(|| format!("creating consumer for group {group}"))
}

/// A producer with [`producer_config`]'s settings.
pub fn producer(kafka: &KafkaSettings, client_id: &str) -> anyhow::Result<Producer> {
    producer_config(kafka, client_id)
        .create_with_context(Stats::producer(client_id))
        .with_context(|| format!("creating Kafka producer for {}", kafka.brokers))
}

/// A client for topic administration (create, delete). Only [`client_config`]: admin requests
/// carry their own timeouts ([`rdkafka::admin::AdminOptions`]), and nothing is produced or
/// consumed through it.
pub fn admin(kafka: &KafkaSettings) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    client_config(kafka)
        .create()
        .with_context(|| format!("creating a Kafka admin client for {}", kafka.brokers))
}

/// A client that only asks the brokers about the log: metadata and each partition's ends
/// (ListOffsets, `fetch_watermarks`). No `group.id`, so it belongs to no group, fetches no
/// record and commits nothing; without a group its error events stay on the main queue.
pub fn probe(kafka: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    client_config(kafka).create().with_context(|| {
        format!(
            "creating a Kafka client to read the log's ends on {}",
            kafka.brokers
        )
    })
}

/// A client of consumer group `group` that never joins it: it reads the group's committed
/// offsets (OffsetFetch), commits offsets it is given (a restore placing its groups, a test
/// rewinding one) and reads log ends, but never subscribes and is never assigned partitions,
/// so the group's members, generation and assignments stay as they are.
pub fn group_offsets_client(
    kafka: &KafkaSettings,
    group: &str,
    client_id: &str,
) -> anyhow::Result<BaseConsumer> {
    let mut config = client_config(kafka);
    config
        .set("group.id", group)
        .set("client.id", client_id)
        // Only offsets given explicitly are committed; this client consumes nothing anyway.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The groups are classic groups ([`consumer_config`]); the classic protocol accepts a
        // commit from outside the group (generation -1) while no member holds it.
        .set("group.protocol", "classic");
    config
        .create()
        .with_context(|| format!("creating a client for the offsets of group {group}"))
}

/// A reader of the log outside every group: it assigns itself partitions at offsets it picks
/// (`assign`), never subscribes, and reports the end of each partition. Built by [`reader`]
/// and [`bulk_reader`]; `role` names it (`orderflow-<role>-<pid>`).
fn reader_config(kafka: &KafkaSettings, role: &str) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        // The client needs a group to serve an assignment from its consumer queue; it never
        // joins it (no subscribe) and commits nothing under it: the reader's position is its
        // caller's (an archive's manifest, a rebuild's stop offsets).
        .set("group.id", format!("{}.{role}", kafka.group_prefix))
        .set(
            "client.id",
            format!("orderflow-{role}-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The end of a partition is news for these readers (an archive run or a bounded read
        // is done there), delivered as `KafkaError::PartitionEOF`; see [`EndAware`].
        .set("enable.partition.eof", "true")
        // A start offset the broker no longer holds is an error, never a silent skip to
        // another offset: the records before it would be missing from what is read.
        .set("auto.offset.reset", "error")
        // Our records are never transactional; read everything the broker has.
        .set("isolation.level", "read_uncommitted");
    config
}

/// A group-less reader (settings in `reader_config`) with librdkafka's fetch sizes: for a
/// reader that follows the log, such as the archiver. Reports statistics like the members do.
pub fn reader<T>(kafka: &KafkaSettings, role: &str) -> anyhow::Result<T>
where
    T: FromClientConfigAndContext<EndAware>,
{
    let mut config = reader_config(kafka, role);
    ask_for_statistics(&mut config);
    let stats = Stats::consumer(&format!("orderflow-{role}"));
    config
        .create_with_context(EndAware { stats: Some(stats) })
        .with_context(|| format!("creating the {role} reader for {}", kafka.brokers))
}

/// A group-less reader (settings in `reader_config`) that fetches in large requests: for a
/// bounded read of a whole log (a rebuild), which should go as fast as the broker serves it.
pub fn bulk_reader<T>(kafka: &KafkaSettings, role: &str) -> anyhow::Result<T>
where
    T: FromClientConfigAndContext<EndAware>,
{
    reader_config(kafka, role)
        // 50 MB per fetch request and 10 MB per partition in it (defaults: 50 MB and 1 MB), so
        // one request carries many batches of every partition.
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        // Keep up to 200,000 records prefetched (default 100,000), so the fold rarely waits
        // for a fetch; a bulk read is one reader in its process.
        .set("queued.min.messages", "200000")
        .create_with_context(EndAware::default())
        .with_context(|| format!("creating the {role} reader for {}", kafka.brokers))
}

/// Client context of the group-less readers, which ask for end-of-partition events: the end
/// of a partition is news for them, not an error, so it is not logged as one. A reader that
/// follows the log ([`reader`]) also reports statistics.
#[derive(Debug, Default, Clone)]
pub struct EndAware {
    stats: Option<Stats>,
}

impl ClientContext for EndAware {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(stats) = &self.stats {
            stats.record(statistics);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndAware {}

/// Create `topic` with the given partitions if it does not exist; an existing topic is left
/// as it is (with a warning when its partition count differs). Fails within seconds, naming
/// the cause, when the brokers refuse the login or the TLS handshake ([`check_connection`]).
pub async fn ensure_topic(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    ensure_topic_with(kafka, topic, partitions, &[]).await
}

/// [`ensure_topic`] with topic configuration for a new topic (`retention.ms`, ...); an existing
/// topic keeps its own.
pub async fn ensure_topic_with(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let probe_settings = kafka.clone();
    tokio::task::spawn_blocking(move || check_connection(&probe_settings))
        .await
        .context("the Kafka connection check did not finish")??;
    let admin = admin(kafka)?;
    let new_topic = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    let new_topic = config
        .iter()
        .fold(new_topic, |topic, (key, value)| topic.set(key, value));
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

/// Partition count of `topic`, read from broker metadata. Blocks for at most
/// [`METADATA_TIMEOUT`]; a refused login or TLS handshake fails at once.
pub fn partition_count(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<usize> {
    let metadata = metadata(kafka, Some(topic))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not found; create it with `orderflow topics`"))?;
    Ok(found.partitions().len())
}

/// Ask the brokers for cluster metadata once: proves they are reachable and accept this
/// client's TLS handshake and login. A refused login or handshake fails as soon as librdkafka
/// reports it (well under a second), with a message naming the cause and the settings to look
/// at; unreachable brokers fail after [`METADATA_TIMEOUT`].
pub fn check_connection(kafka: &KafkaSettings) -> anyhow::Result<()> {
    metadata(kafka, None).map(|_| ())
}

/// Longest wait for broker metadata before `partition_count` / `check_connection` give up.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka reports a failed login or TLS handshake only through the client's error
/// callback, while a metadata request just times out; so metadata is asked for in short
/// slices, serving the client's events in between, and the first security failure ends it.
fn metadata(kafka: &KafkaSettings, topic: Option<&str>) -> anyhow::Result<Metadata> {
    use rdkafka::consumer::Consumer;
    let watch = ConnectionWatch::default();
    // No group.id: the client's main queue (and so its error events) is served by `poll`.
    let probe: BaseConsumer<ConnectionWatch> = client_config(kafka)
        .create_with_context(watch.clone())
        .context("creating Kafka metadata client")?;
    let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        let attempt = probe.fetch_metadata(topic, Duration::from_millis(500));
        // Serve queued events, so the error callback sees a refused login or handshake.
        let _ = probe.poll(Duration::ZERO);
        if let Some(failure) = watch.security_failure() {
            return Err(security_error(kafka, &failure));
        }
        let last = match attempt {
            Ok(metadata) => return Ok(metadata),
            Err(error) => error,
        };
        if std::time::Instant::now() >= deadline {
            let detail = watch
                .last_error()
                .map(|e| format!(" (last error from the client: {e})"))
                .unwrap_or_default();
            let what = topic.map_or_else(
                || "cluster metadata".to_string(),
                |t| format!("metadata of {t}"),
            );
            return Err(anyhow::anyhow!(
                "reading {what} from {} failed within {}s: {last}{detail}. Is the broker running \
                 (scripts/dev-up) and does kafka.security_protocol = {} match its listener?",
                kafka.brokers,
                METADATA_TIMEOUT.as_secs(),
                kafka.security_protocol.as_str()
            ));
        }
    }
}

/// The error of a refused login or TLS handshake: what failed, where, and what to check.
fn security_error(kafka: &KafkaSettings, failure: &ConnectionFailure) -> anyhow::Error {
    match failure.code {
        RDKafkaErrorCode::Authentication => anyhow::anyhow!(
            "Kafka authentication failed: the broker at {} refused the SASL login of user {:?} \
             with mechanism {} ({}). Check kafka.sasl_username, kafka.sasl_password or \
             kafka.sasl_password_file, and kafka.sasl_mechanism",
            kafka.brokers,
            kafka.sasl_username.as_deref().unwrap_or(""),
            kafka.sasl_mechanism.as_str(),
            failure.reason
        ),
        _ => anyhow::anyhow!(
            "TLS handshake with the Kafka broker at {} failed ({}). Check kafka.ssl_ca_file (the \
             CA that signed the broker's certificate), kafka.ssl_verify_hostname, and that the \
             listener speaks kafka.security_protocol = {}",
            kafka.brokers,
            failure.reason,
            kafka.security_protocol.as_str()
        ),
    }
}

/// A client error librdkafka reported through the error callback.
#[derive(Debug, Clone)]
pub struct ConnectionFailure {
    pub code: RDKafkaErrorCode,
    pub reason: String,
}

impl std::fmt::Display for ConnectionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// A client context that remembers what librdkafka reported through its error callback (and
/// logs it, as the default context does): the first refused login or TLS handshake, and the
/// last error of any kind. librdkafka's reasons never contain the password.
#[derive(Clone, Default)]
pub struct ConnectionWatch {
    security: Arc<Mutex<Option<ConnectionFailure>>>,
    last: Arc<Mutex<Option<ConnectionFailure>>>,
}

impl ConnectionWatch {
    /// The first failed SASL login or TLS handshake, if any.
    pub fn security_failure(&self) -> Option<ConnectionFailure> {
        lock(&self.security).clone()
    }

    /// The most recent error of any kind, if any.
    pub fn last_error(&self) -> Option<ConnectionFailure> {
        lock(&self.last).clone()
    }
}

/// A poisoned lock only means another thread panicked while holding a plain value; it is
/// still readable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConnectionWatch {
    /// Keep the first security failure, or a later one that says more: librdkafka alternates
    /// a bare OpenSSL error with one that starts "SSL handshake failed" and gives advice.
    fn note_security(&self, failure: ConnectionFailure) {
        let mut held = lock(&self.security);
        let better = |f: &ConnectionFailure| f.reason.contains("handshake failed");
        if held.as_ref().is_none_or(|h| !better(h) && better(&failure)) {
            *held = Some(failure);
        }
    }
}

impl ClientContext for ConnectionWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
        let Some(code) = error.rdkafka_error_code() else {
            return;
        };
        let failure = ConnectionFailure {
            code,
            reason: reason.to_string(),
        };
        if matches!(
            code,
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL
        ) {
            self.note_security(failure.clone());
        }
        *lock(&self.last) = Some(failure);
    }

    /// A failed TLS handshake may reach the application only as a log line (its error event,
    /// when there is one, is a generic transport failure), so broker-failure lines are read too.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        DefaultClientContext.log(level, fac, message);
        if fac != "FAIL" {
            return;
        }
        let code = if message.contains("SASL authentication error") {
            RDKafkaErrorCode::Authentication
        } else if message.contains("SSL handshake failed")
            || message.contains("certificate verify failed")
        {
            RDKafkaErrorCode::SSL
        } else {
            return;
        };
        self.note_security(ConnectionFailure {
            code,
            reason: message.to_string(),
        });
    }
}

impl rdkafka::consumer::ConsumerContext for ConnectionWatch {}

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
    // Stored as well, so that `commit_positions` can send them again should this commit be
    // lost; librdkafka keeps stored offsets only for partitions still assigned (a revoked one's
    // is dropped, so a later commit never moves another member's partition back).
    if let Err(error) = consumer.store_offsets(&tpl) {
        tracing::debug!(%error, "storing offsets failed (a partition was revoked meanwhile)");
    }
    // Asynchronous: the next batch does not wait for the group coordinator. A commit that is
    // lost (a crash, a failed request) only re-delivers records the inbox already holds; the
    // effects are exactly-once without it.
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::warn!(%error, "offset commit failed; records since the last commit will be re-delivered");
    }
}

/// Commit again, asynchronously, the offsets [`commit_offsets`] stored for the partitions still
/// assigned (librdkafka sends only those above the last commit it saw succeed). An asynchronous
/// commit that fails (its coordinator moved during a broker restart) is not retried by
/// librdkafka, and a partition that then goes idle would keep its old committed offset, lagging
/// for ever: a step calls this now and then, between batches, to close that gap.
pub fn commit_positions<C>(consumer: &rdkafka::consumer::StreamConsumer<C>)
where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::{CommitMode, Consumer};
    // Nothing assigned or nothing read yet is an error here too; the next call tries again.
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
        tracing::debug!(%error, "committing the consumer's positions failed; trying again later");
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
    use rdkafka::consumer::{CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer = group_offsets_client(kafka, group, "orderflow-restore")?;
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

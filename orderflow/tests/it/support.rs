//! Shared test harness: a fresh database, topic and group prefix per test, helpers to start
//! components, publish orders and wait for outcomes.

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use events::{Address, Event, OrderLine};
use orderflow::components::{self, Component};
use orderflow::settings::Settings;
use producers::{OrderInput, Publisher};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The `orderflow` binary, pointed at this test's topic, groups and database.
pub fn orderflow(env: &TestEnv) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .env("ORDERFLOW_KAFKA__TOPIC", &env.settings.kafka.topic)
        .env(
            "ORDERFLOW_KAFKA__INTAKE_TOPIC",
            &env.settings.kafka.intake_topic,
        )
        .env(
            "ORDERFLOW_KAFKA__GROUP_PREFIX",
            &env.settings.kafka.group_prefix,
        )
        .env("ORDERFLOW_DATABASE__URL", &env.settings.database.url)
        .env("ORDERFLOW_PRIVACY__MASTER_KEY", TEST_MASTER_KEY)
        // Tests run side by side: each process's admin listener takes a free port.
        .env("ORDERFLOW_ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    command
}

pub const PARTITIONS: i32 = 3;
/// The master key of every test (32 bytes as base64; tests only).
pub const TEST_MASTER_KEY: &str = "b3JkZXJmbG93IHRlc3QgbWFzdGVyIGtleSwgMzIgYnk=";
const WAIT: Duration = Duration::from_secs(90);

pub struct TestEnv {
    pub settings: Settings,
    pub pool: PgPool,
    pub shutdown: CancellationToken,
    pub running: Option<JoinSet<anyhow::Result<Component>>>,
    db_name: String,
    /// A URL of the server's `postgres` database, to drop the test database from.
    admin_url: String,
}

/// The shared dev Postgres's `postgres` database.
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl TestEnv {
    /// A new database (migrated), topic and group prefix, with stock for `SKU-A` (10) and
    /// `SKU-B` (5), and nothing running yet.
    pub async fn new() -> TestEnv {
        Self::with_partitions(PARTITIONS).await
    }

    /// [`TestEnv::new`] with a log of `partitions` partitions.
    pub async fn with_partitions(partitions: i32) -> TestEnv {
        platform::telemetry::init_for_tests();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("orderflow_test_{id}");
        let mut settings = Settings::default();
        settings.database.url = format!("postgres://postgres@127.0.0.1:5432/{db_name}");
        settings.database.max_connections = 8;
        settings.kafka.topic = format!("test.{id}.events");
        settings.kafka.intake_topic = format!("test.{id}.intake");
        settings.kafka.group_prefix = format!("test-{id}");
        settings.consumer.batch_max_wait_ms = 20;
        settings.consumer.retry_delay_ms_max = 500;
        settings.privacy.master_key = Some(platform::config::Secret::new(TEST_MASTER_KEY));
        let pool = components::prepare_database(&settings, true)
            .await
            .unwrap_or_else(|e| {
                panic!("Postgres is needed at 127.0.0.1:5432 (start it with scripts/dev-up): {e:#}")
            });
        components::ensure_topics(&settings, partitions)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the broker is needed at 127.0.0.1:9092 (start it with scripts/dev-up): {e:#}"
                )
            });
        let env = TestEnv {
            settings,
            pool,
            shutdown: CancellationToken::new(),
            running: None,
            db_name,
            admin_url: ADMIN_URL.to_string(),
        };
        env.set_stock(&[("SKU-A", 10), ("SKU-B", 5)]).await;
        env
    }

    /// A test environment on other services than the dev ones: `settings` names the broker
    /// and the (new) database `db_name` on the server that `admin_url` reaches. Creates,
    /// migrates and stocks the database as [`TestEnv::new`] does, and the topics.
    pub async fn on(
        settings: Settings,
        db_name: &str,
        admin_url: &str,
        partitions: i32,
    ) -> anyhow::Result<TestEnv> {
        platform::telemetry::init_for_tests();
        let pool = components::prepare_database(&settings, true).await?;
        components::ensure_topics(&settings, partitions).await?;
        let env = TestEnv {
            settings,
            pool,
            shutdown: CancellationToken::new(),
            running: None,
            db_name: db_name.to_string(),
            admin_url: admin_url.to_string(),
        };
        env.set_stock(&[("SKU-A", 10), ("SKU-B", 5)]).await;
        Ok(env)
    }

    pub async fn set_stock(&self, stock: &[(&str, i64)]) {
        let stock: Vec<(String, i64)> = stock.iter().map(|(s, q)| (s.to_string(), *q)).collect();
        let mut tx = self.pool.begin().await.expect("begin");
        consumers::inventory::set_stock(&mut tx, &stock)
            .await
            .expect("set stock");
        tx.commit().await.expect("commit");
    }

    /// Start every component in this process.
    pub fn start_all(&mut self) {
        self.start(&Component::ALL);
    }

    pub fn start(&mut self, which: &[Component]) {
        let set = components::start(which, &self.settings, &self.pool, &self.shutdown)
            .expect("components start");
        self.adopt(set);
    }

    pub fn adopt(&mut self, mut set: JoinSet<anyhow::Result<Component>>) {
        match &mut self.running {
            None => self.running = Some(set),
            Some(running) => {
                // Move the new tasks under one set by awaiting them from a task of the old one.
                running.spawn(async move {
                    let mut last = Ok(Component::Projections);
                    while let Some(joined) = set.join_next().await {
                        last = joined.map_err(|e| anyhow::anyhow!("{e}")).and_then(|r| r);
                        last.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                    }
                    last
                });
            }
        }
    }

    /// Stop every component cleanly and wait for them; panics if one failed.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(set) = self.running.take() {
            components::supervise(set, &self.shutdown)
                .await
                .expect("components stop cleanly");
        }
        self.shutdown = CancellationToken::new();
    }

    pub async fn publish(&self, orders: &[OrderInput]) -> Vec<Event> {
        let events: Vec<Event> = orders
            .iter()
            .map(|o| o.clone().into_event(Utc::now()).expect("valid test order"))
            .collect();
        let publisher = Publisher::new(&self.settings.kafka, "test-publisher").expect("publisher");
        let failures = publisher.publish(&events).await;
        assert!(failures.is_empty(), "publish failed: {failures:?}");
        events
    }

    /// Publish `orders` to the intake topic, as an upstream system would (the intake seals
    /// them and appends them to the log).
    pub async fn publish_to_intake(&self, orders: &[OrderInput]) -> Vec<Event> {
        let events: Vec<Event> = orders
            .iter()
            .map(|o| o.clone().into_event(Utc::now()).expect("valid test order"))
            .collect();
        let publisher =
            Publisher::intake(&self.settings.kafka, "test-upstream").expect("publisher");
        let failures = publisher.publish(&events).await;
        assert!(failures.is_empty(), "publish failed: {failures:?}");
        events
    }

    /// Produce raw bytes with a plain producer, as a foreign client would.
    pub async fn produce_raw(&self, key: &str, payload: &[u8]) {
        self.produce_raw_to(&self.settings.kafka.topic, key, payload)
            .await;
    }

    /// [`TestEnv::produce_raw`] to `topic` (the intake topic, for one).
    pub async fn produce_raw_to(&self, topic: &str, key: &str, payload: &[u8]) {
        let producer =
            platform::kafka::producer(&self.settings.kafka, "test-raw").expect("producer");
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("raw produce");
    }

    /// Wait until the read model shows the order terminal; returns (status, cancel_reason).
    pub async fn wait_terminal(&self, order_id: &str) -> (String, Option<String>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let row: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT status, cancel_reason FROM analytics.orders WHERE order_id = $1 AND status IN ('completed', 'cancelled')",
            )
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .expect("query orders");
            if let Some(row) = row {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} not terminal after {WAIT:?}: {}",
                self.dump(order_id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `sql` (returning one bigint) equals `want`.
    pub async fn wait_count(&self, sql: &str, want: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got: i64 = sqlx::query_scalar(sql)
                .fetch_one(&self.pool)
                .await
                .expect("count query");
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sql} = {got}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }

    pub async fn timeline(&self, order_id: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT event_type FROM analytics.order_events WHERE order_id = $1 ORDER BY partition, \"offset\"")
            .bind(order_id)
            .fetch_all(&self.pool)
            .await
            .expect("timeline")
    }

    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        sqlx::query_as("SELECT available, reserved FROM inventory.stock WHERE sku = $1")
            .bind(sku)
            .fetch_one(&self.pool)
            .await
            .expect("stock row")
    }

    /// Row count and checksum of every read model in generation schema `schema`.
    pub async fn model_digests(&self, schema: &str) -> Vec<(i64, String)> {
        let target = projections::store::Target::new(schema).expect("a generation schema");
        let mut conn = self.pool.acquire().await.expect("connection");
        let mut out = Vec::new();
        for table in projections::fold::MODELS {
            out.push(
                projections::verify::digest(&mut conn, &target, table)
                    .await
                    .expect("digest"),
            );
        }
        out
    }

    async fn dump(&self, order_id: &str) -> String {
        let saga: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, awaiting FROM saga.orders WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten();
        let rejected: Vec<(String, String)> =
            sqlx::query_as("SELECT consumer, error FROM pipeline.dead_letters ORDER BY id LIMIT 5")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        format!(
            "saga={saga:?} timeline={:?} rejected={rejected:?}",
            self.timeline(order_id).await
        )
    }

    /// Stop everything and drop the test database.
    pub async fn finish(mut self) {
        self.stop().await;
        self.pool.close().await;
        let admin = PgPool::connect(&self.admin_url)
            .await
            .expect("admin connection");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.db_name
        ))
        .execute(&admin)
        .await
        .expect("drop test database");
        // And its topics: a broker kept between runs (scripts/dev-up reuses a running one)
        // would otherwise collect every run's partitions and answer metadata ever slower.
        if let Err(e) = self.delete_topics().await {
            eprintln!("warning: the topics of this test were left on the broker: {e:#}");
        }
    }

    /// Delete the test's log topic and every topic named after it (its dead-letter topics).
    async fn delete_topics(&self) -> anyhow::Result<()> {
        let kafka = &self.settings.kafka;
        let metadata =
            platform::kafka::probe(kafka)?.fetch_metadata(None, Duration::from_secs(10))?;
        let ours: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|name| name.starts_with(&kafka.topic))
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = ours.iter().map(String::as_str).collect();
        let options =
            rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in platform::kafka::admin(kafka)?
            .delete_topics(&names, &options)
            .await?
        {
            if let Err((topic, code)) = result {
                anyhow::bail!("deleting {topic}: {code}");
            }
        }
        Ok(())
    }
}

/// An order of `lines` (sku, quantity, unit price) for customer `c-1`, shipped to `country`.
pub fn order(order_id: &str, lines: &[(&str, i32, i64)], country: &str) -> OrderInput {
    OrderInput {
        order_id: order_id.to_string(),
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        lines: lines
            .iter()
            .map(|(sku, quantity, price)| OrderLine {
                sku: sku.to_string(),
                quantity: *quantity,
                unit_price_minor: *price,
            })
            .collect(),
        shipping_address: Address {
            name: "Ada Lovelace".into(),
            line1: "12 Analytical Row".into(),
            line2: None,
            city: "London".into(),
            postal_code: "N1 7AA".into(),
            country: country.into(),
        },
        contact: None,
        correlation_id: None,
    }
}

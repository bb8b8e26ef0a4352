//! The pipeline on secured services: Kafka over SASL_SSL with SCRAM-SHA-512 and a Postgres that
//! accepts TLS only, checked with `sslmode=verify-full`. `scripts/secure-up` starts them and
//! writes what a client needs to `.run/secure/env`; scripts/test runs it before cargo test.
//! Also: a wrong Kafka password or CA, and a wrong CA for Postgres, fail within seconds with a
//! message that says what failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use orderflow::settings::Settings;
use platform::config::{SaslMechanism, Secret, SecurityProtocol};

use crate::support::{order, TestEnv};

/// What `scripts/secure-up` wrote to `.run/secure/env` (orderflow's own settings variables).
struct Secured {
    brokers: String,
    mechanism: String,
    username: String,
    password_file: PathBuf,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    /// URL of the database `orderflow`, `sslmode=verify-full` against `ca_file`.
    database_url: String,
}

impl Secured {
    /// Read `.run/secure/env` (the file, not this process's environment); fails the test,
    /// naming the script to run, when it is missing.
    fn load() -> Secured {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.run/secure/env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} cannot be read ({e}): the secured services are not set up; run \
                 scripts/secure-up (scripts/test runs it before cargo test)",
                path.display()
            )
        });
        let facts: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim().trim_matches('\'')))
            .collect();
        let fact = |key: &str| -> String {
            facts
                .get(key)
                .unwrap_or_else(|| {
                    panic!("{} has no {key}; rerun scripts/secure-up", path.display())
                })
                .to_string()
        };
        assert_eq!(fact("ORDERFLOW_KAFKA__SECURITY_PROTOCOL"), "sasl_ssl");
        Secured {
            brokers: fact("ORDERFLOW_KAFKA__BROKERS"),
            mechanism: fact("ORDERFLOW_KAFKA__SASL_MECHANISM"),
            username: fact("ORDERFLOW_KAFKA__SASL_USERNAME"),
            password_file: fact("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE").into(),
            ca_file: fact("ORDERFLOW_KAFKA__SSL_CA_FILE").into(),
            other_ca_file: fact("SECURE_OTHER_CA_FILE").into(),
            database_url: fact("ORDERFLOW_DATABASE__URL"),
        }
    }

    /// The URL of database `name` on the secured server.
    fn database_url(&self, name: &str) -> String {
        let url = self
            .database_url
            .replacen("/orderflow?", &format!("/{name}?"), 1);
        assert_ne!(
            url, self.database_url,
            "the secured database URL names no `orderflow` database to replace"
        );
        url
    }

    /// Settings for a test of its own (database `db_name`, topic and groups named after `id`)
    /// on the secured services, as an operator would write them.
    fn settings(&self, id: &str, db_name: &str) -> Settings {
        let mut settings = Settings::default();
        let kafka = &mut settings.kafka;
        kafka.brokers = self.brokers.clone();
        kafka.security_protocol = SecurityProtocol::SaslSsl;
        kafka.sasl_mechanism = match self.mechanism.as_str() {
            "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
            "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
            other => {
                panic!("scripts/secure-up wrote mechanism {other}, which this test does not know")
            }
        };
        kafka.sasl_username = Some(self.username.clone());
        kafka.sasl_password_file = Some(self.password_file.clone());
        kafka.ssl_ca_file = Some(self.ca_file.clone());
        kafka.topic = format!("test.{id}.events");
        kafka.intake_topic = format!("test.{id}.intake");
        kafka.group_prefix = format!("test-{id}");
        settings.database.url = self.database_url(db_name);
        settings.privacy.master_key = Some(Secret::new(crate::support::TEST_MASTER_KEY));
        settings.database.max_connections = 8;
        settings.consumer.batch_max_wait_ms = 20;
        settings.consumer.retry_delay_ms_max = 500;
        settings
            .kafka
            .validate()
            .expect("the secured services' settings are valid");
        settings
    }
}

fn test_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// How long a refused login or handshake may take to surface; the metadata timeout is 10 s,
/// so passing this bound shows the failure was recognised, not waited out.
const FAIL_FAST: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_pipeline_completes_an_order_over_sasl_ssl_and_verified_tls() {
    let secured = Secured::load();
    let id = test_id();
    let db_name = format!("orderflow_secure_{id}");
    let settings = secured.settings(&id, &db_name);
    let mut env = TestEnv::on(settings, &db_name, &secured.database_url("postgres"), 3)
        .await
        .unwrap_or_else(|e| {
            panic!("the secured services do not answer (rerun scripts/secure-up): {e:#}")
        });

    // Every connection of the pool is TLS: the server accepts nothing else, and this says so.
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&env.pool)
        .await
        .expect("pg_stat_ssl");
    assert!(tls, "the pool's connection is not TLS");

    env.start_all();
    env.publish(&[order("o-secure", &[("SKU-A", 1, 1_000)], "DE")])
        .await;
    assert_eq!(
        env.wait_terminal("o-secure").await,
        ("completed".to_string(), None)
    );
    assert_eq!(
        env.timeline("o-secure").await,
        [
            "OrderCreated",
            "InventoryReserved",
            "PaymentAuthorized",
            "ShipmentScheduled",
            "OrderCompleted"
        ]
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_wrong_kafka_password_fails_fast_naming_authentication() {
    platform::telemetry::init_for_tests();
    let secured = Secured::load();
    let id = test_id();
    let mut settings = secured.settings(&id, "unused");
    settings.kafka.sasl_password_file = None;
    settings.kafka.sasl_password = Some(Secret::new("not-the-password-0451"));

    // `orderflow topics` (and every test environment) creates topics first.
    let started = Instant::now();
    let err = orderflow::components::ensure_topics(&settings, 1)
        .await
        .expect_err("a wrong password must not create topics");
    let took = started.elapsed();
    let message = format!("{err:#}");
    assert!(took < FAIL_FAST, "took {took:?} to fail: {message}");
    for part in [
        "Kafka authentication failed",
        secured.brokers.as_str(),
        "orderflow",
        "SCRAM-SHA-512",
        "kafka.sasl_password",
    ] {
        assert!(message.contains(part), "no {part:?} in: {message}");
    }
    assert!(
        !message.contains("not-the-password-0451"),
        "the password leaked into: {message}"
    );

    // `orderflow run` reads the log's partition count before it starts anything.
    let started = Instant::now();
    let err = platform::kafka::partition_count(&settings.kafka, &settings.kafka.topic)
        .expect_err("a wrong password must not read metadata");
    assert!(started.elapsed() < FAIL_FAST, "slow: {err:#}");
    assert!(
        format!("{err:#}").contains("Kafka authentication failed"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_wrong_kafka_ca_fails_fast_naming_the_tls_handshake() {
    platform::telemetry::init_for_tests();
    let secured = Secured::load();
    let mut settings = secured.settings(&test_id(), "unused");
    settings.kafka.ssl_ca_file = Some(secured.other_ca_file.clone());

    let started = Instant::now();
    let err = platform::kafka::check_connection(&settings.kafka)
        .expect_err("a broker certificate from another CA must be refused");
    let message = format!("{err:#}");
    assert!(started.elapsed() < FAIL_FAST, "slow: {message}");
    for part in [
        "TLS handshake with the Kafka broker",
        secured.brokers.as_str(),
        "kafka.ssl_ca_file",
    ] {
        assert!(message.contains(part), "no {part:?} in: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_wrong_postgres_ca_fails_naming_the_certificate() {
    platform::telemetry::init_for_tests();
    let secured = Secured::load();
    let ca = secured.ca_file.to_string_lossy().into_owned();
    let other = secured.other_ca_file.to_string_lossy().into_owned();
    let mut settings = Settings::default();
    settings.database.url = secured.database_url.replace(&ca, &other);
    assert_ne!(settings.database.url, secured.database_url);

    let started = Instant::now();
    let err = platform::db::connect(&settings.database)
        .await
        .expect_err("a server certificate from another CA must be refused");
    let message = format!("{err:#}");
    assert!(started.elapsed() < FAIL_FAST, "slow: {message}");
    for part in [
        "cannot connect to Postgres at postgres://postgres:***@",
        "the TLS handshake failed",
        "sslrootcert",
        "certificate verify failed",
    ] {
        assert!(message.contains(part), "no {part:?} in: {message}");
    }
}

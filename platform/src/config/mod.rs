//! Typed settings, layered: built-in defaults, then an optional TOML file, then `ORDERFLOW_*`
//! environment variables (`ORDERFLOW_KAFKA__BROKERS=host:9092` sets `kafka.brokers`).
//!
//! Settings are passed explicitly to every component; there is no global instance.
//!
//! This file owns `Settings`, every section and the layering; the Kafka security settings'
//! types (`SecurityProtocol`, `SaslMechanism`, `Secret`) and their validation are in
//! `security`, re-exported here.

mod security;

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use security::{KafkaConfigError, SaslMechanism, Secret, SecurityProtocol};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub consumer: ConsumerSettings,
    pub payment: PaymentSettings,
    pub shipping: ShippingSettings,
    pub saga: SagaSettings,
    pub archive: ArchiveSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// The order log topic.
    pub topic: String,
    /// Partitions the `topics` command creates the log with.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Prefix of every consumer group id (`<prefix>.inventory`, ...).
    pub group_prefix: String,
    /// How long a consumer may be silent before the group evicts it.
    pub session_timeout_ms: u32,
    /// Upper bound for one produce, including librdkafka's internal retries.
    pub delivery_timeout_ms: u32,
    /// How clients talk to the brokers: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism for the `sasl_*` protocols: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: SaslMechanism,
    /// SASL user name; required by the `sasl_*` protocols.
    pub sasl_username: Option<String>,
    /// SASL password, from `ORDERFLOW_KAFKA__SASL_PASSWORD` (taken verbatim, never parsed) or
    /// the TOML file. Exactly one of this and `sasl_password_file` goes with a `sasl_*` protocol.
    pub sasl_password: Option<Secret>,
    /// A file whose first line is the SASL password (read when a client is built, so a rotated
    /// password is picked up by the next client).
    pub sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the brokers' certificates (`ssl`, `sasl_ssl`); unset,
    /// the system's trust store is used.
    pub ssl_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; goes with `ssl_key_file`.
    pub ssl_cert_file: Option<PathBuf>,
    /// Private key (PEM, unencrypted) of `ssl_cert_file`.
    pub ssl_key_file: Option<PathBuf>,
    /// Check that a broker's certificate names the host it was reached by. Turn off only for a
    /// test broker whose certificate cannot name its address.
    pub ssl_verify_hostname: bool,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A postgres:// URL. It may carry a password, so Debug never prints it.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// How every step and projection consumes: bounded batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Most records handled in one Postgres transaction.
    pub batch_max_events: usize,
    /// Longest wait for a batch to fill once its first record arrived. Short: under load the
    /// records pile up while the previous batch is applied, so batches grow by themselves;
    /// when the log is quiet a record is not held back waiting for company.
    pub batch_max_wait_ms: u64,
    /// Retry delays for a batch that failed with a retryable error.
    pub retry_delay_ms_min: u64,
    pub retry_delay_ms_max: u64,
    /// Unpublished outbox rows older than this are re-published by any member of the step.
    pub outbox_relay_after_ms: u64,
    /// Attempts at a record whose handler fails with a retryable error, before it is
    /// dead-lettered as `retries_exhausted`.
    pub retry_attempts_max: u32,
    /// Time budget from a record's first failure; once spent, the record is dead-lettered.
    pub retry_total_ms_max: u64,
    /// Per-consumer overrides of the retry budget, by component name (`[consumer.retry.payment]`).
    #[serde(default)]
    pub retry: std::collections::BTreeMap<String, RetryOverride>,
}

/// A component's own retry budget; unset fields fall back to the `consumer` defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    pub attempts_max: Option<u32>,
    pub total_ms_max: Option<u64>,
    pub delay_ms_min: Option<u64>,
    pub delay_ms_max: Option<u64>,
}

/// The retry budget in force for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts_max: u32,
    pub total: std::time::Duration,
    pub delay_min: std::time::Duration,
    pub delay_max: std::time::Duration,
}

impl ConsumerSettings {
    pub fn retry_policy(&self, component: &str) -> RetryPolicy {
        let o = self.retry.get(component).cloned().unwrap_or_default();
        RetryPolicy {
            attempts_max: o.attempts_max.unwrap_or(self.retry_attempts_max).max(1),
            total: std::time::Duration::from_millis(
                o.total_ms_max.unwrap_or(self.retry_total_ms_max),
            ),
            delay_min: std::time::Duration::from_millis(
                o.delay_ms_min.unwrap_or(self.retry_delay_ms_min),
            ),
            delay_max: std::time::Duration::from_millis(
                o.delay_ms_max.unwrap_or(self.retry_delay_ms_max),
            ),
        }
    }
}

/// Rules of the simulated payment provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// Orders whose total is above this many minor units are declined (`amount_over_limit`).
    pub decline_over_minor: i64,
    /// Timeout and circuit breaker of calls to the provider (`[payment.calls]`).
    #[serde(default)]
    pub calls: CallSettings,
}

/// How a step calls an outside service: each call is bounded by `timeout_ms`;
/// `breaker_failures` failed calls (timeouts, retryable errors) within `breaker_window_ms` open
/// the circuit breaker, which then refuses calls at once (the orders park) until, after
/// `breaker_open_ms`, one probe call goes through and closes it again if it succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallSettings {
    pub timeout_ms: u64,
    pub breaker_failures: u32,
    pub breaker_window_ms: u64,
    pub breaker_open_ms: u64,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            timeout_ms: 5_000,
            breaker_failures: 5,
            breaker_window_ms: 10_000,
            breaker_open_ms: 5_000,
        }
    }
}

/// Rules of the simulated carrier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShippingSettings {
    pub carrier: String,
    /// ISO country codes the carrier does not deliver to (`destination_not_served`).
    pub unserved_countries: Vec<String>,
    /// Timeout and circuit breaker of calls to the carrier (`[shipping.calls]`).
    #[serde(default)]
    pub calls: CallSettings,
}

/// Deadlines of the order saga. A step that has not answered `<step>_timeout_ms` after the
/// event that asked it (by that event's time) makes the saga give the order up
/// (`SagaStepTimedOut`, then compensation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    pub inventory_timeout_ms: u64,
    pub payment_timeout_ms: u64,
    pub shipping_timeout_ms: u64,
    /// How often the saga component looks for missed deadlines; 0 turns the check off.
    pub deadline_check_interval_ms: u64,
    /// Most orders timed out per check (one transaction).
    pub deadline_check_batch: i64,
}

impl SagaSettings {
    /// The timeout of `step` (`inventory`, `payment` or `shipping`).
    pub fn timeout(&self, step: &str) -> Option<std::time::Duration> {
        let ms = match step {
            "inventory" => self.inventory_timeout_ms,
            "payment" => self.payment_timeout_ms,
            "shipping" => self.shipping_timeout_ms,
            _ => return None,
        };
        Some(std::time::Duration::from_millis(ms))
    }
}

/// The log archiver (`orderflow run` starts it when `dir` is set; `orderflow archive` runs it
/// once). Files are Avro object container files per partition and time window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSettings {
    /// Directory of the archive (created if missing); empty turns the archiver component off.
    pub dir: String,
    /// A file never holds records of two windows of this length (by record timestamp).
    pub window_secs: u64,
    /// Most records per file.
    pub segment_max_records: usize,
    /// Records held longer than this are written out even if their file is not full: the
    /// archive's lag behind the log (its RPO) stays below about this much.
    pub flush_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka: KafkaSettings {
                brokers: "127.0.0.1:9092".into(),
                topic: "orders.events".into(),
                partitions: 12,
                replication_factor: 1,
                group_prefix: "orderflow".into(),
                session_timeout_ms: 10_000,
                delivery_timeout_ms: 30_000,
                security_protocol: SecurityProtocol::Plaintext,
                sasl_mechanism: SaslMechanism::ScramSha512,
                sasl_username: None,
                sasl_password: None,
                sasl_password_file: None,
                ssl_ca_file: None,
                ssl_cert_file: None,
                ssl_key_file: None,
                ssl_verify_hostname: true,
            },
            database: DatabaseSettings {
                url: "postgres://postgres@127.0.0.1:5432/orderflow".into(),
                max_connections: 16,
                acquire_timeout_ms: 10_000,
            },
            consumer: ConsumerSettings {
                batch_max_events: 500,
                batch_max_wait_ms: 5,
                retry_delay_ms_min: 100,
                retry_delay_ms_max: 5_000,
                outbox_relay_after_ms: 5_000,
                retry_attempts_max: 5,
                retry_total_ms_max: 30_000,
                retry: Default::default(),
            },
            payment: PaymentSettings {
                decline_over_minor: 500_000,
                calls: CallSettings::default(),
            },
            shipping: ShippingSettings {
                carrier: "simulated-post".into(),
                unserved_countries: vec!["AQ".into()],
                calls: CallSettings::default(),
            },
            saga: SagaSettings {
                inventory_timeout_ms: 300_000,
                payment_timeout_ms: 300_000,
                shipping_timeout_ms: 600_000,
                deadline_check_interval_ms: 1_000,
                deadline_check_batch: 500,
            },
            archive: ArchiveSettings {
                dir: String::new(),
                window_secs: 3_600,
                segment_max_records: 100_000,
                flush_interval_ms: 10_000,
            },
        }
    }
}

/// The SASL password's key and its environment variable, taken verbatim (see [`Settings::load`]).
const PASSWORD_KEY: &str = "kafka.sasl_password";
const PASSWORD_ENV: &str = "ORDERFLOW_KAFKA__SASL_PASSWORD";

/// `ORDERFLOW_*` variables that are not settings: read elsewhere (`ORDERFLOW_LOG_FORMAT` by
/// `telemetry`), so the settings leave them alone instead of calling them unknown keys.
const NOT_SETTINGS: &[&str] = &["log_format"];

impl Settings {
    /// Defaults, then `file` if given (it must exist), then `ORDERFLOW_*` variables; then the
    /// Kafka security settings are checked ([`KafkaSettings::validate`]).
    pub fn load(file: Option<&Path>) -> Result<Settings, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist (pass an existing TOML file or omit --config)",
                    path.display()
                ))));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed("ORDERFLOW_")
                .split("__")
                .ignore(&[PASSWORD_KEY])
                .ignore(NOT_SETTINGS),
        );
        // figment parses environment values (`123` becomes a number, `[a]` a list); a password
        // must arrive exactly as written, so it is read here and merged as a string.
        // An empty variable counts as unset, as a shell's `VAR=` means.
        if let Some(password) = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
            figment = figment.merge(Serialized::default(PASSWORD_KEY, password));
        }
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.kafka.unset_empty();
        settings
            .kafka
            .validate()
            .map_err(|e| Box::new(figment::Error::from(e.to_string())))?;
        Ok(settings)
    }

    pub fn group_id(&self, component: &str) -> String {
        format!("{}.{}", self.kafka.group_prefix, component)
    }
}

#[cfg(test)]
// figment's Jail closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        let cases = [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "of.toml",
                "[kafka]\ntopic = \"from-file\"\npartitions = 3\n",
            )?;
            jail.set_env("ORDERFLOW_KAFKA__PARTITIONS", "7");
            let s = Settings::load(Some(Path::new("of.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.topic, "from-file");
            assert_eq!(s.kafka.partitions, 7);
            assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            // The log format variable is not a setting and not an error; a misspelt one is.
            jail.set_env("ORDERFLOW_LOG_FORMAT", "json");
            Settings::load(None).map_err(|e| e.to_string())?;
            jail.set_env("ORDERFLOW_KAFKA_BROKERS", "one-underscore-short:9092");
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("KAFKA_BROKERS"), "{err}");
            std::env::remove_var("ORDERFLOW_KAFKA_BROKERS");
            jail.create_file("bad.toml", "[kafka]\ntopics = \"typo\"\n")?;
            let err = Settings::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("topics"), "{err}");
            let err = Settings::load(Some(Path::new("missing.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            Ok(())
        });
    }
}

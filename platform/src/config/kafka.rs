//! `KafkaSettings` (the `[kafka]` section): brokers, the log topic, group names and the
//! security settings every client carries, with their defaults and the startup check of the
//! security settings (`validate`, the SASL password read from its file). The security values'
//! types are in `security`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::security::{KafkaConfigError, SaslMechanism, Secret, SecurityProtocol};

/// The SASL password's key; its environment variable (`ORDERFLOW_KAFKA__SASL_PASSWORD`) is taken
/// verbatim: a settings type holding this section passes it to
/// [`layered`](super::layered::layered) among the verbatim keys.
pub const PASSWORD_KEY: &str = "kafka.sasl_password";

/// How long the intake topic keeps a record (`retention.ms`, 24 h): the intake appends each to
/// the log within seconds, and the log (with its archive) is the record kept; an order still
/// unread after a day is lost, so keep the intake running.
pub const INTAKE_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// The order log topic.
    pub topic: String,
    /// The intake topic: upstream producers publish plain `OrderCreated` here; the intake
    /// component seals their personal fields and appends them to the log (`topic`). Created by
    /// `orderflow topics` with the log's partition count and a short retention
    /// (`INTAKE_RETENTION_MS`).
    pub intake_topic: String,
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

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topic: "orders.events".into(),
            intake_topic: "orders.intake".into(),
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
        }
    }
}

impl KafkaSettings {
    /// The consumer group of `component`: `<group_prefix>.<component>`.
    pub fn group_id(&self, component: &str) -> String {
        format!("{}.{}", self.group_prefix, component)
    }

    /// What loading does once the layers are merged: empty values count as unset, then the
    /// security settings are checked ([`KafkaSettings::validate`]).
    pub fn settle(&mut self) -> Result<(), KafkaConfigError> {
        self.unset_empty();
        self.validate()
    }

    /// Check the security settings for combinations that cannot work, and that every file
    /// they name can be read. [`KafkaSettings::settle`] calls it after loading, so a bad
    /// combination stops the program at startup, naming the setting.
    pub fn validate(&self) -> Result<(), KafkaConfigError> {
        let protocol = self.security_protocol;
        let name = protocol.as_str();
        if protocol.uses_sasl() {
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return Err(KafkaConfigError::MissingUsername { protocol: name });
            }
            match (&self.sasl_password, &self.sasl_password_file) {
                (Some(_), Some(_)) => return Err(KafkaConfigError::TwoPasswords),
                (None, None) => return Err(KafkaConfigError::MissingPassword { protocol: name }),
                (Some(password), None) if password.expose().is_empty() => {
                    return Err(KafkaConfigError::MissingPassword { protocol: name })
                }
                (_, Some(_)) => {
                    self.sasl_password()?;
                }
                (Some(_), None) => {}
            }
        } else {
            let sasl_set = [
                ("sasl_username", self.sasl_username.is_some()),
                ("sasl_password", self.sasl_password.is_some()),
                ("sasl_password_file", self.sasl_password_file.is_some()),
            ];
            if let Some((setting, _)) = sasl_set.iter().find(|(_, set)| *set) {
                return Err(KafkaConfigError::Unused {
                    setting,
                    protocol: name,
                    wanted: "sasl_plaintext or sasl_ssl",
                });
            }
        }
        let tls_files = [
            ("ssl_ca_file", &self.ssl_ca_file),
            ("ssl_cert_file", &self.ssl_cert_file),
            ("ssl_key_file", &self.ssl_key_file),
        ];
        for (setting, path) in tls_files {
            let Some(path) = path else { continue };
            if !protocol.uses_tls() {
                return Err(KafkaConfigError::Unused {
                    setting,
                    protocol: name,
                    wanted: "ssl or sasl_ssl",
                });
            }
            std::fs::File::open(path).map_err(|source| KafkaConfigError::Unreadable {
                setting,
                path: path.clone(),
                source,
            })?;
        }
        if self.ssl_cert_file.is_some() != self.ssl_key_file.is_some() {
            return Err(KafkaConfigError::HalfClientCert);
        }
        Ok(())
    }

    /// An empty value counts as unset (`ORDERFLOW_KAFKA__SSL_CA_FILE=` clears a file's value,
    /// as a shell's `VAR=` means).
    fn unset_empty(&mut self) {
        if self.sasl_username.as_deref() == Some("") {
            self.sasl_username = None;
        }
        if self
            .sasl_password
            .as_ref()
            .is_some_and(|p| p.expose().is_empty())
        {
            self.sasl_password = None;
        }
        for path in [
            &mut self.sasl_password_file,
            &mut self.ssl_ca_file,
            &mut self.ssl_cert_file,
            &mut self.ssl_key_file,
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
    }

    /// The SASL password in force: `sasl_password`, else the first line of
    /// `sasl_password_file` (read now). `None` when neither is set.
    pub fn sasl_password(&self) -> Result<Option<Secret>, KafkaConfigError> {
        if let Some(password) = &self.sasl_password {
            return Ok(Some(password.clone()));
        }
        let Some(path) = &self.sasl_password_file else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| KafkaConfigError::PasswordFile {
                path: path.clone(),
                source,
            })?;
        // The first line, without its line ending: `echo secret > file` must work.
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(KafkaConfigError::EmptyPasswordFile { path: path.clone() });
        }
        Ok(Some(Secret::new(line)))
    }
}

#[cfg(test)]
// figment's Jail closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::layered::{layered, ConfigError};

    /// A settings type with only this section, loaded as a whole-file settings type loads it.
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OnlyKafka {
        kafka: KafkaSettings,
    }

    fn load(file: Option<&Path>) -> Result<KafkaSettings, ConfigError> {
        let mut loaded: OnlyKafka = layered(file, &[PASSWORD_KEY])?;
        loaded.kafka.settle()?;
        Ok(loaded.kafka)
    }

    fn sasl_ssl() -> KafkaSettings {
        KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_username: Some("orderflow".into()),
            sasl_password: Some(Secret::new("hunter2-very-secret")),
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn the_kafka_password_never_prints() {
        let kafka = sasl_ssl();
        for shown in [
            format!("{kafka:?}"),
            format!("{kafka:#?}"),
            format!("{:?}", kafka.sasl_password),
            format!("{}", kafka.sasl_password.clone().unwrap()),
            serde_json::to_string(&kafka).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "secret printed: {shown}");
        }
        assert!(format!("{kafka:?}").contains("Secret(***)"));
        assert_eq!(
            kafka.sasl_password().unwrap().unwrap().expose(),
            "hunter2-very-secret"
        );
    }

    #[test]
    fn group_ids_carry_the_prefix() {
        let kafka = KafkaSettings {
            group_prefix: "staging".into(),
            ..KafkaSettings::default()
        };
        assert_eq!(kafka.group_id("payment"), "staging.payment");
    }

    #[test]
    fn bad_security_combinations_name_the_setting() {
        let ok = sasl_ssl();
        ok.validate().expect("a complete sasl_ssl setup is valid");

        let mut no_user = sasl_ssl();
        no_user.sasl_username = None;
        let err = no_user.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.sasl_username"), "{err}");

        let mut no_password = sasl_ssl();
        no_password.sasl_password = None;
        let err = no_password.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.sasl_password_file"), "{err}");

        let mut missing_file = sasl_ssl();
        missing_file.sasl_password = None;
        missing_file.sasl_password_file = Some("/nonexistent/orderflow-password".into());
        let err = missing_file.validate().unwrap_err().to_string();
        assert!(
            err.contains("kafka.sasl_password_file /nonexistent/orderflow-password"),
            "{err}"
        );

        let mut both = sasl_ssl();
        both.sasl_password_file = Some("/etc/hostname".into());
        let err = both.validate().unwrap_err().to_string();
        assert!(err.contains("both set"), "{err}");

        let mut half_cert = sasl_ssl();
        half_cert.ssl_cert_file = Some("/etc/hostname".into());
        let err = half_cert.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.ssl_key_file"), "{err}");

        let mut sasl_on_plaintext = sasl_ssl();
        sasl_on_plaintext.security_protocol = SecurityProtocol::Plaintext;
        let err = sasl_on_plaintext.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.sasl_username"), "{err}");

        let mut ca_on_sasl_plaintext = sasl_ssl();
        ca_on_sasl_plaintext.security_protocol = SecurityProtocol::SaslPlaintext;
        ca_on_sasl_plaintext.ssl_ca_file = Some("/etc/hostname".into());
        let err = ca_on_sasl_plaintext.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.ssl_ca_file"), "{err}");

        let mut missing_ca = sasl_ssl();
        missing_ca.ssl_ca_file = Some("/nonexistent/ca.pem".into());
        let err = missing_ca.validate().unwrap_err().to_string();
        assert!(
            err.contains("kafka.ssl_ca_file /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn security_settings_load_from_file_and_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("password", "0123456789\n")?;
            jail.create_file(
                "secure.toml",
                "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\n\
                 sasl_username = \"orderflow\"\nsasl_password_file = \"password\"\n",
            )?;
            let s = load(Some(Path::new("secure.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.security_protocol, SecurityProtocol::SaslSsl);
            assert_eq!(s.sasl_mechanism, SaslMechanism::ScramSha256);
            assert!(
                s.ssl_verify_hostname,
                "hostname verification is on by default"
            );
            let password = s.sasl_password().map_err(|e| e.to_string())?;
            assert_eq!(password.as_ref().map(Secret::expose), Some("0123456789"));

            jail.create_file("typo.toml", "[kafka]\nsecurity_protocol = \"tls\"\n")?;
            let err = load(Some(Path::new("typo.toml"))).unwrap_err().to_string();
            assert!(err.contains("security_protocol"), "{err}");

            // From the environment, a password of digits (or brackets) arrives as written.
            jail.set_env("ORDERFLOW_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext");
            jail.set_env("ORDERFLOW_KAFKA__SASL_USERNAME", "orderflow");
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD", "007[x]");
            let s = load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.sasl_password.as_ref().map(Secret::expose), Some("007[x]"));

            // A setting that cannot work stops the load, naming the setting.
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE", "missing-file");
            let err = load(None).unwrap_err().to_string();
            assert!(err.contains("both set"), "{err}");
            // An empty variable is no value: only the password from the environment is left.
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE", "");
            let s = load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.sasl_password_file, None);

            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE", "missing-file");
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD", "");
            let err = load(None).unwrap_err().to_string();
            assert!(
                err.contains("kafka.sasl_password_file missing-file: cannot read it"),
                "{err}"
            );
            Ok(())
        });
    }
}

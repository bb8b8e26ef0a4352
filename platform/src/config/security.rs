//! Kafka security settings: the protocol (`SecurityProtocol`), the SASL mechanism, `Secret`
//! (a password that never prints), and the startup check of `KafkaSettings`' security fields
//! (`KafkaSettings::validate`, `KafkaConfigError`), with the SASL password read from its file.
//! The fields themselves are declared with the rest of `KafkaSettings` in `config`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::KafkaSettings;

/// `security.protocol` of every Kafka client.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// `sasl.mechanism` for the `sasl_*` protocols. GSSAPI and OAUTHBEARER are not offered: they
/// need libraries this build does not link.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The value librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A password or other secret. `Debug` and `Display` print `***`, and so does `Serialize`: a
/// secret never reaches a log line, an error message or a dumped configuration.
/// [`Secret::expose`] is the one way to the value, for the client that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Takes a string; a TOML number or boolean is taken as its text, so a password of digits
    /// works without quotes.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a secret string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// A Kafka security setting that cannot work, found at startup. Each names the setting to fix;
/// none carries a secret. The caller stops: no client could connect.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("kafka.security_protocol = {protocol} needs kafka.sasl_username (set it in the config file or ORDERFLOW_KAFKA__SASL_USERNAME)")]
    MissingUsername { protocol: &'static str },
    #[error("kafka.security_protocol = {protocol} needs a password: set kafka.sasl_password_file (a file holding it) or ORDERFLOW_KAFKA__SASL_PASSWORD")]
    MissingPassword { protocol: &'static str },
    #[error("kafka.sasl_password and kafka.sasl_password_file are both set; keep one")]
    TwoPasswords,
    #[error("kafka.sasl_password_file {path}: cannot read it ({source}); point it at a readable file holding the password")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kafka.sasl_password_file {path} is empty; its first line must be the password")]
    EmptyPasswordFile { path: PathBuf },
    #[error("kafka.{setting} {path}: cannot read it ({source})")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "kafka.ssl_cert_file and kafka.ssl_key_file go together (mutual TLS); set both or neither"
    )]
    HalfClientCert,
    #[error("kafka.{setting} is set but kafka.security_protocol = {protocol} does not use it; use {wanted} or remove the setting")]
    Unused {
        setting: &'static str,
        protocol: &'static str,
        wanted: &'static str,
    },
}

impl KafkaSettings {
    /// Check the security settings for combinations that cannot work, and that every file
    /// they name can be read. [`Settings::load`](super::Settings::load) calls it, so a bad combination stops the
    /// program at startup, naming the setting.
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
    pub(super) fn unset_empty(&mut self) {
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
    use crate::config::Settings;

    fn sasl_ssl() -> KafkaSettings {
        let mut kafka = Settings::default().kafka;
        kafka.security_protocol = SecurityProtocol::SaslSsl;
        kafka.sasl_username = Some("orderflow".into());
        kafka.sasl_password = Some(Secret::new("hunter2-very-secret"));
        kafka
    }

    #[test]
    fn the_kafka_password_never_prints() {
        let settings = Settings {
            kafka: sasl_ssl(),
            ..Settings::default()
        };
        for shown in [
            format!("{settings:?}"),
            format!("{settings:#?}"),
            format!("{:?}", settings.kafka),
            format!("{:?}", settings.kafka.sasl_password),
            format!("{}", settings.kafka.sasl_password.clone().unwrap()),
            serde_json::to_string(&settings).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "secret printed: {shown}");
        }
        assert!(format!("{:?}", settings.kafka).contains("Secret(***)"));
        assert_eq!(
            settings.kafka.sasl_password().unwrap().unwrap().expose(),
            "hunter2-very-secret"
        );
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
            let s = Settings::load(Some(Path::new("secure.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.security_protocol, SecurityProtocol::SaslSsl);
            assert_eq!(s.kafka.sasl_mechanism, SaslMechanism::ScramSha256);
            assert!(
                s.kafka.ssl_verify_hostname,
                "hostname verification is on by default"
            );
            let password = s.kafka.sasl_password().map_err(|e| e.to_string())?;
            assert_eq!(password.as_ref().map(Secret::expose), Some("0123456789"));

            jail.create_file("typo.toml", "[kafka]\nsecurity_protocol = \"tls\"\n")?;
            let err = Settings::load(Some(Path::new("typo.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("security_protocol"), "{err}");

            // From the environment, a password of digits (or brackets) arrives as written.
            jail.set_env("ORDERFLOW_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext");
            jail.set_env("ORDERFLOW_KAFKA__SASL_USERNAME", "orderflow");
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD", "007[x]");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                s.kafka.sasl_password.as_ref().map(Secret::expose),
                Some("007[x]")
            );

            // A setting that cannot work stops the load, naming the setting.
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE", "missing-file");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("both set"), "{err}");
            // An empty variable is no value: only the password from the environment is left.
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE", "");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.sasl_password_file, None);

            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD_FILE", "missing-file");
            jail.set_env("ORDERFLOW_KAFKA__SASL_PASSWORD", "");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("kafka.sasl_password_file missing-file: cannot read it"),
                "{err}"
            );
            Ok(())
        });
    }
}

//! Kafka security values: the protocol (`SecurityProtocol`), the SASL mechanism, `Secret` (a
//! password that never prints) and `KafkaConfigError`, what the startup check of the security
//! settings reports. The settings that use them, and that check, are `KafkaSettings` in
//! `kafka`; this module names no other part of `config`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

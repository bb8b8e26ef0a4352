//! The layering every settings type loads with: its defaults, then an optional TOML file, then
//! `ORDERFLOW_*` environment variables (`ORDERFLOW_KAFKA__BROKERS=host:9092` sets
//! `kafka.brokers`). Generic over the type, so the crate that composes the whole file's settings
//! (`orderflow`) owns that type, and each component's crate owns its section.
//!
//! Unknown keys are errors when the type (and each section) denies unknown fields; every error
//! names the setting and the layer it came from (the file, or the variable).

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `ORDERFLOW_*` variables that are not settings: read elsewhere (`ORDERFLOW_LOG_FORMAT` by
/// `telemetry`), so the settings leave them alone instead of calling them unknown keys.
const NOT_SETTINGS: &[&str] = &["log_format"];

/// Settings that cannot be loaded: a missing file, a key no section has, a value of the wrong
/// type, or a section's own check that failed (the message names the setting and what to do).
/// The caller stops: nothing can run on settings it did not mean.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConfigError(Box<figment::Error>);

impl ConfigError {
    /// An error of a section's own check, shown as `message`.
    pub fn invalid(message: impl std::fmt::Display) -> ConfigError {
        ConfigError(Box::new(figment::Error::from(message.to_string())))
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        ConfigError(Box::new(error))
    }
}

impl From<super::security::KafkaConfigError> for ConfigError {
    fn from(error: super::security::KafkaConfigError) -> Self {
        ConfigError::invalid(error)
    }
}

/// `T::default()`, then `file` if given (it must exist), then `ORDERFLOW_*` variables, extracted
/// as `T`. The variables of `verbatim` keys (`kafka.sasl_password` is read from
/// `ORDERFLOW_KAFKA__SASL_PASSWORD`) are taken as written, never parsed as numbers or lists, and
/// an empty one counts as unset. Checks beyond the types (`KafkaSettings::settle`) are the
/// caller's, on the result.
pub fn layered<T>(file: Option<&Path>, verbatim: &[&str]) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::invalid(format!(
                "config file {} does not exist (pass an existing TOML file or omit --config)",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        Env::prefixed("ORDERFLOW_")
            .split("__")
            .ignore(verbatim)
            .ignore(NOT_SETTINGS),
    );
    // figment parses environment values (`123` becomes a number, `[a]` a list); a password
    // must arrive exactly as written, so it is read here and merged as a string.
    // An empty variable counts as unset, as a shell's `VAR=` means.
    for key in verbatim {
        let variable = format!("ORDERFLOW_{}", key.replace('.', "__").to_uppercase());
        if let Some(value) = std::env::var(&variable).ok().filter(|v| !v.is_empty()) {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    Ok(figment.extract()?)
}

#[cfg(test)]
// figment's Jail closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// A settings type of two sections, as a crate composing its own would declare it.
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        log: Log,
        limits: Limits,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Log {
        topic: String,
        partitions: i32,
        brokers: String,
        token: String,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        max: u64,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                log: Log {
                    topic: "orders.events".into(),
                    partitions: 12,
                    brokers: "127.0.0.1:9092".into(),
                    token: "none".into(),
                },
                limits: Limits { max: 10 },
            }
        }
    }

    fn load(file: Option<&Path>) -> Result<Sample, ConfigError> {
        layered(file, &["log.token"])
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("of.toml", "[log]\ntopic = \"from-file\"\npartitions = 3\n")?;
            jail.set_env("ORDERFLOW_LOG__PARTITIONS", "7");
            jail.set_env("ORDERFLOW_LIMITS__MAX", "99");
            let s = load(Some(Path::new("of.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.log.topic, "from-file");
            assert_eq!(s.log.partitions, 7);
            assert_eq!(s.log.brokers, "127.0.0.1:9092");
            assert_eq!(s.limits.max, 99);
            Ok(())
        });
    }

    #[test]
    fn verbatim_keys_arrive_as_written() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ORDERFLOW_LOG__TOKEN", "007[x]");
            assert_eq!(load(None).map_err(|e| e.to_string())?.log.token, "007[x]");
            jail.set_env("ORDERFLOW_LOG__TOKEN", "");
            assert_eq!(load(None).map_err(|e| e.to_string())?.log.token, "none");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            // The log format variable is not a setting and not an error; a misspelt one is.
            jail.set_env("ORDERFLOW_LOG_FORMAT", "json");
            load(None).map_err(|e| e.to_string())?;
            jail.set_env("ORDERFLOW_LOG_TOPIC", "one-underscore-short");
            let err = load(None).unwrap_err();
            assert!(err.to_string().contains("LOG_TOPIC"), "{err}");
            std::env::remove_var("ORDERFLOW_LOG_TOPIC");
            jail.create_file("bad.toml", "[log]\ntopics = \"typo\"\n")?;
            let err = load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.to_string().contains("topics"), "{err}");
            assert!(err.to_string().contains("bad.toml"), "{err}");
            let err = load(Some(Path::new("missing.toml"))).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
            Ok(())
        });
    }
}

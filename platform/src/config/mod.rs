//! The infrastructure's settings and the layering every settings type loads with.
//!
//! Only what every component shares lives here: `[kafka]` (`kafka`, with the security values'
//! types in `security`), `[database]` (`database`) and `[consumer]` (`consumer`), and
//! [`layered()`](layered::layered) (defaults, then an optional TOML file, then `ORDERFLOW_*`
//! environment variables). Each domain section belongs to the crate of its component
//! (`[payment]`, `[shipping]`, `[saga]` to `consumers`, `[archive]` to `archive`), and the
//! whole file's `Settings` is composed in `orderflow`, the one crate that knows every component.
//! Settings are passed explicitly, each component getting only its own sections; there is no
//! global instance.
//!
//! This file only declares the modules and re-exports; no module here imports from it.

pub mod consumer;
pub mod database;
pub mod kafka;
pub mod layered;
pub mod security;

pub use consumer::{ConsumerSettings, RetryOverride, RetryPolicy};
pub use database::{redact_url, DatabaseSettings};
pub use kafka::KafkaSettings;
pub use layered::{layered, ConfigError};
pub use security::{KafkaConfigError, SaslMechanism, Secret, SecurityProtocol};

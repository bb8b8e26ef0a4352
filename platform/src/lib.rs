//! Runtime plumbing every component shares: the infrastructure's settings (`[kafka]`,
//! `[database]`, `[consumer]`) and the layering every settings type loads with, Kafka client
//! configuration, the Postgres pool and its migrations, shutdown, logging and traces.
//!
//! Nothing here knows about orders or the wire format; domain code lives in the other crates.

pub mod admin;
pub mod audit;
pub mod config;
pub mod db;
pub mod deadletter;
pub mod kafka;
pub mod kafka_stats;
pub mod metrics;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

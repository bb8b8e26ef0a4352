//! Projections: fold the order log into the analysts' read models in the `analytics` schema
//! (`orders`, `order_events`).
//!
//! The projector is a consumer group whose offsets live in `pipeline.consumer_offsets`, written
//! in the same transaction as the rows; on partition assignment it seeks to them
//! ([`offsets::DbOffsets`]). Kafka-side commits are only a hint for tools. Projections never
//! produce to Kafka and never write step state.

pub mod fold;
pub mod offsets;
pub mod projector;

pub use projector::Projector;

/// The name under which the projector stores offsets and sets records aside.
pub const NAME: &str = "projections";

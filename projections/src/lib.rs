//! Projections: fold the order log into the analysts' read models.
//!
//! The models of one fold live in a generation schema (`analytics_g<N>`, see [`generations`]);
//! analysts read them through views in `analytics`. The projector is a consumer group that
//! writes the live generation; its offsets are that generation's `positions`, written in the
//! same transaction as the rows, and on partition assignment it seeks to them
//! ([`offsets::DbOffsets`]). Kafka-side commits are only a hint for tools. [`rebuild`] folds
//! the log into a new generation, verifies it and switches. Projections never produce to
//! Kafka and never write step state.

pub mod apply;
pub mod audit;
mod bulk;
pub mod changes;
pub mod copy;
pub mod fold;
pub mod generations;
pub mod offsets;
pub mod projector;
pub mod query;
pub mod rebuild;
pub mod restore;
pub mod store;
pub mod verify;

pub use projector::Projector;

/// The name under which the projector stores offsets and sets records aside.
pub const NAME: &str = "projections";

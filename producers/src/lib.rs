//! Getting orders onto the log: the JSON order format accepted by `orderflow publish`, its
//! conversion to `OrderCreated` events, and the [`Publisher`] that appends events keyed by
//! order id with the idempotent producer.
//!
//! Producers never read the log and never touch Postgres.

pub mod input;
pub mod publisher;

pub use input::{cancellation_request, parse_line, LineError, OrderInput};
pub use publisher::{PublishReport, Publisher};

//! The order log's vocabulary: every event type, its metadata, its domain rules, and its
//! wire format (Avro single-object encoding, schemas in the workspace `schemas/` folder, every
//! version of each readable, docs/schema-evolution.md).
//!
//! This is the only crate that knows the wire format. Other crates hand it typed [`Event`]s
//! and bytes; they never build Avro values themselves.

pub mod archive;
mod codec;
mod model;
mod validate;

pub use codec::{
    decode, encode, encode_version, peek_type, schema_catalog, writer_schema, DecodeError,
    EncodeError, SchemaInfo,
};
pub use model::*;
pub use validate::{is_known_currency, validate, validate_order, ValidationError, SAGA_STEPS};

/// The deterministic id of the event that `step` emits in reaction to the event `cause`.
///
/// A UUID v5 of the causing event id and the step name: a step that re-runs after a crash
/// emits the same ids again, so every downstream inbox absorbs the repeat.
pub fn reply_event_id(cause: uuid::Uuid, step: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&cause, step.as_bytes())
}

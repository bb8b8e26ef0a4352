//! The HTTP API (issue 13): the front door for upstream systems, customers and operators.
//!
//! `POST /v1/orders` writes the order's `OrderCreated` to the outbox in the transaction that
//! records its idempotency key ([`store`]); the relay ([`server`]) publishes it. Reads come from
//! the read models through `projections::query`. Every error is problem+json ([`problem`]);
//! every request gets a request id ([`request_id`]), a timeout, an access-log line and metrics
//! ([`server`]). Who calls is a [`auth::Principal`] from a pluggable [`auth::Authenticator`]:
//! JWT bearer tokens and API keys ([`security`], on the `access` crate), or the dev-only
//! principal; [`start`] refuses to serve with neither. [`security::guard`] rate-limits every
//! request and sheds new orders in maintenance or when the outbox backlog is too long. [`tls`]
//! terminates TLS when `[api.tls]` is set and turns verified client certificates into service
//! principals.
//!
//! The operator endpoints ([`operator`]: stock, customer blocks, dead letters, parked orders)
//! do what the CLI's commands do by calling the same functions; a redrive reaches the steps,
//! which only the binary builds, through the [`operations::Operations`] port.
//!
//! This crate is the front door only: it never decides anything about an order (the steps
//! do), reads or writes step state only through the steps' own operator functions, and never
//! produces to Kafka except through the outbox.

pub mod auth;
pub mod document;
pub mod ids;
pub mod operations;
pub mod operator;
pub mod orders;
pub mod paging;
pub mod problem;
pub mod request_id;
pub mod security;
pub mod server;
pub mod settings;
pub mod spec;
pub mod store;
pub mod tls;
pub mod waiting;

pub use server::{app, openapi, start, start_sealing, start_with, Api, AppState};
pub use settings::ApiSettings;

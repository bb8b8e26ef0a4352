//! Who may call the HTTP API, as whom, and how often (issue 13, items 2, 3, 4, 7).
//!
//! - [`jwt`]: bearer tokens verified against the keys of a JWKS file, one algorithm pinned per
//!   key, `exp`/`nbf`/`iss`/`aud`/`sub` checked (RFC 8725), reloaded without a restart.
//! - [`api_keys`]: keys for integrations (`ofk_<id>_<secret>`), stored only as an HMAC-SHA256
//!   of the secret under a server pepper; the `api_keys` table's SQL lives here.
//! - [`principal`]: the [`principal::Principal`] a request runs as, and its [`principal::Role`].
//! - [`ratelimit`]: token buckets per principal (per client address when unauthenticated) with
//!   the `RateLimit-*` header values.
//! - [`flags`]: the live flags file (`accept_orders`, the rate limits), reloaded on change.
//! - [`secret`]: a value that never prints.
//!
//! This crate decides nothing about orders and knows nothing of HTTP routing: the `api` crate
//! asks it who a request is and whether it may go on, and turns its answers into responses.
//! It never logs a token, a key or a pepper.

pub mod api_keys;
pub mod flags;
pub mod jwt;
pub mod principal;
pub mod ratelimit;
pub mod secret;
pub mod settings;

pub use principal::{Principal, Role};
pub use secret::Secret;
pub use settings::AuthSettings;

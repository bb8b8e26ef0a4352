//! Personal data on an immutable log, and how to forget it.
//!
//! The personal fields of an order (`docs/privacy.md` says which) are written to the log
//! sealed: encrypted with AES-256-GCM under a data key of the customer, with the order id as
//! associated data ([`personal::seal`]). The data keys live in Postgres (`privacy.data_keys`),
//! each wrapped by the master key, which comes from a file or the environment and is never
//! stored, logged or shown ([`settings`]). Forgetting a customer destroys their keys
//! ([`keys::KeyRing::destroy_customer`]): every sealed copy — the log, the archive, a backup —
//! then reads as erased ([`personal::Revealed::Erased`]), while the order's other facts stay.
//!
//! - [`crypto`]: the master key, data keys, wrapping, and AEAD over bytes (pure).
//! - [`personal`]: what counts as personal, sealing an `OrderCreated` and revealing it (pure).
//! - [`keys`]: the key table's SQL: issue, load, destroy, export and import.
//! - [`settings`]: the `[privacy]` section.

pub mod crypto;
pub mod keys;
pub mod personal;
pub mod settings;

pub use crypto::{DataKey, MasterKey, MasterKeyError, ALGORITHM};
pub use keys::{KeyError, KeyRecord, KeyRing, KeyState};
pub use personal::{reveal, seal, unseal, Personal, Revealed, SealError, UnsealError};
pub use settings::PrivacySettings;

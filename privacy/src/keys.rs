//! `privacy.data_keys`: the customers' data keys, wrapped by the master key. Every read is one
//! statement for a whole batch; every key is unwrapped in memory only.
//!
//! Issuing a customer's first key races with another process issuing one for the same
//! customer: [`KeyRing::lock_customers`] takes a transaction-level advisory lock per customer
//! (in a stable order) before the live keys are read, so the second waits and then finds the
//! first's key. Forgetting takes the same lock.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::crypto::{DataKey, MasterKey};

/// Why keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The configured master key is not the one the key was wrapped with (or the row was
    /// altered). Nothing can be sealed or opened until the right master key is configured.
    #[error("data key {key_id} of customer {customer_id:?} does not unwrap with the configured master key: privacy.master_key_file / ORDERFLOW_PRIVACY__MASTER_KEY must be the key the data keys were wrapped with")]
    WrongMasterKey { key_id: Uuid, customer_id: String },
}

/// A key looked up by id.
#[derive(Debug, Clone)]
pub enum KeyState {
    Live(DataKey),
    /// Destroyed by an erasure: what it sealed reads as erased.
    Destroyed,
}

/// A key as exported and imported (`orderflow keys export|import`): still wrapped, so the file
/// is no more secret than the database, and useless without the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub key_id: Uuid,
    pub customer_id: String,
    /// Base64; absent for a destroyed key.
    pub wrap_nonce: Option<String>,
    pub wrapped_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub destroyed_at: Option<DateTime<Utc>>,
}

/// A key issued in memory, to be inserted with the batch that used it.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: DataKey,
    nonce: Vec<u8>,
    wrapped: Vec<u8>,
}

/// The master key and the SQL of the key table.
#[derive(Debug, Clone)]
pub struct KeyRing {
    master: Arc<MasterKey>,
}

impl KeyRing {
    pub fn new(master: MasterKey) -> KeyRing {
        KeyRing {
            master: Arc::new(master),
        }
    }

    /// Lock `customers`' keys for the rest of the transaction (advisory, in sorted order).
    pub async fn lock_customers(
        conn: &mut PgConnection,
        customers: &[&str],
    ) -> Result<(), sqlx::Error> {
        let mut sorted: Vec<&str> = customers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('privacy.data_keys/' || c, 0))
             FROM unnest($1::text[]) WITH ORDINALITY AS t(c, n) ORDER BY n",
        )
        .bind(&sorted)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The live key of each of `customers` that has one.
    pub async fn live(
        &self,
        conn: &mut PgConnection,
        customers: &[&str],
    ) -> Result<HashMap<String, DataKey>, KeyError> {
        let rows: Vec<(Uuid, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, customer_id, wrap_nonce, wrapped_key FROM privacy.data_keys
             WHERE customer_id = ANY($1) AND destroyed_at IS NULL",
        )
        .persistent(false)
        .bind(customers)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|row| self.unwrap(row).map(|k| (k.customer_id.clone(), k)))
            .collect()
    }

    /// The keys `ids` as they stand; an id with no row is absent from the map.
    pub async fn by_ids(
        &self,
        conn: &mut PgConnection,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, KeyState>, KeyError> {
        // (key id, customer, wrap nonce, wrapped key); the last two are NULL once destroyed.
        type Row = (Uuid, String, Option<Vec<u8>>, Option<Vec<u8>>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT key_id, customer_id, wrap_nonce, wrapped_key FROM privacy.data_keys
             WHERE key_id = ANY($1)",
        )
        .persistent(false)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|(id, customer, nonce, wrapped)| match (nonce, wrapped) {
                (Some(nonce), Some(wrapped)) => self
                    .unwrap((id, customer, nonce, wrapped))
                    .map(|k| (id, KeyState::Live(k))),
                _ => Ok((id, KeyState::Destroyed)),
            })
            .collect()
    }

    fn unwrap(
        &self,
        (key_id, customer_id, nonce, wrapped): (Uuid, String, Vec<u8>, Vec<u8>),
    ) -> Result<DataKey, KeyError> {
        self.master
            .unwrap(key_id, &customer_id, &nonce, &wrapped)
            .ok_or(KeyError::WrongMasterKey {
                key_id,
                customer_id,
            })
    }

    /// A new key for `customer_id`, wrapped, not yet stored ([`KeyRing::insert`]).
    pub fn issue(&self, customer_id: &str) -> NewKey {
        let key = DataKey::generate(customer_id);
        let (nonce, wrapped) = self.master.wrap(&key);
        NewKey {
            key,
            nonce,
            wrapped,
        }
    }

    /// Store issued keys, one statement.
    pub async fn insert(conn: &mut PgConnection, keys: &[NewKey]) -> Result<(), sqlx::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = keys.iter().map(|k| k.key.id).collect();
        let customers: Vec<&str> = keys.iter().map(|k| k.key.customer_id.as_str()).collect();
        let nonces: Vec<&[u8]> = keys.iter().map(|k| k.nonce.as_slice()).collect();
        let wrapped: Vec<&[u8]> = keys.iter().map(|k| k.wrapped.as_slice()).collect();
        sqlx::query(
            "INSERT INTO privacy.data_keys (key_id, customer_id, wrap_nonce, wrapped_key)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[])",
        )
        .bind(&ids)
        .bind(&customers)
        .bind(&nonces)
        .bind(&wrapped)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Destroy every live key of `customer_id` (call after [`KeyRing::lock_customers`]);
    /// returns their ids.
    pub async fn destroy_customer(
        conn: &mut PgConnection,
        customer_id: &str,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let mut ids: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE privacy.data_keys
             SET wrap_nonce = NULL, wrapped_key = NULL, destroyed_at = now()
             WHERE customer_id = $1 AND destroyed_at IS NULL RETURNING key_id",
        )
        .bind(customer_id)
        .fetch_all(&mut *conn)
        .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Destroy the keys `ids` (a restore applying archived erasures); an id without a row
    /// becomes a tombstone. Returns how many keys were live before.
    pub async fn destroy_ids(
        conn: &mut PgConnection,
        customer_id: &str,
        ids: &[Uuid],
    ) -> Result<u64, sqlx::Error> {
        let live = sqlx::query(
            "UPDATE privacy.data_keys
             SET wrap_nonce = NULL, wrapped_key = NULL, destroyed_at = now()
             WHERE key_id = ANY($1) AND destroyed_at IS NULL",
        )
        .bind(ids)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        sqlx::query(
            "INSERT INTO privacy.data_keys (key_id, customer_id, destroyed_at)
             SELECT k, $2, now() FROM unnest($1::uuid[]) AS k
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(ids)
        .bind(customer_id)
        .execute(&mut *conn)
        .await?;
        Ok(live)
    }

    /// Every key, live and destroyed, for a backup.
    pub async fn export(conn: &mut PgConnection) -> Result<Vec<KeyRecord>, sqlx::Error> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        type Row = (
            Uuid,
            String,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT key_id, customer_id, wrap_nonce, wrapped_key, created_at, destroyed_at
             FROM privacy.data_keys ORDER BY created_at, key_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(key_id, customer_id, nonce, wrapped, created_at, destroyed_at)| KeyRecord {
                    key_id,
                    customer_id,
                    wrap_nonce: nonce.map(|n| b64.encode(n)),
                    wrapped_key: wrapped.map(|w| b64.encode(w)),
                    created_at,
                    destroyed_at,
                },
            )
            .collect())
    }

    /// Add exported keys; a key already present keeps its row, except that a destroyed one
    /// in `records` destroys it here too (an erasure is never undone by an import). Returns
    /// (rows added, keys destroyed). Records are checked first: a wrapped key that does not
    /// unwrap with this ring's master key refuses the whole import.
    pub async fn import(
        &self,
        conn: &mut PgConnection,
        records: &[KeyRecord],
    ) -> Result<(u64, u64), ImportError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ids = Vec::new();
        let mut customers = Vec::new();
        let mut nonces: Vec<Option<Vec<u8>>> = Vec::new();
        let mut wrapped: Vec<Option<Vec<u8>>> = Vec::new();
        let mut created = Vec::new();
        let mut destroyed = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let bytes = |field: &Option<String>, name: &str| {
                field
                    .as_deref()
                    .map(|v| b64.decode(v))
                    .transpose()
                    .map_err(|e| ImportError::Record {
                        index: i,
                        detail: format!("{name} is not base64: {e}"),
                    })
            };
            let (nonce, key) = (
                bytes(&r.wrap_nonce, "wrap_nonce")?,
                bytes(&r.wrapped_key, "wrapped_key")?,
            );
            match (&nonce, &key, r.destroyed_at) {
                (Some(n), Some(k), None) => {
                    if self.master.unwrap(r.key_id, &r.customer_id, n, k).is_none() {
                        return Err(ImportError::Record {
                            index: i,
                            detail: format!(
                                "key {} of customer {:?} does not unwrap with the configured master key",
                                r.key_id, r.customer_id
                            ),
                        });
                    }
                }
                (None, None, Some(_)) => {}
                _ => {
                    return Err(ImportError::Record {
                        index: i,
                        detail: "a key has either wrap_nonce, wrapped_key and no destroyed_at, or none of the two and destroyed_at".into(),
                    })
                }
            }
            ids.push(r.key_id);
            customers.push(r.customer_id.as_str());
            nonces.push(nonce);
            wrapped.push(key);
            created.push(r.created_at);
            destroyed.push(r.destroyed_at);
        }
        let added = sqlx::query(
            "INSERT INTO privacy.data_keys
                 (key_id, customer_id, wrap_nonce, wrapped_key, created_at, destroyed_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[],
                                  $5::timestamptz[], $6::timestamptz[])
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&customers)
        .bind(&nonces)
        .bind(&wrapped)
        .bind(&created)
        .bind(&destroyed)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        let gone: Vec<Uuid> = records
            .iter()
            .filter(|r| r.destroyed_at.is_some())
            .map(|r| r.key_id)
            .collect();
        let destroyed = sqlx::query(
            "UPDATE privacy.data_keys
             SET wrap_nonce = NULL, wrapped_key = NULL, destroyed_at = now()
             WHERE key_id = ANY($1) AND destroyed_at IS NULL",
        )
        .bind(&gone)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok((added, destroyed))
    }
}

/// Why a key import was refused (nothing was imported).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("key record {index} (0-based): {detail}")]
    Record { index: usize, detail: String },
}

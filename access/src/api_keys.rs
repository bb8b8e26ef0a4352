//! API keys for integrations: `ofk_<id>_<secret>`, where `id` (16 hex digits) is public and
//! names the key, and `secret` is 256 random bits (base64url). The `api_keys` table (this
//! module owns its SQL) stores only `HMAC-SHA256(pepper, id ":" secret)`: a database dump
//! alone cannot produce a working key, and the server's pepper ([`Secret`]) lives in a file or
//! the environment, never in the database. A presented key is looked up by id and its MAC
//! compared in constant time ([`subtle`]). HMAC, not a slow password hash: the secret has 256
//! bits of entropy, so hashing cost buys nothing and would hand a flood of bad keys our CPU.
//!
//! `last_used_at` is written at most once a minute per key (a conditional UPDATE, skipped
//! when the row read says it is fresh), so a busy key does not write on every request.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::jwt::ID_MAX_CHARS;
use crate::principal::{Principal, Role};
use crate::secret::Secret;

/// Every key starts with this; a bearer token with it is an API key, not a JWT.
pub const PREFIX: &str = "ofk_";
/// The pepper must be at least this long.
pub const PEPPER_MIN_BYTES: usize = 32;
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// `last_used_at` is refreshed when older than this.
const LAST_USED_EVERY_SECS: i64 = 60;

/// A key as `list` shows it: never the secret, nor its MAC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub role: String,
    pub customer_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What authenticating a key reads of its row.
#[derive(sqlx::FromRow)]
struct StoredKey {
    role: String,
    customer_id: Option<String>,
    secret_hmac: Vec<u8>,
    revoked: bool,
    /// `last_used_at` is older than a minute (or unset).
    stale: bool,
}

/// Why a key could not be created or revoked (a usage mistake: fix what is named).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--name must be 1 to 200 characters without control characters")]
    Name,
    #[error("--role customer needs --customer ID (the customer the key acts for)")]
    CustomerMissing,
    #[error("--customer is only for --role customer")]
    CustomerNotCustomer,
    #[error("no API key has id {0:?}; `orderflow api-keys list` shows them")]
    NoSuchKey(String),
    #[error("the database failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why a presented key was refused. For the debug log only (never the key itself); the
/// client gets `401` whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    #[error("not of the form ofk_<id>_<secret>")]
    Malformed,
    #[error("no key has this id")]
    Unknown,
    #[error("the secret does not match the key's")]
    Mismatch,
    #[error("the key was revoked")]
    Revoked,
    #[error("the key's stored role or customer is not usable")]
    Corrupt,
}

/// Checking a presented key failed for a reason that is not the key's fault (`503`, retry).
#[derive(Debug, thiserror::Error)]
#[error("looking the API key up failed: {0}")]
pub struct LookupError(#[from] pub sqlx::Error);

/// The keys of one database under one pepper.
#[derive(Clone)]
pub struct ApiKeys {
    pool: PgPool,
    pepper: Secret,
}

impl ApiKeys {
    pub fn new(pool: PgPool, pepper: Secret) -> ApiKeys {
        ApiKeys { pool, pepper }
    }

    fn mac(&self, id: &str, secret: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.pepper.expose().as_bytes())
            .expect("HMAC accepts a key of any length");
        mac.update(id.as_bytes());
        mac.update(b":");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Create a key; returns the whole key (shown once, never stored) and its id.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        customer_id: Option<&str>,
    ) -> Result<(String, KeyInfo), KeyError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(KeyError::Name);
        }
        let customer_id = customer_id.map(str::trim).filter(|c| !c.is_empty());
        match (role, customer_id) {
            (Role::Customer, None) => return Err(KeyError::CustomerMissing),
            (Role::Customer, Some(c)) if c.chars().count() > ID_MAX_CHARS => {
                return Err(KeyError::CustomerMissing)
            }
            (Role::Customer, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(KeyError::CustomerNotCustomer),
        }
        let mut rng = rand::rng();
        let mut id_bytes = [0u8; ID_BYTES];
        rng.fill_bytes(&mut id_bytes);
        let id = hex(&id_bytes);
        let mut secret_bytes = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut secret_bytes);
        let secret = base64_url(&secret_bytes);
        let mac = self.mac(&id, &secret);
        let created_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO api_keys (id, name, role, customer_id, secret_hmac) VALUES ($1, $2, $3, $4, $5) \
             RETURNING created_at",
        )
        .bind(&id)
        .bind(name)
        .bind(role.name())
        .bind(customer_id)
        .bind(&mac[..])
        .fetch_one(&self.pool)
        .await?;
        let info = KeyInfo {
            id: id.clone(),
            name: name.to_string(),
            role: role.name().to_string(),
            customer_id: customer_id.map(str::to_string),
            created_at,
            last_used_at: None,
            revoked_at: None,
        };
        Ok((format!("{PREFIX}{id}_{secret}"), info))
    }

    /// Every key, oldest first.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        Ok(sqlx::query_as::<_, KeyInfo>(
            "SELECT id, name, role, customer_id, created_at, last_used_at, revoked_at FROM api_keys \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revoke key `id` (given with or without `ofk_`); revoking a revoked key keeps its first
    /// revocation time.
    pub async fn revoke(&self, id: &str) -> Result<(), KeyError> {
        let id = id.trim().trim_start_matches(PREFIX);
        let found = sqlx::query(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        if found.rows_affected() == 0 {
            return Err(KeyError::NoSuchKey(id.to_string()));
        }
        Ok(())
    }

    /// The principal `presented` proves (`Ok(Err(..))`: refused, `401`), or a database failure.
    pub async fn authenticate(
        &self,
        presented: &str,
    ) -> Result<Result<Principal, KeyRejected>, LookupError> {
        let Some((id, secret)) = parse(presented) else {
            return Ok(Err(KeyRejected::Malformed));
        };
        let row: Option<StoredKey> = sqlx::query_as(
            "SELECT role, customer_id, secret_hmac, revoked_at IS NOT NULL AS revoked, \
                    coalesce(last_used_at < now() - make_interval(secs => $2), true) AS stale \
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .bind(LAST_USED_EVERY_SECS as f64)
        .fetch_optional(&self.pool)
        .await?;
        let expected = self.mac(id, secret);
        let Some(StoredKey {
            role,
            customer_id,
            secret_hmac: stored,
            revoked,
            stale,
        }) = row
        else {
            return Ok(Err(KeyRejected::Unknown));
        };
        if !bool::from(stored.as_slice().ct_eq(&expected[..])) {
            return Ok(Err(KeyRejected::Mismatch));
        }
        if revoked {
            return Ok(Err(KeyRejected::Revoked));
        }
        let Some(role) = Role::parse(&role) else {
            return Ok(Err(KeyRejected::Corrupt));
        };
        if stale {
            // Conditional, so concurrent requests of one key write once.
            sqlx::query(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))",
            )
            .bind(id)
            .bind(LAST_USED_EVERY_SECS as f64)
            .execute(&self.pool)
            .await?;
        }
        Ok(Ok(Principal {
            id: format!("{PREFIX}{id}"),
            role,
            customer_id,
        }))
    }
}

/// `ofk_<16 hex>_<43 base64url>` split into id and secret, or `None`.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok =
        id.len() == ID_BYTES * 2 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_parse() {
        let secret = "A".repeat(43);
        let good = format!("ofk_0123456789abcdef_{secret}");
        assert_eq!(parse(&good), Some(("0123456789abcdef", secret.as_str())));
        let with_underscore = format!("ofk_0123456789abcdef_{}_b", "a".repeat(41));
        assert!(
            parse(&with_underscore).is_some(),
            "base64url secrets may hold `_`"
        );
        for bad in [
            String::new(),
            "ofk_".into(),
            format!("ofx_0123456789abcdef_{secret}"),
            format!("ofk_0123456789ABCDEF_{secret}"),
            format!("ofk_0123456789abcde_{secret}"),
            format!("ofk_0123456789abcdef_{}", "A".repeat(42)),
            format!("ofk_0123456789abcdef_{}=", "A".repeat(42)),
            format!("ofk_0123456789abcdef{secret}"),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
    }

    async fn keys(pepper: &str) -> ApiKeys {
        let base = std::env::var("ORDERFLOW_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let url = format!("{base}/access_keys_{}", uuid::Uuid::new_v4().simple());
        // CREATE DATABASE copies template1 and fails while another session copies it too
        // (tests run in parallel): try again a few times.
        let mut attempt = 0;
        while let Err(e) = platform::db::ensure_database(&url).await {
            attempt += 1;
            assert!(
                attempt < 20,
                "Postgres at 127.0.0.1:5432 is needed (scripts/dev-up starts it): {e:#}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
        }
        let pool = PgPool::connect(&url).await.unwrap();
        platform::db::migrate(&pool).await.unwrap();
        ApiKeys::new(pool, Secret::new(pepper))
    }

    #[tokio::test]
    async fn a_key_works_once_created_and_not_after_revocation() {
        let keys = keys("pepper-0123456789abcdef0123456789abcdef").await;
        let (key, info) = keys.create("checkout", Role::Service, None).await.unwrap();
        assert!(parse(&key).is_some(), "{key}");
        assert_eq!(info.role, "service");
        let principal = keys.authenticate(&key).await.unwrap().unwrap();
        assert_eq!(
            principal,
            Principal {
                id: format!("ofk_{}", info.id),
                role: Role::Service,
                customer_id: None
            }
        );

        // Only the MAC is stored: the secret appears nowhere in the row.
        let (_, secret) = parse(&key).unwrap();
        let row: String =
            sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k WHERE id = $1")
                .bind(&info.id)
                .fetch_one(&keys.pool)
                .await
                .unwrap();
        assert!(!row.contains(secret), "{row}");

        // Used once: last_used_at set; listed without any secret.
        let listed = keys.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some());
        assert!(listed[0].revoked_at.is_none());
        assert!(!serde_json::to_string(&listed).unwrap().contains(secret));

        // A changed secret, an unknown id, another pepper: refused.
        let mut wrong = key.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            keys.authenticate(&wrong).await.unwrap(),
            Err(KeyRejected::Mismatch)
        );
        let unknown = format!("ofk_ffffffffffffffff_{secret}");
        assert_eq!(
            keys.authenticate(&unknown).await.unwrap(),
            Err(KeyRejected::Unknown)
        );
        let other_pepper = ApiKeys::new(
            keys.pool.clone(),
            Secret::new("another-pepper-0123456789abcdef0123"),
        );
        assert_eq!(
            other_pepper.authenticate(&key).await.unwrap(),
            Err(KeyRejected::Mismatch)
        );
        assert_eq!(
            keys.authenticate("Bearer nonsense").await.unwrap(),
            Err(KeyRejected::Malformed)
        );

        keys.revoke(&format!("ofk_{}", info.id)).await.unwrap();
        assert_eq!(
            keys.authenticate(&key).await.unwrap(),
            Err(KeyRejected::Revoked)
        );
        assert!(keys.list().await.unwrap()[0].revoked_at.is_some());
        assert!(matches!(
            keys.revoke("0000000000000000").await,
            Err(KeyError::NoSuchKey(_))
        ));
    }

    #[tokio::test]
    async fn customer_keys_carry_their_customer_and_others_none() {
        let keys = keys("pepper-0123456789abcdef0123456789abcdef").await;
        assert!(matches!(
            keys.create("shop", Role::Customer, None).await,
            Err(KeyError::CustomerMissing)
        ));
        assert!(matches!(
            keys.create("svc", Role::Service, Some("c-1")).await,
            Err(KeyError::CustomerNotCustomer)
        ));
        assert!(matches!(
            keys.create(" ", Role::Service, None).await,
            Err(KeyError::Name)
        ));
        let (key, _) = keys
            .create("shop", Role::Customer, Some("c-1"))
            .await
            .unwrap();
        let principal = keys.authenticate(&key).await.unwrap().unwrap();
        assert_eq!(
            (principal.role, principal.customer_id.as_deref()),
            (Role::Customer, Some("c-1"))
        );
    }
}

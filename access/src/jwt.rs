//! JWT bearer tokens (RFC 7519) verified as RFC 8725 asks: against the public keys of a JWKS
//! file, each key carrying its `kid` and the one algorithm it verifies (RS256, ES256 or EdDSA).
//!
//! A token names its key by `kid`; its header `alg` must equal that key's pinned algorithm
//! (so `alg: none` and HS256 signed with a public key never verify); `exp` is required, `nbf`
//! honoured, both with a small leeway (at most [`LEEWAY_MAX_SECS`]); `iss` and `aud` must be
//! the configured ones; `sub` is required; `typ`, when present, must say JWT; a `crit` header
//! is refused (no extension is understood). The role comes from a configured claim and a
//! customer's id from another. A refused token is a [`Rejected`] whose reason is for the debug
//! log only: the client learns nothing but `401`.
//!
//! The key set is replaced whole by [`Verifier::reload`] (SIGHUP or a changed file, see
//! [`crate::flags::watch`]); a file that does not load leaves the keys in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::principal::{Principal, Role};

/// The largest leeway accepted for `exp` and `nbf`: clocks are synchronised, a token's
/// lifetime is not to be stretched by configuration.
pub const LEEWAY_MAX_SECS: u64 = 120;
/// Longer tokens are refused before any parsing.
pub const TOKEN_MAX_BYTES: usize = 8 * 1024;
/// Longest `sub` (and customer id) accepted: the id keys rate limits and idempotency records.
pub const ID_MAX_CHARS: usize = 256;

/// `[api.auth.jwt]`: where the keys are and what a token must say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// The JWKS file (`{"keys": [...]}`), every key with `kid` and `alg`. Without it, bearer
    /// tokens other than API keys are refused.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (this API).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most 120).
    pub leeway_secs: u64,
    /// The claim holding the role: a string (`"service"`), a space-separated scope
    /// (`"orders service"`) or an array; exactly one known role must appear in it.
    pub role_claim: String,
    /// The claim holding a customer principal's customer id (required for that role).
    pub customer_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            jwks_file: None,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
            role_claim: "role".into(),
            customer_claim: "customer_id".into(),
        }
    }
}

/// Why the JWT settings or the key file are not usable (fix what is named).
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("api.auth.jwt.leeway_secs = {0} is above the cap of {LEEWAY_MAX_SECS} seconds; keep clock skew small (30 is usual)")]
    Leeway(u64),
    #[error("api.auth.jwt.{0} is empty but a jwks_file is set; tokens must be checked against a configured {0}")]
    Missing(&'static str),
    #[error("api.auth.jwt.jwks_file {path}: cannot read it: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("api.auth.jwt.jwks_file {path}: not a JWKS document ({{\"keys\": [...]}}): {reason}")]
    Parse { path: String, reason: String },
    #[error("api.auth.jwt.jwks_file {path}: key #{index}{kid}: {reason}")]
    Key {
        path: String,
        index: usize,
        kid: String,
        reason: String,
    },
}

/// One verification key with the one algorithm it is allowed to verify.
struct PinnedKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys of one JWKS file, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, PinnedKey>,
}

impl KeySet {
    /// Parse a JWKS document; `path` names it in errors. Every key needs a unique `kid` and an
    /// `alg` among RS256, ES256, EdDSA that fits its key type.
    pub fn parse(path: &str, text: &str) -> Result<KeySet, JwtConfigError> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| JwtConfigError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let mut keys = HashMap::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let fail = |reason: &str| JwtConfigError::Key {
                path: path.into(),
                index,
                kid: if kid.is_empty() {
                    String::new()
                } else {
                    format!(" (kid {kid:?})")
                },
                reason: reason.into(),
            };
            if kid.is_empty() {
                return Err(fail("no `kid`; every key needs one so tokens can name it"));
            }
            let algorithm = pinned_algorithm(jwk).map_err(|r| fail(&r))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| fail(&format!("not a usable public key: {e}")))?;
            if key.family() != algorithm.family() {
                return Err(fail("its `alg` does not fit its key type (`kty`)"));
            }
            if keys
                .insert(kid.clone(), PinnedKey { algorithm, key })
                .is_some()
            {
                return Err(fail("the same `kid` appears twice; give each key its own"));
            }
        }
        Ok(KeySet { keys })
    }

    pub fn load(path: &Path) -> Result<KeySet, JwtConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| JwtConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        KeySet::parse(&path.display().to_string(), &text)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn pinned_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RS256) => Ok(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Ok(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Ok(Algorithm::EdDSA),
        Some(other) => Err(format!(
            "`alg` {other:?} is not accepted; use RS256, ES256 or EdDSA"
        )),
        None => Err("no `alg`; every key must pin its algorithm (RS256, ES256 or EdDSA)".into()),
    }
}

/// Why a token was refused. For the debug log only (it never contains the token); the client
/// gets `401` whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no JWT keys are configured (api.auth.jwt.jwks_file)")]
    NoKeys,
    #[error("the token is longer than {TOKEN_MAX_BYTES} bytes")]
    TooLong,
    #[error("the token's header does not parse: {0}")]
    Header(String),
    #[error("the token's `typ` is {0:?}, not JWT")]
    Type(String),
    #[error("the token carries a `crit` header")]
    Critical,
    #[error("the token names no `kid`")]
    NoKid,
    #[error("no key has the token's `kid`")]
    UnknownKid,
    #[error("the token's `alg` {token:?} is not its key's pinned {key:?}")]
    Algorithm { token: Algorithm, key: Algorithm },
    #[error("the token does not verify: {0}")]
    Invalid(String),
    #[error("the token's `{0}` claim is missing or not usable")]
    Claim(String),
}

/// Verifies bearer tokens against the current key set.
pub struct Verifier {
    settings: JwtSettings,
    keys: RwLock<Arc<KeySet>>,
}

impl Verifier {
    /// A verifier for `settings`, with the keys of its `jwks_file` loaded (none without one).
    pub fn new(settings: JwtSettings) -> Result<Verifier, JwtConfigError> {
        if settings.leeway_secs > LEEWAY_MAX_SECS {
            return Err(JwtConfigError::Leeway(settings.leeway_secs));
        }
        let keys = match &settings.jwks_file {
            Some(path) => {
                if settings.issuer.trim().is_empty() {
                    return Err(JwtConfigError::Missing("issuer"));
                }
                if settings.audience.trim().is_empty() {
                    return Err(JwtConfigError::Missing("audience"));
                }
                KeySet::load(path)?
            }
            None => KeySet::default(),
        };
        Ok(Verifier {
            settings,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Read the JWKS file again and put its keys in force; on an error the old keys stay.
    /// Returns how many keys are now in force.
    pub fn reload(&self) -> Result<usize, JwtConfigError> {
        let Some(path) = &self.settings.jwks_file else {
            return Ok(0);
        };
        let keys = KeySet::load(path)?;
        let count = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
        Ok(count)
    }

    /// Whether any key is configured (if not, every JWT is refused).
    pub fn has_keys(&self) -> bool {
        !self.current().is_empty()
    }

    fn current(&self) -> Arc<KeySet> {
        // A panic while holding the lock cannot leave a half-written set: the write replaces
        // one Arc, so a poisoned lock still holds a whole key set.
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The principal `token` proves, or why it does not.
    pub fn verify(&self, token: &str) -> Result<Principal, Rejected> {
        if token.len() > TOKEN_MAX_BYTES {
            return Err(Rejected::TooLong);
        }
        let keys = self.current();
        if keys.is_empty() {
            return Err(Rejected::NoKeys);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Rejected::Header(e.to_string()))?;
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            if !matches!(
                typ.as_str(),
                "jwt" | "at+jwt" | "application/jwt" | "application/at+jwt"
            ) {
                return Err(Rejected::Type(typ));
            }
        }
        if header.crit.is_some() {
            return Err(Rejected::Critical);
        }
        let kid = header.kid.as_deref().ok_or(Rejected::NoKid)?;
        let pinned = keys.keys.get(kid).ok_or(Rejected::UnknownKid)?;
        if header.alg != pinned.algorithm {
            return Err(Rejected::Algorithm {
                token: header.alg,
                key: pinned.algorithm,
            });
        }
        let mut validation = Validation::new(pinned.algorithm);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = self.settings.leeway_secs;
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&[self.settings.audience.as_str()]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &pinned.key,
            &validation,
        )
        .map_err(|e| Rejected::Invalid(e.to_string()))?;
        self.principal(&data.claims)
    }

    fn principal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, Rejected> {
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| usable_id(s))
            .ok_or_else(|| Rejected::Claim("sub".into()))?;
        let role_claim = &self.settings.role_claim;
        let names: Vec<&str> = match claims.get(role_claim) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().collect(),
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str()).collect()
            }
            _ => Vec::new(),
        };
        let mut roles: Vec<Role> = names.into_iter().filter_map(Role::parse).collect();
        roles.sort();
        roles.dedup();
        // Exactly one role: a token that claims two is ambiguous, and picking the stronger
        // would widen what its issuer meant.
        let [role] = roles[..] else {
            return Err(Rejected::Claim(role_claim.clone()));
        };
        let customer_id = if role == Role::Customer {
            let claim = &self.settings.customer_claim;
            let id = claims
                .get(claim)
                .and_then(|v| v.as_str())
                .filter(|s| usable_id(s))
                .ok_or_else(|| Rejected::Claim(claim.clone()))?;
            Some(id.to_string())
        } else {
            None
        };
        Ok(Principal {
            id: sub.to_string(),
            role,
            customer_id,
        })
    }
}

fn usable_id(s: &str) -> bool {
    !s.trim().is_empty() && s.chars().count() <= ID_MAX_CHARS && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;

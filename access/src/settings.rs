//! `[api.auth]`: how callers prove who they are — the JWT key file and what tokens must say,
//! and the API key pepper (a file, or `OFK_PEPPER`). Secrets are only ever
//! named here (a path, a variable), never held in these settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::jwt::JwtSettings;
use crate::secret::{Secret, SecretError};

/// The environment variable read for the API key pepper when no file is configured. Not an
/// `ORDERFLOW_*` name: those are settings keys, and a secret is not a setting (nor printed with
/// them).
pub const PEPPER_ENV: &str = "OFK_PEPPER";

/// The `[api.auth]` section (`ORDERFLOW_API__AUTH__*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The JWKS file of the keys that sign bearer tokens (each key with `kid` and `alg`).
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Clock skew allowed on `exp`/`nbf`, seconds (at most 120).
    pub leeway_secs: u64,
    /// The claim that names the role (`role`, or `scope` for a space-separated list).
    pub role_claim: String,
    /// The claim that names a customer principal's customer.
    pub customer_claim: String,
    /// A file holding the API key pepper (at least 32 bytes); without it the environment
    /// variable `OFK_PEPPER`; without both, API keys are not accepted.
    pub api_key_pepper_file: Option<PathBuf>,
    /// How often the JWKS and flags files are checked for changes, in milliseconds (SIGHUP
    /// reloads at once).
    pub reload_check_ms: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let jwt = JwtSettings::default();
        AuthSettings {
            jwks_file: None,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: jwt.leeway_secs,
            role_claim: jwt.role_claim,
            customer_claim: jwt.customer_claim,
            api_key_pepper_file: None,
            reload_check_ms: 2_000,
        }
    }
}

impl AuthSettings {
    pub fn jwt(&self) -> JwtSettings {
        JwtSettings {
            jwks_file: self.jwks_file.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_secs: self.leeway_secs,
            role_claim: self.role_claim.clone(),
            customer_claim: self.customer_claim.clone(),
        }
    }

    /// The API key pepper, `None` when neither the file nor the variable is set.
    pub fn pepper(&self) -> Result<Option<Secret>, SecretError> {
        if self.api_key_pepper_file.is_none() && std::env::var_os(PEPPER_ENV).is_none() {
            return Ok(None);
        }
        Secret::load(
            "api.auth.api_key_pepper_file",
            self.api_key_pepper_file.as_deref(),
            PEPPER_ENV,
            crate::api_keys::PEPPER_MIN_BYTES,
        )
        .map(Some)
    }

    /// Whether any way to authenticate is configured.
    pub fn configured(&self) -> bool {
        self.jwks_file.is_some()
            || self.api_key_pepper_file.is_some()
            || std::env::var_os(PEPPER_ENV).is_some()
    }
}

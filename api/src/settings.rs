//! The `[api]` section: where the HTTP API listens, its limits and timeouts, and the dev-only
//! principal that stands in until authentication lands.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::Role;

/// Where the API listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The `[api]` section (`ORDERFLOW_API__*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// `HOST:PORT` of the API (an IP address; port 0 picks a free port, logged at start).
    pub listen: String,
    /// DEVELOPMENT ONLY: every request is served as this role (`customer`, `service`,
    /// `operator`, `analyst`) without any authentication. `serve` refuses to start while it is
    /// unset, because no authenticator exists yet; setting it is logged as a warning at start.
    pub insecure_dev_principal: Option<String>,
    /// Largest request body accepted, in bytes (larger: `413`).
    pub body_max_bytes: usize,
    /// Most lines an order may have through the API (more: `422`).
    pub order_lines_max: usize,
    /// Time a request may take before it is answered `503` (the `Prefer: wait` of a read is
    /// capped below it).
    pub request_timeout_ms: u64,
    /// Longest `Prefer: wait=N` honoured, in seconds.
    pub wait_max_secs: u64,
    /// How often a `Prefer: wait` looks at its order even without a change announced by the
    /// projector (a fallback for announcements lost while the server re-connects), in ms.
    pub wait_poll_ms: u64,
    /// Most requests waiting (`Prefer: wait`) at once; past it a request is answered at once,
    /// without `Preference-Applied`.
    pub wait_waiters_max: usize,
    /// Largest page of `GET /v1/orders` (`limit` above it: `400`).
    pub page_size_max: u32,
    /// How often the API's outbox rows that are not yet on the log are published again
    /// (after a failed publish, e.g. while the broker is down).
    pub relay_interval_ms: u64,
    /// How callers authenticate (`[api.auth]`): the JWKS file and the claims tokens must
    /// carry, the API key pepper.
    pub auth: access::AuthSettings,
    /// The live flags file (TOML: `accept_orders`, `retry_after_secs`, `[rate_limits.<role>]`),
    /// reloaded on SIGHUP and when it changes; the defaults without one.
    pub flags_file: Option<std::path::PathBuf>,
    /// Unpublished outbox rows above which new orders are answered `503` with `Retry-After`
    /// instead of queueing without limit.
    pub outbox_backlog_max: u64,
    /// TLS termination and client-certificate authentication (`[api.tls]`); plain HTTP
    /// without it.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: DEFAULT_LISTEN.into(),
            insecure_dev_principal: None,
            body_max_bytes: 64 * 1024,
            order_lines_max: 100,
            request_timeout_ms: 15_000,
            wait_max_secs: 10,
            wait_poll_ms: 1_000,
            wait_waiters_max: 1_000,
            page_size_max: 200,
            relay_interval_ms: 1_000,
            auth: access::AuthSettings::default(),
            flags_file: None,
            outbox_backlog_max: 100_000,
            tls: None,
        }
    }
}

/// Why the API did not start (a configuration mistake: fix the setting named).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "api.listen = {0:?} is not an IP address with a port: give HOST:PORT (for example \
         127.0.0.1:8080, or port 0 for a free one) in the [api] section or ORDERFLOW_API__LISTEN"
    )]
    Listen(String),
    #[error(
        "the HTTP API has no way to authenticate callers: refusing to serve. Set \
         api.auth.jwks_file (with api.auth.issuer and api.auth.audience) for JWT bearer tokens, \
         and/or api.auth.api_key_pepper_file (or OFK_PEPPER) for API keys, and/or [api.tls] with \
         client_certs and [[api.tls.clients]] for client certificates. For \
         local development only, api.insecure_dev_principal = \"service\" (or customer, \
         operator, analyst) serves every request as that role, unauthenticated"
    )]
    NoAuthentication,
    #[error(
        "api.insecure_dev_principal is set together with real authentication (api.auth or [[api.tls.clients]]): \
         remove api.insecure_dev_principal; it would bypass the configured authentication"
    )]
    DevWithAuthentication,
    #[error(
        "api.insecure_dev_principal = {0:?} is not a role: use customer, service, operator or \
         analyst"
    )]
    DevRole(String),
    #[error("api.{0} must be greater than 0")]
    Zero(&'static str),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl ApiSettings {
    /// The address to listen on.
    pub fn address(&self) -> Result<SocketAddr, SettingsError> {
        self.listen
            .trim()
            .parse()
            .map_err(|_| SettingsError::Listen(self.listen.clone()))
    }

    /// The role of the dev-only principal, `None` when it is unset (real authentication).
    /// Strictly opt-in: it is an error together with `[api.auth]`, and with neither the API
    /// does not start.
    pub fn dev_role(&self) -> Result<Option<Role>, SettingsError> {
        let authenticates = self.auth.configured()
            || self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.authenticates_clients());
        let Some(name) = self.insecure_dev_principal.as_deref() else {
            if !authenticates {
                return Err(SettingsError::NoAuthentication);
            }
            return Ok(None);
        };
        if authenticates {
            return Err(SettingsError::DevWithAuthentication);
        }
        Role::parse(name.trim())
            .map(Some)
            .ok_or_else(|| SettingsError::DevRole(name.to_string()))
    }

    /// Every setting that must be positive is.
    pub fn check(&self) -> Result<(), SettingsError> {
        for (name, value) in [
            ("body_max_bytes", self.body_max_bytes as u64),
            ("order_lines_max", self.order_lines_max as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("page_size_max", u64::from(self.page_size_max)),
            ("wait_poll_ms", self.wait_poll_ms),
            ("wait_waiters_max", self.wait_waiters_max as u64),
            ("relay_interval_ms", self.relay_interval_ms),
            ("auth.reload_check_ms", self.auth.reload_check_ms),
        ] {
            if value == 0 {
                return Err(SettingsError::Zero(name));
            }
        }
        self.address()?;
        if let Some(tls) = &self.tls {
            tls.check()?;
        }
        self.dev_role()?;
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The longest wait honoured: `wait_max_secs`, kept a second below the request timeout.
    pub fn wait_max(&self) -> Duration {
        Duration::from_secs(self.wait_max_secs).min(
            self.request_timeout()
                .saturating_sub(Duration::from_secs(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_dev_principal_means_no_server() {
        let settings = ApiSettings::default();
        assert!(matches!(
            settings.check(),
            Err(SettingsError::NoAuthentication)
        ));
        let mut settings = ApiSettings {
            insecure_dev_principal: Some("root".into()),
            ..ApiSettings::default()
        };
        assert!(matches!(settings.check(), Err(SettingsError::DevRole(_))));
        settings.insecure_dev_principal = Some("service".into());
        settings.check().expect("a role is enough");
        settings.auth.jwks_file = Some("jwks.json".into());
        assert!(matches!(
            settings.check(),
            Err(SettingsError::DevWithAuthentication)
        ));
        settings.insecure_dev_principal = None;
        settings.check().expect("a JWKS file is authentication");
        settings.listen = "localhost".into();
        assert!(matches!(settings.check(), Err(SettingsError::Listen(_))));
    }

    #[test]
    fn the_wait_stays_below_the_request_timeout() {
        let mut settings = ApiSettings {
            request_timeout_ms: 5_000,
            ..ApiSettings::default()
        };
        assert_eq!(settings.wait_max(), Duration::from_secs(4));
        settings.request_timeout_ms = 60_000;
        assert_eq!(settings.wait_max(), Duration::from_secs(10));
    }
}

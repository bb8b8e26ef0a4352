//! Who is calling: the [`Principal`] every handler receives, its [`Role`], and the pluggable
//! [`Authenticator`] that turns a request's headers into one.
//!
//! The real authenticator is [`crate::security::Credentials`] (JWT bearer tokens, API keys);
//! the dev-only [`DevPrincipal`] (`api.insecure_dev_principal`, opt-in, warned about loudly)
//! serves every request as one fixed role without authentication. Handlers do not change. Every route
//! declares the roles it admits (`crate::orders::roles`); a customer sees only its own orders,
//! and another customer's order is `404`, not `403`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;

use crate::problem::ApiError;
use crate::server::AppState;

/// The roles are `access`'s, one definition for the API, the credential stores and the CLI.
pub use access::Role;

/// The caller of a request, as the authenticator established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable identity (a token's subject, an API key's id): idempotency keys are per id.
    pub id: String,
    pub role: Role,
    /// The customer a `customer` principal acts for; `None` for other roles.
    pub customer_id: Option<String>,
}

impl Principal {
    /// `Ok` when this principal's role is among `allowed`, else `403`.
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Whether this principal may see an order of `customer_id` (customers only their own).
    pub fn may_see(&self, customer_id: &str) -> bool {
        match self.role {
            Role::Customer => self.customer_id.as_deref() == Some(customer_id),
            _ => true,
        }
    }
}

/// Turns a request's headers into a principal. `Err(ApiError::Unauthenticated)` answers `401`,
/// `Err(ApiError::Unavailable)` `503` (the credential store could not be asked). Asynchronous:
/// an API key is looked up in Postgres ([`crate::security::Credentials`]).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, ApiError>> + Send + 'a>>;
}

/// DEVELOPMENT ONLY: every request is this principal, unauthenticated. A customer principal
/// acts for customer `dev-customer`.
#[derive(Debug, Clone)]
pub struct DevPrincipal(pub Principal);

impl DevPrincipal {
    pub fn new(role: Role) -> DevPrincipal {
        DevPrincipal(Principal {
            id: format!("dev-{}", role.name()),
            role,
            customer_id: (role == Role::Customer).then(|| "dev-customer".to_string()),
        })
    }
}

impl Authenticator for DevPrincipal {
    fn authenticate<'a>(
        &'a self,
        _headers: &'a HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, ApiError>> + Send + 'a>> {
        Box::pin(std::future::ready(Ok(self.0.clone())))
    }
}

/// The shared authenticator of a server.
pub type SharedAuthenticator = Arc<dyn Authenticator>;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The guard middleware authenticated the request already (once per request).
        if let Some(done) = parts.extensions.get::<crate::security::Authenticated>() {
            return done.clone().into_result();
        }
        state.authenticator.authenticate(&parts.headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_admit_and_customers_see_only_their_own() {
        let customer = DevPrincipal::new(Role::Customer).0;
        assert!(customer.require(&[Role::Customer, Role::Service]).is_ok());
        assert!(matches!(
            customer.require(&[Role::Service]),
            Err(ApiError::Forbidden)
        ));
        assert!(customer.may_see("dev-customer"));
        assert!(!customer.may_see("c-other"));
        let analyst = DevPrincipal::new(Role::Analyst).0;
        assert!(analyst.may_see("c-other"));
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
        }
        assert_eq!(Role::parse("Service"), None);
    }
}

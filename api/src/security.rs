//! The API's security layer on top of [`access`]: the credential [`Authenticator`] (JWT bearer
//! tokens and API keys) and the [`guard`] middleware every request passes through —
//! authentication once per request, the token bucket of its principal (of its client address
//! when it has none), the `RateLimit-*` headers on every answer, `429` with `Retry-After`, the
//! `WWW-Authenticate` challenge on `401`, and `503` with `Retry-After` for new orders while
//! the flags say maintenance or the outbox backlog passes `api.outbox_backlog_max`. A request
//! without credentials in its headers, on a TLS connection with a verified client certificate,
//! is that certificate's principal (`crate::tls`).
//!
//! Nothing here logs a credential: a refused token or key is logged at debug with the reason
//! only. The client learns nothing about why (`401`, no detail).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use access::api_keys::{self, ApiKeys};
use access::flags::LiveFlags;
use access::jwt::Verifier;
use access::ratelimit::{Class, Limiter};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Principal};
use crate::problem::{ApiError, Problem, PROBLEM_JSON};
use crate::server::AppState;
use crate::tls::ClientCertificate;

/// The header an API key may come in (besides `Authorization: Bearer`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// Authenticates with JWT bearer tokens (against the JWKS keys) and API keys (`ofk_…`, in
/// `Authorization: Bearer` or `X-Api-Key`).
pub struct Credentials {
    pub jwt: Arc<Verifier>,
    pub keys: Option<ApiKeys>,
}

fn to_api_principal(p: access::Principal) -> Principal {
    Principal {
        id: p.id,
        role: p.role,
        customer_id: p.customer_id,
    }
}

/// The credential a request presents, if any: `Authorization: Bearer X` or `X-Api-Key: X`
/// (both at once must agree).
fn presented(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let bearer = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| "the Authorization header is not ASCII")?;
            let (scheme, token) = v
                .trim()
                .split_once(' ')
                .ok_or("the Authorization header has no scheme")?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err("the Authorization scheme is not Bearer");
            }
            Some(token.trim().to_string())
        }
    };
    let key = match headers.get(API_KEY_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "the X-Api-Key header is not ASCII")?
                .trim()
                .to_string(),
        ),
    };
    match (bearer, key) {
        (Some(a), Some(b)) if a != b => Err("Authorization and X-Api-Key differ"),
        (a, b) => Ok(a.or(b)),
    }
}

impl Authenticator for Credentials {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let refuse = |reason: &dyn std::fmt::Display| {
                tracing::debug!(reason = %reason, "credentials refused");
                ApiError::Unauthenticated
            };
            let token = match presented(headers) {
                Ok(Some(token)) => token,
                Ok(None) => return Err(refuse(&"no credentials")),
                Err(reason) => return Err(refuse(&reason)),
            };
            if token.starts_with(api_keys::PREFIX) {
                let Some(keys) = &self.keys else {
                    return Err(refuse(&"an API key, but no pepper is configured"));
                };
                return match keys.authenticate(&token).await {
                    Ok(Ok(p)) => Ok(to_api_principal(p)),
                    Ok(Err(reason)) => Err(refuse(&reason)),
                    Err(e) => {
                        tracing::warn!(error = %e, "API key lookup failed");
                        Err(ApiError::Unavailable(
                            "the database is unreachable; retry later".into(),
                        ))
                    }
                };
            }
            self.jwt
                .verify(&token)
                .map(to_api_principal)
                .map_err(|reason| refuse(&reason))
        })
    }
}

/// What the guard found out about a request's caller, for the [`Principal`] extractor.
#[derive(Debug, Clone)]
pub enum Authenticated {
    Yes(Principal),
    Refused,
    Unavailable(String),
}

impl Authenticated {
    pub fn into_result(self) -> Result<Principal, ApiError> {
        match self {
            Authenticated::Yes(p) => Ok(p),
            Authenticated::Refused => Err(ApiError::Unauthenticated),
            Authenticated::Unavailable(d) => Err(ApiError::Unavailable(d)),
        }
    }
}

/// The guard's shared state: flags, buckets and the outbox backlog last counted.
pub struct Guard {
    pub flags: Arc<LiveFlags>,
    pub limiter: Arc<Limiter>,
    /// Unpublished outbox rows at the last count (every second).
    pub backlog: AtomicU64,
    pub backlog_max: u64,
}

impl Guard {
    pub fn new(flags: Arc<LiveFlags>, backlog_max: u64) -> Guard {
        let limiter = Arc::new(Limiter::new(&flags.get().rate_limits));
        Guard {
            flags,
            limiter,
            backlog: AtomicU64::new(0),
            backlog_max,
        }
    }

    /// Re-read the flags file and put its limits in force (the watcher calls this).
    pub fn reload_flags(&self) {
        match self.flags.reload() {
            Ok(flags) => {
                self.limiter.set_limits(&flags.rate_limits);
                tracing::info!(accept_orders = flags.accept_orders, "API flags reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "API flags not reloaded; the flags in force stay")
            }
        }
    }

    /// Until `shutdown`: count the outbox backlog every second, forget idle buckets every
    /// minute.
    pub fn spawn_housekeeping(self: &Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let guard = self.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                tick += 1;
                if tick % 60 == 0 {
                    guard.limiter.retain_recent();
                }
                let counted = async {
                    let mut conn = pool.acquire().await?;
                    platform::outbox::unpublished(&mut conn).await
                }
                .await;
                match counted {
                    Ok(rows) => {
                        let total: u64 = rows.iter().map(|r| r.rows.max(0) as u64).sum();
                        guard.backlog.store(total, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "counting the outbox backlog failed"),
                }
            }
        });
    }
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = Problem {
        kind: format!("urn:orderflow:problem:{kind}"),
        title: title.into(),
        status: status.as_u16(),
        detail: Some(detail.into()),
        request_id: crate::request_id::current(),
        errors: Vec::new(),
    };
    let mut response = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Authenticate, rate-limit, shed new orders when told to, and label the answer.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let guard = state.guard.clone();
    let presented_credentials = request.headers().contains_key(header::AUTHORIZATION)
        || request.headers().contains_key(API_KEY_HEADER);
    // Credentials in the headers decide when there are any (a gateway holding a client
    // certificate forwards its callers' tokens); the connection's verified client certificate
    // only when there are none (crate::tls).
    let certificate = if presented_credentials {
        None
    } else {
        request.extensions().get::<ClientCertificate>().cloned()
    };
    let authenticated = match certificate {
        Some(ClientCertificate::Mapped(p)) => Authenticated::Yes(p),
        Some(ClientCertificate::Unmapped { subject }) => {
            tracing::debug!(
                subject = %subject,
                "client certificate refused: its subject is not in [[api.tls.clients]]"
            );
            Authenticated::Refused
        }
        None => match state.authenticator.authenticate(request.headers()).await {
            Ok(p) => Authenticated::Yes(p),
            Err(ApiError::Unavailable(d)) => Authenticated::Unavailable(d),
            Err(_) => Authenticated::Refused,
        },
    };
    let (class, key) = match &authenticated {
        Authenticated::Yes(p) => (Class::Role(p.role), p.id.clone()),
        _ => {
            let address = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_else(|| "unknown".into());
            (Class::Unauthenticated, address)
        }
    };
    let decision = guard.limiter.check(class, &key);
    let flags = guard.flags.get();
    let is_new_order = request.method() == Method::POST && request.uri().path() == "/v1/orders";
    let mut response = if let Some(retry) = decision.retry_after_secs {
        let mut r = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            "this caller's request budget is spent; retry after the Retry-After seconds",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
        r
    } else if is_new_order && matches!(authenticated, Authenticated::Yes(_)) && !flags.accept_orders
    {
        let mut r =
            ApiError::Unavailable("new orders are paused for maintenance; retry later".into())
                .into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(flags.retry_after_secs),
        );
        r
    } else if is_new_order
        && matches!(authenticated, Authenticated::Yes(_))
        && guard.backlog.load(Ordering::Relaxed) > guard.backlog_max
    {
        let mut r = ApiError::Unavailable(
            "the pipeline is behind on publishing accepted orders; retry later".into(),
        )
        .into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(flags.retry_after_secs),
        );
        r
    } else {
        request.extensions_mut().insert(authenticated);
        next.run(request).await
    };
    let unauthorized = response.status() == StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    for (name, value) in decision.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    if unauthorized {
        let challenge = if presented_credentials {
            "Bearer realm=\"orderflow\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"orderflow\""
        };
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), Ok(None));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented(&h), Ok(Some("abc".into())));
        h.insert(API_KEY_HEADER, HeaderValue::from_static("abc"));
        assert_eq!(presented(&h), Ok(Some("abc".into())));
        h.insert(API_KEY_HEADER, HeaderValue::from_static("xyz"));
        assert!(presented(&h).is_err());
        h.remove(API_KEY_HEADER);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(presented(&h).is_err());
    }
}

//! The HTTP server: the router (routes, docs page, fallbacks), the hygiene every request goes
//! through (request id, header limit, timeout, access log, metrics, panics as `500`), graceful
//! shutdown, and the relay that publishes the API's outbox rows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use platform::config::KafkaSettings;
use platform::kafka::Producer;
use platform::outbox::OutboxRow;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{DevPrincipal, SharedAuthenticator};
use crate::operations::SharedOperations;
use crate::problem::ApiError;
use crate::settings::ApiSettings;
use crate::{operator, orders, request_id, store};

/// Total size of a request's header names and values accepted (more: `431`).
pub const HEADERS_MAX_BYTES: usize = 16 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<ApiSettings>,
    /// The order log the commands go to.
    pub topic: Arc<str>,
    pub authenticator: SharedAuthenticator,
    /// Rate limits, flags and the outbox backlog ([`crate::security::guard`]).
    pub guard: Arc<crate::security::Guard>,
    /// Publishes a request's outbox rows right after its commit (the relay catches up on
    /// whatever this misses).
    pub producer: Option<Arc<Producer>>,
    /// The requests waiting for an order to change (`Prefer: wait`).
    pub waits: Arc<crate::waiting::OrderWaits>,
    /// How long [`AppState::publish_soon`] holds its rows against other publishers: the
    /// producer's delivery timeout and a margin.
    pub outbox_lease: Duration,
    /// What the operator endpoints need from the binary (redrive).
    pub operations: crate::operations::SharedOperations,
    /// The data keys that seal a new order's personal fields before it enters the outbox;
    /// `None` writes them in clear (`privacy.seal = false`, or a server started without keys).
    pub sealing: Option<privacy::KeyRing>,
    pub shutdown: CancellationToken,
}

impl AppState {
    /// Publish `rows` in the background; a failure leaves them for the relay.
    pub fn publish_soon(&self, rows: Vec<OutboxRow>) {
        let (Some(producer), false) = (self.producer.clone(), rows.is_empty()) else {
            return;
        };
        let pool = self.pool.clone();
        let lease = self.outbox_lease;
        tokio::spawn(async move {
            // Leased: another server's relay never sends these rows while this one does.
            if let Err(e) = platform::outbox::publish_claimed(&pool, &producer, &rows, lease).await
            {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "publishing accepted commands failed; the relay retries"
                );
            }
        });
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow API",
        description = "The HTTP front door of orderflow: submit orders, follow them, cancel them. \
                       Every error is application/problem+json (RFC 9457) with a stable `type`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "orders", description = "Orders: submit, read, list, timeline, cancel"),
        (name = "operations", description = "Operators: stock, customer blocks, dead letters and redrive, parked orders"),
    ),
)]
struct ApiDoc;

/// The routes and the OpenAPI document generated from them.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(orders::create, orders::list))
        .routes(routes!(orders::get_one))
        .routes(routes!(orders::events))
        .routes(routes!(orders::cancel))
        .routes(routes!(operator::stock::list, operator::stock::set))
        .routes(routes!(operator::stock::get_one))
        .routes(routes!(
            operator::customers::get_block,
            operator::customers::put_block,
            operator::customers::delete_block
        ))
        .routes(routes!(operator::customers::post_forget))
        .routes(routes!(operator::deadletters::list))
        .routes(routes!(operator::deadletters::get_one))
        .routes(routes!(operator::deadletters::redrive))
        .routes(routes!(operator::parked::list))
        .split_for_parts();
    utoipa::Modify::modify(&crate::spec::Completion, &mut spec);
    (router, spec)
}

/// The OpenAPI 3.1 document of the API, as served at `/openapi.json` (and committed as
/// `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The whole application for `state`: routes, `/openapi.json`, the docs page at `/docs`,
/// problem+json fallbacks, and the hygiene layers.
pub fn app(state: AppState) -> Router {
    let (router, spec) = routes();
    let timeout = state.settings.request_timeout();
    let guard_state = state.clone();
    router
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(|| async { ApiError::NotFound("no such resource; see /openapi.json".into()) })
        .layer(axum::middleware::from_fn_with_state(
            guard_state,
            crate::security::guard,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(timeout, hygiene))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::HeaderName::from_static("x-api-key"),
        ]))
}

/// Request id, header limit, timeout, access log and metrics around every request.
async fn hygiene(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id::accept_or_generate(
        request
            .headers()
            .get(request_id::HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    // The template the request matched, never its raw path (bounded label values).
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let mut response = request_id::scope(id.clone(), async move {
        if header_bytes > HEADERS_MAX_BYTES {
            return ApiError::HeadersTooLarge.into_response();
        }
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::Unavailable(format!(
                "the request took longer than {} ms; retry",
                timeout.as_millis()
            ))
            .into_response(),
        }
    })
    .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!(platform::metrics::names::HTTP_REQUESTS,
        "route" => route.clone(), "method" => method, "status" => status.to_string())
    .increment(1);
    metrics::histogram!(platform::metrics::names::HTTP_REQUEST_DURATION,
        "route" => route.clone(), "method" => method)
    .record(elapsed.as_secs_f64());
    // No header is logged: credentials never reach the log.
    tracing::info!(
        target: "orderflow::access",
        request_id = %id,
        method,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A running API: its address, and the tasks to wait for.
pub struct Api {
    pub address: SocketAddr,
    server: JoinHandle<anyhow::Result<()>>,
    relay: JoinHandle<()>,
}

impl Api {
    /// Wait until the server stopped (after the shutdown token is cancelled and in-flight
    /// requests are answered) and the relay with it.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.server.await.context("the API server task panicked")?;
        self.relay.await.context("the API relay task panicked")?;
        served
    }
}

/// [`start_with`] without the steps: the operator endpoints answer everything but a redrive,
/// which is `503` ([`crate::operations::NoSteps`]).
pub async fn start(
    settings: &ApiSettings,
    kafka: &KafkaSettings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<Api> {
    let operations: SharedOperations = Arc::new(crate::operations::NoSteps);
    start_with(settings, kafka, pool, operations, shutdown).await
}

/// Start the API: check `settings` (no authentication configured is an error), bind, serve
/// until `shutdown` is cancelled (then stop accepting and drain in-flight requests), and relay
/// the API's outbox rows to `kafka` every `api.relay_interval_ms`. `operations` is how the
/// operator endpoints reach the steps. Returns once listening.
pub async fn start_with(
    settings: &ApiSettings,
    kafka: &KafkaSettings,
    pool: PgPool,
    operations: SharedOperations,
    shutdown: CancellationToken,
) -> anyhow::Result<Api> {
    start_sealing(settings, kafka, pool, operations, None, shutdown).await
}

/// [`start_with`], sealing the personal fields of every accepted order with `sealing`'s
/// data keys (`orderflow serve` passes the key ring of `[privacy]` unless `privacy.seal` is
/// off).
pub async fn start_sealing(
    settings: &ApiSettings,
    kafka: &KafkaSettings,
    pool: PgPool,
    operations: SharedOperations,
    sealing: Option<privacy::KeyRing>,
    shutdown: CancellationToken,
) -> anyhow::Result<Api> {
    settings.check()?;
    // The certificate files are read before anything else starts: a bad file stops the start.
    let tls = settings.tls.as_ref().map(|t| t.load()).transpose()?;
    let mut watched = Vec::new();
    let authenticator: SharedAuthenticator = match settings.dev_role()? {
        Some(role) => {
            tracing::warn!(
                role = role.name(),
                "UNAUTHENTICATED: api.insecure_dev_principal is set; every request is served as \
                 this role without authentication. For development only; never in production"
            );
            Arc::new(DevPrincipal::new(role))
        }
        None => {
            let jwt = Arc::new(access::jwt::Verifier::new(settings.auth.jwt())?);
            let keys = settings
                .auth
                .pepper()?
                .map(|pepper| access::api_keys::ApiKeys::new(pool.clone(), pepper));
            tracing::info!(
                jwt_keys = jwt.has_keys(),
                api_keys = keys.is_some(),
                "HTTP API authentication configured"
            );
            if let Some(path) = settings.auth.jwks_file.clone() {
                let verifier = jwt.clone();
                watched.push(access::flags::Watched {
                    path,
                    reload: Box::new(move || match verifier.reload() {
                        Ok(n) => tracing::info!(keys = n, "JWT keys reloaded"),
                        Err(e) => tracing::error!(error = %e, "JWT keys not reloaded; the keys in force stay"),
                    }),
                });
            }
            Arc::new(crate::security::Credentials { jwt, keys })
        }
    };
    let flags = Arc::new(access::flags::LiveFlags::new(settings.flags_file.clone())?);
    let guard = Arc::new(crate::security::Guard::new(
        flags,
        settings.outbox_backlog_max,
    ));
    if let Some(path) = settings.flags_file.clone() {
        let g = guard.clone();
        watched.push(access::flags::Watched {
            path,
            reload: Box::new(move || g.reload_flags()),
        });
    }
    access::flags::watch(
        watched,
        Duration::from_millis(settings.auth.reload_check_ms),
        shutdown.clone(),
    );
    guard.spawn_housekeeping(pool.clone(), shutdown.clone());
    let address = settings.address()?;
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| {
        format!("api.listen = {address}: cannot listen there (in use? set another address, or port 0, in [api] or ORDERFLOW_API__LISTEN)")
    })?;
    let address = listener
        .local_addr()
        .context("reading the API's bound address")?;
    let producer = Arc::new(platform::kafka::producer(kafka, "orderflow-api")?);
    let waits = crate::waiting::OrderWaits::new(settings.wait_waiters_max);
    waits.spawn_listener(pool.clone(), shutdown.clone());
    let state = AppState {
        waits,
        outbox_lease: Duration::from_millis(u64::from(kafka.delivery_timeout_ms))
            + Duration::from_secs(10),
        pool: pool.clone(),
        settings: Arc::new(settings.clone()),
        topic: Arc::from(kafka.topic.as_str()),
        authenticator,
        guard,
        producer: Some(producer.clone()),
        operations,
        sealing,
        shutdown: shutdown.clone(),
    };
    let app = app(state);
    let token = shutdown.clone();
    let server = match tls {
        None => {
            tracing::info!(%address, "HTTP API listening (plain HTTP)");
            tokio::spawn(async move {
                // The client address keys the rate limit of unauthenticated requests.
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .context("serving the HTTP API")
            })
        }
        Some(tls) => {
            tracing::info!(%address, client_certs = ?tls.mode(), "HTTP API listening (TLS)");
            tokio::spawn(crate::tls::serve(listener, app, tls, token))
        }
    };
    let every = Duration::from_millis(settings.relay_interval_ms);
    let relay = tokio::spawn(relay(pool, producer, every, shutdown));
    Ok(Api {
        address,
        server,
        relay,
    })
}

/// Publish the API's outbox rows that the request that wrote them did not (the broker was
/// down, the process stopped), every `every`, until `shutdown`.
async fn relay(
    pool: PgPool,
    producer: Arc<Producer>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let relayed = tokio::select! {
            () = shutdown.cancelled() => return,
            r = platform::outbox::relay(&pool, &producer, store::OUTBOX_STEP, every) => r,
        };
        if let Err(e) = relayed {
            tracing::warn!(
                error = format!("{e:#}"),
                "relaying the API's outbox rows failed; retrying"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is the code's spec. Regenerate it with
    /// `UPDATE_OPENAPI=1 cargo test -p api committed_spec`.
    #[test]
    fn the_committed_spec_is_the_code_s() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated =
            serde_json::to_string_pretty(&openapi()).expect("the spec serializes") + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("writing docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the spec the code generates: regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p api committed_spec` and commit it"
        );
    }

    #[test]
    fn the_spec_is_openapi_3_1_and_documents_every_answer() {
        let spec = serde_json::to_value(openapi()).expect("the spec serializes");
        assert!(
            spec["openapi"].as_str().unwrap_or("").starts_with("3.1"),
            "{}",
            spec["openapi"]
        );
        let paths = spec["paths"].as_object().expect("paths");
        for route in [
            "/v1/orders",
            "/v1/orders/{order_id}",
            "/v1/orders/{order_id}/events",
            "/v1/orders/{order_id}/cancellation",
            "/v1/stock",
            "/v1/stock/{sku}",
            "/v1/customers/{customer_id}/block",
            "/v1/customers/{customer_id}/forget",
            "/v1/dead-letters",
            "/v1/dead-letters/{id}",
            "/v1/dead-letters/redrive",
            "/v1/parked",
        ] {
            assert!(paths.contains_key(route), "{route} missing");
        }
        for (route, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                let answers = operation["responses"].as_object().expect("responses");
                for status in ["400", "401", "403", "431", "500", "503"] {
                    assert!(
                        answers.contains_key(status),
                        "{method} {route} does not document {status}"
                    );
                }
            }
        }
        let create = &spec["paths"]["/v1/orders"]["post"]["responses"];
        for status in ["202", "409", "413", "415", "422"] {
            assert!(
                create.get(status).is_some(),
                "POST /v1/orders does not document {status}"
            );
        }
    }
}

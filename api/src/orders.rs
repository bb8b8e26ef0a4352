//! The order endpoints under `/v1/orders`: thin handlers that check the caller's role, read
//! the request strictly ([`crate::document`]), and either write commands through the outbox
//! ([`crate::store`]) or read the read models (`projections::query`). Each declares the roles
//! it admits in [`roles`].

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::Event;
use platform::outbox::OutboxRecord;
use projections::query::{self, OrderFilter, OrderRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::document::{self, CancellationDocument, OrderDocument};
use crate::ids::{self, Cursor};
use crate::problem::{ApiError, FieldError, Problem};
use crate::request_id;
use crate::server::AppState;
use crate::store::{self, NewRecord, Outcome};

/// The roles each endpoint admits.
pub mod roles {
    use crate::auth::Role;
    pub const CREATE: &[Role] = &[Role::Service, Role::Operator];
    pub const READ: &[Role] = &[Role::Customer, Role::Service, Role::Operator, Role::Analyst];
    pub const CANCEL: &[Role] = &[Role::Customer, Role::Service, Role::Operator];
}

/// `Cache-Control` of an order: the answer is per caller (`private`) and changes as the order
/// moves, so a cache may keep it but must revalidate it every time (`no-cache`), which the
/// ETag makes cheap (`304`).
pub const CACHE_CONTROL: &str = "private, no-cache";
/// The header carrying the read model's freshness (RFC 3339).
pub const WATERMARK_HEADER: &str = "orderflow-watermark";

/// The answer to an accepted order (also given again to a repeat of it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AcceptedBody {
    pub order_id: String,
    /// Always `accepted`: the order is on its way to the log.
    pub status: String,
    pub accepted_at: DateTime<Utc>,
}

/// The answer to a cancellation request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancellationBody {
    pub order_id: String,
    /// The id of the `OrderCancellationRequested` event; the saga answers it on the log.
    pub request_id: Uuid,
    /// Always `requested`: the saga accepts or rejects it; watch the order's status.
    pub status: String,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineView {
    pub line_no: i32,
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// An order: where it is, what it holds, when each step finished.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    /// `accepted` until the read models have the order, then its status there (`created`,
    /// `reserved`, `paid`, `shipment_scheduled`, `completed`, `cancelled`, ...).
    pub status: String,
    pub currency: String,
    pub total_minor: i64,
    pub line_count: i32,
    pub units: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LineView>>,
    pub created_at: DateTime<Utc>,
    pub reserved_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub shipment_scheduled_at: Option<DateTime<Utc>>,
    pub carrier: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// Events of the order applied so far.
    pub event_count: i32,
    pub last_event_type: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// A page of orders.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One event of an order's timeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub partition: i32,
    pub offset: i64,
    /// The event's facts as the read model keeps them.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// An order's timeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Timeline {
    pub order_id: String,
    pub events: Vec<EventView>,
}

/// Query parameters of `GET /v1/orders`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this customer's orders (a customer principal sees only its own anyway).
    pub customer_id: Option<String>,
    /// Only orders in this status.
    pub status: Option<String>,
    /// Created at or after (RFC 3339).
    pub created_from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_to: Option<DateTime<Utc>>,
    /// Page size, 1 to `api.page_size_max` (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

fn order_id_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|_| ApiError::Malformed("the order id in the path is not readable".into()))?;
    if ids::is_order_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::Malformed(
            "an order id is 1-64 characters of A-Z a-z 0-9 - _ . :".into(),
        ))
    }
}

pub(crate) async fn read_body(
    request: Request,
    max: usize,
) -> Result<(HeaderMap, axum::body::Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::TooLarge(max));
    }
    // The only failures are the limit and a connection broken mid-body, whose client never
    // reads the answer: both are answered as too large.
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::TooLarge(max))?;
    Ok((parts.headers, bytes))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) if ids::is_idempotency_key(key) => Ok(Some(key.to_string())),
            _ => Err(ApiError::Malformed(
                "Idempotency-Key must be 1-255 visible ASCII characters".into(),
            )),
        },
    }
}

fn outbox_record(event: &Event, topic: &str) -> Result<OutboxRecord, ApiError> {
    store::outbox_record(event, topic).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
}

/// The accepted document as the idempotency record keeps it when personal fields are sealed:
/// those fields hold the placeholder, so the record holds nothing an erasure must find. The
/// request hash is taken before, over the whole document.
fn without_personal_fields(mut document: serde_json::Value) -> serde_json::Value {
    if let Some(address) = document
        .get_mut("shipping_address")
        .and_then(|a| a.as_object_mut())
    {
        for field in ["name", "line1", "city", "postal_code"] {
            address.insert(field.into(), privacy::personal::PLACEHOLDER.into());
        }
        address.remove("line2");
    }
    if let Some(document) = document.as_object_mut() {
        document.remove("contact");
    }
    document
}

fn location(order_id: &str) -> HeaderValue {
    // Order ids are checked to be plain ASCII, so this is a valid header value.
    HeaderValue::from_str(&format!("/v1/orders/{order_id}"))
        .unwrap_or(HeaderValue::from_static("/v1/orders"))
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Submit an order.
///
/// Written to Postgres (the idempotency record and the `OrderCreated` command in one
/// transaction) and published to the log by the relay: once answered `202`, the order is
/// never lost, even while the broker is down. The order id is the document's `order_id`, or
/// derived from the `Idempotency-Key` header and the caller. Sending the same order again
/// gives the same answer; the same id with a different document is `409`.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    request_body(content = OrderDocument, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Required when the document has no order_id: the order id is derived from it and the caller.")),
    responses(
        (status = 202, description = "Accepted: on its way to the log", body = AcceptedBody,
         headers(("Location" = String, description = "/v1/orders/{order_id}"))),
        (status = 400, description = "Malformed JSON, bad UTF-8 or a bad Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller's role may not create orders", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This order id was accepted before with a different document", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than api.body_max_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown fields, wrong shape or a broken domain rule; see errors", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable or the request timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(roles::CREATE)?;
    let (headers, body) = read_body(request, state.settings.body_max_bytes).await?;
    let doc: OrderDocument = document::parse(&headers, &body)?;
    let key = idempotency_key(&headers)?;
    let order_id = match (&doc.order_id, &key) {
        (Some(id), _) if ids::is_order_id(id) => id.clone(),
        (Some(_), _) => {
            return Err(ApiError::Invalid(vec![FieldError {
                pointer: "/order_id".into(),
                reason: "an order id is 1-64 characters of A-Z a-z 0-9 - _ . :".into(),
            }]))
        }
        (None, Some(key)) => ids::order_id_from_key(&principal.id, key),
        (None, None) => {
            return Err(ApiError::Invalid(vec![FieldError {
                pointer: "/order_id".into(),
                reason: "give an order_id, or send an Idempotency-Key header to derive it from"
                    .into(),
            }]))
        }
    };
    let input = doc.into_input(order_id.clone(), state.settings.order_lines_max)?;
    // The document as accepted, in one canonical form: whitespace and key order do not make a
    // repeat "different", the request id (not part of the document) does not either.
    let canonical = serde_json::to_value(&input).map_err(|e| ApiError::Internal(e.into()))?;
    let hash = ids::document_hash(canonical.to_string().as_bytes());
    let client_correlation = input.correlation_id.is_some();
    let now = Utc::now();
    let mut event = input.clone().into_event(now).map_err(document::domain)?;
    if !client_correlation {
        if let Some(rid) = request_id::current() {
            event.meta.correlation_id = request_id::correlation_id(&rid);
        }
    }
    let stored = match state.sealing {
        Some(_) => without_personal_fields(canonical.clone()),
        None => canonical.clone(),
    };
    let answer = AcceptedBody {
        order_id: order_id.clone(),
        status: "accepted".into(),
        accepted_at: now,
    };
    let answer_json = serde_json::to_value(&answer).map_err(|e| ApiError::Internal(e.into()))?;
    let outcome = store::accept(
        &state.pool,
        NewRecord {
            order_id: &order_id,
            principal: &principal.id,
            idempotency_key: key.as_deref(),
            request_hash: &hash,
            request: &stored,
            customer_id: &input.customer_id,
            status: StatusCode::ACCEPTED.as_u16(),
            response: &answer_json,
        },
        event,
        &state.topic,
        state.sealing.as_ref(),
    )
    .await
    .map_err(|e| match e {
        store::AcceptError::Database(e) => ApiError::from(e),
        other => ApiError::Internal(other.into()),
    })?;
    let (status, body) = match outcome {
        Outcome::New(accepted, rows) => {
            tracing::info!(order_id = %order_id, principal = %principal.id, "order accepted");
            metrics::counter!(platform::metrics::names::HTTP_ORDERS_ACCEPTED).increment(1);
            state.publish_soon(rows);
            (accepted.status, accepted.response)
        }
        Outcome::Existing(stored) if stored.request_hash == hash => (stored.status, stored.response),
        Outcome::Existing(_) => {
            return Err(ApiError::Conflict(format!(
                "order {order_id} was accepted before with a different document; send it unchanged, or use a new order id or Idempotency-Key"
            )))
        }
    };
    let mut response = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
        &body,
    );
    response
        .headers_mut()
        .insert(header::LOCATION, location(&order_id));
    Ok(response)
}

/// What GET answers for one order, with its version.
struct Current {
    view: OrderView,
    etag: String,
}

fn view_of(row: OrderRow, lines: Option<Vec<LineView>>) -> OrderView {
    OrderView {
        order_id: row.order_id,
        customer_id: row.customer_id,
        status: row.status,
        currency: row.currency,
        total_minor: row.total_minor,
        line_count: row.line_count,
        units: row.units,
        lines,
        created_at: row.created_at,
        reserved_at: row.reserved_at,
        paid_at: row.paid_at,
        shipment_scheduled_at: row.shipment_scheduled_at,
        carrier: row.carrier,
        completed_at: row.completed_at,
        cancelled_at: row.cancelled_at,
        cancel_reason: row.cancel_reason,
        event_count: row.event_count,
        last_event_type: Some(row.last_event_type),
        last_event_at: Some(row.last_event_at),
    }
}

/// The view of an order accepted by the API that the read models do not have yet.
fn accepted_view(accepted: &store::Accepted) -> Option<OrderView> {
    let input: producers::OrderInput = serde_json::from_value(accepted.request.clone()).ok()?;
    let lines: Vec<LineView> = input
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| LineView {
            line_no: i as i32 + 1,
            sku: l.sku.clone(),
            quantity: l.quantity,
            unit_price_minor: l.unit_price_minor,
            line_total_minor: i64::from(l.quantity).saturating_mul(l.unit_price_minor),
        })
        .collect();
    Some(OrderView {
        order_id: accepted.order_id.clone(),
        customer_id: input.customer_id,
        status: "accepted".into(),
        currency: input.currency,
        total_minor: lines.iter().map(|l| l.line_total_minor).sum(),
        line_count: lines.len() as i32,
        units: lines.iter().map(|l| i64::from(l.quantity)).sum(),
        lines: Some(lines),
        created_at: accepted.created_at,
        reserved_at: None,
        paid_at: None,
        shipment_scheduled_at: None,
        carrier: None,
        completed_at: None,
        cancelled_at: None,
        cancel_reason: None,
        event_count: 0,
        last_event_type: None,
        last_event_at: None,
    })
}

/// The ETag of a projected order: it changes with every event applied to it.
pub fn order_etag(
    order_id: &str,
    event_count: i32,
    last_event_type: &str,
    last_event_at: DateTime<Utc>,
) -> String {
    ids::etag(&[
        "p",
        order_id,
        &event_count.to_string(),
        last_event_type,
        &last_event_at.timestamp_micros().to_string(),
    ])
}

/// The lines of a projected order.
async fn lines_of(
    conn: &mut sqlx::PgConnection,
    order_id: &str,
) -> Result<Vec<LineView>, ApiError> {
    Ok(query::lines(conn, order_id)
        .await?
        .into_iter()
        .map(|l| LineView {
            line_no: l.line_no,
            sku: l.sku,
            quantity: l.quantity,
            unit_price_minor: l.unit_price_minor,
            line_total_minor: l.line_total_minor,
        })
        .collect())
}

/// The order as the read models (or, before them, the idempotency record) have it; `None`
/// when unknown or not visible to `principal`.
async fn current(
    state: &AppState,
    principal: &Principal,
    order_id: &str,
    with_lines: bool,
) -> Result<Option<Current>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    if let Some(row) = query::order(&mut conn, order_id).await? {
        if !principal.may_see(&row.customer_id) {
            return Ok(None);
        }
        let etag = order_etag(
            &row.order_id,
            row.event_count,
            &row.last_event_type,
            row.last_event_at,
        );
        let lines = if with_lines {
            let rows = query::lines(&mut conn, order_id).await?;
            Some(
                rows.into_iter()
                    .map(|l| LineView {
                        line_no: l.line_no,
                        sku: l.sku,
                        quantity: l.quantity,
                        unit_price_minor: l.unit_price_minor,
                        line_total_minor: l.line_total_minor,
                    })
                    .collect(),
            )
        } else {
            None
        };
        return Ok(Some(Current {
            view: view_of(row, lines),
            etag,
        }));
    }
    let Some(accepted) = store::find(&mut conn, order_id).await? else {
        return Ok(None);
    };
    if !principal.may_see(&accepted.customer_id) {
        return Ok(None);
    }
    let view = accepted_view(&accepted).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "unreadable idempotency record of {order_id}"
        ))
    })?;
    let etag = ids::etag(&[
        "a",
        order_id,
        &accepted.created_at.timestamp_micros().to_string(),
    ]);
    Ok(Some(Current { view, etag }))
}

/// `Prefer: wait=N` (RFC 7240): seconds to wait, if asked.
fn prefer_wait(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::Malformed("Prefer is not ASCII".into()))?;
        for preference in text.split(',') {
            let preference = preference.trim();
            if let Some(n) = preference.strip_prefix("wait=") {
                let secs = n.trim().parse::<u64>().map_err(|_| {
                    ApiError::Malformed("Prefer: wait=N takes whole seconds".into())
                })?;
                return Ok(Some(secs));
            }
        }
    }
    Ok(None)
}

/// Read one order.
///
/// From the read models; an order accepted but not yet projected is `accepted`. Send the
/// `ETag` back in `If-None-Match` to get `304` while it has not changed, and add
/// `Prefer: wait=N` (N ≤ api.wait_max_secs) to be answered as soon as it changes (or after N
/// seconds with `304`). While api.wait_waiters_max requests wait already, the answer is
/// immediate and carries no `Preference-Applied`. `Orderflow-Watermark` says up to when the
/// read models have applied the order's partition of the log.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    tag = "orders",
    params(
        ("order_id" = String, Path, description = "The order's id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from before: 304 while it is current"),
        ("Prefer" = Option<String>, Header, description = "wait=N: wait up to N seconds for the order to change from If-None-Match"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderView, headers(
            ("ETag" = String, description = "Changes with every event applied to the order"),
            ("Cache-Control" = String, description = "private, no-cache"),
            ("Orderflow-Watermark" = String, description = "Newest applied event time of the order's log partition (RFC 3339)"),
            ("Preference-Applied" = String, description = "wait=N when a wait was honoured"),
        )),
        (status = 304, description = "Unchanged since If-None-Match", headers(
            ("ETag" = String, description = "The order's current version"),
            ("Cache-Control" = String, description = "private, no-cache"),
            ("Orderflow-Watermark" = String, description = "Newest applied event time of the order's log partition (RFC 3339)"),
            ("Preference-Applied" = String, description = "wait=N when a wait was honoured"),
        )),
        (status = 400, description = "Malformed order id or Prefer header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or not one the caller may see)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable or the request timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let order_id = order_id_of(path)?;
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let wait =
        prefer_wait(&headers)?.map(|secs| Duration::from_secs(secs).min(state.settings.wait_max()));
    let not_found = || ApiError::NotFound(format!("no order {order_id}"));
    // Waiting needs the client's version and a free waiter slot; without either the answer
    // is immediate (and, past the bound, without Preference-Applied).
    let waiter = match (wait, if_none_match.as_deref()) {
        (Some(_), Some(_)) => state.waits.wait_on(&order_id),
        _ => None,
    };
    let wait = wait.filter(|_| waiter.is_some() || if_none_match.is_none());
    let mut found = current(&state, &principal, &order_id, false)
        .await?
        .ok_or_else(not_found)?;
    // Woken by the projector's announcement of the order ([`crate::waiting`]), or by the
    // fallback poll; each wake-up reads the order again, until it differs from the client's.
    if let (Some(wait), Some(inm), Some(waiter)) = (wait, if_none_match.as_deref(), &waiter) {
        let deadline = tokio::time::Instant::now() + wait;
        let poll = Duration::from_millis(state.settings.wait_poll_ms);
        loop {
            // Registered before the read: an announcement during the read is not missed.
            let changed = waiter.notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !ids::none_match(inm, &found.etag) {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(poll.min(deadline - now)) => {}
                () = state.shutdown.cancelled() => break,
            }
            found = current(&state, &principal, &order_id, false)
                .await?
                .ok_or_else(not_found)?;
        }
    }
    drop(waiter);
    let watermark = {
        let mut conn = state.pool.acquire().await?;
        query::order_watermark(&mut conn, &state.topic, &order_id).await?
    };
    // A 304 needs only the order's version; the lines are read for a 200 only.
    let mut response = match if_none_match.as_deref() {
        Some(inm) if ids::none_match(inm, &found.etag) => StatusCode::NOT_MODIFIED.into_response(),
        _ => {
            if found.view.lines.is_none() {
                let mut conn = state.pool.acquire().await?;
                found.view.lines = Some(lines_of(&mut conn, &order_id).await?);
            }
            json_response(StatusCode::OK, &found.view)
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&found.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Some(at) = watermark {
        if let Ok(v) =
            HeaderValue::from_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        {
            h.insert(WATERMARK_HEADER, v);
        }
    }
    if let Some(wait) = wait {
        if let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
            h.insert("preference-applied", v);
        }
    }
    Ok(response)
}

/// List orders.
///
/// Filtered by customer, status and creation time, oldest first by (created_at, order_id),
/// a page at a time: pass `next_cursor` back as `cursor` until it is absent. Orders accepted
/// but not yet projected are not listed.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "Unknown or malformed parameter, bad cursor, limit out of range", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable or the request timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let q: ListQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::Malformed(format!("query: {e}")))?;
    let limit = crate::paging::page_size(q.limit, state.settings.page_size_max)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(text) => Some(Cursor::decode(text).ok_or_else(|| {
            ApiError::Malformed("cursor is not one this API gave; start again without it".into())
        })?),
    };
    for (name, value) in [("customer_id", &q.customer_id), ("status", &q.status)] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.len() > 64 || v.contains(char::is_control))
        {
            return Err(ApiError::Malformed(format!(
                "{name} must be 1-64 characters, none of them a control character"
            )));
        }
    }
    let mut filter = OrderFilter {
        customer_id: q.customer_id,
        status: q.status,
        created_from: q.created_from,
        created_to: q.created_to,
    };
    if principal.role == Role::Customer {
        // A customer lists only its own orders; asking for another's gives an empty page.
        let own = principal.customer_id.clone().unwrap_or_default();
        if filter.customer_id.as_deref().is_some_and(|c| c != own) {
            return Ok(json_response(
                StatusCode::OK,
                &OrderPage {
                    items: Vec::new(),
                    next_cursor: None,
                },
            ));
        }
        filter.customer_id = Some(own);
    }
    let mut conn = state.pool.acquire().await?;
    let rows = query::page(
        &mut conn,
        &filter,
        after.as_ref().map(|c| (c.created_at, c.order_id.as_str())),
        crate::paging::fetch_limit(limit),
    )
    .await?;
    let (rows, next_cursor) = crate::paging::cut(rows, limit, |r| {
        Cursor {
            created_at: r.created_at,
            order_id: r.order_id.clone(),
        }
        .encode()
    });
    let items = rows.into_iter().map(|r| view_of(r, None)).collect();
    let mut response = json_response(StatusCode::OK, &OrderPage { items, next_cursor });
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    Ok(response)
}

/// An order's timeline.
///
/// Every event of the order the read models have applied, in log order; empty for an order
/// accepted but not yet projected.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}/events",
    tag = "orders",
    params(("order_id" = String, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The timeline", body = Timeline),
        (status = 400, description = "Malformed order id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or not one the caller may see)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable or the request timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let order_id = order_id_of(path)?;
    if current(&state, &principal, &order_id, false)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no order {order_id}")));
    }
    let mut conn = state.pool.acquire().await?;
    let events = query::events(&mut conn, &order_id)
        .await?
        .into_iter()
        .map(|e| EventView {
            event_id: e.event_id,
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            partition: e.partition,
            offset: e.offset,
            detail: e.detail,
        })
        .collect();
    let mut response = json_response(StatusCode::OK, &Timeline { order_id, events });
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    Ok(response)
}

/// Ask to cancel an order.
///
/// Writes an `OrderCancellationRequested` through the outbox and answers `202`; the saga
/// accepts it while the order has not shipped and answers on the log — watch the order's
/// status. With an `Idempotency-Key`, repeating the request is the same request; without one,
/// every call is a new request (a second one is rejected by the saga as already cancelling).
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/cancellation",
    tag = "orders",
    params(
        ("order_id" = String, Path, description = "The order's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a repeat the same request"),
    ),
    request_body(content = CancellationDocument, content_type = "application/json"),
    responses(
        (status = 202, description = "Requested", body = CancellationBody, headers(("Location" = String, description = "/v1/orders/{order_id}"))),
        (status = 400, description = "Malformed JSON, order id or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller's role may not cancel orders", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or not one the caller may see)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than api.body_max_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown fields or a bad reason", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Postgres unreachable or the request timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    principal.require(roles::CANCEL)?;
    let order_id = order_id_of(path)?;
    let (headers, body) = read_body(request, state.settings.body_max_bytes).await?;
    let doc: CancellationDocument = document::parse(&headers, &body)?;
    let key = idempotency_key(&headers)?;
    let reason = doc.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(ApiError::Invalid(vec![FieldError {
            pointer: "/reason".into(),
            reason: "1 to 200 characters".into(),
        }]));
    }
    if current(&state, &principal, &order_id, false)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no order {order_id}")));
    }
    let mut event = producers::cancellation_request(&order_id, reason, &principal.id, Utc::now())
        .map_err(document::domain)?;
    if let Some(key) = &key {
        let name = format!("{order_id}\0{}\0{key}", principal.id);
        event.meta.event_id = Uuid::new_v5(&CANCELLATION_NAMESPACE, name.as_bytes());
    }
    if let Some(rid) = request_id::current() {
        event.meta.correlation_id = request_id::correlation_id(&rid);
    }
    let rows = store::enqueue(&state.pool, outbox_record(&event, &state.topic)?).await?;
    state.publish_soon(rows);
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &CancellationBody {
            order_id: order_id.clone(),
            request_id: event.meta.event_id,
            status: "requested".into(),
        },
    );
    response
        .headers_mut()
        .insert(header::LOCATION, location(&order_id));
    Ok(response)
}

/// Namespace of cancellation event ids derived from an `Idempotency-Key`.
const CANCELLATION_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_6361_6e63_656c);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_read_from_any_preference_list() {
        let mut h = HeaderMap::new();
        assert_eq!(prefer_wait(&h).unwrap(), None);
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=5"));
        assert_eq!(prefer_wait(&h).unwrap(), Some(5));
        h.insert("prefer", HeaderValue::from_static("wait=soon"));
        assert!(matches!(prefer_wait(&h), Err(ApiError::Malformed(_))));
    }

    #[test]
    fn the_etag_changes_with_each_applied_event() {
        let t = Utc::now();
        let a = order_etag("o-1", 1, "OrderCreated", t);
        assert_eq!(a, order_etag("o-1", 1, "OrderCreated", t));
        assert_ne!(a, order_etag("o-1", 2, "InventoryReserved", t));
        assert_ne!(a, order_etag("o-2", 1, "OrderCreated", t));
    }
}

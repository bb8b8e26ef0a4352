//! `GET|PUT|DELETE /v1/customers/{customer_id}/block`: whether and why a customer is blocked
//! (every payment of theirs declined, `customer_blocked`), block them as `orderflow customers
//! block ID --note N` does and unblock them as `orderflow customers unblock ID` does
//! (`consumers::commands::block_customer` / `unblock_customer`: `CustomerBlocked` /
//! `CustomerUnblocked` to the log, which the payment step applies; later payments are
//! authorized again, payments declined meanwhile stay declined).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use consumers::{commands, payment};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{command_error, command_id, is_name, log_change, roles, CommandAccepted};
use crate::auth::Principal;
use crate::document;
use crate::orders::{json_response, read_body};
use crate::problem::{ApiError, FieldError, Problem};
use crate::server::AppState;

/// Characters a block's note may have.
pub const NOTE_MAX_CHARS: usize = 500;

/// Whether a customer is blocked, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BlockView {
    pub customer_id: String,
    /// While `true`, every payment of the customer is declined (`customer_blocked`).
    pub blocked: bool,
    /// The operator's note, when blocked.
    pub note: Option<String>,
    /// Since when, when blocked.
    pub blocked_at: Option<DateTime<Utc>>,
}

impl BlockView {
    fn of(customer_id: String, block: Option<payment::CustomerBlock>) -> BlockView {
        match block {
            Some(b) => BlockView {
                customer_id: b.customer_id,
                blocked: true,
                note: Some(b.note),
                blocked_at: Some(b.blocked_at),
            },
            None => BlockView {
                customer_id,
                blocked: false,
                note: None,
                blocked_at: None,
            },
        }
    }
}

/// A block to put on a customer.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockDocument {
    /// Why (at most 500 characters); replaces the note of an existing block.
    #[serde(default)]
    pub note: String,
}

fn customer_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path
        .map_err(|_| ApiError::Malformed("the customer id in the path is not readable".into()))?;
    if is_name(&id) {
        Ok(id)
    } else {
        Err(ApiError::Malformed(
            "a customer id is 1-128 characters, not blank, no control characters".into(),
        ))
    }
}

/// Read a customer's block.
///
/// `blocked` is false when the customer is not blocked. Roles: operator.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/block",
    tag = "operations",
    params(("customer_id" = String, Path, description = "The customer's id")),
    responses(
        (status = 200, description = "Whether and why the customer is blocked", body = BlockView),
        (status = 400, description = "Malformed customer id", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_block(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::OPERATE)?;
    let customer_id = customer_of(path)?;
    let block = payment::customer_block(&state.pool, &customer_id).await?;
    Ok(json_response(
        StatusCode::OK,
        &BlockView::of(customer_id, block),
    ))
}

/// Block a customer.
///
/// Appends `CustomerBlocked`, as `orderflow customers block ID --note N` does; once the payment
/// step applied it, every payment of the customer is declined (`customer_blocked`). Blocking
/// again replaces the note. With an `Idempotency-Key`, a retry appends nothing new.
/// Roles: operator.
#[utoipa::path(
    put,
    path = "/v1/customers/{customer_id}/block",
    tag = "operations",
    params(
        ("customer_id" = String, Path, description = "The customer's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry the same command"),
    ),
    request_body(content = BlockDocument, content_type = "application/json"),
    responses(
        (status = 202, description = "Appended to the log; the payment step applies it", body = CommandAccepted),
        (status = 400, description = "Malformed customer id, JSON, UTF-8 or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than api.body_max_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown fields or a note too long; see errors", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_block(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(roles::OPERATE)?;
    let customer_id = customer_of(path)?;
    let (headers, body) = read_body(request, state.settings.body_max_bytes).await?;
    let doc: BlockDocument = document::parse(&headers, &body)?;
    if doc.note.chars().count() > NOTE_MAX_CHARS
        || doc.note.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(ApiError::Invalid(vec![FieldError {
            pointer: "/note".into(),
            reason: format!(
                "at most {NOTE_MAX_CHARS} characters, no control characters but newlines"
            ),
        }]));
    }
    let command = command_id(&principal, &headers)?;
    let mut tx = state.pool.begin().await?;
    let event = commands::block_customer(
        &mut tx,
        crate::store::OUTBOX_STEP,
        &state.topic,
        command,
        &customer_id,
        &doc.note,
    )
    .await
    .map_err(|e| command_error(e, "/note"))?;
    accepted(
        tx,
        &principal,
        "customer.block",
        &customer_id,
        &doc.note,
        command,
        &event,
    )
    .await
}

/// Unblock a customer.
///
/// Appends `CustomerUnblocked`, as `orderflow customers unblock ID` does; once the payment step
/// applied it, later payments of the customer are authorized again (payments declined while
/// blocked stay declined). Unblocking a customer who is not blocked changes nothing.
/// Roles: operator.
#[utoipa::path(
    delete,
    path = "/v1/customers/{customer_id}/block",
    tag = "operations",
    params(
        ("customer_id" = String, Path, description = "The customer's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry the same command"),
    ),
    responses(
        (status = 202, description = "Appended to the log; the payment step applies it", body = CommandAccepted),
        (status = 400, description = "Malformed customer id or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_block(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::OPERATE)?;
    let customer_id = customer_of(path)?;
    let command = command_id(&principal, &headers)?;
    let mut tx = state.pool.begin().await?;
    let event = commands::unblock_customer(
        &mut tx,
        crate::store::OUTBOX_STEP,
        &state.topic,
        command,
        &customer_id,
    )
    .await
    .map_err(|e| command_error(e, ""))?;
    accepted(
        tx,
        &principal,
        "customer.unblock",
        &customer_id,
        "",
        command,
        &event,
    )
    .await
}

/// Forget a customer (erasure).
///
/// As `orderflow customers forget ID` does, in one transaction: destroys the customer's data
/// keys (every sealed copy of their personal fields — the log, the archive, backups — then
/// reads as erased), scrubs their personal fields from what Postgres keeps (the shipping
/// step's addresses, dead letters, unpublished clear orders, idempotency records) and appends
/// `CustomerForgotten`. Amounts, skus, statuses and times stay. A customer never seen is
/// forgotten all the same (no keys). With an `Idempotency-Key`, a retry changes and appends
/// nothing new. Roles: operator.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer_id}/forget",
    tag = "operations",
    params(
        ("customer_id" = String, Path, description = "The customer's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry the same command"),
    ),
    responses(
        (status = 202, description = "Keys destroyed, personal fields scrubbed, CustomerForgotten appended", body = CommandAccepted),
        (status = 400, description = "Malformed customer id or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post_forget(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::OPERATE)?;
    let customer_id = customer_of(path)?;
    let command = command_id(&principal, &headers)?;
    let mut tx = state.pool.begin().await?;
    let forgotten = commands::forget_customer(
        &mut tx,
        crate::store::OUTBOX_STEP,
        &state.topic,
        command,
        &customer_id,
    )
    .await
    .map_err(|e| command_error(e, ""))?;
    let event = forgotten.event;
    accepted(
        tx,
        &principal,
        "customer.forget",
        &customer_id,
        "",
        command,
        &event,
    )
    .await
}

/// The end of every customer command: commit the transaction that appended `event`, log the
/// change with its principal, answer `202` with the command id and the event.
async fn accepted(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    principal: &Principal,
    action: &'static str,
    customer_id: &str,
    detail: &str,
    command: uuid::Uuid,
    event: &events::Event,
) -> Result<Response, ApiError> {
    tx.commit().await?;
    log_change(principal, action, customer_id, detail);
    Ok(json_response(
        StatusCode::ACCEPTED,
        &CommandAccepted::of(command, std::slice::from_ref(event)),
    ))
}

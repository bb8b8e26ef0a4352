//! `GET /v1/parked`: the orders a step has parked (their first record failed with a retryable
//! error and waits for its next attempt; the order's later records wait behind it), as
//! `consumers::parked` keeps them — the detail behind `orderflow status`'s parked counts.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use consumers::parked::{self, ParkedOrder};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{decode_cursor, encode_cursor, page_size, query, roles};
use crate::auth::Principal;
use crate::orders::json_response;
use crate::problem::{ApiError, Problem};
use crate::server::AppState;

/// A parked order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParkedView {
    pub step: String,
    pub order_id: String,
    /// Records held: the failed one and those behind it.
    pub records: i64,
    /// Failed attempts at the first record so far.
    pub attempts: i32,
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When the step tries the first record again.
    pub next_attempt_at: DateTime<Utc>,
    pub parked_at: DateTime<Utc>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
}

impl From<ParkedOrder> for ParkedView {
    fn from(p: ParkedOrder) -> ParkedView {
        ParkedView {
            step: p.step,
            order_id: p.order_id,
            records: p.records,
            attempts: p.attempts,
            first_failed_at: p.first_failed_at,
            next_attempt_at: p.next_attempt_at,
            parked_at: p.parked_at,
            last_error: p.last_error,
        }
    }
}

/// A page of parked orders, in (step, order id) order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParkedPage {
    pub items: Vec<ParkedView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query parameters of `GET /v1/parked`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ParkedQuery {
    /// Only this step's (`inventory`, `payment`, `shipping`, `saga`).
    pub step: Option<String>,
    /// Page size, 1 to `api.page_size_max` (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// List parked orders.
///
/// Per step: the order, how many records it holds, attempts, the next attempt and the last
/// error. Roles: operator, analyst.
#[utoipa::path(
    get,
    path = "/v1/parked",
    tag = "operations",
    params(ParkedQuery),
    responses(
        (status = 200, description = "A page of parked orders", body = ParkedPage),
        (status = 400, description = "Unknown or malformed parameter, unknown step, bad cursor, limit out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let q: ParkedQuery = query(raw.as_deref())?;
    let limit = page_size(q.limit, state.settings.page_size_max)?;
    let steps = state.operations.steps();
    if let Some(s) = q.step.as_deref() {
        if !steps.contains(&s) {
            return Err(ApiError::Malformed(format!(
                "step must be one of {}",
                steps.join(", ")
            )));
        }
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(text) => Some(decode_cursor("parked", text, 2)?),
    };
    let mut conn = state.pool.acquire().await?;
    let rows = parked::orders(
        &mut conn,
        q.step.as_deref(),
        after.as_ref().map(|k| (k[0].as_str(), k[1].as_str())),
        crate::paging::fetch_limit(limit),
    )
    .await?;
    let (rows, next_cursor) = crate::paging::cut(rows, limit, |r| {
        encode_cursor("parked", &[r.step.clone(), r.order_id.clone()])
    });
    let items = rows.into_iter().map(ParkedView::from).collect();
    Ok(json_response(
        StatusCode::OK,
        &ParkedPage { items, next_cursor },
    ))
}

//! `GET /v1/stock`, `GET /v1/stock/{sku}` and `POST /v1/stock`: read stock levels, and set the
//! available quantity of skus as `orderflow stock set SKU=QTY ...` does
//! (`consumers::commands::set_stock`: `StockAdjusted` events to the log, which the inventory
//! step applies).

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use consumers::commands;
use consumers::inventory::{self, StockLevel};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    command_error, command_id, decode_cursor, encode_cursor, is_name, log_change, page_size, query,
    roles, CommandAccepted,
};
use crate::auth::Principal;
use crate::document;
use crate::orders::{json_response, read_body};
use crate::problem::{ApiError, FieldError, Problem};
use crate::server::AppState;

/// Skus one `POST /v1/stock` may set.
pub const SKUS_MAX: usize = 1000;

/// One sku's stock.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StockView {
    pub sku: String,
    /// Free to reserve.
    pub available: i64,
    /// Held by reservations not yet released.
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<StockLevel> for StockView {
    fn from(s: StockLevel) -> StockView {
        StockView {
            sku: s.sku,
            available: s.available,
            reserved: s.reserved,
            updated_at: s.updated_at,
        }
    }
}

/// A page of stock levels, in sku order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StockPage {
    pub items: Vec<StockView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The available quantity to set for one sku.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockSetting {
    /// 1-128 characters, not blank.
    pub sku: String,
    /// 0 or more. Replaces the available quantity; reservations held are not touched.
    pub available: i64,
}

/// Stock levels to set.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockDocument {
    /// 1 to 1000 skus, each at most once. Skus not listed keep their stock.
    pub levels: Vec<StockSetting>,
}

/// Query parameters of `GET /v1/stock`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StockQuery {
    /// Page size, 1 to `api.page_size_max` (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// Every reason `doc` cannot be applied, at its pointer.
fn check(doc: &StockDocument) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if doc.levels.is_empty() || doc.levels.len() > SKUS_MAX {
        errors.push(FieldError {
            pointer: "/levels".into(),
            reason: format!("1 to {SKUS_MAX} skus per request"),
        });
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, level) in doc.levels.iter().enumerate().take(SKUS_MAX) {
        if !is_name(&level.sku) {
            errors.push(FieldError {
                pointer: format!("/levels/{i}/sku"),
                reason: "1-128 characters, not blank, no control characters".into(),
            });
        } else if let Some(first) = seen.insert(&level.sku, i) {
            errors.push(FieldError {
                pointer: format!("/levels/{i}/sku"),
                reason: format!("given twice (also at /levels/{first}/sku): give each sku once"),
            });
        }
        if level.available < 0 {
            errors.push(FieldError {
                pointer: format!("/levels/{i}/available"),
                reason: "must be 0 or more".into(),
            });
        }
    }
    errors
}

/// List stock levels.
///
/// Every sku the inventory step knows, in sku order, a page at a time. Roles: operator,
/// analyst.
#[utoipa::path(
    get,
    path = "/v1/stock",
    tag = "operations",
    params(StockQuery),
    responses(
        (status = 200, description = "A page of stock levels", body = StockPage),
        (status = 400, description = "Unknown or malformed parameter, bad cursor, limit out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let q: StockQuery = query(raw.as_deref())?;
    let limit = page_size(q.limit, state.settings.page_size_max)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(text) => decode_cursor("stock", text, 1)?.pop(),
    };
    let mut conn = state.pool.acquire().await?;
    let rows = inventory::stock_levels(
        &mut conn,
        None,
        after.as_deref(),
        crate::paging::fetch_limit(limit),
    )
    .await?;
    let (rows, next_cursor) = crate::paging::cut(rows, limit, |r| {
        encode_cursor("stock", std::slice::from_ref(&r.sku))
    });
    let items = rows.into_iter().map(StockView::from).collect();
    Ok(json_response(
        StatusCode::OK,
        &StockPage { items, next_cursor },
    ))
}

/// Read one sku's stock.
///
/// Roles: operator, analyst.
#[utoipa::path(
    get,
    path = "/v1/stock/{sku}",
    tag = "operations",
    params(("sku" = String, Path, description = "The sku")),
    responses(
        (status = 200, description = "The sku's stock", body = StockView),
        (status = 400, description = "Malformed sku", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The inventory step has no stock of this sku", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let Path(sku) =
        path.map_err(|_| ApiError::Malformed("the sku in the path is not readable".into()))?;
    if !is_name(&sku) {
        return Err(ApiError::Malformed(
            "a sku is 1-128 characters, not blank, no control characters".into(),
        ));
    }
    let mut conn = state.pool.acquire().await?;
    let level = inventory::stock_levels(&mut conn, Some(std::slice::from_ref(&sku)), None, 1)
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::NotFound(format!("no stock of sku {sku}; set it with POST /v1/stock"))
        })?;
    Ok(json_response(StatusCode::OK, &StockView::from(level)))
}

/// Set stock levels.
///
/// Brings the available quantity of each sku given to its level, as `orderflow stock set
/// SKU=QTY ...` does: one `StockAdjusted` per sku that has to change, appended to the log in
/// one transaction; the inventory step applies them (read `GET /v1/stock/{sku}` to see it).
/// Skus not given keep theirs. With an `Idempotency-Key`, a retry appends nothing new.
/// Roles: operator.
#[utoipa::path(
    post,
    path = "/v1/stock",
    tag = "operations",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry the same command")),
    request_body(content = StockDocument, content_type = "application/json"),
    responses(
        (status = 202, description = "Appended to the log; the inventory step applies it", body = CommandAccepted),
        (status = 400, description = "Malformed JSON, bad UTF-8 or a bad Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than api.body_max_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown fields, no or too many skus, a sku twice, a negative quantity; see errors", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(roles::OPERATE)?;
    let (headers, body) = read_body(request, state.settings.body_max_bytes).await?;
    let doc: StockDocument = document::parse(&headers, &body)?;
    let errors = check(&doc);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let command = command_id(&principal, &headers)?;
    let items: Vec<(String, i64)> = doc
        .levels
        .into_iter()
        .map(|l| (l.sku, l.available))
        .collect();
    let reason = format!("api:{}", principal.id);
    let mut tx = state.pool.begin().await?;
    let events = commands::set_stock(
        &mut tx,
        crate::store::OUTBOX_STEP,
        &state.topic,
        command,
        &items,
        &reason,
    )
    .await
    .map_err(|e| command_error(e, "/levels"))?;
    tx.commit().await?;
    let detail = items
        .iter()
        .take(20)
        .map(|(sku, qty)| format!("{sku}={qty}"))
        .collect::<Vec<_>>()
        .join(" ");
    log_change(
        &principal,
        "stock.set",
        &format!("{} skus, command {command}", items.len()),
        &detail,
    );
    Ok(json_response(
        StatusCode::ACCEPTED,
        &CommandAccepted::of(command, &events),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(levels: &[(&str, i64)]) -> StockDocument {
        StockDocument {
            levels: levels
                .iter()
                .map(|(sku, available)| StockSetting {
                    sku: sku.to_string(),
                    available: *available,
                })
                .collect(),
        }
    }

    #[test]
    fn each_bad_level_is_refused_at_its_pointer() {
        assert!(check(&doc(&[("A", 1), ("B", 0)])).is_empty());
        type Case = (&'static [(&'static str, i64)], &'static [&'static str]);
        let cases: &[Case] = &[
            (&[], &["/levels"]),
            (&[("A", -1)], &["/levels/0/available"]),
            (&[("A", 1), (" ", 1)], &["/levels/1/sku"]),
            (&[("A", 1), ("B", 1), ("A", 2)], &["/levels/2/sku"]),
            (&[("", -5)], &["/levels/0/sku", "/levels/0/available"]),
        ];
        for (levels, pointers) in cases {
            let got: Vec<String> = check(&doc(levels)).into_iter().map(|e| e.pointer).collect();
            assert_eq!(got, *pointers, "{levels:?}");
        }
        let many: Vec<(String, i64)> = (0..=SKUS_MAX).map(|i| (format!("S{i}"), 1)).collect();
        let many: Vec<(&str, i64)> = many.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        let got: Vec<String> = check(&doc(&many)).into_iter().map(|e| e.pointer).collect();
        assert_eq!(got, vec!["/levels"]);
    }
}

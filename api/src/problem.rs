//! Every error the API answers, as RFC 9457 `application/problem+json`: one [`ApiError`] per
//! kind of failure, each with a stable `type` URI (`urn:orderflow:problem:<kind>`), a status,
//! a fixed title, a detail safe to show, and for invalid documents the list of
//! `{pointer, reason}`. A `500` says nothing but the request id; its cause is logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One reason a document was refused, at a JSON pointer (RFC 6901) into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Where in the request document, e.g. `/lines/0/quantity` (`""` is the whole document).
    pub pointer: String,
    pub reason: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    /// Stable per kind of error: `urn:orderflow:problem:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request's id (`X-Request-Id`), to quote when asking about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For invalid documents: every reason found, each at its pointer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Why a request failed; each variant is one problem `type` and status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a header, query parameter, path id or cursor is malformed; `detail` says which.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 401: no valid credentials (answered by authenticators; nothing about why is told).
    #[error("unauthenticated")]
    Unauthenticated,
    /// 403: the principal's role may not use this endpoint.
    #[error("forbidden")]
    Forbidden,
    /// 404: no such order (or not one this principal may see), or no such route.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the idempotency key (order id) was used before with a different document.
    #[error("idempotency conflict: {0}")]
    Conflict(String),
    /// 409: the request conflicts with the resource's current state (a dead letter redriven
    /// already); `detail` says what the state is.
    #[error("conflict: {0}")]
    StateConflict(String),
    /// 413: the body is larger than `api.body_max_bytes`.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// 415: the body is not `application/json`.
    #[error("unsupported media type: {0}")]
    MediaType(String),
    /// 422: the document is JSON of the wrong shape, or breaks a domain rule.
    #[error("invalid document")]
    Invalid(Vec<FieldError>),
    /// 431: the request's headers are larger than the server accepts.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// 503: the request took longer than `api.request_timeout_ms`, or Postgres is unreachable;
    /// retry after the `Retry-After` seconds.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500: anything else. The cause is logged with the request id; the client sees only the id.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    /// The kind (last part of the `type` URI), status and title of this error.
    pub fn parts(&self) -> (&'static str, StatusCode, &'static str) {
        match self {
            ApiError::Malformed(_) => (
                "malformed-request",
                StatusCode::BAD_REQUEST,
                "Malformed request",
            ),
            ApiError::Unauthenticated => (
                "unauthenticated",
                StatusCode::UNAUTHORIZED,
                "Authentication required",
            ),
            ApiError::Forbidden => (
                "forbidden",
                StatusCode::FORBIDDEN,
                "Not allowed for this principal",
            ),
            ApiError::NotFound(_) => ("not-found", StatusCode::NOT_FOUND, "Not found"),
            ApiError::MethodNotAllowed => (
                "method-not-allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
            ),
            ApiError::Conflict(_) => (
                "idempotency-conflict",
                StatusCode::CONFLICT,
                "Idempotency key reused with a different request",
            ),
            ApiError::StateConflict(_) => (
                "conflict",
                StatusCode::CONFLICT,
                "Conflicts with the current state",
            ),
            ApiError::TooLarge(_) => (
                "body-too-large",
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
            ),
            ApiError::MediaType(_) => (
                "unsupported-media-type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
            ),
            ApiError::Invalid(_) => (
                "invalid-document",
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid document",
            ),
            ApiError::HeadersTooLarge => (
                "headers-too-large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request headers too large",
            ),
            ApiError::Unavailable(_) => (
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                "internal",
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
            ),
        }
    }

    /// The problem document for this error, quoting `request_id`.
    pub fn problem(&self, request_id: Option<String>) -> Problem {
        let (kind, status, title) = self.parts();
        let detail = match self {
            ApiError::Malformed(d)
            | ApiError::NotFound(d)
            | ApiError::Conflict(d)
            | ApiError::StateConflict(d) => Some(d.clone()),
            ApiError::MediaType(d) => Some(d.clone()),
            ApiError::TooLarge(max) => Some(format!("the body must be at most {max} bytes")),
            ApiError::Forbidden => Some("this endpoint is not open to the caller's role".into()),
            ApiError::Invalid(_) => Some("the document was refused; see errors".into()),
            ApiError::HeadersTooLarge => Some("send fewer or shorter headers".into()),
            ApiError::Unavailable(d) => Some(d.clone()),
            ApiError::MethodNotAllowed => {
                Some("see /openapi.json for the methods of this path".into())
            }
            // Nothing about why: forged tokens learn nothing; internal causes stay in the log.
            ApiError::Unauthenticated | ApiError::Internal(_) => None,
        };
        Problem {
            kind: format!("urn:orderflow:problem:{kind}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            request_id,
            errors: match self {
                ApiError::Invalid(errors) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if platform::db::is_retryable(&error) {
            ApiError::Unavailable("the database is unreachable; retry later".into())
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = request_id::current();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(
                request_id = request_id.as_deref().unwrap_or("-"),
                error = format!("{cause:#}"),
                "request failed"
            );
        }
        let problem = self.problem(request_id);
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_type_and_a_500_tells_only_the_request_id() {
        let errors = [
            ApiError::Malformed("x".into()),
            ApiError::Unauthenticated,
            ApiError::Forbidden,
            ApiError::NotFound("x".into()),
            ApiError::MethodNotAllowed,
            ApiError::Conflict("x".into()),
            ApiError::StateConflict("x".into()),
            ApiError::TooLarge(1),
            ApiError::MediaType("x".into()),
            ApiError::Invalid(vec![]),
            ApiError::HeadersTooLarge,
            ApiError::Unavailable("x".into()),
            ApiError::Internal(anyhow::anyhow!("password=hunter2 at db.internal:5432")),
        ];
        let mut kinds = std::collections::HashSet::new();
        for error in &errors {
            let p = error.problem(Some("r-1".into()));
            assert!(kinds.insert(p.kind.clone()), "{} twice", p.kind);
            assert!(p.kind.starts_with("urn:orderflow:problem:"));
            assert_eq!(p.status, error.parts().1.as_u16());
        }
        let internal = serde_json::to_value(errors[12].problem(Some("r-1".into()))).unwrap();
        let text = internal.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("db.internal"),
            "{text}"
        );
        assert_eq!(internal["request_id"], "r-1");
        assert_eq!(internal["status"], 500);
    }

    #[test]
    fn an_invalid_document_lists_pointers_and_reasons() {
        let p = ApiError::Invalid(vec![FieldError {
            pointer: "/lines/0/quantity".into(),
            reason: "must be > 0".into(),
        }])
        .problem(None);
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["errors"][0]["pointer"], "/lines/0/quantity");
        assert!(v.get("request_id").is_none());
    }
}

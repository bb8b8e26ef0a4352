//! `GET /v1/dead-letters`, `GET /v1/dead-letters/{id}` and `POST /v1/dead-letters/redrive`:
//! what `orderflow dlq list|show|redrive` shows and does. A redrive goes through
//! [`crate::operations::Operations`] (the steps are built by the binary) and runs in a task
//! of its own, so a request that times out does not cut a redrive in half.

use std::collections::HashSet;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use consumers::redrive::{RedriveOutcome, RedriveReport};
use platform::deadletter::{self, FailedAttempt, ListedAfter};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{decode_cursor, encode_cursor, log_change, page_size, query, roles};
use crate::auth::Principal;
use crate::document;
use crate::orders::{json_response, read_body};
use crate::problem::{ApiError, FieldError, Problem};
use crate::server::AppState;

/// Dead letters one redrive request applies at most.
pub const REDRIVE_MAX: usize = 100;

/// A dead letter as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterSummary {
    pub id: Uuid,
    /// The consumer that gave the record up (`inventory`, `payment`, ...).
    pub consumer: String,
    pub partition: i32,
    pub offset: i64,
    /// `permanent` (failed on its first attempt) or `retries_exhausted`.
    pub error_class: String,
    pub error_kind: String,
    pub error: String,
    pub attempts: i32,
    pub last_failed_at: DateTime<Utc>,
    /// Set once redriven (a redrive that fails again reopens the letter).
    pub redriven_at: Option<DateTime<Utc>>,
    pub redrive_outcome: Option<String>,
}

/// A page of dead letters, in log order per consumer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One failed attempt at the record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    pub at: DateTime<Utc>,
    /// `permanent` or `retryable`.
    pub class: String,
    pub kind: String,
    pub error: String,
}

/// What the record's bytes hold.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PayloadSummary {
    pub bytes: usize,
    /// The event's type, id and order, when the bytes decode.
    pub event_type: Option<String>,
    pub event_id: Option<Uuid>,
    pub order_id: Option<String>,
    /// Why the bytes do not decode, when they do not.
    pub undecodable: Option<String>,
}

/// One dead letter in full.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: Uuid,
    pub consumer: String,
    /// Where the record was read: topic, partition, offset.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The dead-letter topic the record was copied to.
    pub dlq_topic: String,
    pub error_class: String,
    pub error: String,
    pub attempts: i32,
    /// Every failed attempt, oldest first (a redrive that failed again appends to it).
    pub history: Vec<AttemptView>,
    /// The record's key (UTF-8, lossy), usually the order id.
    pub key: Option<String>,
    /// Absent when the record had no payload.
    pub payload: Option<PayloadSummary>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redrive_outcome: Option<String>,
}

/// Query parameters of `GET /v1/dead-letters`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only this consumer's (`inventory`, `payment`, `shipping`, `saga`, `projections`).
    pub consumer: Option<String>,
    /// Include dead letters already redriven (default false: open ones only).
    pub include_redriven: Option<bool>,
    /// Page size, 1 to `api.page_size_max` (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// Dead letters to redrive.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveDocument {
    /// The step whose dead letters to redrive (`inventory`, `payment`, `shipping`, `saga`).
    pub consumer: String,
    /// These open dead letters of the step (at most 100); when absent or empty, its oldest
    /// open ones, up to 100 — repeat until nothing is left (letters that fail again stay open).
    #[serde(default)]
    pub ids: Vec<Uuid>,
    /// Run the handler and report what it would do; commit and publish nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What redriving one dead letter did (or would do, in a dry run).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RedriveItem {
    pub id: Uuid,
    pub partition: i32,
    pub offset: i64,
    /// `applied`, `already_applied`, `failed_again`, or in a dry run `would_ask` (applying
    /// it needs an answer from an outside service, which a dry run does not ask).
    pub outcome: String,
    /// For `applied`: the reply events emitted (or that would be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replies: Option<Vec<String>>,
    /// For `failed_again`: the error (appended to the letter's history, unless a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `would_ask`: the question for the outside service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// The outcome in words, as `orderflow dlq redrive` prints it.
    pub summary: String,
}

impl From<RedriveReport> for RedriveItem {
    fn from(r: RedriveReport) -> RedriveItem {
        let summary = r.outcome.to_string();
        let outcome = r.outcome.label().to_string();
        let (replies, error, question) = match r.outcome {
            RedriveOutcome::Applied { replies } => (Some(replies), None, None),
            RedriveOutcome::AlreadyApplied => (None, None, None),
            RedriveOutcome::FailedAgain { error } => (None, Some(error), None),
            RedriveOutcome::WouldAsk { question } => (None, None, Some(question)),
        };
        RedriveItem {
            id: r.id,
            partition: r.partition,
            offset: r.offset,
            outcome,
            replies,
            error,
            question,
            summary,
        }
    }
}

/// The answer to a redrive.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RedriveAnswer {
    pub consumer: String,
    pub dry_run: bool,
    /// One per dead letter, in log order; empty when the step had none open.
    pub items: Vec<RedriveItem>,
}

fn summary(row: deadletter::Listed) -> DeadLetterSummary {
    DeadLetterSummary {
        id: row.id,
        consumer: row.consumer,
        partition: row.partition,
        offset: row.offset,
        error_class: row.error_class,
        error_kind: row.error_kind,
        error: row.error,
        attempts: row.attempts,
        last_failed_at: row.last_failed_at,
        redriven_at: row.redriven_at,
        redrive_outcome: row.redrive_outcome,
    }
}

fn payload_summary(bytes: &[u8]) -> PayloadSummary {
    match events::decode(bytes) {
        Ok(event) => PayloadSummary {
            bytes: bytes.len(),
            event_type: Some(event.event_type().as_str().to_string()),
            event_id: Some(event.meta.event_id),
            order_id: Some(event.meta.order_id.clone()),
            undecodable: None,
        },
        Err(e) => PayloadSummary {
            bytes: bytes.len(),
            event_type: None,
            event_id: None,
            order_id: None,
            undecodable: Some(e.to_string()),
        },
    }
}

fn view(id: Uuid, letter: deadletter::Letter) -> DeadLetterView {
    let history: Vec<FailedAttempt> =
        serde_json::from_value(letter.history.clone()).unwrap_or_default();
    DeadLetterView {
        id,
        consumer: letter.consumer,
        topic: letter.topic,
        partition: letter.partition,
        offset: letter.offset,
        dlq_topic: letter.dlq_topic,
        error_class: letter.error_class,
        error: letter.error,
        attempts: letter.attempts,
        history: history
            .into_iter()
            .map(|a| AttemptView {
                at: a.at,
                class: match a.class {
                    deadletter::ErrorClass::Permanent => "permanent".into(),
                    deadletter::ErrorClass::Retryable => "retryable".into(),
                },
                kind: a.kind,
                error: a.error,
            })
            .collect(),
        key: letter
            .record_key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: letter.payload.as_deref().map(payload_summary),
        redriven_at: letter.redriven_at,
        redrive_outcome: letter.redrive_outcome,
    }
}

fn id_of(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(text) = path.map_err(|_| {
        ApiError::Malformed("the dead letter id in the path is not readable".into())
    })?;
    Uuid::parse_str(&text)
        .map_err(|_| ApiError::Malformed("a dead letter id is a UUID, as listed".into()))
}

/// List dead letters.
///
/// Open ones (not redriven) unless `include_redriven`, of one consumer or all, in log order
/// per consumer, a page at a time. Roles: operator, analyst.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "operations",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Unknown or malformed parameter, unknown consumer, bad cursor, limit out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let q: DeadLetterQuery = query(raw.as_deref())?;
    let limit = page_size(q.limit, state.settings.page_size_max)?;
    let consumers = state.operations.consumers();
    if let Some(c) = q.consumer.as_deref() {
        if !consumers.contains(&c) {
            return Err(ApiError::Malformed(format!(
                "consumer must be one of {}",
                consumers.join(", ")
            )));
        }
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(text) => {
            let key = decode_cursor("dead-letters", text, 4)?;
            let bad = || {
                ApiError::Malformed(
                    "cursor is not one this API gave; start again without it".into(),
                )
            };
            Some(ListedAfter {
                consumer: key[0].clone(),
                topic: key[1].clone(),
                partition: key[2].parse().map_err(|_| bad())?,
                offset: key[3].parse().map_err(|_| bad())?,
            })
        }
    };
    let rows = deadletter::page(
        &state.pool,
        q.consumer.as_deref(),
        q.include_redriven.unwrap_or(false),
        after.as_ref(),
        crate::paging::fetch_limit(limit),
    )
    .await?;
    let (rows, next_cursor) = crate::paging::cut(rows, limit, |r| {
        let a = ListedAfter::from(r);
        encode_cursor(
            "dead-letters",
            &[
                a.consumer,
                a.topic,
                a.partition.to_string(),
                a.offset.to_string(),
            ],
        )
    });
    let items = rows.into_iter().map(summary).collect();
    Ok(json_response(
        StatusCode::OK,
        &DeadLetterPage { items, next_cursor },
    ))
}

/// Show one dead letter.
///
/// Its position, error, every failed attempt, key and what its payload holds, as
/// `orderflow dlq show` prints them. Roles: operator, analyst.
#[utoipa::path(
    get,
    path = "/v1/dead-letters/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "The dead letter's id (a UUID)")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    principal.require(roles::READ)?;
    let id = id_of(path)?;
    let letter = deadletter::find(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    Ok(json_response(StatusCode::OK, &view(id, letter)))
}

/// Redrive dead letters.
///
/// Applies a step's open dead letters again, in log order, with their original event ids, as
/// `orderflow dlq redrive --consumer C [--id ...] [--dry-run]` does, and reports each. With
/// `dry_run`, runs the handler and commits nothing. Roles: operator.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/redrive",
    tag = "operations",
    request_body(content = RedriveDocument, content_type = "application/json"),
    responses(
        (status = 200, description = "What each dead letter's redrive did (or would do)", body = RedriveAnswer),
        (status = 400, description = "Malformed JSON or bad UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An id names no dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An id names a dead letter redriven already", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than api.body_max_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown fields, a consumer that is not a step, too many ids, an id of another consumer; see errors", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redrive(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(roles::OPERATE)?;
    if !state.operations.can_redrive() {
        return Err(ApiError::Unavailable(
            "this server runs without the steps and cannot redrive; use orderflow serve, or orderflow dlq redrive".into(),
        ));
    }
    let (headers, body) = read_body(request, state.settings.body_max_bytes).await?;
    let doc: RedriveDocument = document::parse(&headers, &body)?;
    let steps = state.operations.steps();
    let Some(step) = steps.iter().copied().find(|s| *s == doc.consumer) else {
        let reason = if state
            .operations
            .consumers()
            .contains(&doc.consumer.as_str())
        {
            format!(
                "{} dead-letters only undecodable records, which a redrive cannot fix; redrive one of {}",
                doc.consumer,
                steps.join(", ")
            )
        } else {
            format!("not a step; one of {}", steps.join(", "))
        };
        return Err(ApiError::Invalid(vec![FieldError {
            pointer: "/consumer".into(),
            reason,
        }]));
    };
    if doc.ids.len() > REDRIVE_MAX {
        return Err(ApiError::Invalid(vec![FieldError {
            pointer: "/ids".into(),
            reason: format!("at most {REDRIVE_MAX} ids per request"),
        }]));
    }
    let mut ids = Vec::with_capacity(doc.ids.len());
    let mut seen = HashSet::new();
    let mut wrong = Vec::new();
    for (i, id) in doc.ids.iter().enumerate() {
        if !seen.insert(*id) {
            continue;
        }
        let letter = deadletter::find(&state.pool, *id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
        if letter.consumer != step {
            wrong.push(FieldError {
                pointer: format!("/ids/{i}"),
                reason: format!("dead letter of {}, not of {step}", letter.consumer),
            });
        } else if let Some(at) = letter.redriven_at {
            return Err(ApiError::StateConflict(format!(
                "dead letter {id} was redriven at {} ({}); it is open again only if that redrive failed",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                letter.redrive_outcome.unwrap_or_default()
            )));
        }
        ids.push(*id);
    }
    if !wrong.is_empty() {
        return Err(ApiError::Invalid(wrong));
    }
    if ids.is_empty() {
        ids = deadletter::page(&state.pool, Some(step), false, None, REDRIVE_MAX as i64)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
    }
    let reports = if ids.is_empty() {
        Vec::new()
    } else {
        let operations = state.operations.clone();
        let dry_run = doc.dry_run;
        let to_redrive = ids.clone();
        // Its own task: a request that times out leaves the redrive to finish.
        tokio::spawn(async move { operations.redrive(step, &to_redrive, dry_run).await })
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("the redrive task failed: {e}")))?
            .map_err(ApiError::Internal)?
    };
    if !doc.dry_run {
        let outcomes = reports
            .iter()
            .map(|r| format!("{}={}", r.id, r.outcome.label()))
            .collect::<Vec<_>>()
            .join(" ");
        log_change(&principal, "dead_letters.redrive", step, &outcomes);
    }
    let items = reports.into_iter().map(RedriveItem::from).collect();
    Ok(json_response(
        StatusCode::OK,
        &RedriveAnswer {
            consumer: step.to_string(),
            dry_run: doc.dry_run,
            items,
        },
    ))
}

//! The operator endpoints: what `orderflow stock`, `customers`, `dlq` and `status` do, over
//! HTTP. Each action calls the very function its CLI command calls (`consumers::commands::
//! set_stock`, `block_customer`, `unblock_customer`, which append events to the log through
//! the outbox — here the API's, published by its relay; `consumers::redrive::redrive` through
//! [`crate::operations::Operations`]), so a change of how an action is carried out reaches
//! both at once. Every change is logged to the access log (`orderflow::access`) with the
//! principal that made it.
//!
//! Roles: reads of stock, dead letters and parked orders are open to operators and analysts;
//! a customer's block (it carries an operator's note about a person) and every change are
//! for operators only.

pub mod customers;
pub mod deadletters;
pub mod parked;
pub mod stock;

use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use consumers::commands::CommandError;
use events::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::paging::page_size;
use crate::problem::ApiError;

/// The roles each operator endpoint admits.
pub mod roles {
    use crate::auth::Role;
    /// Stock levels, dead letters, parked orders.
    pub const READ: &[Role] = &[Role::Operator, Role::Analyst];
    /// A customer's block, and every change.
    pub const OPERATE: &[Role] = &[Role::Operator];
}

/// The query string read strictly into `T` (unknown parameters refused).
fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::Malformed(format!("query: {e}")))
}

/// The opaque cursor of a list of `kind` positioned after `key`.
fn encode_cursor(kind: &str, key: &[String]) -> String {
    let mut parts = vec![kind.to_string()];
    parts.extend_from_slice(key);
    URL_SAFE_NO_PAD.encode(serde_json::Value::from(parts).to_string())
}

/// The key of a cursor [`encode_cursor`] made for `kind` with `len` parts; `400` for anything
/// else.
fn decode_cursor(kind: &str, text: &str, len: usize) -> Result<Vec<String>, ApiError> {
    let bad =
        || ApiError::Malformed("cursor is not one this API gave; start again without it".into());
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let mut parts: Vec<String> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    // A forged cursor's text never reaches SQL with characters Postgres refuses (NUL).
    if parts.len() != len + 1 || parts[0] != kind || parts.iter().any(|p| p.contains('\0')) {
        return Err(bad());
    }
    parts.remove(0);
    Ok(parts)
}

/// Whether `text` can name a sku, customer, consumer or step: 1 to 128 characters, not blank,
/// no control characters.
fn is_name(text: &str) -> bool {
    !text.trim().is_empty() && text.chars().count() <= 128 && !text.chars().any(char::is_control)
}

/// Namespace of command ids derived from an `Idempotency-Key`.
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_6f70_6572_6174);

/// The command id of a change: derived from the `Idempotency-Key` header and the caller (a
/// retry appends nothing new), or a new one.
fn command_id(principal: &Principal, headers: &HeaderMap) -> Result<Uuid, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(Uuid::new_v4()),
        Some(value) => match value.to_str() {
            Ok(key) if crate::ids::is_idempotency_key(key) => {
                let name = format!("{}\0{key}", principal.id);
                Ok(Uuid::new_v5(&COMMAND_NAMESPACE, name.as_bytes()))
            }
            _ => Err(ApiError::Malformed(
                "Idempotency-Key must be 1-255 visible ASCII characters".into(),
            )),
        },
    }
}

/// A refused command at `pointer`, or the database's failure.
fn command_error(error: CommandError, pointer: &str) -> ApiError {
    match error {
        CommandError::Invalid(reason) => ApiError::Invalid(vec![crate::problem::FieldError {
            pointer: pointer.into(),
            reason,
        }]),
        CommandError::Database(e) => e.into(),
    }
}

/// One event a change appended to the log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AppendedEvent {
    pub event_id: Uuid,
    /// `StockAdjusted`, `CustomerBlocked` or `CustomerUnblocked`.
    pub event_type: String,
}

/// The answer to a change: its events are on their way to the log; the step applies them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandAccepted {
    /// The command's id; the same `Idempotency-Key` again names the same command.
    pub command_id: Uuid,
    /// The events appended (none when nothing had to change).
    pub events: Vec<AppendedEvent>,
}

impl CommandAccepted {
    fn of(command_id: Uuid, events: &[Event]) -> CommandAccepted {
        CommandAccepted {
            command_id,
            events: events
                .iter()
                .map(|e| AppendedEvent {
                    event_id: e.meta.event_id,
                    event_type: e.event_type().as_str().to_string(),
                })
                .collect(),
        }
    }
}

/// The access-log line of a change: who did what, to what.
fn log_change(principal: &Principal, action: &'static str, target: &str, detail: &str) {
    tracing::info!(
        target: "orderflow::access",
        request_id = crate::request_id::current().as_deref().unwrap_or("-"),
        principal = %principal.id,
        role = principal.role.name(),
        action,
        target,
        detail,
        "operator change"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        let key = vec!["payment".to_string(), "o|1".to_string()];
        let text = encode_cursor("parked", &key);
        assert_eq!(decode_cursor("parked", &text, 2).unwrap(), key);
        let nul = encode_cursor("parked", &["payment".to_string(), "o\0".to_string()]);
        for (kind, text, len) in [
            ("stock", text.as_str(), 2),
            ("parked", text.as_str(), 1),
            ("parked", "not base64!", 2),
            ("parked", "W10", 2),
            ("parked", nul.as_str(), 2),
        ] {
            assert!(
                matches!(decode_cursor(kind, text, len), Err(ApiError::Malformed(_))),
                "{kind} {text} {len}"
            );
        }
    }

    /// Every operator endpoint is in the `operations` tag and says which roles it admits.
    #[test]
    fn the_spec_tags_every_operator_endpoint_and_names_its_roles() {
        let spec = serde_json::to_value(crate::openapi()).expect("the spec serializes");
        let mut seen = 0;
        for (path, item) in spec["paths"].as_object().expect("paths") {
            if path.starts_with("/v1/orders") {
                continue;
            }
            for (method, operation) in item.as_object().expect("path item") {
                seen += 1;
                assert_eq!(
                    operation["tags"],
                    serde_json::json!(["operations"]),
                    "{method} {path}"
                );
                let text = format!("{}", operation["description"]);
                assert!(text.contains("Roles: operator"), "{method} {path}: {text}");
            }
        }
        assert_eq!(seen, 11);
    }

    #[test]
    fn names() {
        for (text, ok) in [
            ("SKU-1", true),
            ("a b", true),
            ("", false),
            ("  ", false),
            ("a\nb", false),
            (&"x".repeat(129), false),
        ] {
            assert_eq!(is_name(text), ok, "{text:?}");
        }
    }
}

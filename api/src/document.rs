//! The order document of `POST /v1/orders` — the JSON object `orderflow publish` reads, with
//! `order_id` optional (derived from the `Idempotency-Key` when absent) — and the strict
//! reading of request bodies: content type, size, UTF-8, JSON syntax, unknown fields, shape,
//! then the domain rules of `events::validate_order`, each refused with its own 4xx.

use axum::http::{header, HeaderMap};
use events::{Address, Contact, OrderLine, ValidationError};
use producers::OrderInput;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::{ApiError, FieldError};

/// An order as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "order_id": "o-1001",
    "customer_id": "c-9",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999}],
    "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin",
                         "postal_code": "10115", "country": "DE"}
}))]
pub struct OrderDocument {
    /// The order's id (1-64 of `A-Z a-z 0-9 - _ . :`). Absent: derived from the
    /// `Idempotency-Key` header and the caller, which is then required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    pub order_id: Option<String>,
    #[schema(pattern = "\\S")]
    pub customer_id: String,
    /// ISO 4217, upper case (`EUR`).
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// 1 to api.order_lines_max (100) lines.
    #[schema(min_items = 1)]
    pub lines: Vec<LineDocument>,
    pub shipping_address: AddressDocument,
    /// How to reach the customer about the order. Optional; personal data
    /// (docs/schema-evolution.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<ContactDocument>,
    /// Ties the order's events together; defaults to the request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineDocument {
    #[schema(pattern = "\\S")]
    pub sku: String,
    /// More than 0.
    #[schema(minimum = 1)]
    pub quantity: i32,
    /// In minor units of the currency (cents), 0 or more.
    #[schema(minimum = 0)]
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressDocument {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case (`DE`).
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// How to reach the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactDocument {
    /// 3 to 254 characters without spaces: exactly one `@`, 1 to 64 characters before it and
    /// a dotted domain after it (`ada@example.com`).
    #[schema(min_length = 3, max_length = 254)]
    pub email: String,
    /// 3 to 32 characters of digits, spaces and `+ - ( ) .`, at least 3 digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 3, max_length = 32)]
    pub phone: Option<String>,
}

/// A cancellation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancellationDocument {
    /// Why (1-200 characters), e.g. `customer_request`.
    pub reason: String,
}

impl OrderDocument {
    /// The `orderflow publish` input for this document under `order_id`, checked against the
    /// domain rules and `lines_max`.
    pub fn into_input(self, order_id: String, lines_max: usize) -> Result<OrderInput, ApiError> {
        if self.lines.len() > lines_max {
            return Err(invalid(
                "/lines",
                format!("at most {lines_max} lines, got {}", self.lines.len()),
            ));
        }
        let input = OrderInput {
            order_id,
            customer_id: self.customer_id,
            currency: self.currency,
            lines: self
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                })
                .collect(),
            shipping_address: Address {
                name: self.shipping_address.name,
                line1: self.shipping_address.line1,
                line2: self.shipping_address.line2,
                city: self.shipping_address.city,
                postal_code: self.shipping_address.postal_code,
                country: self.shipping_address.country,
            },
            contact: self.contact.map(|c| Contact {
                email: c.email,
                phone: c.phone,
            }),
            correlation_id: self.correlation_id,
        };
        // The same rules `orderflow publish` applies, on the event they would publish.
        input
            .clone()
            .into_event(chrono::Utc::now())
            .map_err(domain)?;
        Ok(input)
    }
}

fn invalid(pointer: &str, reason: impl Into<String>) -> ApiError {
    ApiError::Invalid(vec![FieldError {
        pointer: pointer.into(),
        reason: reason.into(),
    }])
}

/// A domain rule's refusal, at the pointer of the field it names.
pub fn domain(error: ValidationError) -> ApiError {
    let pointer = match &error {
        ValidationError::MissingField { field } => format!("/{}", field.replace('.', "/")),
        ValidationError::MissingLineField { line, field } => {
            format!("/lines/{}/{field}", line.saturating_sub(1))
        }
        ValidationError::NoLines
        | ValidationError::TooManyLines { .. }
        | ValidationError::TotalOverflow => "/lines".into(),
        ValidationError::NonPositiveQuantity { line, .. } => {
            format!("/lines/{}/quantity", line.saturating_sub(1))
        }
        ValidationError::NegativePrice { line, .. } => {
            format!("/lines/{}/unit_price_minor", line.saturating_sub(1))
        }
        ValidationError::UnknownCurrency { .. } => "/currency".into(),
        ValidationError::InvalidCountry { .. } => "/shipping_address/country".into(),
        ValidationError::InvalidEmail { .. } => "/contact/email".into(),
        ValidationError::InvalidPhone { .. } => "/contact/phone".into(),
        _ => String::new(),
    };
    invalid(&pointer, error.to_string())
}

/// Read a JSON body strictly: `Content-Type: application/json` (a `charset` other than UTF-8
/// is refused), valid UTF-8 (`400`), JSON syntax (`400`), then the shape of `T` with unknown
/// fields refused (`422`, at the pointer of the offending field). The size was bounded when
/// the body was read.
pub fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    check_content_type(headers)?;
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::Malformed(format!(
            "the body is not valid UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let pointer = pointer(e.path());
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                invalid(&pointer, strip_position(&inner.to_string()))
            }
            _ => ApiError::Malformed(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::Malformed(format!("the body is not valid JSON: {e}")))?;
    // JSON can carry U+0000 (as \u0000), Postgres text cannot: refused here, at its pointer,
    // not as a 500 from the insert.
    if text.contains("\\u0000") {
        if let Ok(whole) = serde_json::from_str::<serde_json::Value>(text) {
            if let Some(at) = nul_at(&whole, String::new()) {
                return Err(invalid(&at, "U+0000 (NUL) is not allowed in a string"));
            }
        }
    }
    Ok(value)
}

/// The pointer of the first string (or key) holding U+0000 in `value`, if any.
fn nul_at(value: &serde_json::Value, here: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{here}/{i}"))),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let at = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
            if k.contains('\0') {
                Some(at)
            } else {
                nul_at(v, at)
            }
        }),
        _ => None,
    }
}

/// `415` unless the content type is `application/json` (optionally `; charset=utf-8`).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::MediaType(
            "send the body as Content-Type: application/json".into(),
        ));
    };
    let value = value.to_str().unwrap_or("").to_ascii_lowercase();
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("");
    let params_ok = parts.all(|p| p.is_empty() || p == "charset=utf-8" || p == "charset=\"utf-8\"");
    if essence == "application/json" && params_ok {
        Ok(())
    } else {
        Err(ApiError::MediaType(format!(
            "Content-Type {value:?} is not accepted: send application/json (UTF-8)"
        )))
    }
}

fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => out.push_str(variant),
            Segment::Unknown => out.push('?'),
        }
    }
    if out == "/?" {
        out.clear();
    }
    out
}

/// serde_json appends "at line L column C"; the pointer says where, more usefully.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_nul_in_any_string_is_refused_at_its_pointer() {
        let base = r#"{"customer_id":"c","currency":"EUR","lines":[{"sku":"S","quantity":1,"unit_price_minor":1}],"shipping_address":{"name":"A","line1":"l","city":"c","postal_code":"1","country":"DE"}}"#;
        for (from, to, pointer) in [
            (
                r#""customer_id":"c""#,
                r#""customer_id":"c\u0000""#,
                Some("/customer_id"),
            ),
            (r#""sku":"S""#, r#""sku":"\u0000S""#, Some("/lines/0/sku")),
            (
                r#""name":"A""#,
                r#""name":"A\u0000B""#,
                Some("/shipping_address/name"),
            ),
            // An escaped backslash followed by the text u0000 is no NUL.
            (r#""customer_id":"c""#, r#""customer_id":"c\\u0000""#, None),
        ] {
            let body = base.replace(from, to);
            assert_ne!(body, base, "{from}");
            match (parse::<OrderDocument>(&json(), body.as_bytes()), pointer) {
                (Err(ApiError::Invalid(errors)), Some(pointer)) => {
                    assert_eq!(errors[0].pointer, pointer, "{body}")
                }
                (Ok(_), None) => {}
                (other, _) => panic!("{body}: {other:?}"),
            }
        }
    }
    use super::*;
    use axum::http::HeaderValue;

    const GOOD: &str = r#"{"order_id":"o-1","customer_id":"c-9","currency":"EUR","lines":[{"sku":"S1","quantity":2,"unit_price_minor":1999}],"shipping_address":{"name":"A","line1":"1 Main","city":"Berlin","postal_code":"10115","country":"DE"}}"#;

    fn json() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h
    }

    fn refusal(body: &[u8]) -> (u16, String) {
        let err = parse::<OrderDocument>(&json(), body)
            .and_then(|d| d.into_input("o-1".into(), 3))
            .expect_err("refused");
        let p = err.problem(None);
        let ptr = p
            .errors
            .first()
            .map(|e| e.pointer.clone())
            .unwrap_or_default();
        (p.status, ptr)
    }

    #[test]
    fn a_good_document_is_the_publish_input() {
        let doc: OrderDocument = parse(&json(), GOOD.as_bytes()).expect("good");
        let input = doc.into_input("o-1".into(), 3).expect("valid");
        assert_eq!(input.customer_id, "c-9");
        assert_eq!(input.lines[0].quantity, 2);
        assert_eq!(input.contact, None);

        let with_contact = GOOD.replace(
            "\"currency\"",
            r#""contact":{"email":"ada@example.com","phone":"+49 30 123"},"currency""#,
        );
        let doc: OrderDocument = parse(&json(), with_contact.as_bytes()).expect("good");
        let input = doc.into_input("o-1".into(), 3).expect("valid");
        assert_eq!(
            input.contact,
            Some(Contact {
                email: "ada@example.com".into(),
                phone: Some("+49 30 123".into()),
            })
        );
    }

    #[test]
    fn each_kind_of_bad_document_is_its_own_status_and_pointer() {
        let four = format!(
            r#"[{0},{0},{0},{0}]"#,
            r#"{"sku":"S","quantity":1,"unit_price_minor":1}"#
        );
        let contact = |c: &str| {
            GOOD.replace("\"currency\"", &format!("\"contact\":{c},\"currency\""))
                .into_bytes()
        };
        let table: Vec<(Vec<u8>, u16, &str)> = vec![
            (contact(r#"{"email":"ada"}"#), 422, "/contact/email"),
            (
                contact(r#"{"email":"ada@example.com","phone":"x"}"#),
                422,
                "/contact/phone",
            ),
            (
                contact(r#"{"email":"ada@example.com","fax":"1"}"#),
                422,
                "/contact/fax",
            ),
            (b"{not json".to_vec(), 400, ""),
            (b"\xff\xfe".to_vec(), 400, ""),
            (format!("{GOOD} trailing").into_bytes(), 400, ""),
            (
                GOOD.replace("\"customer_id\"", "\"customer\"").into_bytes(),
                422,
                "",
            ),
            (
                GOOD.replace("\"sku\"", "\"colour\":1,\"sku\"").into_bytes(),
                422,
                "/lines/0/colour",
            ),
            (
                GOOD.replace("\"quantity\":2", "\"quantity\":\"2\"")
                    .into_bytes(),
                422,
                "/lines/0/quantity",
            ),
            (
                GOOD.replace("\"quantity\":2", "\"quantity\":0")
                    .into_bytes(),
                422,
                "/lines/0/quantity",
            ),
            (GOOD.replace("EUR", "EURO").into_bytes(), 422, "/currency"),
            (
                GOOD.replace("\"DE\"", "\"de\"").into_bytes(),
                422,
                "/shipping_address/country",
            ),
            (
                GOOD.replace("\"c-9\"", "\"  \"").into_bytes(),
                422,
                "/customer_id",
            ),
            (
                GOOD.replace(
                    r#"[{"sku":"S1","quantity":2,"unit_price_minor":1999}]"#,
                    "[]",
                )
                .into_bytes(),
                422,
                "/lines",
            ),
            (
                GOOD.replace(
                    r#"[{"sku":"S1","quantity":2,"unit_price_minor":1999}]"#,
                    &four,
                )
                .into_bytes(),
                422,
                "/lines",
            ),
        ];
        for (body, status, pointer) in table {
            let (got_status, got_pointer) = refusal(&body);
            assert_eq!(got_status, status, "{}", String::from_utf8_lossy(&body));
            if !pointer.is_empty() {
                assert_eq!(got_pointer, pointer, "{}", String::from_utf8_lossy(&body));
            }
        }
    }

    #[test]
    fn only_json_content_types_are_read() {
        for (value, ok) in [
            (Some("application/json"), true),
            (Some("application/json; charset=utf-8"), true),
            (Some("Application/JSON"), true),
            (Some("application/json; charset=latin1"), false),
            (Some("text/plain"), false),
            (Some("application/jsonx"), false),
            (None, false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            }
            let result = check_content_type(&h);
            assert_eq!(result.is_ok(), ok, "{value:?}");
            if let Err(e) = result {
                assert_eq!(e.parts().1.as_u16(), 415);
            }
        }
    }
}

//! The order format upstream systems hand to `orderflow publish`: one JSON object per line.
//!
//! ```json
//! {"order_id":"o-1","customer_id":"c-9","currency":"EUR",
//!  "lines":[{"sku":"SKU-1","quantity":2,"unit_price_minor":1999}],
//!  "shipping_address":{"name":"Ada","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}
//! ```
//!
//! `correlation_id` is optional, and so is `contact` (`{"email":"ada@example.com",
//! "phone":"+49 30 1234567"}`, the phone optional too; it makes the order a schema v2 record
//! with a contact). The event id is derived from the order id, so publishing the
//! same file twice appends records that every consumer recognises as the same event.

use chrono::{DateTime, Utc};
use events::{
    Address, Contact, Event, EventBody, Metadata, OrderCancellationRequested, OrderCreated,
    OrderLine, ValidationError,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the event ids derived from order ids.
const ORDER_CREATED_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_6f72_6465_7273);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
    pub shipping_address: Address,
    /// How to reach the customer (e-mail, optional phone); validated like every other field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
}

/// Why one input line was not published.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON, or not an order object: fix the line's syntax or fields.
    #[error("not a valid order object: {0}")]
    Syntax(#[from] serde_json::Error),
    /// Well-formed but breaks a domain rule: fix the order.
    #[error("invalid order: {0}")]
    Invalid(#[from] ValidationError),
}

/// The deterministic event id of the `OrderCreated` for `order_id`.
pub fn order_created_id(order_id: &str) -> Uuid {
    Uuid::new_v5(&ORDER_CREATED_NAMESPACE, order_id.as_bytes())
}

impl OrderInput {
    /// Validate and turn into an `OrderCreated` event that occurred at `now`.
    pub fn into_event(self, now: DateTime<Utc>) -> Result<Event, ValidationError> {
        let order = OrderCreated {
            customer_id: self.customer_id,
            lines: self.lines,
            currency: self.currency,
            shipping_address: self.shipping_address,
            contact: self.contact,
            // Upstream and the CLI send personal fields in clear; sealing is the intake's job.
            sealed: None,
        };
        events::validate_order(&order, &self.order_id)?;
        let event_id = order_created_id(&self.order_id);
        Ok(Event {
            meta: Metadata {
                event_id,
                order_id: self.order_id,
                occurred_at: now,
                correlation_id: self.correlation_id.unwrap_or(event_id),
                causation_id: event_id,
            },
            body: EventBody::OrderCreated(order),
        })
    }
}

/// A request to cancel `order_id`, as `orderflow cancel` publishes it. The saga accepts it
/// only while the order has not shipped, and answers on the log either way
/// (`OrderCancellationAccepted` or `OrderCancellationRejected`). Every request is a new event:
/// asking twice is two requests, and the second is rejected as `already_cancelling`.
pub fn cancellation_request(
    order_id: &str,
    reason: &str,
    requested_by: &str,
    now: DateTime<Utc>,
) -> Result<Event, ValidationError> {
    let event = Event {
        meta: Metadata {
            event_id: Uuid::new_v4(),
            order_id: order_id.to_string(),
            occurred_at: now,
            correlation_id: order_created_id(order_id),
            causation_id: order_created_id(order_id),
        },
        body: EventBody::OrderCancellationRequested(OrderCancellationRequested {
            reason: reason.to_string(),
            requested_by: requested_by.to_string(),
        }),
    };
    if order_id.trim().is_empty() {
        return Err(ValidationError::MissingField { field: "order_id" });
    }
    events::validate(&event)?;
    Ok(event)
}

/// Parse and validate one line.
pub fn parse_line(line: &str, now: DateTime<Utc>) -> Result<Event, LineError> {
    let input: OrderInput = serde_json::from_str(line)?;
    Ok(input.into_event(now)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"order_id":"o-1","customer_id":"c-9","currency":"EUR","lines":[{"sku":"S1","quantity":2,"unit_price_minor":1999}],"shipping_address":{"name":"A","line1":"1 Main","city":"Berlin","postal_code":"10115","country":"DE"}}"#;

    #[test]
    fn a_good_line_becomes_an_order_created_with_a_stable_id() {
        let a = parse_line(GOOD, Utc::now()).expect("valid line");
        let b = parse_line(GOOD, Utc::now()).expect("valid line");
        assert_eq!(a.meta.event_id, b.meta.event_id);
        assert_eq!(a.meta.causation_id, a.meta.event_id);
        assert_eq!(a.meta.order_id, "o-1");
    }

    fn with_contact(contact: &str) -> String {
        GOOD.replace(
            "\"currency\"",
            &format!("\"contact\":{contact},\"currency\""),
        )
    }

    #[test]
    fn a_contact_is_optional_and_carried_into_the_event() {
        let table = [
            (GOOD.to_owned(), None),
            (
                with_contact(r#"{"email":"ada@example.com"}"#),
                Some(Contact {
                    email: "ada@example.com".into(),
                    phone: None,
                }),
            ),
            (
                with_contact(r#"{"email":"ada@example.com","phone":"+49 30 1234567"}"#),
                Some(Contact {
                    email: "ada@example.com".into(),
                    phone: Some("+49 30 1234567".into()),
                }),
            ),
        ];
        for (line, want) in table {
            let event = parse_line(&line, Utc::now()).expect(&line);
            let EventBody::OrderCreated(order) = event.body else {
                panic!("{line}: not an OrderCreated")
            };
            assert_eq!(order.contact, want, "{line}");
            assert_eq!(order.sealed, None, "{line}");
        }
    }

    #[test]
    fn bad_lines_say_why() {
        let table = [
            ("{not json", "not a valid order object"),
            (r#"{"order_id":"o"}"#, "missing field"),
            (
                &GOOD.replace("\"quantity\":2", "\"quantity\":0"),
                "quantity",
            ),
            (&GOOD.replace("EUR", "EURO"), "currency"),
            (&GOOD.replace("\"o-1\"", "\"\""), "order_id"),
            (
                &GOOD.replace("\"customer_id\"", "\"customer\""),
                "unknown field",
            ),
            (
                &with_contact(r#"{"email":"ada.example.com"}"#),
                "contact.email must contain an @",
            ),
            (
                &with_contact(r#"{"email":"ada@example.com","phone":"call me"}"#),
                "contact.phone may hold only digits",
            ),
            (
                &with_contact(r#"{"email":"ada@example.com","fax":"1"}"#),
                "unknown field `fax`",
            ),
            (&with_contact(r#"{"phone":"123"}"#), "missing field `email`"),
        ];
        for (line, want) in table {
            let err = parse_line(line, Utc::now()).expect_err(line).to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}

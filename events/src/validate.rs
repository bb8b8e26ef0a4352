//! Domain rules every event must satisfy, whoever wrote it.
//!
//! This module owns [`ValidationError`], the ISO 4217 currency list and the per-event-type
//! rules. The codec calls [`validate`] on both sides of the wire, so an invalid event can be
//! neither published nor consumed; producers call [`validate_order`] before publishing an order.
//! It must stay pure: no I/O, no clock, no wire-format knowledge, and no rule that depends on
//! other events (stock levels, payment limits) — those belong to the services that own them.

use crate::model::{
    customer_key, stock_key, Address, Contact, Event, EventBody, OrderCreated, OrderLine,
    SealedPersonal, Shortage, SkuQuantity, CUSTOMER_KEY_PREFIX, STOCK_KEY_PREFIX,
};

/// The most lines one order may have. Bounds the size of an `OrderCreated` record and of the
/// work every downstream step does for it.
const MAX_LINES: usize = 500;
/// Bounds of a contact's e-mail address, in characters (RFC 5321's path limit is 254).
const EMAIL_CHARS: std::ops::RangeInclusive<usize> = 3..=254;
/// The longest local part (before the `@`) of an e-mail address, in characters (RFC 5321).
const EMAIL_LOCAL_CHARS_MAX: usize = 64;
/// Bounds of a contact's phone number, in characters.
const PHONE_CHARS: std::ops::RangeInclusive<usize> = 3..=32;
/// The fewest digits a phone number has.
const PHONE_DIGITS_MIN: usize = 3;
/// The longest key id or algorithm name of sealed personal data, in characters.
const SEALED_NAME_CHARS_MAX: usize = 200;
/// The largest nonce of sealed personal data, in bytes (AEAD nonces are 12 to 24 bytes).
const SEALED_NONCE_BYTES_MAX: usize = 64;
/// The largest ciphertext of sealed personal data, in bytes: far above an address and a
/// contact, and a bound on what one record makes every reader hold.
const SEALED_CIPHERTEXT_BYTES_MAX: usize = 64 * 1024;

/// Why an event breaks a domain rule. Every message names what is wrong and where; line
/// numbers are 1-based positions in the list they refer to (`lines`, `items` or `shortages`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A required identifier or code is empty or only whitespace.
    #[error("{field} must not be blank")]
    MissingField { field: &'static str },
    /// A required field of one entry of a list (e.g. the sku of an order line) is blank.
    #[error("line {line}: {field} must not be blank")]
    MissingLineField { line: usize, field: &'static str },
    /// An order without lines.
    #[error("order has no lines")]
    NoLines,
    /// An order with more than `MAX_LINES` (500) lines.
    #[error("order has {count} lines, at most {max} are allowed")]
    TooManyLines { count: usize, max: usize },
    /// A line or item whose quantity is zero or negative.
    #[error("line {line} (sku {sku}): quantity must be > 0, got {quantity}")]
    NonPositiveQuantity {
        line: usize,
        sku: String,
        quantity: i32,
    },
    /// A line whose unit price is negative.
    #[error("line {line} (sku {sku}): unit price must be >= 0, got {price}")]
    NegativePrice {
        line: usize,
        sku: String,
        price: i64,
    },
    /// A currency that is not an active ISO 4217 code in upper case.
    #[error("currency {code:?} is not a known ISO 4217 code (upper case, e.g. EUR)")]
    UnknownCurrency { code: String },
    /// A country that is not two upper-case ASCII letters.
    #[error(
        "shipping_address.country {code:?} must be two upper-case letters (ISO 3166-1 alpha-2)"
    )]
    InvalidCountry { code: String },
    /// The order total (sum of quantity × unit price) does not fit in an `i64` of minor units.
    #[error("order total overflows 64-bit minor units")]
    TotalOverflow,
    /// A money amount of a payment or completion event is negative.
    #[error("{field} must be >= 0, got {amount}")]
    NegativeAmount { field: &'static str, amount: i64 },
    /// A contact's e-mail address that is not plausible: the reason says which rule it breaks.
    #[error("contact.email {reason}")]
    InvalidEmail { reason: String },
    /// A contact's phone number that is not plausible: the reason says which rule it breaks.
    #[error("contact.phone {reason}")]
    InvalidPhone { reason: String },
    /// Sealed personal data with a blank or oversized part (`field` names it).
    #[error("sealed.{field} {reason}")]
    InvalidSealed { field: &'static str, reason: String },
    /// A `SagaStepTimedOut` naming a step the saga does not wait for.
    #[error("step {step:?} is not one of inventory, payment, shipping")]
    UnknownStep { step: String },
    /// A `SagaStepTimedOut` whose attempt count is below 1.
    #[error("attempts must be >= 1, got {attempts}")]
    NonPositiveAttempts { attempts: i32 },
    /// A `StockAdjusted` that changes nothing.
    #[error("delta must not be 0 (an adjustment changes the stock)")]
    ZeroDelta,
    /// A stock or customer event whose `order_id` (its key) is not the one its body names.
    #[error("order_id must be {expected:?} for this event, got {found:?}")]
    WrongKey { expected: String, found: String },
    /// An order id that starts like the key of a stock or customer event.
    #[error("order_id {order_id:?} must not start with {prefix:?} (reserved for stock and customer events)")]
    ReservedOrderId {
        order_id: String,
        prefix: &'static str,
    },
}

/// The steps the saga waits for, as named in `SagaStepTimedOut.step`.
pub const SAGA_STEPS: [&str; 3] = ["inventory", "payment", "shipping"];

/// Check every domain rule that applies to `event`: the metadata's `order_id` is not blank,
/// then the rules of its body's type. `OrderCreated` gets the full order rules
/// ([`validate_order`]).
pub fn validate(event: &Event) -> Result<(), ValidationError> {
    let order_id = event.meta.order_id.as_str();
    match &event.body {
        EventBody::OrderCreated(o) => validate_order(o, order_id),
        EventBody::StockAdjusted(e) => {
            require("sku", &e.sku)?;
            require("reason", &e.reason)?;
            if e.delta == 0 {
                return Err(ValidationError::ZeroDelta);
            }
            require_key(order_id, stock_key(&e.sku))
        }
        EventBody::CustomerBlocked(e) => {
            require("customer_id", &e.customer_id)?;
            require_key(order_id, customer_key(&e.customer_id))
        }
        EventBody::CustomerUnblocked(e) => {
            require("customer_id", &e.customer_id)?;
            require_key(order_id, customer_key(&e.customer_id))
        }
        EventBody::CustomerForgotten(e) => {
            require("customer_id", &e.customer_id)?;
            require_key(order_id, customer_key(&e.customer_id))
        }
        body => {
            require("order_id", order_id)?;
            validate_body(body)
        }
    }
}

/// The full rules for a new order, for producers to call before publishing:
/// `order_id` and `customer_id` not blank, a known currency, a valid country, 1 to
/// `MAX_LINES` (500) lines each with a sku, a positive quantity and a non-negative price, a
/// total that fits in `i64` minor units, a plausible contact when there is one, and sealed
/// personal data within its bounds when there is some.
pub fn validate_order(order: &OrderCreated, order_id: &str) -> Result<(), ValidationError> {
    require("order_id", order_id)?;
    if let Some(prefix) = [STOCK_KEY_PREFIX, CUSTOMER_KEY_PREFIX]
        .into_iter()
        .find(|p| order_id.starts_with(p))
    {
        return Err(ValidationError::ReservedOrderId {
            order_id: order_id.to_string(),
            prefix,
        });
    }
    require("customer_id", &order.customer_id)?;
    require_currency(&order.currency)?;
    validate_address(&order.shipping_address)?;
    if let Some(contact) = &order.contact {
        validate_contact(contact)?;
    }
    if let Some(sealed) = &order.sealed {
        validate_sealed(sealed)?;
    }
    if order.lines.is_empty() {
        return Err(ValidationError::NoLines);
    }
    if order.lines.len() > MAX_LINES {
        return Err(ValidationError::TooManyLines {
            count: order.lines.len(),
            max: MAX_LINES,
        });
    }
    let mut total: i64 = 0;
    for (index, line) in order.lines.iter().enumerate() {
        let subtotal = validate_line(index + 1, line)?;
        total = total
            .checked_add(subtotal)
            .ok_or(ValidationError::TotalOverflow)?;
    }
    Ok(())
}

/// Whether `code` is an active ISO 4217 currency code. Exact match: `"eur"` is not known.
pub fn is_known_currency(code: &str) -> bool {
    // The list is sorted, so a binary search is enough; a unit test checks the order.
    CURRENCIES.binary_search(&code).is_ok()
}

fn validate_body(body: &EventBody) -> Result<(), ValidationError> {
    match body {
        EventBody::OrderCreated(_) => {
            // Handled by `validate`, which has the order id that `validate_order` needs.
            Ok(())
        }
        EventBody::InventoryReserved(e) => validate_items(&e.items),
        EventBody::InventoryRejected(e) => validate_shortages(&e.shortages),
        EventBody::InventoryReleased(e) => validate_items(&e.items),
        EventBody::PaymentAuthorized(e) => {
            require("customer_id", &e.customer_id)?;
            require_amount("amount_minor", e.amount_minor)?;
            require_currency(&e.currency)
        }
        EventBody::PaymentDeclined(e) => {
            require("customer_id", &e.customer_id)?;
            require_amount("amount_minor", e.amount_minor)?;
            require_currency(&e.currency)
        }
        EventBody::PaymentVoided(e) => {
            require_amount("amount_minor", e.amount_minor)?;
            require_currency(&e.currency)
        }
        EventBody::OrderCompleted(e) => {
            require_amount("total_minor", e.total_minor)?;
            require_currency(&e.currency)
        }
        EventBody::OrderCancellationRequested(e) => {
            require("reason", &e.reason)?;
            require("requested_by", &e.requested_by)
        }
        EventBody::OrderCancellationAccepted(e) => require("reason", &e.reason),
        EventBody::OrderCancellationRejected(e) => require("reason", &e.reason),
        EventBody::SagaStepTimedOut(e) => {
            if !SAGA_STEPS.contains(&e.step.as_str()) {
                return Err(ValidationError::UnknownStep {
                    step: e.step.clone(),
                });
            }
            if e.attempts < 1 {
                return Err(ValidationError::NonPositiveAttempts {
                    attempts: e.attempts,
                });
            }
            Ok(())
        }
        // Free-text reasons, carriers and tracking numbers carry no rule the codec can check.
        EventBody::ShipmentScheduled(_)
        | EventBody::ShipmentFailed(_)
        | EventBody::ShipmentCancelled(_)
        | EventBody::OrderCancelled(_) => Ok(()),
        // Checked by `validate`, which has the order id their key rule needs.
        EventBody::StockAdjusted(_)
        | EventBody::CustomerBlocked(_)
        | EventBody::CustomerUnblocked(_)
        | EventBody::CustomerForgotten(_) => Ok(()),
    }
}

fn require_key(order_id: &str, expected: String) -> Result<(), ValidationError> {
    if order_id == expected {
        Ok(())
    } else {
        Err(ValidationError::WrongKey {
            expected,
            found: order_id.to_string(),
        })
    }
}

/// Checks one order line and returns its subtotal.
fn validate_line(line: usize, l: &OrderLine) -> Result<i64, ValidationError> {
    if is_blank(&l.sku) {
        return Err(ValidationError::MissingLineField { line, field: "sku" });
    }
    if l.quantity <= 0 {
        return Err(ValidationError::NonPositiveQuantity {
            line,
            sku: l.sku.clone(),
            quantity: l.quantity,
        });
    }
    if l.unit_price_minor < 0 {
        return Err(ValidationError::NegativePrice {
            line,
            sku: l.sku.clone(),
            price: l.unit_price_minor,
        });
    }
    i64::from(l.quantity)
        .checked_mul(l.unit_price_minor)
        .ok_or(ValidationError::TotalOverflow)
}

fn validate_items(items: &[SkuQuantity]) -> Result<(), ValidationError> {
    for (index, item) in items.iter().enumerate() {
        let line = index + 1;
        if is_blank(&item.sku) {
            return Err(ValidationError::MissingLineField { line, field: "sku" });
        }
        if item.quantity <= 0 {
            return Err(ValidationError::NonPositiveQuantity {
                line,
                sku: item.sku.clone(),
                quantity: item.quantity,
            });
        }
    }
    Ok(())
}

fn validate_shortages(shortages: &[Shortage]) -> Result<(), ValidationError> {
    // `requested` and `available` are facts reported by inventory; only the sku is a rule.
    for (index, s) in shortages.iter().enumerate() {
        if is_blank(&s.sku) {
            return Err(ValidationError::MissingLineField {
                line: index + 1,
                field: "sku",
            });
        }
    }
    Ok(())
}

fn validate_address(a: &Address) -> Result<(), ValidationError> {
    let c = a.country.as_bytes();
    if c.len() != 2 || !c.iter().all(u8::is_ascii_uppercase) {
        return Err(ValidationError::InvalidCountry {
            code: a.country.clone(),
        });
    }
    Ok(())
}

/// A plausible e-mail address, not a full RFC 5322 parser: bounded length, no whitespace or
/// control characters, exactly one `@`, a local part of 1 to 64 characters, and a domain of
/// dot-separated non-empty labels (at least two) that neither starts nor ends with `-`.
fn validate_contact(c: &Contact) -> Result<(), ValidationError> {
    let email = |reason: String| ValidationError::InvalidEmail { reason };
    let chars = c.email.chars().count();
    if !EMAIL_CHARS.contains(&chars) {
        return Err(email(format!(
            "must be {} to {} characters, got {chars}",
            EMAIL_CHARS.start(),
            EMAIL_CHARS.end()
        )));
    }
    if c.email
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(email(
            "must not contain spaces or control characters".into(),
        ));
    }
    let Some((local, domain)) = c.email.split_once('@') else {
        return Err(email("must contain an @".into()));
    };
    if domain.contains('@') {
        return Err(email("must contain exactly one @".into()));
    }
    if local.is_empty() || local.chars().count() > EMAIL_LOCAL_CHARS_MAX {
        return Err(email(format!(
            "must have 1 to {EMAIL_LOCAL_CHARS_MAX} characters before the @"
        )));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(email(format!(
            "domain {domain:?} must be dot-separated names, e.g. example.com"
        )));
    }
    if let Some(phone) = &c.phone {
        let invalid = |reason: String| ValidationError::InvalidPhone { reason };
        let chars = phone.chars().count();
        if !PHONE_CHARS.contains(&chars) {
            return Err(invalid(format!(
                "must be {} to {} characters, got {chars}",
                PHONE_CHARS.start(),
                PHONE_CHARS.end()
            )));
        }
        if let Some(bad) = phone
            .chars()
            .find(|ch| !(ch.is_ascii_digit() || " +-().".contains(*ch)))
        {
            return Err(invalid(format!(
                "may hold only digits, spaces and + - ( ) ., found {bad:?}"
            )));
        }
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        if digits < PHONE_DIGITS_MIN {
            return Err(invalid(format!(
                "must have at least {PHONE_DIGITS_MIN} digits, got {digits}"
            )));
        }
    }
    Ok(())
}

/// Sealed data is opaque here; only its parts' presence and sizes are checked.
fn validate_sealed(s: &SealedPersonal) -> Result<(), ValidationError> {
    let invalid = |field, reason: String| ValidationError::InvalidSealed { field, reason };
    for (field, value) in [("key_id", &s.key_id), ("algorithm", &s.algorithm)] {
        let chars = value.chars().count();
        if is_blank(value) || chars > SEALED_NAME_CHARS_MAX {
            return Err(invalid(
                field,
                format!("must be 1 to {SEALED_NAME_CHARS_MAX} characters, got {chars}"),
            ));
        }
    }
    for (field, len, max) in [
        ("nonce", s.nonce.len(), SEALED_NONCE_BYTES_MAX),
        (
            "ciphertext",
            s.ciphertext.len(),
            SEALED_CIPHERTEXT_BYTES_MAX,
        ),
    ] {
        if len == 0 || len > max {
            return Err(invalid(
                field,
                format!("must be 1 to {max} bytes, got {len}"),
            ));
        }
    }
    Ok(())
}

fn require(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if is_blank(value) {
        Err(ValidationError::MissingField { field })
    } else {
        Ok(())
    }
}

fn require_currency(code: &str) -> Result<(), ValidationError> {
    if is_known_currency(code) {
        Ok(())
    } else {
        Err(ValidationError::UnknownCurrency {
            code: code.to_owned(),
        })
    }
}

fn require_amount(field: &'static str, amount: i64) -> Result<(), ValidationError> {
    if amount < 0 {
        Err(ValidationError::NegativeAmount { field, amount })
    } else {
        Ok(())
    }
}

fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Active ISO 4217 currency codes (list of 2025), sorted. Fund codes (e.g. BOV, CLF, USN),
/// precious metals, SDR and the test/no-currency codes XTS/XXX are left out on purpose: an
/// order cannot be priced in them.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW",
    "ZWG",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_list_is_sorted_unique_and_well_formed() {
        for pair in CURRENCIES.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{} must sort before {}",
                pair[0],
                pair[1]
            );
        }
        for code in CURRENCIES {
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()),
                "{code}"
            );
        }
        assert!(CURRENCIES.len() >= 150, "{} codes", CURRENCIES.len());
    }

    #[test]
    fn known_and_unknown_currencies() {
        for code in [
            "EUR", "USD", "GBP", "JPY", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "CAD", "AUD",
            "NZD", "CNY", "INR", "BRL", "MXN", "ZAR", "SGD", "HKD", "KRW", "TRY",
        ] {
            assert!(is_known_currency(code), "{code} should be known");
        }
        for code in [
            "XXX", "XTS", "eur", "Eur", "EU", "EURO", "", " EUR", "DEM", "HRK",
        ] {
            assert!(!is_known_currency(code), "{code:?} should be unknown");
        }
    }
}

//! Order ids, idempotency keys, cursors and ETags: the pure pieces of the order endpoints.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Namespace of order ids derived from `Idempotency-Key`s.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_6170_692d_6b65);

/// Whether `id` is an acceptable order id: 1 to 64 characters of `A-Z a-z 0-9 - _ . :`.
pub fn is_order_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Whether `key` is an acceptable `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The order id of an order sent without one under `key` by `principal`: the same key from
/// the same principal is the same order; the same key from another principal is another.
pub fn order_id_from_key(principal: &str, key: &str) -> String {
    let mut name = Vec::with_capacity(principal.len() + key.len() + 1);
    name.extend_from_slice(principal.as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    format!("k-{}", Uuid::new_v5(&KEY_NAMESPACE, &name))
}

/// The hash a request document is compared by (of its canonical JSON, so whitespace and key
/// order do not matter).
pub fn document_hash(canonical: &[u8]) -> Vec<u8> {
    Sha256::digest(canonical).to_vec()
}

/// A position in `GET /v1/orders`: the last (created_at, order_id) of the page before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub order_id: String,
}

impl Cursor {
    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        let raw = format!(
            "v1|{}|{}",
            self.created_at.timestamp_micros(),
            self.order_id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything [`Cursor::encode`] did not make.
    pub fn decode(text: &str) -> Option<Cursor> {
        if text.len() > 200 {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        let mut parts = raw.splitn(3, '|');
        if parts.next()? != "v1" {
            return None;
        }
        let micros: i64 = parts.next()?.parse().ok()?;
        let order_id = parts.next()?;
        if !is_order_id(order_id) {
            return None;
        }
        Some(Cursor {
            created_at: DateTime::from_timestamp_micros(micros)?,
            order_id: order_id.to_string(),
        })
    }
}

/// A strong ETag (quoted) over `parts`: what identifies one version of a representation.
pub fn etag(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether an `If-None-Match` value matches `etag` (`*`, or a list containing it; a weak
/// `W/` validator of the same value matches, as RFC 9110 §13.1.2 compares weakly).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_per_principal_and_stable() {
        let a = order_id_from_key("svc-a", "key-1");
        assert_eq!(a, order_id_from_key("svc-a", "key-1"));
        assert_ne!(a, order_id_from_key("svc-b", "key-1"));
        assert_ne!(a, order_id_from_key("svc-a", "key-2"));
        // No ambiguity between (principal, key) splits.
        assert_ne!(order_id_from_key("a", "bc"), order_id_from_key("ab", "c"));
        assert!(is_order_id(&a));
    }

    #[test]
    fn ids_and_keys_are_checked() {
        for (id, ok) in [
            ("o-1", true),
            ("", false),
            ("a b", false),
            ("ü", false),
            (&*"x".repeat(65), false),
            ("a:b.c_d", true),
        ] {
            assert_eq!(is_order_id(id), ok, "{id:?}");
        }
        for (key, ok) in [
            ("k1", true),
            ("", false),
            ("a b", false),
            (&*"k".repeat(256), false),
        ] {
            assert_eq!(is_idempotency_key(key), ok, "{key:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_400_000_123_456).unwrap(),
            order_id: "o-1|x".replace('|', "-"),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "!!!",
            "djF8MXw",
            &URL_SAFE_NO_PAD.encode("v2|1|o"),
            &URL_SAFE_NO_PAD.encode("v1|x|o"),
            &URL_SAFE_NO_PAD.encode("v1|1|a b"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn etags_change_with_their_parts_and_match_lists() {
        let a = etag(&["o-1", "3", "PaymentAuthorized"]);
        assert_eq!(a, etag(&["o-1", "3", "PaymentAuthorized"]));
        assert_ne!(a, etag(&["o-1", "4", "PaymentAuthorized"]));
        assert_ne!(etag(&["ab", "c"]), etag(&["a", "bc"]));
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert!(none_match(&a, &a));
        assert!(none_match(&format!("\"zz\", {a}"), &a));
        assert!(none_match(&format!("W/{a}"), &a));
        assert!(none_match("*", &a));
        assert!(!none_match("\"zz\"", &a));
    }
}

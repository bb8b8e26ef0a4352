//! Which fields of an order are personal, and how they travel sealed.
//!
//! Personal: the shipping address's `name`, `line1`, `line2`, `city` and `postal_code`, and the
//! whole `contact` (email, phone). Not personal, kept in clear for the steps and analysts: the
//! customer id (an opaque id upstream systems issue; the README's producer contract forbids
//! putting an e-mail or a name there), the country, the lines, amounts and currency, and every
//! time. `docs/privacy.md` gives the reasons.
//!
//! Sealing moves the personal fields into `OrderCreated.sealed` — a JSON object encrypted under
//! the customer's data key with the order id as associated data — and leaves the placeholder
//! [`PLACEHOLDER`] in the clear text fields (`line2` and `contact` become null), so every reader
//! of the log still gets a valid order. Revealing needs the key: without it (destroyed by an
//! erasure) the fields read as [`Revealed::Erased`].

use events::{Address, Contact, OrderCreated, SealedPersonal};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{DataKey, ALGORITHM};

/// What a sealed order's clear personal text fields hold.
pub const PLACEHOLDER: &str = "sealed";
/// What an erased personal field reads as wherever it is shown.
pub const ERASED: &str = "erased";

/// The personal fields of one order, in clear (memory only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Personal {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl Personal {
    /// The personal fields of `order` as it stands (in clear).
    pub fn of(order: &OrderCreated) -> Personal {
        let a = &order.shipping_address;
        Personal {
            name: a.name.clone(),
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            postal_code: a.postal_code.clone(),
            email: order.contact.as_ref().map(|c| c.email.clone()),
            phone: order.contact.as_ref().and_then(|c| c.phone.clone()),
        }
    }

    /// The address with these personal fields and `country`.
    pub fn address(&self, country: &str) -> Address {
        Address {
            name: self.name.clone(),
            line1: self.line1.clone(),
            line2: self.line2.clone(),
            city: self.city.clone(),
            postal_code: self.postal_code.clone(),
            country: country.to_owned(),
        }
    }

    pub fn contact(&self) -> Option<Contact> {
        self.email.as_ref().map(|email| Contact {
            email: email.clone(),
            phone: self.phone.clone(),
        })
    }
}

/// The personal fields of an order as a reader gets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revealed {
    /// The order was never sealed (written before sealing, or with sealing off): its clear fields.
    Plain(Personal),
    /// Sealed, and the key opened it.
    Unsealed(Personal),
    /// Sealed under a key that no longer exists: the customer was forgotten.
    Erased,
}

/// Why an order could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("order {order_id} arrived with personal data already sealed; upstream producers send it in clear and leave `sealed` null")]
    AlreadySealed { order_id: String },
    #[error("data key {key_id} belongs to customer {key_customer:?}, not to {order_customer:?} of order {order_id}")]
    OtherCustomer {
        order_id: String,
        key_id: Uuid,
        key_customer: String,
        order_customer: String,
    },
}

/// Why a sealed order could not be opened with the key given. Every variant is a refusal:
/// nothing of the order's personal data is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("order {order_id} carries no sealed personal data")]
    NotSealed { order_id: String },
    #[error("order {order_id} names data key {found:?}, which is not a UUID")]
    BadKeyId { order_id: String, found: String },
    #[error("order {order_id} was sealed with key {sealed_with}, not with key {given}")]
    OtherKey {
        order_id: String,
        sealed_with: Uuid,
        given: Uuid,
    },
    #[error("order {order_id} is sealed with algorithm {0:?}; this build reads only {ALGORITHM}", .algorithm)]
    UnknownAlgorithm { order_id: String, algorithm: String },
    #[error("the sealed personal data of order {order_id} does not authenticate: a byte was changed, or it was sealed for another order id")]
    Tampered { order_id: String },
    #[error("the sealed personal data of order {order_id} opened but is not a personal record: {detail}")]
    Malformed { order_id: String, detail: String },
}

/// The associated data of an order's sealed fields: binds them to the order id.
fn aad(order_id: &str) -> Vec<u8> {
    format!("orderflow OrderCreated.sealed of order {order_id}").into_bytes()
}

/// Seal the personal fields of `order` (of `order_id`) under `key`: they move into
/// `order.sealed`, the clear ones become placeholders.
pub fn seal(order: &mut OrderCreated, order_id: &str, key: &DataKey) -> Result<(), SealError> {
    if order.sealed.is_some() {
        return Err(SealError::AlreadySealed {
            order_id: order_id.to_owned(),
        });
    }
    if key.customer_id != order.customer_id {
        return Err(SealError::OtherCustomer {
            order_id: order_id.to_owned(),
            key_id: key.id,
            key_customer: key.customer_id.clone(),
            order_customer: order.customer_id.clone(),
        });
    }
    let personal = Personal::of(order);
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&personal).expect("a struct of strings serializes"),
    );
    let (nonce, ciphertext) = key.seal(&aad(order_id), &plaintext);
    order.sealed = Some(SealedPersonal {
        key_id: key.id.to_string(),
        algorithm: ALGORITHM.to_owned(),
        nonce,
        ciphertext,
    });
    let a = &mut order.shipping_address;
    for field in [&mut a.name, &mut a.line1, &mut a.city, &mut a.postal_code] {
        *field = PLACEHOLDER.to_owned();
    }
    a.line2 = None;
    order.contact = None;
    Ok(())
}

/// The id of the key `order` was sealed with; `None` for an order never sealed.
pub fn sealed_key_id(order: &OrderCreated, order_id: &str) -> Result<Option<Uuid>, UnsealError> {
    let Some(sealed) = &order.sealed else {
        return Ok(None);
    };
    Uuid::parse_str(&sealed.key_id)
        .map(Some)
        .map_err(|_| UnsealError::BadKeyId {
            order_id: order_id.to_owned(),
            found: sealed.key_id.clone(),
        })
}

/// The personal fields sealed in `order`, opened with `key`.
pub fn unseal(
    order: &OrderCreated,
    order_id: &str,
    key: &DataKey,
) -> Result<Personal, UnsealError> {
    let Some(sealed) = &order.sealed else {
        return Err(UnsealError::NotSealed {
            order_id: order_id.to_owned(),
        });
    };
    open(sealed, order_id, key)
}

/// The personal fields of `sealed` (an order's, or a copy a step kept), opened with `key`.
pub fn open(
    sealed: &SealedPersonal,
    order_id: &str,
    key: &DataKey,
) -> Result<Personal, UnsealError> {
    let key_id = Uuid::parse_str(&sealed.key_id).map_err(|_| UnsealError::BadKeyId {
        order_id: order_id.to_owned(),
        found: sealed.key_id.clone(),
    })?;
    if key_id != key.id {
        return Err(UnsealError::OtherKey {
            order_id: order_id.to_owned(),
            sealed_with: key_id,
            given: key.id,
        });
    }
    if sealed.algorithm != ALGORITHM {
        return Err(UnsealError::UnknownAlgorithm {
            order_id: order_id.to_owned(),
            algorithm: sealed.algorithm.clone(),
        });
    }
    let plaintext = key
        .open(&aad(order_id), &sealed.nonce, &sealed.ciphertext)
        .ok_or_else(|| UnsealError::Tampered {
            order_id: order_id.to_owned(),
        })?;
    serde_json::from_slice(&plaintext).map_err(|e| UnsealError::Malformed {
        order_id: order_id.to_owned(),
        detail: e.to_string(),
    })
}

/// What a reader sees of `order`'s personal fields given the state of its key: `key` is the
/// live key it was sealed with, or `None` when that key was destroyed.
pub fn reveal(
    order: &OrderCreated,
    order_id: &str,
    key: Option<&DataKey>,
) -> Result<Revealed, UnsealError> {
    if order.sealed.is_none() {
        return Ok(Revealed::Plain(Personal::of(order)));
    }
    match key {
        Some(key) => unseal(order, order_id, key).map(Revealed::Unsealed),
        None => Ok(Revealed::Erased),
    }
}

/// A sealed copy as JSON, for a step that keeps it (`shipping.orders.address`).
pub fn sealed_to_json(sealed: &SealedPersonal) -> serde_json::Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "key_id": sealed.key_id,
        "algorithm": sealed.algorithm,
        "nonce": b64.encode(&sealed.nonce),
        "ciphertext": b64.encode(&sealed.ciphertext),
    })
}

/// The sealed copy [`sealed_to_json`] wrote; `None` if `value` is not one.
pub fn sealed_from_json(value: &serde_json::Value) -> Option<SealedPersonal> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = |k: &str| value.get(k).and_then(|v| v.as_str());
    Some(SealedPersonal {
        key_id: text("key_id")?.to_owned(),
        algorithm: text("algorithm")?.to_owned(),
        nonce: b64.decode(text("nonce")?).ok()?,
        ciphertext: b64.decode(text("ciphertext")?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::OrderLine;

    fn order(customer: &str) -> OrderCreated {
        OrderCreated {
            customer_id: customer.into(),
            lines: vec![OrderLine {
                sku: "S".into(),
                quantity: 1,
                unit_price_minor: 100,
            }],
            currency: "EUR".into(),
            shipping_address: Address {
                name: "Ada Lovelace".into(),
                line1: "12 St James's Square".into(),
                line2: Some("Flat 2".into()),
                city: "London".into(),
                postal_code: "SW1Y 4JH".into(),
                country: "GB".into(),
            },
            contact: Some(Contact {
                email: "ada@example.com".into(),
                phone: Some("+44 20 7946 0000".into()),
            }),
            sealed: None,
        }
    }

    #[test]
    fn sealing_hides_every_personal_field_and_unsealing_gives_them_back() {
        let key = DataKey::generate("c-1");
        let clear = order("c-1");
        let mut sealed = clear.clone();
        seal(&mut sealed, "o-1", &key).unwrap();
        let a = &sealed.shipping_address;
        assert_eq!(
            (
                a.name.as_str(),
                a.line1.as_str(),
                a.city.as_str(),
                a.postal_code.as_str()
            ),
            (PLACEHOLDER, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER)
        );
        assert_eq!((a.line2.clone(), sealed.contact.clone()), (None, None));
        // Non-personal facts stay in clear.
        assert_eq!(
            (
                &sealed.customer_id,
                &a.country,
                &sealed.lines,
                &sealed.currency
            ),
            (
                &clear.customer_id,
                &clear.shipping_address.country,
                &clear.lines,
                &clear.currency
            )
        );
        let bytes = &sealed.sealed.as_ref().unwrap().ciphertext;
        for secret in ["Ada", "London", "ada@example.com", "SW1Y"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret}"
            );
        }
        let personal = unseal(&sealed, "o-1", &key).unwrap();
        assert_eq!(personal, Personal::of(&clear));
        assert_eq!(personal.address("GB"), clear.shipping_address);
        assert_eq!(personal.contact(), clear.contact);
        assert_eq!(
            reveal(&sealed, "o-1", Some(&key)).unwrap(),
            Revealed::Unsealed(personal)
        );
        assert_eq!(reveal(&sealed, "o-1", None).unwrap(), Revealed::Erased);
        assert_eq!(
            reveal(&clear, "o-1", None).unwrap(),
            Revealed::Plain(Personal::of(&clear))
        );
        let copy = sealed_from_json(&sealed_to_json(sealed.sealed.as_ref().unwrap())).unwrap();
        assert_eq!(&copy, sealed.sealed.as_ref().unwrap());
    }

    #[test]
    fn a_changed_byte_another_order_id_or_another_key_is_refused_as_a_typed_error() {
        let key = DataKey::generate("c-1");
        let mut sealed = order("c-1");
        seal(&mut sealed, "o-1", &key).unwrap();
        let with = |change: &dyn Fn(&mut SealedPersonal)| {
            let mut o = sealed.clone();
            change(o.sealed.as_mut().unwrap());
            o
        };
        let tampered = UnsealError::Tampered {
            order_id: "o-1".into(),
        };
        let other = DataKey::generate("c-1");
        let cases: Vec<(&str, OrderCreated, &str, &DataKey, UnsealError)> = vec![
            (
                "ciphertext byte",
                with(&|s| s.ciphertext[0] ^= 0x40),
                "o-1",
                &key,
                tampered.clone(),
            ),
            (
                "tag byte",
                with(&|s| *s.ciphertext.last_mut().unwrap() ^= 1),
                "o-1",
                &key,
                tampered.clone(),
            ),
            (
                "nonce byte",
                with(&|s| s.nonce[5] ^= 1),
                "o-1",
                &key,
                tampered.clone(),
            ),
            (
                "truncated",
                with(&|s| s.ciphertext.truncate(4)),
                "o-1",
                &key,
                tampered.clone(),
            ),
            (
                "swapped order id",
                sealed.clone(),
                "o-2",
                &key,
                UnsealError::Tampered {
                    order_id: "o-2".into(),
                },
            ),
            (
                "another key",
                sealed.clone(),
                "o-1",
                &other,
                UnsealError::OtherKey {
                    order_id: "o-1".into(),
                    sealed_with: key.id,
                    given: other.id,
                },
            ),
            (
                "another algorithm",
                with(&|s| s.algorithm = "ROT13".into()),
                "o-1",
                &key,
                UnsealError::UnknownAlgorithm {
                    order_id: "o-1".into(),
                    algorithm: "ROT13".into(),
                },
            ),
            (
                "key id not a uuid",
                with(&|s| s.key_id = "k".into()),
                "o-1",
                &key,
                UnsealError::BadKeyId {
                    order_id: "o-1".into(),
                    found: "k".into(),
                },
            ),
            (
                "not sealed",
                order("c-1"),
                "o-1",
                &key,
                UnsealError::NotSealed {
                    order_id: "o-1".into(),
                },
            ),
        ];
        for (name, order, order_id, key, expected) in cases {
            assert_eq!(unseal(&order, order_id, key), Err(expected), "{name}");
        }
    }

    #[test]
    fn sealing_refuses_sealed_input_and_a_key_of_another_customer() {
        let key = DataKey::generate("c-1");
        let mut once = order("c-1");
        seal(&mut once, "o-1", &key).unwrap();
        let mut twice = once.clone();
        assert_eq!(
            seal(&mut twice, "o-1", &key),
            Err(SealError::AlreadySealed {
                order_id: "o-1".into()
            })
        );
        assert_eq!(twice, once);
        let mut theirs = order("c-2");
        assert!(matches!(
            seal(&mut theirs, "o-1", &key),
            Err(SealError::OtherCustomer { .. })
        ));
        assert_eq!(theirs, order("c-2"));
    }
}

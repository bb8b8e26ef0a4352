//! The intake: where upstream systems' orders enter the log. Upstream producers cannot seal
//! with our keys, so they publish plain `OrderCreated` (v1 or v2) to the intake topic
//! (`kafka.intake_topic`, short retention); this step reads it, refuses what is not a new
//! order in clear, seals each order's personal fields under its customer's data key
//! ([`privacy::seal`]) and appends the sealed `OrderCreated` to the order log.
//!
//! It is a [`Decider`] like every step, run by the same engine: its inbox `(intake, event_id)`
//! absorbs a re-delivered record, and the order goes to the log with the upstream record's own
//! metadata ([`Decider::forwards`]: same event id, order id, correlation, causation and time),
//! so even a record published twice by upstream appends one event id, which the steps'
//! inboxes and the projector absorb. Records it refuses are dead-lettered under consumer
//! `intake` with the reason: undecodable or invalid (by the engine, on decoding), another
//! event type, personal data already sealed.
//!
//! A customer's first order issues their data key: [`Decider::load`] takes the per-customer
//! advisory lock ([`KeyRing::lock_customers`]) inside the batch's transaction, reads the live
//! keys and issues the missing ones in memory; [`Decider::store`] inserts them. Two intake
//! members meeting the same new customer serialize on the lock, and the second finds the
//! first's key.
//!
//! With `privacy.seal = false` the intake forwards orders unsealed (to measure what sealing
//! costs; forgetting a customer then cannot erase their orders from the log).

use std::collections::HashMap;

use async_trait::async_trait;
use events::{Event, EventBody, EventType};
use privacy::keys::NewKey;
use privacy::{DataKey, KeyError, KeyRing};
use sqlx::PgConnection;

use crate::ports::Answers;
use crate::step::{Decider, Decline, Never, Source};
use crate::HandlerError;

pub const NAME: &str = "intake";

/// The intake step: seals with `keys`, or forwards in clear when sealing is off.
pub struct Intake {
    keys: Option<KeyRing>,
}

impl Intake {
    /// Seal every order with its customer's data key from `keys`.
    pub fn sealing(keys: KeyRing) -> Self {
        Intake { keys: Some(keys) }
    }

    /// Forward orders in clear (`privacy.seal = false`).
    pub fn unsealed() -> Self {
        Intake { keys: None }
    }
}

/// The data keys a batch seals with: live ones, and those issued for it (to store).
#[derive(Debug, Clone, Default)]
pub struct BatchKeys {
    live: HashMap<String, DataKey>,
    issued: Vec<NewKey>,
}

impl BatchKeys {
    /// Keys already known, for tests.
    #[cfg(test)]
    fn of(keys: &[DataKey]) -> Self {
        BatchKeys {
            live: keys
                .iter()
                .map(|k| (k.customer_id.clone(), k.clone()))
                .collect(),
            issued: Vec::new(),
        }
    }
}

fn key_error(error: KeyError) -> HandlerError {
    match error {
        KeyError::Database(e) => HandlerError::Database(e),
        // Not the record's fault: the batch fails and the intake stops with the message.
        wrong @ KeyError::WrongMasterKey { .. } => HandlerError::Rule(wrong.to_string()),
    }
}

/// The customers whose orders in `events` the intake will seal.
fn customers_to_seal<'a>(events: &[&'a Event]) -> Vec<&'a str> {
    let mut customers: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::OrderCreated(order) if order.sealed.is_none() => {
                Some(order.customer_id.as_str())
            }
            _ => None,
        })
        .collect();
    customers.sort_unstable();
    customers.dedup();
    customers
}

#[async_trait]
impl Decider for Intake {
    type State = BatchKeys;
    type Question = Never;
    type Answer = ();

    fn name(&self) -> &'static str {
        NAME
    }

    /// Every type: what is not an `OrderCreated` is refused with its reason, never skipped.
    fn wants(&self, _event_type: EventType) -> bool {
        true
    }

    fn source(&self) -> Source {
        Source::Intake
    }

    fn forwards(&self) -> bool {
        true
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
        lock: bool,
    ) -> Result<BatchKeys, HandlerError> {
        let Some(ring) = &self.keys else {
            return Ok(BatchKeys::default());
        };
        let customers = customers_to_seal(events);
        if customers.is_empty() {
            return Ok(BatchKeys::default());
        }
        if lock {
            KeyRing::lock_customers(conn, &customers).await?;
        }
        let mut live = ring.live(conn, &customers).await.map_err(key_error)?;
        let mut issued = Vec::new();
        for customer in customers {
            if !live.contains_key(customer) {
                let new = ring.issue(customer);
                live.insert(customer.to_owned(), new.key.clone());
                issued.push(new);
            }
        }
        Ok(BatchKeys { live, issued })
    }

    fn decide(
        &self,
        state: &mut BatchKeys,
        event: &Event,
        _answers: &Answers<()>,
    ) -> Result<Vec<EventBody>, Decline<Never>> {
        let order_id = &event.meta.order_id;
        let EventBody::OrderCreated(order) = &event.body else {
            return Err(HandlerError::Rule(format!(
                "the intake takes only OrderCreated, and event {} (key {order_id}) is {}: \
                 upstream producers publish new orders only; other events are appended by \
                 orderflow itself",
                event.meta.event_id,
                event.event_type()
            ))
            .into());
        };
        events::validate(event).map_err(|error| {
            HandlerError::Rule(format!(
                "OrderCreated of order {order_id} is invalid: {error}"
            ))
        })?;
        let mut order = order.clone();
        if order.sealed.is_some() {
            return Err(HandlerError::Rule(
                privacy::SealError::AlreadySealed {
                    order_id: order_id.clone(),
                }
                .to_string(),
            )
            .into());
        }
        if self.keys.is_some() {
            let key = state.live.get(&order.customer_id).ok_or_else(|| {
                HandlerError::Rule(format!(
                    "no data key was loaded for customer {:?} of order {order_id}",
                    order.customer_id
                ))
            })?;
            privacy::seal(&mut order, order_id, key)
                .map_err(|error| HandlerError::Rule(error.to_string()))?;
        }
        Ok(vec![EventBody::OrderCreated(order)])
    }

    async fn store(&self, tx: &mut PgConnection, state: &BatchKeys) -> Result<(), HandlerError> {
        KeyRing::insert(tx, &state.issued).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given;
    use events::{Contact, InventoryReserved, SealedPersonal};
    use privacy::MasterKey;

    fn ring() -> KeyRing {
        KeyRing::new(MasterKey::from_base64(&MasterKey::generate_base64()).unwrap())
    }

    fn order_of(event: &Event) -> &events::OrderCreated {
        match &event.body {
            EventBody::OrderCreated(order) => order,
            other => panic!("not an order: {other:?}"),
        }
    }

    fn with_contact(mut event: Event) -> Event {
        if let EventBody::OrderCreated(order) = &mut event.body {
            order.contact = Some(Contact {
                email: "greta@example.com".into(),
                phone: None,
            });
        }
        event
    }

    #[test]
    fn orders_are_sealed_and_everything_else_is_refused_with_its_reason() {
        let key = DataKey::generate("c1");
        let plain = with_contact(given::created("o1", &[("SKU-A", 1, 100)], "SE"));
        let mut sealed_upstream = plain.clone();
        if let EventBody::OrderCreated(order) = &mut sealed_upstream.body {
            order.sealed = Some(SealedPersonal {
                key_id: uuid::Uuid::nil().to_string(),
                algorithm: privacy::ALGORITHM.into(),
                nonce: vec![0; 12],
                ciphertext: vec![0; 32],
            });
        }
        let reply = given::event(
            "o1",
            "reserved",
            EventBody::InventoryReserved(InventoryReserved {
                reservation_id: uuid::Uuid::nil(),
                items: Vec::new(),
            }),
        );
        let mut invalid = plain.clone();
        if let EventBody::OrderCreated(order) = &mut invalid.body {
            order.lines.clear();
        }
        let sealing = Intake::sealing(ring());
        let with_key = std::slice::from_ref(&key);
        // (name, intake, record, keys loaded, Ok or a part of the refusal's reason)
        type Case<'a> = (
            &'a str,
            &'a Intake,
            &'a Event,
            &'a [DataKey],
            Result<(), &'a str>,
        );
        let cases: [Case; 6] = [
            (
                "a plain order is sealed",
                &sealing,
                &plain,
                with_key,
                Ok(()),
            ),
            (
                "another type is refused",
                &sealing,
                &reply,
                with_key,
                Err("is InventoryReserved"),
            ),
            (
                "already sealed is refused",
                &sealing,
                &sealed_upstream,
                with_key,
                Err("already sealed"),
            ),
            (
                "an invalid order is refused",
                &sealing,
                &invalid,
                with_key,
                Err("is invalid"),
            ),
            ("no key loaded", &sealing, &plain, &[], Err("no data key")),
            (
                "sealing off forwards in clear",
                &Intake::unsealed(),
                &plain,
                &[],
                Ok(()),
            ),
        ];
        for (name, intake, event, keys, expected) in cases {
            let mut state = BatchKeys::of(keys);
            let got = intake.decide(&mut state, event, &Answers::new());
            match (got, expected) {
                (Ok(bodies), Ok(())) => {
                    assert_eq!(bodies.len(), 1, "{name}");
                    let EventBody::OrderCreated(out) = &bodies[0] else {
                        panic!("{name}: not an order")
                    };
                    let original = order_of(event);
                    if intake.keys.is_some() {
                        assert!(out.sealed.is_some(), "{name}");
                        assert_eq!(out.shipping_address.name, privacy::personal::PLACEHOLDER);
                        assert_eq!(out.contact, None, "{name}");
                        let opened = privacy::unseal(out, "o1", &key).expect(name);
                        assert_eq!(opened, privacy::Personal::of(original), "{name}");
                        assert_eq!(
                            (&out.lines, &out.currency, &out.customer_id),
                            (&original.lines, &original.currency, &original.customer_id),
                            "{name}: the facts stay in clear"
                        );
                    } else {
                        assert_eq!(out, original, "{name}");
                    }
                }
                (Err(Decline::Fail(error)), Err(part)) => {
                    let text = error.to_string();
                    assert!(text.contains(part), "{name}: {text}");
                    assert!(!error.is_retryable(), "{name}: permanent");
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn keys_are_looked_up_only_for_plain_orders_once_per_customer() {
        let a = given::created("o1", &[("SKU-A", 1, 100)], "SE");
        let b = given::created("o2", &[("SKU-A", 1, 100)], "SE");
        let reply = given::event(
            "o3",
            "reserved",
            EventBody::InventoryReserved(InventoryReserved {
                reservation_id: uuid::Uuid::nil(),
                items: Vec::new(),
            }),
        );
        assert_eq!(customers_to_seal(&[&a, &reply, &b]), ["c1"]);
        assert!(customers_to_seal(&[&reply]).is_empty());
    }
}

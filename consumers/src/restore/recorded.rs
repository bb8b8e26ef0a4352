//! What the archive says the steps decided, and the stand-ins for the outside world that
//! answer from it during a restore.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use events::{Event, EventBody};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use uuid::Uuid;

use crate::inventory::{Decision, Decisions};
use crate::payment::{AuthorizationDecision, AuthorizationRequest, PaymentProvider};
use crate::shipping::{Carrier, CarrierDecision, ShipmentRequest};
use crate::HandlerError;

/// What the archive says the steps decided and emitted, gathered in a first pass over it.
#[derive(Debug, Default)]
pub struct Recorded {
    /// A digest of every archived event's body, by event id.
    pub(super) bodies: HashMap<Uuid, u64>,
    pub(super) reservations: Decisions,
    /// Payment decisions by the idempotency key the provider was asked with.
    authorizations: HashMap<Uuid, AuthorizationDecision>,
    /// Idempotency keys of the voids the archive shows done.
    voids: HashSet<Uuid>,
    /// Carrier decisions by shipment id.
    shipments: HashMap<Uuid, CarrierDecision>,
    cancelled_shipments: HashSet<Uuid>,
    /// The saga's timeout markers, by the event after which the deadline watch gave up.
    pub(super) timeouts: HashMap<Uuid, Event>,
    /// Records that do not decode (the live steps dead-lettered them; so will the restore).
    pub undecodable: u64,
    /// Every archived `CustomerForgotten`: the customer and the keys destroyed, for a restore
    /// to destroy them again after importing a key backup.
    pub forgotten: Vec<(String, Vec<Uuid>)>,
}

impl Recorded {
    /// Take in one archived record; a record that does not decode is counted and its reason
    /// returned.
    pub fn observe(&mut self, message: &OwnedMessage) -> Result<(), String> {
        let decoded = match message.payload() {
            None => Err("record has no value".to_string()),
            Some(payload) => events::decode(payload).map_err(|e| e.to_string()),
        };
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => {
                self.undecodable += 1;
                return Err(reason);
            }
        };
        self.bodies.insert(event.meta.event_id, digest(&event.body));
        let cause = event.meta.causation_id;
        match &event.body {
            EventBody::InventoryReserved(_) => {
                self.reservations.insert(cause, Decision::Reserved);
            }
            EventBody::InventoryRejected(rejected) => {
                self.reservations.insert(
                    cause,
                    Decision::Rejected {
                        reason: rejected.reason.clone(),
                        shortages: rejected.shortages.clone(),
                    },
                );
            }
            EventBody::PaymentAuthorized(authorized) => {
                self.authorizations.insert(
                    authorized.payment_id,
                    AuthorizationDecision::Authorized {
                        provider_reference: authorized.provider_reference.clone(),
                    },
                );
            }
            EventBody::PaymentDeclined(declined) => {
                self.authorizations.insert(
                    events::reply_event_id(cause, "payment-id"),
                    AuthorizationDecision::Declined {
                        reason: declined.reason.clone(),
                    },
                );
            }
            EventBody::PaymentVoided(_) => {
                self.voids
                    .insert(events::reply_event_id(cause, "payment-void"));
            }
            EventBody::ShipmentScheduled(scheduled) => {
                self.shipments.insert(
                    scheduled.shipment_id,
                    CarrierDecision::Scheduled {
                        tracking_number: scheduled.tracking_number.clone(),
                    },
                );
            }
            EventBody::ShipmentFailed(failed) => {
                self.shipments.insert(
                    events::reply_event_id(cause, "shipment-id"),
                    CarrierDecision::Refused {
                        reason: failed.reason.clone(),
                    },
                );
            }
            EventBody::ShipmentCancelled(cancelled) => {
                self.cancelled_shipments.insert(cancelled.shipment_id);
            }
            EventBody::SagaStepTimedOut(_) => {
                self.timeouts.insert(cause, event);
            }
            EventBody::CustomerForgotten(forgotten) => {
                self.forgotten
                    .push((forgotten.customer_id.clone(), forgotten.key_ids.clone()));
            }
            _ => {}
        }
        Ok(())
    }

    /// How many decodable events were taken in.
    pub fn events(&self) -> usize {
        self.bodies.len()
    }
}

/// A digest of an event body, to compare a rebuilt reply with its archived copy.
pub(super) fn digest(body: &EventBody) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{body:?}").hash(&mut hasher);
    hasher.finish()
}

fn not_archived(what: String) -> HandlerError {
    HandlerError::Provider {
        provider: "archive",
        message: format!(
            "{what} is not in the archive; the order waits for the live step to ask again"
        ),
        retryable: true,
    }
}

/// A payment provider that answers from the archive and never calls out.
pub struct RecordedProvider {
    pub(super) recorded: Arc<Recorded>,
}

#[async_trait]
impl PaymentProvider for RecordedProvider {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError> {
        self.recorded
            .authorizations
            .get(&request.idempotency_key)
            .cloned()
            .ok_or_else(|| {
                not_archived(format!("the answer to payment {}", request.idempotency_key))
            })
    }

    async fn void(
        &self,
        _provider_reference: &str,
        idempotency_key: Uuid,
    ) -> Result<(), HandlerError> {
        if self.recorded.voids.contains(&idempotency_key) {
            Ok(())
        } else {
            Err(not_archived(format!("the void {idempotency_key}")))
        }
    }
}

/// A carrier that answers from the archive and never books or cancels anything.
pub struct RecordedCarrier {
    pub(super) name: String,
    pub(super) recorded: Arc<Recorded>,
}

#[async_trait]
impl Carrier for RecordedCarrier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn schedule(&self, request: &ShipmentRequest) -> Result<CarrierDecision, HandlerError> {
        self.recorded
            .shipments
            .get(&request.shipment_id)
            .cloned()
            .ok_or_else(|| {
                not_archived(format!(
                    "the carrier's answer for shipment {}",
                    request.shipment_id
                ))
            })
    }

    async fn cancel(&self, shipment_id: Uuid, _tracking_number: &str) -> Result<(), HandlerError> {
        if self.recorded.cancelled_shipments.contains(&shipment_id) {
            Ok(())
        } else {
            Err(not_archived(format!(
                "the cancellation of shipment {shipment_id}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use events::{
        InventoryRejected, InventoryReserved, Metadata, PaymentAuthorized, PaymentDeclined,
        PaymentVoided, ShipmentCancelled, ShipmentFailed, ShipmentScheduled, Shortage,
    };
    use rdkafka::Timestamp;

    fn archived(offset: i64, cause: Uuid, body: EventBody) -> OwnedMessage {
        let event = Event {
            meta: Metadata {
                event_id: Uuid::new_v4(),
                order_id: "o-1".into(),
                occurred_at: Utc::now(),
                correlation_id: cause,
                causation_id: cause,
            },
            body,
        };
        let payload = events::encode(&event).expect("encodes");
        OwnedMessage::new(
            Some(payload),
            Some(b"o-1".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    fn not_asked<T: std::fmt::Debug>(answer: Result<T, HandlerError>) -> bool {
        matches!(answer, Err(ref e) if e.is_retryable() && e.to_string().contains("not in the archive"))
    }

    #[tokio::test]
    async fn the_archive_answers_what_the_live_steps_were_told_and_nothing_else() {
        let (reserved, rejected, authorized, declined, voided, scheduled, refused, cancelled) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let (payment_id, shipment_id, cancelled_shipment) =
            (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let shortage = Shortage {
            sku: "A".into(),
            requested: 3,
            available: 1,
        };
        let log = [
            archived(
                0,
                reserved,
                EventBody::InventoryReserved(InventoryReserved {
                    reservation_id: Uuid::new_v4(),
                    items: vec![],
                }),
            ),
            archived(
                1,
                rejected,
                EventBody::InventoryRejected(InventoryRejected {
                    reason: "insufficient stock for A".into(),
                    shortages: vec![shortage.clone()],
                }),
            ),
            archived(
                2,
                authorized,
                EventBody::PaymentAuthorized(PaymentAuthorized {
                    payment_id,
                    customer_id: "c".into(),
                    amount_minor: 100,
                    currency: "EUR".into(),
                    provider_reference: "ref-1".into(),
                }),
            ),
            archived(
                3,
                declined,
                EventBody::PaymentDeclined(PaymentDeclined {
                    customer_id: "c".into(),
                    amount_minor: 100,
                    currency: "EUR".into(),
                    reason: "amount_over_limit".into(),
                }),
            ),
            archived(
                4,
                voided,
                EventBody::PaymentVoided(PaymentVoided {
                    payment_id,
                    amount_minor: 100,
                    currency: "EUR".into(),
                    reason: "shipment_failed".into(),
                }),
            ),
            archived(
                5,
                scheduled,
                EventBody::ShipmentScheduled(ShipmentScheduled {
                    shipment_id,
                    carrier: "sim".into(),
                    tracking_number: "TRK1".into(),
                }),
            ),
            archived(
                6,
                refused,
                EventBody::ShipmentFailed(ShipmentFailed {
                    carrier: "sim".into(),
                    reason: "destination_not_served".into(),
                }),
            ),
            archived(
                7,
                cancelled,
                EventBody::ShipmentCancelled(ShipmentCancelled {
                    shipment_id: cancelled_shipment,
                    carrier: "sim".into(),
                    reason: "cancellation_requested".into(),
                }),
            ),
        ];
        let mut recorded = Recorded::default();
        for message in &log {
            recorded.observe(message).expect("decodes");
        }
        let garbage = log[0].clone().set_payload(Some(b"not an event".to_vec()));
        assert!(recorded.observe(&garbage).is_err());
        assert_eq!((recorded.events(), recorded.undecodable), (8, 1));

        assert_eq!(
            recorded.reservations.get(&reserved),
            Some(&Decision::Reserved)
        );
        assert_eq!(
            recorded.reservations.get(&rejected),
            Some(&Decision::Rejected {
                reason: "insufficient stock for A".into(),
                shortages: vec![shortage]
            })
        );
        assert_eq!(recorded.reservations.get(&authorized), None);

        let recorded = Arc::new(recorded);
        let provider = RecordedProvider {
            recorded: recorded.clone(),
        };
        let ask = |key| AuthorizationRequest {
            idempotency_key: key,
            customer_id: "c".into(),
            amount_minor: 100,
            currency: "EUR".into(),
        };
        let cases = [
            (
                payment_id,
                Some(AuthorizationDecision::Authorized {
                    provider_reference: "ref-1".into(),
                }),
            ),
            (
                events::reply_event_id(declined, "payment-id"),
                Some(AuthorizationDecision::Declined {
                    reason: "amount_over_limit".into(),
                }),
            ),
            (events::reply_event_id(authorized, "payment-id"), None),
            (Uuid::new_v4(), None),
        ];
        for (key, want) in cases {
            let answer = provider.authorize(&ask(key)).await;
            match want {
                Some(want) => assert_eq!(answer.expect("archived"), want),
                None => assert!(not_asked(answer), "{key}"),
            }
        }
        let void_key = events::reply_event_id(voided, "payment-void");
        assert!(provider.void("ref-1", void_key).await.is_ok());
        assert!(not_asked(provider.void("ref-1", Uuid::new_v4()).await));

        let carrier = RecordedCarrier {
            name: "sim".into(),
            recorded,
        };
        let book = |shipment_id| ShipmentRequest {
            shipment_id,
            order_id: "o-1".into(),
            country: "DE".into(),
            address: None,
        };
        assert_eq!(
            carrier
                .schedule(&book(shipment_id))
                .await
                .expect("archived"),
            CarrierDecision::Scheduled {
                tracking_number: "TRK1".into()
            }
        );
        assert_eq!(
            carrier
                .schedule(&book(events::reply_event_id(refused, "shipment-id")))
                .await
                .expect("archived"),
            CarrierDecision::Refused {
                reason: "destination_not_served".into()
            }
        );
        assert!(not_asked(carrier.schedule(&book(Uuid::new_v4())).await));
        assert!(carrier.cancel(cancelled_shipment, "TRK9").await.is_ok());
        assert!(not_asked(carrier.cancel(shipment_id, "TRK1").await));
    }
}

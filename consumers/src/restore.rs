//! Rebuilding the steps' state from an archived log, without repeating any side effect.
//!
//! Each step runs its own batch code ([`attempt_batch`]: inbox, handler, outbox) over the
//! archive in log order, so the state it builds is the state the live step built. What the
//! live step learned from the outside world comes from the archive instead of being asked
//! again: the payment provider and the carrier are replaced by [`RecordedProvider`] and
//! [`RecordedCarrier`], which answer with the decisions the archived replies hold, and the
//! inventory step applies its archived reservation decisions ([`Inventory::replaying`]),
//! since the order in which orders of different partitions met the stock is not on the log,
//! and books their stock once at the end ([`StepReplay::finish`]).
//!
//! Every reply a step produces is compared with its archived copy (same id, same body); a
//! difference stops the restore. Replies found in the archive are marked published; replies
//! the archive does not hold stay in the outbox, and the step's relay publishes them when it
//! starts. A provider or carrier question whose answer the archive does not hold is not asked:
//! the order is parked, and the live step asks again, with the same idempotency key, once it
//! runs.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use events::{Event, EventBody};
use platform::deadletter::{ErrorClass, FailedAttempt};
use platform::Settings;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::inventory::{Decision, Decisions, Inventory};
use crate::payment::{AuthorizationDecision, AuthorizationRequest, Payment, PaymentProvider};
use crate::runner::{self, attempt_batch, BatchError, Disposition, Excluded, Identity, Mode};
use crate::saga::{self, OrderSaga};
use crate::shipping::{Carrier, CarrierDecision, ShipmentRequest, Shipping};
use crate::{HandlerError, Step};

/// What the archive says the steps decided and emitted, gathered in a first pass over it.
#[derive(Debug, Default)]
pub struct Recorded {
    /// A digest of every archived event's body, by event id.
    bodies: HashMap<Uuid, u64>,
    reservations: Decisions,
    /// Payment decisions by the idempotency key the provider was asked with.
    authorizations: HashMap<Uuid, AuthorizationDecision>,
    /// Idempotency keys of the voids the archive shows done.
    voids: HashSet<Uuid>,
    /// Carrier decisions by shipment id.
    shipments: HashMap<Uuid, CarrierDecision>,
    cancelled_shipments: HashSet<Uuid>,
    /// The saga's timeout markers, by the event after which the deadline watch gave up.
    timeouts: HashMap<Uuid, Event>,
    /// Records that do not decode (the live steps dead-lettered them; so will the restore).
    pub undecodable: u64,
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
fn digest(body: &EventBody) -> u64 {
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
    recorded: Arc<Recorded>,
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
    name: String,
    recorded: Arc<Recorded>,
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

/// What replaying one step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepTotals {
    pub applied: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
    /// Records held because an answer was not archived; the live step resumes them.
    pub parked: usize,
    /// Replies found in the archive (marked published).
    pub replies_archived: usize,
    /// Replies and dead letters the archive does not hold, left for the step's relay.
    pub left_to_publish: usize,
}

struct Replayed {
    step: Arc<dyn Step>,
    identity: Identity,
    totals: StepTotals,
}

/// The four steps, replaying an archive batch by batch.
pub struct StepReplay {
    recorded: Arc<Recorded>,
    steps: Vec<Replayed>,
    topic: String,
}

impl StepReplay {
    /// The steps as configured in `settings`, with their outside world replaced by `recorded`.
    pub fn new(settings: &Settings, recorded: Recorded) -> StepReplay {
        let recorded = Arc::new(recorded);
        let steps: Vec<Arc<dyn Step>> = vec![
            Arc::new(Inventory::replaying(Arc::new(
                recorded.reservations.clone(),
            ))),
            Arc::new(Payment::new(Arc::new(RecordedProvider {
                recorded: recorded.clone(),
            }))),
            Arc::new(Shipping::new(Arc::new(RecordedCarrier {
                name: settings.shipping.carrier.clone(),
                recorded: recorded.clone(),
            }))),
            Arc::new(OrderSaga::new(settings.saga.clone())),
        ];
        StepReplay {
            steps: steps
                .into_iter()
                .map(|step| Replayed {
                    identity: runner::identity(step.as_ref(), settings),
                    step,
                    totals: StepTotals::default(),
                })
                .collect(),
            recorded,
            topic: settings.kafka.topic.clone(),
        }
    }

    /// Replay one batch of archived records (in log order) through every step.
    pub async fn apply(&mut self, pool: &PgPool, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let ids: Vec<Option<Uuid>> = batch
            .iter()
            .map(|m| {
                m.payload()
                    .and_then(|p| events::decode(p).ok())
                    .map(|e| e.meta.event_id)
            })
            .collect();
        // The steps' states are disjoint: they replay the batch side by side.
        let (recorded, topic, ids) = (&self.recorded, self.topic.as_str(), ids.as_slice());
        let work = self
            .steps
            .iter_mut()
            .map(|replayed| replay_batch(pool, recorded, topic, ids, replayed, batch));
        futures::future::try_join_all(work).await?;
        Ok(())
    }

    /// After the last batch: book what the rebuilt reservations hold on the stock (see
    /// [`crate::inventory::settle_replayed_stock`]).
    pub async fn finish(&self, pool: &PgPool) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        crate::inventory::settle_replayed_stock(&mut tx)
            .await
            .map_err(|e| anyhow::anyhow!("inventory: {e}"))?;
        tx.commit().await?;
        Ok(())
    }

    /// Each step's name and totals.
    pub fn totals(&self) -> Vec<(&'static str, StepTotals)> {
        self.steps
            .iter()
            .map(|s| (s.identity.name, s.totals.clone()))
            .collect()
    }

    /// Consumer groups of the steps, to commit at the archive's end.
    pub fn groups(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| s.identity.group.clone())
            .collect()
    }
}

/// One step, one batch. The saga's batch is replayed in pieces that end where the deadline
/// watch gave an order up: right after the saga applied the event the marker names as cause.
async fn replay_batch(
    pool: &PgPool,
    recorded: &Recorded,
    topic: &str,
    ids: &[Option<Uuid>],
    replayed: &mut Replayed,
    batch: &[OwnedMessage],
) -> anyhow::Result<()> {
    if replayed.identity.name != saga::NAME {
        return apply_step(pool, recorded, replayed, batch).await;
    }
    let mut start = 0;
    for (i, id) in ids.iter().enumerate() {
        let Some(marker) = id.and_then(|id| recorded.timeouts.get(&id)) else {
            continue;
        };
        apply_step(pool, recorded, replayed, &batch[start..=i]).await?;
        start = i + 1;
        let mut tx = pool.begin().await?;
        let rows = saga::replay_timeout(&mut tx, topic, marker)
            .await
            .map_err(|e| anyhow::anyhow!("saga: {e}"))?;
        mark_published(&mut tx, &rows.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
        tx.commit().await?;
        replayed.totals.replies_archived += rows.len();
    }
    apply_step(pool, recorded, replayed, &batch[start..]).await
}

/// One step, one batch: as the live runner does it, in one transaction, except that a failure
/// the live step never had (a divergence, a database error) stops the restore.
async fn apply_step(
    pool: &PgPool,
    recorded: &Recorded,
    replayed: &mut Replayed,
    batch: &[OwnedMessage],
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let name = replayed.identity.name;
    let mut excluded = Excluded::new();
    // Records before `start` are committed; the next attempt covers `start..end`. After a
    // record fails, the attempt is cut right after it, so what precedes it commits once and
    // is not applied again for every later failure of the same batch.
    let (mut start, mut end) = (0, batch.len());
    while start < batch.len() {
        let slice = &batch[start..end];
        let mut tx = pool.begin().await?;
        let attempt = attempt_batch(
            replayed.step.as_ref(),
            &replayed.identity,
            &mut tx,
            slice,
            &excluded,
            Mode::Consume,
        )
        .await;
        let (position, error) = match attempt {
            Ok((outcome, rows)) => {
                let mut archived = Vec::with_capacity(rows.len());
                for row in &rows {
                    let record = &row.record;
                    let Some(archived_digest) = recorded.bodies.get(&record.event_id) else {
                        replayed.totals.left_to_publish += 1;
                        continue;
                    };
                    let rebuilt = record
                        .payload
                        .as_deref()
                        .and_then(|p| events::decode(p).ok())
                        .map(|e| digest(&e.body));
                    anyhow::ensure!(
                        rebuilt == Some(*archived_digest),
                        "{name} rebuilt reply {} ({}, order {}) differs from its archived copy; \
                         the restore stops",
                        record.event_id,
                        record.event_type,
                        record.order_id
                    );
                    archived.push(row.id);
                }
                mark_published(&mut tx, &archived).await?;
                tx.commit().await?;
                let totals = &mut replayed.totals;
                totals.applied += outcome.applied;
                totals.duplicates += outcome.duplicates;
                totals.dead_lettered += outcome.dead_lettered;
                totals.parked += outcome.parked;
                totals.replies_archived += archived.len();
                (start, end) = (end, batch.len());
                continue;
            }
            Err(BatchError::Record { position, error }) => (position, error),
            Err(BatchError::Batch(error)) => {
                return Err(error.context(format!("{name} cannot replay a batch")))
            }
        };
        drop(tx);
        if let Some(i) = slice
            .iter()
            .position(|m| (m.partition(), m.offset()) == position)
        {
            end = start + i + 1;
        }
        let attempt = |class| FailedAttempt {
            at: Utc::now(),
            class,
            kind: error.kind().into(),
            error: error.to_string(),
        };
        match &error {
            HandlerError::Diverged(_) | HandlerError::Database(_) => anyhow::bail!(
                "{name} cannot replay the record at partition {} offset {}: {error}",
                position.0,
                position.1
            ),
            e if e.is_retryable() => {
                excluded.insert(
                    position,
                    Disposition::Park(vec![attempt(ErrorClass::Retryable)]),
                );
            }
            _ => {
                excluded.insert(
                    position,
                    Disposition::DeadLetter(vec![attempt(ErrorClass::Permanent)]),
                );
            }
        }
    }
    Ok(())
}

async fn mark_published(tx: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE pipeline.outbox SET published_at = now() WHERE id = ANY($1)")
        .persistent(false)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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

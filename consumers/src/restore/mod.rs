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

mod recorded;

use std::sync::Arc;

use platform::config::KafkaSettings;
use platform::outbox;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::{self, attempt, disposition, Attempted, BatchError, Excluded, Identity, Mode};
use crate::inventory::Inventory;
use crate::payment::Payment;
use crate::ports::CallSettings;
use crate::saga::{self, OrderSaga, SagaSettings};
use crate::shipping::{Shipping, ShippingSettings};
use crate::{HandlerError, Step};
use recorded::digest;
pub use recorded::{Recorded, RecordedCarrier, RecordedProvider};

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
    /// The steps on the log of `kafka`, as `shipping` (the carrier's name) and `deadlines` (the
    /// `[saga]` section) configure them, with their outside world replaced by `recorded`.
    /// `keys` lets the shipping step check and keep sealed addresses as the live step did;
    /// without it (or without the keys imported) sealed addresses are kept unchecked, and the
    /// recorded carrier answers from the archive all the same.
    pub fn new(
        kafka: &KafkaSettings,
        shipping: &ShippingSettings,
        deadlines: &SagaSettings,
        recorded: Recorded,
        keys: Option<privacy::KeyRing>,
    ) -> StepReplay {
        let recorded = Arc::new(recorded);
        let steps: Vec<Arc<dyn Step>> = vec![
            crate::step(Inventory::replaying(Arc::new(
                recorded.reservations.clone(),
            ))),
            crate::step(Payment::with_calls(
                Arc::new(RecordedProvider {
                    recorded: recorded.clone(),
                }),
                &replay_calls(),
            )),
            crate::step(
                Shipping::with_calls(
                    Arc::new(RecordedCarrier {
                        name: shipping.carrier.clone(),
                        recorded: recorded.clone(),
                    }),
                    &replay_calls(),
                )
                .with_keys(keys),
            ),
            crate::step(OrderSaga::new(deadlines.clone())),
        ];
        StepReplay {
            steps: steps
                .into_iter()
                .map(|step| Replayed {
                    identity: engine::identity(step.as_ref(), kafka),
                    step,
                    totals: StepTotals::default(),
                })
                .collect(),
            recorded,
            topic: kafka.topic.clone(),
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

/// How the replaying steps call their recorded ports: with a circuit breaker that never opens.
/// An answer the archive lacks is a retryable failure (the order parks, the live step asks
/// again), but it says nothing about a service being in trouble: with the live settings, five
/// of them (the last orders before a disaster under load) opened the breaker, and every later
/// question of the replay, answered in the archive or not, was refused and parked with them.
fn replay_calls() -> CallSettings {
    CallSettings {
        breaker_failures: u32::MAX,
        ..CallSettings::default()
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
        outbox::mark_published(&mut tx, &rows.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
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
        let tried = attempt(
            replayed.step.as_ref(),
            &replayed.identity,
            pool,
            slice,
            &excluded,
            Mode::Consume,
        )
        .await;
        let failures = match tried {
            Ok(Attempted {
                mut tx,
                outcome,
                rows,
            }) => {
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
                outbox::mark_published(&mut tx, &archived).await?;
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
            Err(BatchError::Records(failures)) => failures,
            Err(BatchError::Batch(error)) => {
                return Err(error.context(format!("{name} cannot replay a batch")))
            }
        };
        // Every failure of the attempt is known: the next attempt sets them all aside and
        // ends right after the last one, so what precedes it commits once.
        let mut last = start;
        for (position, error) in failures {
            if let Some(i) = slice
                .iter()
                .position(|m| (m.partition(), m.offset()) == position)
            {
                last = last.max(start + i + 1);
            }
            match &error {
                HandlerError::Diverged(_) | HandlerError::Database(_) => anyhow::bail!(
                    "{name} cannot replay the record at partition {} offset {}: {error}",
                    position.0,
                    position.1
                ),
                _ => {
                    excluded.insert(position, disposition(&error));
                }
            }
        }
        if last > start {
            end = last;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{BreakerState, Guard};

    #[tokio::test]
    async fn answers_the_archive_lacks_never_open_the_replays_breaker() {
        let guard = Guard::new("payment provider", &replay_calls());
        for _ in 0..1_000 {
            let lacking: Result<(), HandlerError> = Err(HandlerError::Provider {
                provider: "archive",
                message: "not in the archive".into(),
                retryable: true,
            });
            assert!(guard.call(Uuid::nil(), async { lacking }).await.is_err());
        }
        assert_eq!(guard.state(), BreakerState::Closed);
        let archived = guard
            .call(Uuid::nil(), async { Ok::<_, HandlerError>(7) })
            .await;
        assert_eq!(archived.expect("an archived answer goes through"), 7);
        // The live settings open after a handful: what the replay must not inherit.
        let live = Guard::new("payment provider", &CallSettings::default());
        for _ in 0..CallSettings::default().breaker_failures {
            let lacking: Result<(), HandlerError> = Err(HandlerError::Provider {
                provider: "archive",
                message: "not in the archive".into(),
                retryable: true,
            });
            let _ = live.call(Uuid::nil(), async { lacking }).await;
        }
        assert_eq!(live.state(), BreakerState::Open);
    }
}

//! Parking: per-order retries that never stall a partition.
//!
//! When a handler fails with a retryable error, the runner parks the event's order: the event
//! is stored in `pipeline.parked` with its failed attempt, and every later event of that order
//! is stored behind it (in log order) instead of being handled, while other orders of the
//! partition flow on. [`release_due`] retries an order's first held event with exponential
//! backoff and jitter; once it succeeds — or exhausts the step's retry budget and is
//! dead-lettered with its whole history — the held events behind it are applied in order. The
//! rows are in Postgres, so a parked order survives a restart, and any member of the step
//! may release it.

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use platform::config::RetryPolicy;
use platform::deadletter::FailedAttempt;
use platform::kafka::Producer;
use platform::metrics::ComponentMetrics;
use platform::outbox;
use rdkafka::message::{OwnedMessage, Timestamp};
use sqlx::{PgConnection, PgPool};

use crate::engine::{
    attempt, failed_attempt, failure_kind, unbounded_backoff, Attempted, BatchError, Disposition,
    Identity, Mode,
};
use crate::Step;

type HeldRow = (
    i64,
    String,
    String,
    i32,
    i64,
    Option<Vec<u8>>,
    Vec<u8>,
    serde_json::Value,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

/// Retry the parked orders whose next attempt is due, each event in order, and publish what
/// they produced. Returns how many held events were applied or dead-lettered.
pub async fn release_due(
    step: &dyn Step,
    identity: &Identity,
    pool: &PgPool,
    producer: &Producer,
    policy: RetryPolicy,
    metrics: &ComponentMetrics,
) -> anyhow::Result<usize> {
    let name = identity.name;
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT order_id FROM (SELECT DISTINCT ON (order_id) order_id, next_attempt_at, seq FROM pipeline.parked
                               WHERE step = $1 ORDER BY order_id, seq) heads
         WHERE next_attempt_at <= now() ORDER BY seq LIMIT 100",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let mut released = 0;
    for order_id in due {
        // One transaction per held event: a success is kept even if a later one fails.
        loop {
            let head: Option<HeldRow> = sqlx::query_as(
                "SELECT seq, order_id, topic, partition, \"offset\", record_key, payload, history, first_failed_at,
                        next_attempt_at
                 FROM pipeline.parked WHERE step = $1 AND order_id = $2 ORDER BY seq LIMIT 1",
            )
            .bind(name)
            .bind(&order_id)
            .fetch_optional(pool)
            .await?;
            let Some((
                seq,
                _,
                topic,
                partition,
                offset,
                key,
                payload,
                history,
                first_failed_at,
                next_at,
            )) = head
            else {
                break;
            };
            if next_at > Utc::now() {
                break;
            }
            let message = OwnedMessage::new(
                Some(payload),
                key,
                topic,
                Timestamp::NotAvailable,
                partition,
                offset,
                None,
            );
            let batch = [message];
            let no_exclusions = Default::default();
            match attempt(step, identity, pool, &batch, &no_exclusions, Mode::Release).await {
                Ok(Attempted {
                    mut tx,
                    rows,
                    outcome,
                }) => {
                    // Another member released it meanwhile: this attempt is void.
                    if !delete_held(&mut tx, seq).await? {
                        break;
                    }
                    tx.commit().await?;
                    outcome.record(metrics);
                    outbox::publish(pool, producer, &rows).await?;
                    metrics.published.increment(rows.len() as u64);
                    released += 1;
                    tracing::info!(step = name, %order_id, offset, "held event applied");
                }
                Err(BatchError::Records(failures)) => {
                    let Some((position, error)) = failures.into_iter().next() else {
                        break;
                    };
                    metrics.failure(failure_kind(&error)).increment(1);
                    let mut attempts: Vec<FailedAttempt> =
                        serde_json::from_value(history).unwrap_or_default();
                    attempts.push(failed_attempt(&error));
                    let first = first_failed_at.unwrap_or_else(Utc::now);
                    let (spent, delay) = budget(&attempts, first, policy);
                    let mut tx = platform::db::begin(pool).await?;
                    if !error.is_retryable() || spent {
                        tracing::warn!(step = name, %order_id, attempts = attempts.len(), %error, "parked event dead-lettered; releasing the rest of the order");
                        let excluded =
                            std::iter::once((position, Disposition::DeadLetter(attempts)))
                                .collect();
                        drop(tx);
                        let Attempted {
                            mut tx,
                            rows,
                            outcome,
                        } = attempt(step, identity, pool, &batch, &excluded, Mode::Release)
                            .await
                            .map_err(|e| anyhow::anyhow!("dead-lettering a parked event: {e}"))?;
                        if !delete_held(&mut tx, seq).await? {
                            break;
                        }
                        tx.commit().await?;
                        outcome.record(metrics);
                        outbox::publish(pool, producer, &rows).await?;
                        metrics.published.increment(rows.len() as u64);
                        released += 1;
                        continue;
                    }
                    tracing::warn!(step = name, %order_id, attempt = attempts.len(), %error, ?delay, "parked event failed again");
                    sqlx::query(
                        "UPDATE pipeline.parked SET attempts = $2, history = $3, first_failed_at = $4,
                                next_attempt_at = now() + make_interval(secs => $5)
                         WHERE seq = $1",
                    )
                    .bind(seq)
                    .bind(i32::try_from(attempts.len()).unwrap_or(i32::MAX))
                    .bind(serde_json::to_value(&attempts).unwrap_or_default())
                    .bind(first)
                    .bind(delay.as_secs_f64())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    break;
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("releasing a parked event of {order_id}")))
                }
            }
        }
    }
    Ok(released)
}

/// Whether a parked record's retry budget is spent after `attempts` (the first failed at
/// `first`), and when to try it next. Attempts refused by an open circuit breaker
/// (`unavailable`) spend nothing: the service is known to be down, the order waits for it.
pub fn budget(
    attempts: &[FailedAttempt],
    first: DateTime<Utc>,
    policy: RetryPolicy,
) -> (bool, std::time::Duration) {
    let counted: Vec<&FailedAttempt> = attempts.iter().filter(|a| a.kind != UNAVAILABLE).collect();
    let last_unavailable = attempts.last().is_some_and(|a| a.kind == UNAVAILABLE);
    let spent = !last_unavailable
        && (counted.len() >= policy.attempts_max as usize
            || (Utc::now() - first).to_std().unwrap_or_default() >= policy.total);
    let delay = unbounded_backoff(policy)
        .build()
        .nth(counted.len().saturating_sub(1))
        .unwrap_or(policy.delay_max);
    (spent, delay)
}

/// The kind of a failure that an open circuit breaker refused.
const UNAVAILABLE: &str = "unavailable";

/// Delete a released record; false when it was gone (another member released it).
async fn delete_held(tx: &mut PgConnection, seq: i64) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM pipeline.parked WHERE seq = $1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    Ok(deleted.rows_affected() == 1)
}

//! Redrive: apply dead-lettered records to their step again, in log order, with their original
//! bytes — so their event ids are unchanged and the inbox still deduplicates. A dry run runs
//! the handler inside a transaction that is rolled back and reports what it would have done.
//!
//! Only saga steps are redriven; a projection dead-letters nothing but undecodable records.

use anyhow::Context;
use platform::config::KafkaSettings;
use platform::kafka::Producer;
use platform::{deadletter, outbox};
use rdkafka::message::{OwnedMessage, Timestamp};
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::{attempt, failed_attempt, identity, Attempted, BatchError, Disposition, Mode};
use crate::{HandlerError, Step};

/// What redriving one dead letter did (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveReport {
    pub id: Uuid,
    pub partition: i32,
    pub offset: i64,
    pub outcome: RedriveOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveOutcome {
    /// The handler applied the record; these reply event types were (or would be) emitted.
    Applied { replies: Vec<String> },
    /// The step had applied the event already (its id is in the inbox).
    AlreadyApplied,
    /// It failed again; the attempt was appended to its history (not in a dry run).
    FailedAgain { error: String },
    /// Dry run: applying it needs an answer from an outside service, which a dry run does not
    /// ask.
    WouldAsk { question: String },
}

impl RedriveOutcome {
    /// The `outcome` label of `orderflow_redrives_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RedriveOutcome::Applied { .. } => "applied",
            RedriveOutcome::AlreadyApplied => "already_applied",
            RedriveOutcome::FailedAgain { .. } => "failed_again",
            RedriveOutcome::WouldAsk { .. } => "would_ask",
        }
    }
}

impl std::fmt::Display for RedriveOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedriveOutcome::Applied { replies } if replies.is_empty() => {
                write!(f, "applied, no reply")
            }
            RedriveOutcome::Applied { replies } => {
                write!(f, "applied, emits {}", replies.join(", "))
            }
            RedriveOutcome::AlreadyApplied => {
                write!(f, "already applied (duplicate), nothing to do")
            }
            RedriveOutcome::FailedAgain { error } => write!(f, "failed again: {error}"),
            RedriveOutcome::WouldAsk { question } => {
                write!(
                    f,
                    "would call an outside service (not in a dry run): {question}"
                )
            }
        }
    }
}

/// Redrive the open dead letters of `step` (all of them, or those in `only`), oldest position
/// first. Effects are committed and replies published unless `dry_run`.
pub async fn redrive(
    step: &dyn Step,
    kafka: &KafkaSettings,
    pool: &PgPool,
    producer: &Producer,
    only: &[Uuid],
    dry_run: bool,
) -> anyhow::Result<Vec<RedriveReport>> {
    let identity = identity(step, kafka);
    let letters = deadletter::open(pool, identity.name, only)
        .await
        .context("reading dead letters")?;
    let mut reports = Vec::with_capacity(letters.len());
    for letter in letters {
        let deadletter::Open {
            id,
            topic,
            partition,
            offset,
            record_key: key,
            payload,
        } = letter;
        let message = OwnedMessage::new(
            payload,
            key,
            topic,
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        );
        let batch = [message];
        let no_exclusions = Default::default();
        let mode = Mode::Redrive {
            letter: id,
            dry_run,
        };
        let outcome = match attempt(step, &identity, pool, &batch, &no_exclusions, mode).await {
            Ok(Attempted {
                mut tx,
                outcome: done,
                rows,
            }) => {
                let outcome = if done.dead_lettered > 0 {
                    // Still undecodable: it was dead-lettered again, its history appended.
                    RedriveOutcome::FailedAgain {
                        error: deadletter::last_error(&mut tx, id).await?,
                    }
                } else {
                    let outcome = if done.duplicates > 0 {
                        RedriveOutcome::AlreadyApplied
                    } else {
                        RedriveOutcome::Applied {
                            replies: rows.iter().map(|r| r.record.event_type.clone()).collect(),
                        }
                    };
                    deadletter::record_redrive_outcome(&mut tx, id, &outcome.to_string()).await?;
                    outcome
                };
                if dry_run {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                    outbox::publish(pool, producer, &rows).await?;
                }
                outcome
            }
            Err(BatchError::Records(failures)) => {
                let Some((position, error)) = failures.into_iter().next() else {
                    anyhow::bail!("redriving dead letter {id}: a failure without a record");
                };
                if let (true, HandlerError::Unanswered(question)) = (dry_run, &error) {
                    reports.push(RedriveReport {
                        id,
                        partition,
                        offset,
                        outcome: RedriveOutcome::WouldAsk {
                            question: question.clone(),
                        },
                    });
                    continue;
                }
                let text = error.to_string();
                if !dry_run {
                    let excluded = std::iter::once((
                        position,
                        Disposition::DeadLetter(vec![failed_attempt(&error)]),
                    ))
                    .collect();
                    let Attempted { tx, rows, .. } =
                        attempt(step, &identity, pool, &batch, &excluded, mode)
                            .await
                            .map_err(|e| anyhow::anyhow!("recording the failed redrive: {e}"))?;
                    tx.commit().await?;
                    outbox::publish(pool, producer, &rows).await?;
                }
                RedriveOutcome::FailedAgain { error: text }
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!("redriving dead letter {id}")))
            }
        };
        tracing::info!(%id, partition, offset, dry_run, %outcome, "redrive");
        if !dry_run {
            metrics::counter!(
                platform::metrics::names::REDRIVES,
                "component" => identity.name,
                "outcome" => outcome.label()
            )
            .increment(1);
        }
        reports.push(RedriveReport {
            id,
            partition,
            offset,
            outcome,
        });
    }
    Ok(reports)
}

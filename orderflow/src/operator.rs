//! `orderflow stock set|adjust` and `orderflow customers block|unblock`: append the events
//! (`consumers::commands`) to the outbox under the CLI's own outbox step, commit, and publish
//! them to the order log at once. The inventory and payment steps apply them; this changes no
//! step table. A command that failed after its commit is retried with the same
//! `--command-id`: it appends nothing new and publishes whatever is still unpublished.

use std::time::Duration;

use anyhow::Context;
use consumers::commands::{self, OUTBOX_STEP};
use events::Event;
use sqlx::PgPool;
use uuid::Uuid;

use crate::settings::Settings;

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bring each sku's available units to a level.
    SetStock(Vec<(String, i64)>),
    /// Add (or take away) units per sku.
    AdjustStock(Vec<(String, i64)>),
    Block {
        customer_id: String,
        note: String,
    },
    Unblock {
        customer_id: String,
    },
}

/// Append `change` under `command_id` and publish it; returns the events of the command (none
/// for a `set` that changes nothing).
pub async fn apply(
    settings: &Settings,
    pool: &PgPool,
    command_id: Uuid,
    change: &Change,
    reason: &str,
) -> anyhow::Result<Vec<Event>> {
    let topic = settings.kafka.topic.as_str();
    let mut tx = pool.begin().await.context("beginning the command")?;
    let appended = match change {
        Change::SetStock(levels) => {
            commands::set_stock(&mut tx, OUTBOX_STEP, topic, command_id, levels, reason).await
        }
        Change::AdjustStock(deltas) => {
            commands::adjust_stock(&mut tx, OUTBOX_STEP, topic, command_id, deltas, reason).await
        }
        Change::Block { customer_id, note } => {
            commands::block_customer(&mut tx, OUTBOX_STEP, topic, command_id, customer_id, note)
                .await
                .map(|e| vec![e])
        }
        Change::Unblock { customer_id } => {
            commands::unblock_customer(&mut tx, OUTBOX_STEP, topic, command_id, customer_id)
                .await
                .map(|e| vec![e])
        }
    };
    let events = appended.map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await.context("committing the command")?;
    publish(settings, pool)
        .await
        .with_context(|| format!("the events are stored; publish them by running the command again with --command-id {command_id}"))?;
    Ok(events)
}

/// `orderflow customers forget ID`: in one transaction, destroy the customer's data keys,
/// scrub their personal fields from Postgres and append `CustomerForgotten`
/// ([`commands::forget_customer`], the function the API's `POST /v1/customers/{id}/forget`
/// calls), then publish. A repeat with the same `command_id` changes and appends nothing, and
/// publishes what an interrupted run left.
pub async fn forget(
    settings: &Settings,
    pool: &PgPool,
    command_id: Uuid,
    customer_id: &str,
) -> anyhow::Result<commands::Forgotten> {
    let topic = settings.kafka.topic.as_str();
    let mut tx = pool.begin().await.context("beginning the erasure")?;
    let forgotten = commands::forget_customer(&mut tx, OUTBOX_STEP, topic, command_id, customer_id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await.context("committing the erasure")?;
    publish(settings, pool).await.with_context(|| {
        format!("the customer is forgotten in Postgres; publish CustomerForgotten by running the command again with --command-id {command_id}")
    })?;
    Ok(forgotten)
}

/// Publish the CLI's outbox rows still unpublished (this command's, and any an earlier one
/// left), waiting for the broker's acknowledgements.
pub async fn publish(settings: &Settings, pool: &PgPool) -> anyhow::Result<usize> {
    let producer = platform::kafka::producer(&settings.kafka, "orderflow-operator")
        .context("creating the producer")?;
    platform::outbox::relay(pool, &producer, OUTBOX_STEP, Duration::ZERO).await
}

/// `SKU=+N` or `SKU=-N` (a sign is required, so that an adjustment is never mistaken for a
/// level).
pub fn parse_adjustment(text: &str) -> Result<(String, i64), String> {
    let (sku, delta) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SKU=+N or SKU=-N"))?;
    if sku.trim().is_empty() {
        return Err(format!("{text:?}: the sku must not be blank"));
    }
    if !delta.starts_with(['+', '-']) {
        return Err(format!(
            "{text:?}: an adjustment needs a sign (SKU=+N or SKU=-N); to set a level use `stock set`"
        ));
    }
    let value: i64 = delta
        .parse()
        .map_err(|_| format!("{text:?}: {delta:?} is not a whole number"))?;
    if value == 0 {
        return Err(format!("{text:?}: an adjustment of 0 changes nothing"));
    }
    Ok((sku.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An argument, and the adjustment read from it or a piece of the error.
    type Case = (&'static str, Result<(&'static str, i64), &'static str>);

    #[test]
    fn adjustments_are_signed() {
        let cases: [Case; 7] = [
            ("A=+5", Ok(("A", 5))),
            ("A-1=-3", Ok(("A-1", -3))),
            ("A=5", Err("needs a sign")),
            ("A=+0", Err("changes nothing")),
            ("=+2", Err("must not be blank")),
            ("A=+x", Err("is not a whole number")),
            ("A", Err("is not SKU=+N")),
        ];
        for (text, want) in cases {
            match (parse_adjustment(text), want) {
                (Ok(got), Ok((sku, delta))) => assert_eq!(got, (sku.to_string(), delta), "{text}"),
                (Err(e), Err(piece)) => assert!(e.contains(piece), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}

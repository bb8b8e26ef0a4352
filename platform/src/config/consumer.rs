//! `ConsumerSettings` (the `[consumer]` section): how every step and projection consumes —
//! batch bounds, retry delays and budgets (per component overrides under
//! `[consumer.retry.<component>]`) — with their defaults, and `RetryPolicy`, the budget in
//! force for one component.

use serde::{Deserialize, Serialize};

/// How every step and projection consumes: bounded batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Most records handled in one Postgres transaction.
    pub batch_max_events: usize,
    /// Longest wait for a batch to fill once its first record arrived. Short: under load the
    /// records pile up while the previous batch is applied, so batches grow by themselves;
    /// when the log is quiet a record is not held back waiting for company.
    pub batch_max_wait_ms: u64,
    /// Retry delays for a batch that failed with a retryable error.
    pub retry_delay_ms_min: u64,
    pub retry_delay_ms_max: u64,
    /// Unpublished outbox rows older than this are re-published by any member of the step.
    pub outbox_relay_after_ms: u64,
    /// Attempts at a record whose handler fails with a retryable error, before it is
    /// dead-lettered as `retries_exhausted`.
    pub retry_attempts_max: u32,
    /// Time budget from a record's first failure; once spent, the record is dead-lettered.
    pub retry_total_ms_max: u64,
    /// Per-consumer overrides of the retry budget, by component name (`[consumer.retry.payment]`).
    #[serde(default)]
    pub retry: std::collections::BTreeMap<String, RetryOverride>,
}

/// A component's own retry budget; unset fields fall back to the `consumer` defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    pub attempts_max: Option<u32>,
    pub total_ms_max: Option<u64>,
    pub delay_ms_min: Option<u64>,
    pub delay_ms_max: Option<u64>,
}

/// The retry budget in force for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts_max: u32,
    pub total: std::time::Duration,
    pub delay_min: std::time::Duration,
    pub delay_max: std::time::Duration,
}

impl ConsumerSettings {
    pub fn retry_policy(&self, component: &str) -> RetryPolicy {
        let o = self.retry.get(component).cloned().unwrap_or_default();
        RetryPolicy {
            attempts_max: o.attempts_max.unwrap_or(self.retry_attempts_max).max(1),
            total: std::time::Duration::from_millis(
                o.total_ms_max.unwrap_or(self.retry_total_ms_max),
            ),
            delay_min: std::time::Duration::from_millis(
                o.delay_ms_min.unwrap_or(self.retry_delay_ms_min),
            ),
            delay_max: std::time::Duration::from_millis(
                o.delay_ms_max.unwrap_or(self.retry_delay_ms_max),
            ),
        }
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            batch_max_events: 500,
            batch_max_wait_ms: 5,
            retry_delay_ms_min: 100,
            retry_delay_ms_max: 5_000,
            outbox_relay_after_ms: 5_000,
            retry_attempts_max: 5,
            retry_total_ms_max: 30_000,
            retry: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_component_override_replaces_only_the_fields_it_sets() {
        let mut consumer = ConsumerSettings::default();
        consumer.retry.insert(
            "payment".into(),
            RetryOverride {
                attempts_max: Some(0),
                total_ms_max: Some(60_000),
                ..RetryOverride::default()
            },
        );
        let defaults = RetryPolicy {
            attempts_max: 5,
            total: Duration::from_secs(30),
            delay_min: Duration::from_millis(100),
            delay_max: Duration::from_secs(5),
        };
        let cases = [
            ("inventory", defaults),
            (
                "payment",
                RetryPolicy {
                    // Zero attempts would never try a record: at least one.
                    attempts_max: 1,
                    total: Duration::from_secs(60),
                    ..defaults
                },
            ),
        ];
        for (component, want) in cases {
            assert_eq!(consumer.retry_policy(component), want, "{component}");
        }
    }
}

//! The health rules of `orderflow status`: pure functions of a [`Status`] and the thresholds
//! given on the command line. Each rule that fires is a [`Finding`] naming the rule, the
//! component and what to look at; any finding makes the exit code 1.

use serde::Serialize;

use super::Status;

/// A rule of `orderflow status`; its `name` is what the output and the JSON say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A component has dead letters not redriven (more than `--max-dead-letters`, default 0).
    DeadLettersOpen,
    /// A step holds more parked orders than `--max-parked`.
    ParkedOverThreshold,
    /// A group is more records behind the log end than `--max-lag`.
    LagOverThreshold,
    /// An outbox row has waited longer than `--max-outbox-age-secs` to be published.
    OutboxOldestOverThreshold,
    /// The read models are staler than `--max-freshness-secs`.
    FreshnessOverThreshold,
    /// The archive's oldest missing record is older than `--max-archive-lag-secs`, or the
    /// archive's lag cannot be read.
    ArchiveLagOverThreshold,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::DeadLettersOpen => "dead_letters_open",
            Rule::ParkedOverThreshold => "parked_over_threshold",
            Rule::LagOverThreshold => "lag_over_threshold",
            Rule::OutboxOldestOverThreshold => "outbox_oldest_over_threshold",
            Rule::FreshnessOverThreshold => "freshness_over_threshold",
            Rule::ArchiveLagOverThreshold => "archive_lag_over_threshold",
        }
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub rule: Rule,
    /// The catalog label of the component (`archiver` for the archive).
    pub component: String,
    /// What was found against what is allowed, and what to do.
    pub detail: String,
}

/// Where each rule fires. Defaults: any open dead letter, more than 100 parked orders, more
/// than 10,000 records of lag in a group, an outbox row unpublished for over 60 s (the relay
/// re-sends after `consumer.outbox_relay_after_ms`, 5 s), read models staler than 30 s (the
/// freshness objective in docs/slo.md is 10 s; this is a clear breach), an archive missing
/// records older than 300 s (`archive.flush_interval_ms` is 10 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_dead_letters: i64,
    pub max_parked: i64,
    pub max_lag: i64,
    pub max_outbox_age_secs: f64,
    pub max_freshness_secs: f64,
    pub max_archive_lag_secs: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_dead_letters: 0,
            max_parked: 100,
            max_lag: 10_000,
            max_outbox_age_secs: 60.0,
            max_freshness_secs: 30.0,
            max_archive_lag_secs: 300.0,
        }
    }
}

/// Every rule that fires on `status`, component by component in the order shown.
pub fn evaluate(status: &Status, thresholds: &Thresholds) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut fire = |rule: Rule, component: &str, detail: String| {
        found.push(Finding {
            rule,
            component: component.to_string(),
            detail,
        });
    };
    for c in &status.components {
        let name = c.component;
        if c.dead_letters > thresholds.max_dead_letters {
            // The command line names the projector `projections`.
            let consumer = if name == "projector" {
                "projections"
            } else {
                name
            };
            fire(
                Rule::DeadLettersOpen,
                name,
                format!(
                    "{} open dead letters (allowed {}): see `orderflow dlq list --consumer \
                     {consumer}`, then fix and `orderflow dlq redrive --consumer {consumer}`",
                    c.dead_letters, thresholds.max_dead_letters
                ),
            );
        }
        if c.parked > thresholds.max_parked {
            fire(
                Rule::ParkedOverThreshold,
                name,
                format!(
                    "{} orders parked (allowed {}), {} records held behind them: a port or the \
                     database keeps failing",
                    c.parked, thresholds.max_parked, c.backlog
                ),
            );
        }
        if c.lag > thresholds.max_lag {
            let worst = c.partitions.iter().max_by_key(|p| p.lag());
            let at = worst.map_or_else(String::new, |p| {
                format!(" (worst partition {}: {} behind)", p.partition, p.lag())
            });
            fire(
                Rule::LagOverThreshold,
                name,
                format!(
                    "group {} is {} records behind the log end{at} (allowed {}): scale out with \
                     more `orderflow run --only` processes, or see why it is slow",
                    c.group, c.lag, thresholds.max_lag
                ),
            );
        }
        if c.outbox_unpublished > 0 && c.outbox_oldest_secs > thresholds.max_outbox_age_secs {
            fire(
                Rule::OutboxOldestOverThreshold,
                name,
                format!(
                    "{} outbox rows unpublished, the oldest for {:.0} s (allowed {:.0} s): is \
                     the broker refusing produces, or is no {name} process running?",
                    c.outbox_unpublished, c.outbox_oldest_secs, thresholds.max_outbox_age_secs
                ),
            );
        }
        if let Some(freshness) = c.freshness_secs {
            if freshness > thresholds.max_freshness_secs {
                fire(
                    Rule::FreshnessOverThreshold,
                    name,
                    format!(
                        "the read models lag the log by {freshness:.0} s (allowed {:.0} s)",
                        thresholds.max_freshness_secs
                    ),
                );
            }
        }
    }
    if let Some(archive) = &status.archive {
        match (&archive.problem, archive.seconds) {
            (Some(problem), _) => fire(
                Rule::ArchiveLagOverThreshold,
                "archiver",
                format!("the archive's lag cannot be read: {problem}"),
            ),
            (None, Some(seconds)) if seconds > thresholds.max_archive_lag_secs => fire(
                Rule::ArchiveLagOverThreshold,
                "archiver",
                format!(
                    "{} records not archived, the oldest for {seconds:.0} s (allowed {:.0} s): \
                     is the archiver running?",
                    archive.records, thresholds.max_archive_lag_secs
                ),
            ),
            (None, None) => fire(
                Rule::ArchiveLagOverThreshold,
                "archiver",
                format!(
                    "{} records not archived, and the oldest of them could not be read in time",
                    archive.records
                ),
            ),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::status::{ArchiveStatus, ComponentStatus, PartitionPosition};

    fn component(name: &'static str) -> ComponentStatus {
        ComponentStatus {
            component: name,
            group: format!("orderflow.{name}"),
            partitions: vec![PartitionPosition {
                partition: 0,
                position: Some(100),
                end: 100,
            }],
            lag: 0,
            applied_per_sec: None,
            backlog: 0,
            parked: 0,
            dead_letters: 0,
            outbox_unpublished: 0,
            outbox_oldest_secs: 0.0,
            freshness_secs: (name == "projector").then_some(0.0),
        }
    }

    fn status(components: Vec<ComponentStatus>, archive: Option<ArchiveStatus>) -> Status {
        Status {
            taken_at: Utc::now(),
            topic: "orders.events".into(),
            log_end: BTreeMap::from([(0, 100)]),
            components,
            saga: None,
            archive,
        }
    }

    fn archive(records: i64, seconds: Option<f64>, problem: Option<&str>) -> ArchiveStatus {
        ArchiveStatus {
            dir: "/a".into(),
            records,
            seconds,
            problem: problem.map(str::to_string),
        }
    }

    #[test]
    fn each_rule_fires_above_its_threshold_only() {
        let t = Thresholds::default();
        type Change = fn(&mut ComponentStatus);
        // (component, change, rules expected)
        let cases: Vec<(&'static str, Change, Vec<Rule>)> = vec![
            ("payment", |_| {}, vec![]),
            (
                "payment",
                |c| c.dead_letters = 1,
                vec![Rule::DeadLettersOpen],
            ),
            ("payment", |c| c.parked = 100, vec![]),
            (
                "payment",
                |c| c.parked = 101,
                vec![Rule::ParkedOverThreshold],
            ),
            ("inventory", |c| c.lag = 10_000, vec![]),
            (
                "inventory",
                |c| c.lag = 10_001,
                vec![Rule::LagOverThreshold],
            ),
            (
                "saga",
                |c| {
                    c.outbox_unpublished = 3;
                    c.outbox_oldest_secs = 61.0;
                },
                vec![Rule::OutboxOldestOverThreshold],
            ),
            (
                "saga",
                |c| {
                    c.outbox_unpublished = 3;
                    c.outbox_oldest_secs = 60.0;
                },
                vec![],
            ),
            // An age without rows (a row published meanwhile) is not a backlog.
            ("saga", |c| c.outbox_oldest_secs = 500.0, vec![]),
            ("projector", |c| c.freshness_secs = Some(30.0), vec![]),
            (
                "projector",
                |c| c.freshness_secs = Some(31.0),
                vec![Rule::FreshnessOverThreshold],
            ),
            (
                "shipping",
                |c| {
                    c.dead_letters = 2;
                    c.lag = 20_000;
                },
                vec![Rule::DeadLettersOpen, Rule::LagOverThreshold],
            ),
        ];
        for (name, change, want) in cases {
            let mut c = component(name);
            change(&mut c);
            let found = evaluate(&status(vec![c.clone()], None), &t);
            let rules: Vec<Rule> = found.iter().map(|f| f.rule).collect();
            assert_eq!(rules, want, "{c:?}");
            assert!(found.iter().all(|f| f.component == name), "{found:?}");
        }
    }

    #[test]
    fn thresholds_move_the_rules() {
        let mut c = component("payment");
        c.dead_letters = 2;
        c.parked = 5;
        let s = status(vec![c], None);
        let loose = Thresholds {
            max_dead_letters: 2,
            ..Thresholds::default()
        };
        assert!(evaluate(&s, &loose).is_empty());
        let strict = Thresholds {
            max_parked: 4,
            ..loose
        };
        let found = evaluate(&s, &strict);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, Rule::ParkedOverThreshold);
    }

    #[test]
    fn the_archive_rule_fires_when_late_or_unreadable() {
        let t = Thresholds::default();
        // (archive, fires)
        let cases = vec![
            (None, false),
            (Some(archive(0, Some(0.0), None)), false),
            (Some(archive(50, Some(300.0), None)), false),
            (Some(archive(50, Some(301.0), None)), true),
            (Some(archive(50, None, None)), true),
            (
                Some(archive(0, None, Some("manifest.json is not ..."))),
                true,
            ),
        ];
        for (archive, fires) in cases {
            let found = evaluate(&status(vec![], archive.clone()), &t);
            assert_eq!(!found.is_empty(), fires, "{archive:?}");
            assert!(found
                .iter()
                .all(|f| f.rule == Rule::ArchiveLagOverThreshold && f.component == "archiver"));
        }
    }

    #[test]
    fn a_dead_letter_names_the_command_to_list_it() {
        let mut c = component("projector");
        c.dead_letters = 1;
        let found = evaluate(&status(vec![c], None), &Thresholds::default());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule.name(), "dead_letters_open");
        assert!(
            found[0]
                .detail
                .contains("orderflow dlq list --consumer projections"),
            "{}",
            found[0].detail
        );
        assert_eq!(crate::status::exit_code(&found), 1);
        assert_eq!(crate::status::exit_code(&[]), 0);
    }
}

//! The report of `orderflow check`: the counts of the log against the timeline, the text it
//! prints (one line per invariant, examples under a FAIL, the tally last) and the same
//! results as JSON for `--json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::invariant::CheckResult;
use super::lag::GroupLag;

/// Example lines printed under a FAIL.
const EXAMPLES_MAX: usize = 10;

/// Records on the log against events in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCounts {
    pub records: i64,
    pub events: i64,
    pub dead_lettered: i64,
}

impl LogCounts {
    /// Records beyond the distinct events and what the projector set aside: replies
    /// published again after a crash, absorbed by the inboxes and the timeline's key.
    pub fn republished(&self) -> i64 {
        self.records - self.events - self.dead_lettered
    }
}

/// Everything a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub checks: Vec<CheckResult>,
    pub lag: Vec<GroupLag>,
    pub log: Option<LogCounts>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The text `orderflow check` prints: one line per invariant, examples under a FAIL, the
    /// log counts, and the tally last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let verdict = if check.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "{verdict}  {}: {}", check.name, check.detail);
            if !check.passed {
                for example in check.examples.iter().take(EXAMPLES_MAX) {
                    let _ = writeln!(out, "        {example}");
                }
                if check.examples.len() > EXAMPLES_MAX {
                    let _ = writeln!(
                        out,
                        "        ... {} more",
                        check.examples.len() - EXAMPLES_MAX
                    );
                }
            }
        }
        if let Some(log) = &self.log {
            let _ = writeln!(
                out,
                "INFO  log: {} records on the log, {} distinct events in analytics.order_events, \
                 {} dead-lettered by the projector -> {} re-published copies (absorbed by design)",
                log.records,
                log.events,
                log.dead_lettered,
                log.republished()
            );
        }
        let passed = self.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            out,
            "check: {passed} passed, {} failed",
            self.checks.len() - passed
        );
        out
    }

    /// The same results as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let lag: serde_json::Map<String, serde_json::Value> = self
            .lag
            .iter()
            .map(|g| {
                let worst = g.worst();
                (
                    g.group.clone(),
                    json!({
                        "total": g.total(),
                        "at_end": g.at_end(),
                        "worst_partition": worst.map(|w| w.partition),
                        "worst_lag": worst.map_or(0, |w| w.lag()),
                        "partitions": g.partitions.iter().map(|p| json!({
                            "partition": p.partition,
                            "position": p.position,
                            "log_end": p.end,
                            "lag": p.lag(),
                        })).collect::<Vec<_>>(),
                    }),
                )
            })
            .collect();
        json!({
            "passed": self.passed(),
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name,
                "passed": c.passed,
                "detail": c.detail,
                "examples": c.examples,
            })).collect::<Vec<_>>(),
            "lag": lag,
            "log": self.log.map(|l| json!({
                "records": l.records,
                "events": l.events,
                "dead_lettered": l.dead_lettered,
                "republished": l.republished(),
            })),
        })
    }
}

pub(super) fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json())?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("cannot write the JSON report to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::check::{LAG, STOCK, TERMINAL};

    fn result(name: &'static str, passed: bool, examples: usize) -> CheckResult {
        CheckResult {
            name,
            passed,
            detail: "d".into(),
            examples: (0..examples).map(|i| format!("e{i}")).collect(),
        }
    }

    #[test]
    fn the_report_prints_one_line_per_check_examples_under_a_fail_and_the_tally_last() {
        // (checks, log counts, expected text)
        let cases: Vec<(Vec<CheckResult>, Option<LogCounts>, String)> = vec![
            (
                vec![result(TERMINAL, true, 2)],
                None,
                "PASS  every order terminal: d\ncheck: 1 passed, 0 failed\n".into(),
            ),
            (
                vec![result(TERMINAL, true, 0), result(STOCK, false, 2)],
                Some(LogCounts { records: 100, events: 97, dead_lettered: 1 }),
                "PASS  every order terminal: d\nFAIL  stock conserved per sku: d\n        e0\n        e1\n\
                 INFO  log: 100 records on the log, 97 distinct events in analytics.order_events, \
                 1 dead-lettered by the projector -> 2 re-published copies (absorbed by design)\n\
                 check: 1 passed, 1 failed\n"
                    .into(),
            ),
            (
                vec![result(LAG, false, 12)],
                None,
                format!(
                    "FAIL  {LAG}: d\n{}        ... 2 more\ncheck: 0 passed, 1 failed\n",
                    (0..10).map(|i| format!("        e{i}\n")).collect::<String>()
                ),
            ),
        ];
        for (checks, log, want) in cases {
            let report = Report {
                checks,
                lag: Vec::new(),
                log,
            };
            assert_eq!(report.render(), want);
        }
    }

    #[test]
    fn the_json_report_carries_the_verdicts_and_the_lag_per_group() {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 20)].into();
        let report = Report {
            checks: vec![result(TERMINAL, true, 0), result(LAG, false, 1)],
            lag: vec![GroupLag::new("p.saga", &ends, &[(0, 10), (1, 15)].into())],
            log: None,
        };
        let json = report.to_json();
        assert_eq!(json["passed"], false);
        assert_eq!(json["checks"][0]["name"], TERMINAL);
        assert_eq!(json["checks"][0]["passed"], true);
        assert_eq!(json["checks"][1]["examples"][0], "e0");
        assert_eq!(json["lag"]["p.saga"]["total"], 5);
        assert_eq!(json["lag"]["p.saga"]["worst_partition"], 1);
        assert_eq!(json["lag"]["p.saga"]["partitions"][1]["position"], 15);
        assert_eq!(json["lag"]["p.saga"]["partitions"][1]["log_end"], 20);
        assert!(json["log"].is_null());
    }
}

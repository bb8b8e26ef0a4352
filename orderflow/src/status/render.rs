//! The text of `orderflow status`: a header, one aligned row per component, the saga and
//! archive lines, and the verdict with every rule that fired.

use std::fmt::Write;

use super::{Finding, Status};

/// `12345`, `12,345`, `1,234,567`.
fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// The snapshot for a person at a terminal.
pub fn render(status: &Status, findings: &[Finding]) -> String {
    let mut out = String::new();
    let records: i64 = status.log_end.values().sum();
    let _ = writeln!(
        out,
        "orderflow status at {}: topic {}, {} partitions, {} records",
        status.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
        status.topic,
        status.log_end.len(),
        count(records)
    );
    if !status.components.is_empty() {
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>10} {:>8} {:>7} {:>13} {:>16} {:>10}",
            "component",
            "lag",
            "applied/s",
            "backlog",
            "parked",
            "dead letters",
            "outbox (oldest)",
            "freshness"
        );
    }
    for c in &status.components {
        let rate = c
            .applied_per_sec
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1}"));
        let outbox = if c.outbox_unpublished == 0 {
            "0".to_string()
        } else {
            format!(
                "{} ({})",
                count(c.outbox_unpublished),
                seconds(c.outbox_oldest_secs)
            )
        };
        let freshness = c.freshness_secs.map_or_else(|| "-".to_string(), seconds);
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>10} {:>8} {:>7} {:>13} {:>16} {:>10}",
            c.component,
            count(c.lag),
            rate,
            count(c.backlog),
            count(c.parked),
            count(c.dead_letters),
            outbox,
            freshness
        );
    }
    if let Some(saga) = &status.saga {
        let open: i64 = saga.open.values().sum();
        let states: Vec<String> = saga
            .open
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(state, n)| format!("{state} {}", count(*n)))
            .collect();
        let _ = writeln!(
            out,
            "saga: {} open orders{}; {} past a deadline; {} completed in the last minute",
            count(open),
            if states.is_empty() {
                String::new()
            } else {
                format!(" ({})", states.join(", "))
            },
            count(saga.deadlines_missed),
            count(saga.completed_last_minute)
        );
    }
    match &status.archive {
        Some(archive) => {
            let line = match (&archive.problem, archive.seconds) {
                (Some(problem), _) => format!("lag unknown: {problem}"),
                (None, _) if archive.records == 0 => "up to the log end".to_string(),
                (None, Some(s)) => format!(
                    "{} records behind, the oldest {} old",
                    count(archive.records),
                    seconds(s)
                ),
                (None, None) => format!(
                    "{} records behind (their age could not be read)",
                    count(archive.records)
                ),
            };
            let _ = writeln!(out, "archive ({}): {line}", archive.dir);
        }
        None if status.components.len() > 1 => {
            let _ = writeln!(out, "archive: off (archive.dir is not set)");
        }
        None => {}
    }
    if findings.is_empty() {
        let _ = writeln!(out, "healthy");
    } else {
        let _ = writeln!(out, "UNHEALTHY: {} rules fired", findings.len());
        for f in findings {
            let _ = writeln!(out, "  {} [{}]: {}", f.rule.name(), f.component, f.detail);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (1_234_567, "1,234,567"),
            (-12_345, "-12,345"),
        ];
        for (n, want) in cases {
            assert_eq!(count(n), want);
        }
    }
}

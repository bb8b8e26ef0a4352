//! The `--rebuild` invariant: fold the whole log into a verify-only generation, compare every
//! read model with the live one, drop the generation again, and judge the comparison.

use sqlx::PgPool;

use super::invariant::{CheckResult, REBUILD};
use crate::settings::Settings;

/// Fold the whole log into a verify-only generation, compare, drop it.
pub(super) async fn rebuild(settings: &Settings, pool: &PgPool) -> CheckResult {
    let options = projections::rebuild::Options {
        verify_only: true,
        ..Default::default()
    };
    let phase = std::sync::Mutex::new("");
    let progress = |p: projections::rebuild::Progress| {
        if let Ok(mut current) = phase.lock() {
            if *current != p.phase {
                *current = p.phase;
                eprintln!("check: rebuild: {}", p.phase);
            }
        }
    };
    match projections::rebuild::replay(&settings.kafka, pool, &options, &progress).await {
        Ok(report) => rebuild_result(&report),
        Err(error) => CheckResult {
            name: REBUILD,
            passed: false,
            detail: format!("the rebuild failed: {error:#}"),
            examples: Vec::new(),
        },
    }
}

fn rebuild_result(report: &projections::rebuild::Report) -> CheckResult {
    let Some(verification) = &report.verification else {
        return CheckResult {
            name: REBUILD,
            passed: false,
            detail: "the rebuild compared nothing".into(),
            examples: Vec::new(),
        };
    };
    let rows: i64 = verification.tables.iter().map(|t| t.live.0).sum();
    let rebuilt: i64 = verification.tables.iter().map(|t| t.rebuilt.0).sum();
    let differing: Vec<&str> = verification
        .tables
        .iter()
        .filter(|t| !t.matches())
        .map(|t| t.table)
        .collect();
    let mut examples = Vec::new();
    for t in verification.tables.iter().filter(|t| !t.matches()) {
        examples.push(format!(
            "{}: live {} rows {}, rebuilt {} rows {}",
            t.table, t.live.0, t.live.1, t.rebuilt.0, t.rebuilt.1
        ));
        examples.extend(
            t.only_live
                .iter()
                .map(|r| format!("{} only in live:    {r}", t.table)),
        );
        examples.extend(
            t.only_rebuilt
                .iter()
                .map(|r| format!("{} only in rebuilt: {r}", t.table)),
        );
    }
    let at: i64 = report.positions.iter().map(|p| p.next_offset).sum();
    CheckResult {
        name: REBUILD,
        passed: differing.is_empty(),
        detail: format!(
            "{} tables compared at log position {at} ({} records folded): {rows} rows live, \
             {rebuilt} rebuilt; {}; verify-only generation {} dropped",
            verification.tables.len(),
            report.events_read + report.catch_up_events,
            if differing.is_empty() {
                "all equal".to_string()
            } else {
                format!("DIFFERENT: {}", differing.join(", "))
            },
            report.generation.generation
        ),
        examples,
    }
}

//! `orderflow check`: the pipeline's invariants, checked against a database and the broker —
//! every order terminal, payments and stock consistent with the outcomes, no effect applied
//! twice, every reply published and every group at the log end, nothing dead-lettered or
//! parked, and (with `--rebuild`) the read models equal to a fresh fold of the log.
//!
//! The SQL lives with the tables it reads (`platform::audit`, `consumers::audit`,
//! `projections::audit`); this module reads the broker, decides pass or fail and prints. It
//! writes nothing but the verify-only generation of `--rebuild`, which it drops again, and
//! never joins a consumer group (see `lag::Probe`).
//!
//! This file owns the options, the order the checks run in ([`check`]) and the exit code
//! ([`run`]). The invariants' names and the verdict type are in `invariant`, the broker probe
//! and lag arithmetic in `lag`, the verdict of each invariant in `verdicts` (`--rebuild`'s in
//! `rebuild`), and the text and JSON output in `report`; none of them uses this file.

mod invariant;
mod lag;
mod rebuild;
mod report;
mod verdicts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use events::EventType;
use projections::audit::OutcomeRules;
use sqlx::PgPool;

pub use invariant::{
    CheckResult, DUPLICATES, LAG, OUTCOMES, PAYMENTS, REBUILD, SET_ASIDE, STOCK, TERMINAL,
};
pub use lag::{GroupLag, LagSnapshot, PartitionLag, Waited};
pub use report::{LogCounts, Report};
pub use verdicts::{
    duplicates_result, lag_result, payments_result, set_aside_result, stock_problems, stock_result,
    terminal_result,
};

use lag::{lag_snapshot, wait_zero_lag, Probe};
use rebuild::rebuild;
use report::write_json;

use crate::settings::Settings;

/// Event types an order may legitimately have more than once (a customer may ask to cancel
/// twice and be refused twice), and the outbox's dead letters: not duplicates.
fn repeatable() -> [&'static str; 3] {
    [
        EventType::OrderCancellationRequested.as_str(),
        EventType::OrderCancellationRejected.as_str(),
        "DeadLetter",
    ]
}

/// What to check beyond the generic invariants.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Exactly this many orders (with the prefix, when given) must exist.
    pub orders: Option<u64>,
    /// Only orders whose id starts with this count for the order checks.
    pub order_prefix: Option<String>,
    /// Stock before any order, `SKU=QTY` per line: available + reserved must equal it.
    pub initial_stock: Option<PathBuf>,
    /// Check outcomes against the demo generator's rules.
    pub demo_outcomes: bool,
    /// Fold the whole log into a verify-only generation and compare it with the live one.
    pub rebuild: bool,
    /// Wait up to this long for zero lag and nothing unpublished before checking.
    pub wait_zero_lag: Option<Duration>,
    /// Also write the results as JSON here.
    pub json: Option<PathBuf>,
}

/// Run `orderflow check` and print its report. Exit 0 when every invariant holds, 1 when one
/// fails, 2 when the check itself cannot run (bad input, database or broker unreachable).
pub async fn run(settings: &Settings, options: &Options) -> ExitCode {
    match check(settings, options).await {
        Ok(report) => {
            print!("{}", report.render());
            if let Some(path) = &options.json {
                if let Err(error) = write_json(path, &report) {
                    eprintln!("check: {error:#}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(if report.passed() { 0 } else { 1 })
        }
        Err(error) => {
            eprintln!("check: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Every check; an error means the check could not run.
pub async fn check(settings: &Settings, options: &Options) -> anyhow::Result<Report> {
    let initial = match &options.initial_stock {
        Some(path) => Some(read_initial_stock(path)?),
        None => None,
    };
    let pool = connect(settings).await?;
    let probe = Probe::open(settings)?;
    let prefix = options.order_prefix.as_deref();

    let waited = match options.wait_zero_lag {
        Some(limit) => Some(wait_zero_lag(&pool, &probe, limit).await?),
        None => None,
    };

    let mut conn = pool.acquire().await?;
    let mut checks = Vec::new();
    let terminal = consumers::audit::terminal(&mut conn, prefix).await?;
    checks.push(terminal_result(&terminal, options.orders, prefix));
    if options.demo_outcomes {
        let rules = OutcomeRules {
            out_of_stock_skus: vec![crate::demo::EMPTY_SKU.to_string()],
            decline_over_minor: settings.payment.decline_over_minor,
            unserved_countries: settings.shipping.unserved_countries.clone(),
        };
        let (orders, wrong) = projections::audit::outcomes(&mut conn, prefix, &rules).await?;
        checks.push(CheckResult {
            name: OUTCOMES,
            passed: wrong.count == 0,
            detail: format!(
                "{} of {orders} orders ended differently than stock ({}), the payment limit ({}) \
                 and the destination ({}) dictate",
                wrong.count,
                rules.out_of_stock_skus.join(", "),
                rules.decline_over_minor,
                rules.unserved_countries.join(", ")
            ),
            examples: wrong.examples,
        });
    }
    let payments = consumers::audit::payments(&mut conn).await?;
    checks.push(payments_result(&payments));
    let stock = consumers::audit::stock(&mut conn).await?;
    checks.push(stock_result(&stock, initial.as_ref()));
    checks.push(duplicates_result(
        &consumers::audit::duplicates(&mut conn).await?,
        &projections::audit::timeline_duplicates(&mut conn, &repeatable()).await?,
        &platform::audit::outbox_duplicates(&mut conn, &repeatable()).await?,
    ));
    drop(conn);

    let snapshot = lag_snapshot(&pool, &probe).await?;
    checks.push(lag_result(&snapshot, waited));

    if options.rebuild {
        checks.push(rebuild(settings, &pool).await);
    }

    let mut conn = pool.acquire().await?;
    let dead = platform::audit::dead_letters(&mut conn, None).await?;
    let parked = consumers::audit::parked(&mut conn).await?;
    checks.push(set_aside_result(&dead, &parked));

    // Records and events only compare when the projector has applied the whole log.
    let log = if snapshot.zero() {
        let projector = platform::audit::dead_letters(&mut conn, Some(projections::NAME)).await?;
        Some(LogCounts {
            records: snapshot.ends.values().sum(),
            events: projections::audit::events(&mut conn).await?,
            dead_lettered: projector.open.count,
        })
    } else {
        None
    };
    Ok(Report {
        checks,
        lag: snapshot.groups,
        log,
    })
}

/// Read an initial stock file: one `SKU=QTY` per line, blank lines and lines starting with `#`
/// skipped; errors name the line. A sku given twice is an error, not a sum.
pub fn read_initial_stock(path: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut stock = BTreeMap::new();
    for (sku, qty) in read_stock_lines(path)? {
        if stock.insert(sku.clone(), qty).is_some() {
            anyhow::bail!(
                "{}: sku {sku} is given twice; give each sku's initial quantity once",
                path.display()
            );
        }
    }
    Ok(stock)
}

fn read_stock_lines(path: &Path) -> anyhow::Result<Vec<(String, i64)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the stock file {}", path.display()))?;
    let mut stock = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('=').and_then(|(sku, qty)| {
            let qty: i64 = qty.trim().parse().ok()?;
            (!sku.trim().is_empty() && qty >= 0).then(|| (sku.trim().to_string(), qty))
        });
        let Some(item) = parsed else {
            anyhow::bail!(
                "{} line {}: {line:?} is not SKU=QTY with a whole quantity >= 0",
                path.display(),
                number + 1
            );
        };
        stock.push(item);
    }
    Ok(stock)
}

async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = platform::db::connect(&settings.database).await?;
    let has_schema: bool = sqlx::query_scalar(
        "SELECT to_regclass('saga.orders') IS NOT NULL AND to_regclass('analytics_meta.live') IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .context("reading the database's schema")?;
    anyhow::ensure!(
        has_schema,
        "database {} holds no orderflow schema (run `orderflow migrate`, or point \
         ORDERFLOW_DATABASE__URL at the pipeline's database)",
        platform::config::redact_url(&settings.database.url)
    );
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_initial_stock_file_names_each_sku_once() {
        let dir = std::env::temp_dir().join(format!("orderflow-check-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("A=1\nB=2\n", Ok(vec![("A", 1), ("B", 2)])),
            ("A=1\nA=2\n", Err("sku A is given twice")),
            ("A=x\n", Err("line 1")),
        ];
        for (text, want) in cases {
            let path = dir.join("stock");
            std::fs::write(&path, text).unwrap();
            match (read_initial_stock(&path), want) {
                (Ok(got), Ok(want)) => {
                    let want: BTreeMap<String, i64> =
                        want.into_iter().map(|(s, q)| (s.to_string(), q)).collect();
                    assert_eq!(got, want);
                }
                (Err(error), Err(want)) => assert!(error.to_string().contains(want), "{error}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

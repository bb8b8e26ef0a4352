//! `orderflow replay` and `orderflow generations`: running a rebuild with a progress bar and
//! printing what it did.

use std::process::ExitCode;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use projections::generations;
use projections::rebuild::{self, Options, Outcome, Progress};
use sqlx::PgPool;

use crate::settings::Settings;

/// Run a replay, drawing its progress on stderr (when it is a terminal), and print the report.
/// Exits 2 when verification refused the switch.
pub async fn run(
    settings: &Settings,
    pool: &PgPool,
    options: &Options,
) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>16} [{elapsed_precise}] {bar:40} {human_pos}/{human_len}  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let phase = Mutex::new("");
    let draw = |p: Progress| {
        if let Ok(mut current) = phase.lock() {
            if *current != p.phase {
                *current = p.phase;
                bar.reset();
                bar.set_message(p.phase);
            }
        }
        bar.set_length(p.total.max(p.done));
        bar.set_position(p.done);
    };
    let report = rebuild::replay(&settings.kafka, pool, options, &draw).await;
    bar.finish_and_clear();
    let report = report?;
    print!("{report}");
    Ok(match report.outcome {
        Outcome::Refused => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// Print every generation, newest first.
pub async fn list(pool: &PgPool) -> anyhow::Result<()> {
    println!(
        "{:>4}  {:<22} {:<14} {:<9} {:<20} {:<20} note",
        "gen", "schema", "purpose", "state", "created", "until"
    );
    for g in generations::list(pool).await? {
        println!(
            "{:>4}  {:<22} {:<14} {:<9} {:<20} {:<20} {}",
            g.generation,
            g.schema_name,
            g.purpose,
            g.state,
            g.created_at.format("%Y-%m-%d %H:%M:%S"),
            g.until_spec.as_deref().unwrap_or("-"),
            g.note.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

//! `orderflow dlq`: what operators see of dead letters, and redrive.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use platform::Settings;
use uuid::Uuid;

use crate::components::{self, Component};

pub enum Request {
    List {
        consumer: Option<Component>,
        all: bool,
    },
    Show {
        id: Uuid,
    },
    Redrive {
        consumer: Component,
        ids: Vec<Uuid>,
        dry_run: bool,
    },
}

type ShowRow = (
    String,
    String,
    i32,
    i64,
    String,
    String,
    String,
    i32,
    serde_json::Value,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

type ListRow = (
    Uuid,
    String,
    i32,
    i64,
    String,
    String,
    i32,
    DateTime<Utc>,
    String,
    Option<String>,
);

pub async fn run(settings: &Settings, request: Request) -> anyhow::Result<ExitCode> {
    let pool = components::prepare_database(settings, false).await?;
    match request {
        Request::List { consumer, all } => {
            let rows: Vec<ListRow> = sqlx::query_as(
                "SELECT id, consumer, partition, \"offset\", error_class, error_kind, attempts, last_failed_at, error,
                        redrive_outcome
                 FROM pipeline.dead_letters
                 WHERE ($1::text IS NULL OR consumer = $1) AND ($2 OR redriven_at IS NULL)
                 ORDER BY consumer, topic, partition, \"offset\"",
            )
            .bind(consumer.map(Component::name))
            .bind(all)
            .fetch_all(&pool)
            .await
            .context("reading dead letters")?;
            println!(
                "{:<36}  {:<11}  {:>9}  {:<17}  {:>8}  {:<20}  error",
                "id", "consumer", "part/off", "class", "attempts", "last failure"
            );
            for (id, consumer, partition, offset, class, kind, attempts, last, error, redriven) in
                &rows
            {
                let mut error = format!("{kind}: {error}");
                if let Some(outcome) = redriven {
                    error = format!("[redriven: {outcome}] {error}");
                }
                println!(
                    "{id}  {consumer:<11}  {:>9}  {class:<17}  {attempts:>8}  {:<20}  {}",
                    format!("{partition}/{offset}"),
                    last.format("%Y-%m-%d %H:%M:%S"),
                    truncate(&error, 100)
                );
            }
            eprintln!("{} dead letters", rows.len());
        }
        Request::Show { id } => {
            let row: Option<ShowRow> =
                sqlx::query_as(
                    "SELECT consumer, topic, partition, \"offset\", dlq_topic, error_class, error, attempts, history,
                            record_key, payload, redriven_at, redrive_outcome
                     FROM pipeline.dead_letters WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await?;
            let Some((
                consumer,
                topic,
                partition,
                offset,
                dlq,
                class,
                error,
                attempts,
                history,
                key,
                payload,
                redriven_at,
                outcome,
            )) = row
            else {
                eprintln!("no dead letter {id} (list them with `orderflow dlq list --all`)");
                return Ok(ExitCode::from(1));
            };
            println!("id:          {id}");
            println!("consumer:    {consumer}");
            println!("source:      {topic} partition {partition} offset {offset}");
            println!("dlq topic:   {dlq}");
            println!("class:       {class}");
            println!("error:       {error}");
            println!("attempts:    {attempts}");
            println!(
                "redriven:    {}",
                redriven_at.map_or("no".to_string(), |at| format!(
                    "{at} ({})",
                    outcome.unwrap_or_default()
                ))
            );
            println!(
                "key:         {}",
                key.as_deref()
                    .map_or("(none)".into(), |k| String::from_utf8_lossy(k).into_owned())
            );
            match payload.as_deref().map(events::decode) {
                None => println!("payload:     (none)"),
                Some(Ok(event)) => println!(
                    "payload:     {} {} for order {}",
                    event.event_type(),
                    event.meta.event_id,
                    event.meta.order_id
                ),
                Some(Err(e)) => println!(
                    "payload:     {} bytes, undecodable: {e}",
                    payload.as_ref().map_or(0, Vec::len)
                ),
            }
            println!(
                "history:\n{}",
                serde_json::to_string_pretty(&history).unwrap_or_default()
            );
        }
        Request::Redrive {
            consumer,
            ids,
            dry_run,
        } => {
            let Some(step) = components::step(consumer, settings, &pool) else {
                anyhow::bail!("{} dead-letters only undecodable records, which a redrive cannot fix; nothing to redrive", consumer.name());
            };
            let producer = platform::kafka::producer(&settings.kafka, "orderflow-dlq-redrive")?;
            let reports = consumers::redrive::redrive(
                step.as_ref(),
                settings,
                &pool,
                &producer,
                &ids,
                dry_run,
            )
            .await?;
            let mut failed = 0;
            for report in &reports {
                if matches!(
                    report.outcome,
                    consumers::redrive::RedriveOutcome::FailedAgain { .. }
                ) {
                    failed += 1;
                }
                println!(
                    "{}  {}/{}  {}{}",
                    report.id,
                    report.partition,
                    report.offset,
                    if dry_run { "would be: " } else { "" },
                    report.outcome
                );
            }
            eprintln!(
                "{} dead letters {}; {failed} failed",
                reports.len(),
                if dry_run { "dry-run" } else { "redriven" }
            );
            if failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

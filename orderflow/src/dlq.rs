//! `orderflow dlq`: what operators see of dead letters, and redrive.

use std::process::ExitCode;

use anyhow::Context;
use platform::deadletter;
use uuid::Uuid;

use crate::components::{self, Component};
use crate::settings::Settings;

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

pub async fn run(settings: &Settings, request: Request) -> anyhow::Result<ExitCode> {
    let pool = components::prepare_database(settings, false).await?;
    match request {
        Request::List { consumer, all } => {
            let rows = deadletter::list(&pool, consumer.map(Component::name), all)
                .await
                .context("reading dead letters")?;
            println!(
                "{:<36}  {:<11}  {:>9}  {:<17}  {:>8}  {:<20}  error",
                "id", "consumer", "part/off", "class", "attempts", "last failure"
            );
            for row in &rows {
                let mut error = format!("{}: {}", row.error_kind, row.error);
                if let Some(outcome) = &row.redrive_outcome {
                    error = format!("[redriven: {outcome}] {error}");
                }
                println!(
                    "{}  {:<11}  {:>9}  {:<17}  {:>8}  {:<20}  {}",
                    row.id,
                    row.consumer,
                    format!("{}/{}", row.partition, row.offset),
                    row.error_class,
                    row.attempts,
                    row.last_failed_at.format("%Y-%m-%d %H:%M:%S"),
                    truncate(&error, 100)
                );
            }
            eprintln!("{} dead letters", rows.len());
        }
        Request::Show { id } => {
            let Some(deadletter::Letter {
                consumer,
                topic,
                partition,
                offset,
                dlq_topic: dlq,
                error_class: class,
                error,
                attempts,
                history,
                record_key: key,
                payload,
                redriven_at,
                redrive_outcome: outcome,
            }) = deadletter::find(&pool, id).await?
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
            let Some(step) = components::step(consumer, settings, &pool)? else {
                anyhow::bail!("{} dead-letters only undecodable records, which a redrive cannot fix; nothing to redrive", consumer.name());
            };
            let producer = platform::kafka::producer(&settings.kafka, "orderflow-dlq-redrive")?;
            let reports = consumers::redrive::redrive(
                step.as_ref(),
                &settings.kafka,
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

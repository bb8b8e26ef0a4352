//! Dead letters: records a consumer gives up on, kept in `pipeline.dead_letters` and sent to
//! the consumer's dead-letter topic (`<topic>.dlq.<group>`) through the outbox, in the same
//! transaction as the rest of the batch. The partition then moves on.
//!
//! A dead-lettered record keeps its original key and bytes; its headers carry where it came
//! from, why it failed and the history of every failed attempt. A record that fails again
//! after a redrive gets its new attempts appended to that history, never replacing it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::outbox::{self, OutboxRecord, OutboxRow};

/// How a failure is to be handled, decided once at the consumer's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Cannot succeed by trying again (cannot decode, unknown schema, fails validation,
    /// business rule violated): dead-lettered on the first attempt.
    Permanent,
    /// Might succeed later (provider or database unavailable, timeouts): retried with backoff,
    /// dead-lettered as `retries_exhausted` once the step's retry budget is spent.
    Retryable,
}

/// One failed attempt at a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub at: DateTime<Utc>,
    pub class: ErrorClass,
    pub kind: String,
    pub error: String,
}

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct RecordPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A record given up on, with every attempt that failed (oldest first, at least one).
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub consumer: &'a str,
    pub group: &'a str,
    pub position: RecordPosition<'a>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub history: Vec<FailedAttempt>,
}

impl<'a> DeadLetter<'a> {
    /// The dead letter of `message`, as read by `consumer` in `group`.
    pub fn of(
        consumer: &'a str,
        group: &'a str,
        message: &'a rdkafka::message::OwnedMessage,
        history: Vec<FailedAttempt>,
    ) -> DeadLetter<'a> {
        use rdkafka::Message;
        DeadLetter {
            consumer,
            group,
            position: RecordPosition {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
            },
            key: message.key(),
            payload: message.payload(),
            history,
        }
    }
}

/// The dead-letter topic of `group` reading `topic`.
pub fn dlq_topic(topic: &str, group: &str) -> String {
    format!("{topic}.dlq.{group}")
}

/// The stable id of the dead letter for a record position and group.
pub fn dead_letter_id(group: &str, position: RecordPosition<'_>) -> Uuid {
    let name = format!(
        "{group}/{}/{}/{}",
        position.topic, position.partition, position.offset
    );
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
}

/// Record `letter` in `pipeline.dead_letters` and queue it for its dead-letter topic. A record
/// already dead-lettered and not yet redriven is left as it is (this is a re-delivery of the
/// same batch); one that failed again after a redrive gets the new attempts appended.
pub async fn dead_letter(
    tx: &mut PgConnection,
    letter: DeadLetter<'_>,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    let last = letter
        .history
        .last()
        .cloned()
        .unwrap_or_else(|| FailedAttempt {
            at: Utc::now(),
            class: ErrorClass::Permanent,
            kind: "unknown".into(),
            error: "no attempt recorded".into(),
        });
    let first_at = letter.history.first().map_or(last.at, |a| a.at);
    let class = if last.class == ErrorClass::Permanent {
        "permanent"
    } else {
        "retries_exhausted"
    };
    let position = letter.position;
    let id = dead_letter_id(letter.group, position);
    let dlq = dlq_topic(position.topic, letter.group);
    tracing::error!(
        consumer = letter.consumer,
        topic = position.topic,
        partition = position.partition,
        offset = position.offset,
        class,
        kind = %last.kind,
        error = %last.error,
        dlq = %dlq,
        "record dead-lettered"
    );
    let history = serde_json::to_value(&letter.history).unwrap_or_default();
    let stored: Option<(i32, serde_json::Value, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO pipeline.dead_letters AS d
             (id, consumer, topic, partition, \"offset\", record_key, payload, dlq_topic, error_class, error_kind,
              error, attempts, history, first_failed_at, last_failed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (consumer, topic, partition, \"offset\") DO UPDATE SET
             error_class = EXCLUDED.error_class, error_kind = EXCLUDED.error_kind, error = EXCLUDED.error,
             attempts = d.attempts + EXCLUDED.attempts, history = d.history || EXCLUDED.history,
             last_failed_at = EXCLUDED.last_failed_at, dead_lettered_at = now(),
             redriven_at = NULL, redrive_outcome = NULL
         WHERE d.redriven_at IS NOT NULL
         RETURNING attempts, history, first_failed_at",
    )
    .bind(id)
    .bind(letter.consumer)
    .bind(position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .bind(letter.key)
    .bind(letter.payload)
    .bind(&dlq)
    .bind(class)
    .bind(&last.kind)
    .bind(&last.error)
    .bind(i32::try_from(letter.history.len()).unwrap_or(i32::MAX))
    .bind(&history)
    .bind(first_at)
    .bind(last.at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, full_history, first_failed_at)) = stored else {
        return Ok(None);
    };
    let headers = vec![
        ("dlq.source.topic".to_string(), position.topic.to_string()),
        (
            "dlq.source.partition".to_string(),
            position.partition.to_string(),
        ),
        ("dlq.source.offset".to_string(), position.offset.to_string()),
        ("dlq.group".to_string(), letter.group.to_string()),
        ("dlq.error.class".to_string(), class.to_string()),
        ("dlq.error.kind".to_string(), last.kind.clone()),
        ("dlq.error.message".to_string(), last.error.clone()),
        ("dlq.attempts".to_string(), attempts.to_string()),
        (
            "dlq.first_failure_at".to_string(),
            first_failed_at.to_rfc3339(),
        ),
        ("dlq.last_failure_at".to_string(), last.at.to_rfc3339()),
        ("dlq.history".to_string(), full_history.to_string()),
    ];
    let key = letter.key.map(<[u8]>::to_vec);
    let order_id = key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let record = OutboxRecord {
        // A new id per dead-lettering of the same record (attempts only grow).
        event_id: Uuid::new_v5(&id, attempts.to_string().as_bytes()),
        event_type: "DeadLetter".into(),
        order_id,
        topic: dlq,
        key: Some(key.unwrap_or_default()),
        payload: letter.payload.map(<[u8]>::to_vec),
        headers,
    };
    Ok(outbox::insert(tx, letter.consumer, vec![record])
        .await?
        .pop())
}

/// Close dead letter `id` as redriven (a failure of the redrive reopens it, see
/// [`dead_letter`]).
pub async fn mark_redriven(tx: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE pipeline.dead_letters SET redriven_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Open (not redriven) dead letters per consumer, only consumers that have some. Counts the
/// partial index `dead_letters_open`, which holds open letters only.
pub async fn open_per_consumer(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT consumer, count(*) FROM pipeline.dead_letters
         WHERE redriven_at IS NULL GROUP BY consumer ORDER BY consumer",
    )
    .fetch_all(&mut *conn)
    .await
}

/// A dead letter as operators list it (`orderflow dlq list`, `GET /v1/dead-letters`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    pub id: Uuid,
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error_class: String,
    pub error_kind: String,
    pub attempts: i32,
    pub last_failed_at: DateTime<Utc>,
    pub error: String,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redrive_outcome: Option<String>,
}

/// Where a page of [`page`] starts: after this dead letter's (consumer, topic, partition,
/// offset), the order the list is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAfter {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl From<&Listed> for ListedAfter {
    fn from(row: &Listed) -> ListedAfter {
        ListedAfter {
            consumer: row.consumer.clone(),
            topic: row.topic.clone(),
            partition: row.partition,
            offset: row.offset,
        }
    }
}

/// Dead letters of `consumer` (all consumers when `None`), open ones only unless `all`, in
/// log order per consumer.
pub async fn list(
    pool: &sqlx::PgPool,
    consumer: Option<&str>,
    all: bool,
) -> Result<Vec<Listed>, sqlx::Error> {
    page(pool, consumer, all, None, i64::MAX).await
}

/// At most `limit` dead letters as [`list`] orders them, starting after `after` (keyset
/// pagination: a page never repeats or skips a row that existed through the walk).
pub async fn page(
    pool: &sqlx::PgPool,
    consumer: Option<&str>,
    all: bool,
    after: Option<&ListedAfter>,
    limit: i64,
) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, consumer, topic, partition, \"offset\", error_class, error_kind, attempts, last_failed_at,
                error, redriven_at, redrive_outcome
         FROM pipeline.dead_letters
         WHERE ($1::text IS NULL OR consumer = $1) AND ($2 OR redriven_at IS NULL)
           AND ($3::text IS NULL OR (consumer, topic, partition, \"offset\") > ($3, $4, $5, $6))
         ORDER BY consumer, topic, partition, \"offset\"
         LIMIT $7",
    )
    .bind(consumer)
    .bind(all)
    .bind(after.map(|a| a.consumer.as_str()))
    .bind(after.map(|a| a.topic.as_str()))
    .bind(after.map(|a| a.partition))
    .bind(after.map(|a| a.offset))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One dead letter in full (`orderflow dlq show`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Letter {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub dlq_topic: String,
    pub error_class: String,
    pub error: String,
    pub attempts: i32,
    pub history: serde_json::Value,
    pub record_key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redrive_outcome: Option<String>,
}

pub async fn find(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<Letter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT consumer, topic, partition, \"offset\", dlq_topic, error_class, error, attempts, history,
                record_key, payload, redriven_at, redrive_outcome
         FROM pipeline.dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// An open dead letter to redrive: its id and the record as it was read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Open {
    pub id: Uuid,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub record_key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// `consumer`'s open dead letters (all, or those in `only`), oldest position first.
pub async fn open(
    pool: &sqlx::PgPool,
    consumer: &str,
    only: &[Uuid],
) -> Result<Vec<Open>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, topic, partition, \"offset\", record_key, payload FROM pipeline.dead_letters
         WHERE consumer = $1 AND redriven_at IS NULL AND (cardinality($2::uuid[]) = 0 OR id = ANY($2))
         ORDER BY topic, partition, \"offset\"",
    )
    .bind(consumer)
    .bind(only)
    .fetch_all(pool)
    .await
}

/// Note what came of redriving dead letter `id`.
pub async fn record_redrive_outcome(
    tx: &mut PgConnection,
    id: Uuid,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE pipeline.dead_letters SET redrive_outcome = $2 WHERE id = $1")
        .bind(id)
        .bind(outcome)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The error dead letter `id` holds now.
pub async fn last_error(tx: &mut PgConnection, id: Uuid) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT error FROM pipeline.dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
}

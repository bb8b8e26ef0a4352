//! What `orderflow check` reads from the tables this crate owns: the outbox (replies not yet
//! published, the same reply written twice) and the dead letters. Read-only queries; the
//! verdicts are the caller's.

use sqlx::PgConnection;

/// Example rows returned with a count.
const EXAMPLES: i64 = 10;

/// A count and a few of the rows counted, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub count: i64,
    pub examples: Vec<String>,
}

/// Outbox rows not yet published: the oldest first.
pub async fn unpublished(conn: &mut PgConnection) -> Result<Found, sqlx::Error> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL")
            .fetch_one(&mut *conn)
            .await?;
    let examples = if count == 0 {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "SELECT step || ' ' || event_type || ' of ' || order_id || ' to ' || topic
                    || ', written ' || to_char(created_at, 'YYYY-MM-DD HH24:MI:SS')
             FROM pipeline.outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(EXAMPLES)
        .fetch_all(&mut *conn)
        .await?
    };
    Ok(Found { count, examples })
}

/// Outbox rows beyond the first per (step, order, event type), for event types other than
/// `repeatable` (which an order may legitimately cause more than once).
pub async fn outbox_duplicates(
    conn: &mut PgConnection,
    repeatable: &[&str],
) -> Result<Found, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT step || ' ' || event_type || ' of ' || order_id, count(*)
         FROM pipeline.outbox WHERE event_type <> ALL($1)
         GROUP BY step, order_id, event_type HAVING count(*) > 1 ORDER BY 1",
    )
    .bind(repeatable)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Found {
        count: rows.iter().map(|(_, n)| n - 1).sum(),
        examples: rows
            .iter()
            .take(EXAMPLES as usize)
            .map(|(what, n)| format!("outbox: {what} written {n} times"))
            .collect(),
    })
}

/// Dead letters not redriven, oldest position first, and how many were redriven.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    pub open: Found,
    pub redriven: i64,
}

/// Dead letters of every consumer, or of `consumer` only.
pub async fn dead_letters(
    conn: &mut PgConnection,
    consumer: Option<&str>,
) -> Result<DeadLetters, sqlx::Error> {
    let (open, redriven): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE redriven_at IS NULL), count(*) FILTER (WHERE redriven_at IS NOT NULL)
         FROM pipeline.dead_letters WHERE $1::text IS NULL OR consumer = $1",
    )
    .bind(consumer)
    .fetch_one(&mut *conn)
    .await?;
    let examples = if open == 0 {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "SELECT consumer || ' ' || topic || '/' || partition || '@' || \"offset\" || ' '
                    || error_class || '/' || error_kind || ': ' || left(error, 160) || ' (id ' || id || ')'
             FROM pipeline.dead_letters
             WHERE redriven_at IS NULL AND ($1::text IS NULL OR consumer = $1)
             ORDER BY consumer, topic, partition, \"offset\" LIMIT $2",
        )
        .bind(consumer)
        .bind(EXAMPLES)
        .fetch_all(&mut *conn)
        .await?
    };
    Ok(DeadLetters {
        open: Found {
            count: open,
            examples,
        },
        redriven,
    })
}

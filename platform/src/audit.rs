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

impl Found {
    /// Count the rows of `rows` — a query selecting a line of text and a sort key, in that
    /// order — and keep the first few lines by that key, in one round trip. `text_params` bind
    /// to `$2`, `$3`, ... (`$1` is the number of examples).
    pub async fn query(
        conn: &mut PgConnection,
        rows: &str,
        text_params: &[Option<&str>],
    ) -> Result<Found, sqlx::Error> {
        let sql = format!(
            "SELECT line, count(*) OVER () FROM ({rows}) counted(line, sort_key)
             ORDER BY sort_key LIMIT $1"
        );
        let mut query = sqlx::query_as::<_, (String, i64)>(&sql).bind(EXAMPLES);
        for param in text_params {
            query = query.bind(*param);
        }
        let found = query.fetch_all(&mut *conn).await?;
        Ok(Found {
            count: found.first().map_or(0, |(_, n)| *n),
            examples: found.into_iter().map(|(line, _)| line).collect(),
        })
    }
}

/// Outbox rows not yet published: the oldest first.
pub async fn unpublished(conn: &mut PgConnection) -> Result<Found, sqlx::Error> {
    Found::query(
        conn,
        "SELECT step || ' ' || event_type || ' of ' || order_id || ' to ' || topic
                || ', written ' || to_char(created_at, 'YYYY-MM-DD HH24:MI:SS'), id
         FROM pipeline.outbox WHERE published_at IS NULL",
        &[],
    )
    .await
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
    let redriven: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pipeline.dead_letters
         WHERE redriven_at IS NOT NULL AND ($1::text IS NULL OR consumer = $1)",
    )
    .bind(consumer)
    .fetch_one(&mut *conn)
    .await?;
    let open_letters = Found::query(
        conn,
        "SELECT consumer || ' ' || topic || '/' || partition || '@' || \"offset\" || ' '
                || error_class || '/' || error_kind || ': ' || left(error, 160) || ' (id ' || id || ')',
                ROW(consumer, topic, partition, \"offset\")
         FROM pipeline.dead_letters
         WHERE redriven_at IS NULL AND ($2::text IS NULL OR consumer = $2)",
        &[consumer],
    )
    .await?;
    Ok(DeadLetters {
        open: open_letters,
        redriven,
    })
}

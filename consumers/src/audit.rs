//! What `orderflow check` reads from the steps' tables (`saga`, `inventory`, `payment`,
//! `shipping`, `pipeline.parked`): counts and a few example rows per invariant. Read-only
//! queries; the verdicts are the caller's. Where a check compares a step's state with the
//! read model it reads the analysts' views (`analytics.orders`), never a generation schema.

use sqlx::PgConnection;

pub use platform::audit::Found;

/// Example rows returned with a count.
const EXAMPLES: i64 = 10;

/// Terminal states of the saga (and statuses of the read model).
const TERMINAL: [&str; 2] = ["completed", "cancelled"];

/// How far the orders (those whose id starts with the prefix, when given) have come, in the saga
/// and in the read model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terminal {
    pub saga_orders: i64,
    pub saga_terminal: i64,
    pub read_orders: i64,
    pub read_terminal: i64,
    /// Orders in both whose read-model status differs from the saga's state.
    pub disagree: i64,
    /// Orders in the saga but not in the read model, and the other way round.
    pub only_saga: i64,
    pub only_read: i64,
    /// Non-terminal saga orders grouped: `N orders in STATE awaiting X (e.g. ID)`.
    pub open_groups: Vec<String>,
    /// A few disagreeing orders.
    pub disagreements: Vec<String>,
}

/// Orders whose id starts with `prefix` (every order when `None`).
pub async fn terminal(
    conn: &mut PgConnection,
    prefix: Option<&str>,
) -> Result<Terminal, sqlx::Error> {
    let prefix = prefix.unwrap_or("");
    let row: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "WITH s AS (SELECT order_id, state FROM saga.orders WHERE left(order_id, length($1)) = $1),
              a AS (SELECT order_id, status FROM analytics.orders WHERE left(order_id, length($1)) = $1)
         SELECT (SELECT count(*) FROM s),
                (SELECT count(*) FROM s WHERE state = ANY($2)),
                (SELECT count(*) FROM a),
                (SELECT count(*) FROM a WHERE status = ANY($2)),
                (SELECT count(*) FROM s JOIN a USING (order_id) WHERE a.status <> s.state),
                (SELECT count(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.order_id = s.order_id)),
                (SELECT count(*) FROM a WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.order_id = a.order_id))",
    )
    .bind(prefix)
    .bind(&TERMINAL[..])
    .fetch_one(&mut *conn)
    .await?;
    let mut found = Terminal {
        saga_orders: row.0,
        saga_terminal: row.1,
        read_orders: row.2,
        read_terminal: row.3,
        disagree: row.4,
        only_saga: row.5,
        only_read: row.6,
        ..Terminal::default()
    };
    if found.saga_terminal < found.saga_orders {
        found.open_groups = sqlx::query_scalar(
            "SELECT 'saga: ' || count(*) || ' orders in ' || state || ' awaiting '
                    || coalesce(awaiting, '-') || ' (e.g. ' || min(order_id) || ')'
             FROM saga.orders
             WHERE left(order_id, length($1)) = $1 AND state <> ALL($2)
             GROUP BY state, awaiting ORDER BY count(*) DESC, state LIMIT $3",
        )
        .bind(prefix)
        .bind(&TERMINAL[..])
        .bind(EXAMPLES)
        .fetch_all(&mut *conn)
        .await?;
    }
    if found.disagree + found.only_saga + found.only_read > 0 {
        found.disagreements = sqlx::query_scalar(
            "SELECT order_id || ': read model ' || coalesce(a.status, '(missing)')
                    || ', saga ' || coalesce(s.state, '(missing)')
             FROM (SELECT order_id, state FROM saga.orders WHERE left(order_id, length($1)) = $1) s
             FULL JOIN (SELECT order_id, status FROM analytics.orders
                        WHERE left(order_id, length($1)) = $1) a USING (order_id)
             WHERE a.status IS DISTINCT FROM s.state ORDER BY order_id LIMIT $2",
        )
        .bind(prefix)
        .bind(EXAMPLES)
        .fetch_all(&mut *conn)
        .await?;
    }
    Ok(found)
}

/// The payment step's authorizations against the saga's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payments {
    pub authorized: i64,
    pub voided: i64,
    pub declined: i64,
    /// Orders with more than one payment in `authorized`.
    pub multiple_authorized: i64,
    /// Cancelled orders whose payment is still `authorized`.
    pub cancelled_authorized: i64,
    /// Completed orders without an `authorized` payment.
    pub completed_unpaid: i64,
    /// Terminal orders whose ledger (authorizations minus voids) is not 1 when completed, 0
    /// when cancelled.
    pub ledger_wrong: i64,
    pub examples: Vec<String>,
}

pub async fn payments(conn: &mut PgConnection) -> Result<Payments, sqlx::Error> {
    // Each problem as (kind, order_id), so one query gives counts and examples.
    let problems: Vec<(String, String, i64)> = sqlx::query_as(
        "WITH net AS (
             SELECT order_id, sum(CASE entry WHEN 'authorization' THEN 1 WHEN 'void' THEN -1 ELSE 0 END) AS net
             FROM payment.ledger GROUP BY order_id),
         problems AS (
             SELECT 'more than one authorized payment' AS kind, order_id FROM payment.payments
             WHERE status = 'authorized' GROUP BY order_id HAVING count(*) > 1
             UNION ALL
             SELECT 'cancelled with a live authorization', p.order_id
             FROM payment.payments p JOIN saga.orders s USING (order_id)
             WHERE p.status = 'authorized' AND s.state = 'cancelled'
             UNION ALL
             SELECT 'completed without an authorization', s.order_id FROM saga.orders s
             WHERE s.state = 'completed' AND NOT EXISTS
                 (SELECT 1 FROM payment.payments p WHERE p.order_id = s.order_id AND p.status = 'authorized')
             UNION ALL
             SELECT 'ledger nets ' || n.net || ' authorizations for a ' || s.state || ' order', s.order_id
             FROM saga.orders s JOIN net n USING (order_id)
             WHERE (s.state = 'cancelled' AND n.net <> 0) OR (s.state = 'completed' AND n.net <> 1))
         SELECT kind, min(order_id), count(*) FROM problems GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (authorized, voided, declined): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'authorized'), count(*) FILTER (WHERE status = 'voided'),
                count(*) FILTER (WHERE status = 'declined')
         FROM payment.payments",
    )
    .fetch_one(&mut *conn)
    .await?;
    let count_of = |prefix: &str| -> i64 {
        problems
            .iter()
            .filter(|(kind, _, _)| kind.starts_with(prefix))
            .map(|(_, _, n)| n)
            .sum()
    };
    Ok(Payments {
        authorized,
        voided,
        declined,
        multiple_authorized: count_of("more than one"),
        cancelled_authorized: count_of("cancelled with"),
        completed_unpaid: count_of("completed without"),
        ledger_wrong: count_of("ledger nets"),
        examples: problems
            .iter()
            .map(|(kind, example, n)| format!("{n} orders {kind} (e.g. {example})"))
            .collect(),
    })
}

/// One sku's stock and what live reservations hold of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuStock {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    /// Units of this sku in reservations with status `reserved`.
    pub held: i64,
}

/// Stock against reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stock {
    pub skus: Vec<SkuStock>,
    /// Reservations still `reserved` for cancelled orders.
    pub reserved_for_cancelled: Found,
    /// Completed orders without a `reserved` reservation.
    pub completed_unreserved: Found,
}

pub async fn stock(conn: &mut PgConnection) -> Result<Stock, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "WITH held AS (
             SELECT i->>'sku' AS sku, sum((i->>'quantity')::bigint) AS qty
             FROM inventory.reservations r, jsonb_array_elements(r.items) AS i
             WHERE r.status = 'reserved' GROUP BY 1)
         SELECT coalesce(st.sku, held.sku), coalesce(st.available, 0), coalesce(st.reserved, 0),
                coalesce(held.qty, 0)::bigint
         FROM inventory.stock st FULL JOIN held USING (sku) ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let reserved_for_cancelled = found(
        conn,
        "SELECT r.order_id FROM inventory.reservations r JOIN saga.orders s USING (order_id)
         WHERE r.status = 'reserved' AND s.state = 'cancelled'",
    )
    .await?;
    let completed_unreserved = found(
        conn,
        "SELECT s.order_id FROM saga.orders s LEFT JOIN inventory.reservations r USING (order_id)
         WHERE s.state = 'completed' AND r.status IS DISTINCT FROM 'reserved'",
    )
    .await?;
    Ok(Stock {
        skus: rows
            .into_iter()
            .map(|(sku, available, reserved, held)| SkuStock {
                sku,
                available,
                reserved,
                held,
            })
            .collect(),
        reserved_for_cancelled,
        completed_unreserved,
    })
}

/// Effects the steps applied more than once: each count is the rows beyond the first per order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepDuplicates {
    pub reservations: i64,
    pub reservations_dup: i64,
    pub ledger_authorization_dup: i64,
    pub ledger_void_dup: i64,
    pub ledger_decline_dup: i64,
    pub shipments: i64,
    pub shipments_dup: i64,
    pub examples: Vec<String>,
}

impl StepDuplicates {
    pub fn total(&self) -> i64 {
        self.reservations_dup
            + self.ledger_authorization_dup
            + self.ledger_void_dup
            + self.ledger_decline_dup
            + self.shipments_dup
    }
}

pub async fn duplicates(conn: &mut PgConnection) -> Result<StepDuplicates, sqlx::Error> {
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM inventory.reservations),
                (SELECT count(*) - count(DISTINCT order_id) FROM inventory.reservations),
                (SELECT count(*) FROM shipping.shipments),
                (SELECT count(*) - count(DISTINCT order_id) FROM shipping.shipments)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let ledger: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT entry, sum(c - 1)::bigint, min(order_id) FROM
             (SELECT entry, order_id, count(*) AS c FROM payment.ledger
              GROUP BY entry, order_id HAVING count(*) > 1) x
         GROUP BY entry ORDER BY entry",
    )
    .fetch_all(&mut *conn)
    .await?;
    let ledger_dup = |entry: &str| {
        ledger
            .iter()
            .filter(|(e, _, _)| e == entry)
            .map(|(_, n, _)| *n)
            .sum()
    };
    Ok(StepDuplicates {
        reservations: row.0,
        reservations_dup: row.1,
        shipments: row.2,
        shipments_dup: row.3,
        ledger_authorization_dup: ledger_dup("authorization"),
        ledger_void_dup: ledger_dup("void"),
        ledger_decline_dup: ledger_dup("decline"),
        examples: ledger
            .iter()
            .map(|(entry, n, example)| {
                format!("payment.ledger: {n} extra {entry} entries (e.g. order {example})")
            })
            .collect(),
    })
}

/// Orders parked by a step, oldest first.
pub async fn parked(conn: &mut PgConnection) -> Result<Found, sqlx::Error> {
    Found::query(
        conn,
        "SELECT step || ' ' || order_id || ' at ' || topic || '/' || partition || '@' || \"offset\"
                || ', ' || attempts || ' attempts: ' || left(history::text, 160), seq
         FROM pipeline.parked",
        &[],
    )
    .await
}

/// Count the order ids `sql` selects, with the first few.
async fn found(conn: &mut PgConnection, sql: &str) -> Result<Found, sqlx::Error> {
    Found::query(
        conn,
        &format!("SELECT order_id, order_id FROM ({sql}) ids"),
        &[],
    )
    .await
}

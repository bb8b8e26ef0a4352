//! The order saga: follows each order through the steps and ends it with `OrderCompleted` or
//! `OrderCancelled`. Its decisions are the pure function [`machine::decide`]; this module only
//! loads and stores the per-order state in `saga.orders` around it, for a whole batch at once:
//! one locking read, decisions in memory, one upsert.

pub mod machine;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::{
    Event, EventBody, EventType, Metadata, OrderCancellationAccepted, OrderCancellationRejected,
    OrderCancelled, OrderCompleted, SagaStepTimedOut,
};
use platform::config::KafkaSettings;
use platform::outbox::{self, OutboxRecord, OutboxRow};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::ports::Answers;
use crate::step::{Decider, Decline, Never};
use crate::HandlerError;
use machine::{decide, time_out, Command, SagaState};

pub const NAME: &str = "saga";

/// The `[saga]` section: deadlines of the order saga. A step that has not answered
/// `<step>_timeout_ms` after the event that asked it (by that event's time) makes the saga give
/// the order up (`SagaStepTimedOut`, then compensation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    pub inventory_timeout_ms: u64,
    pub payment_timeout_ms: u64,
    pub shipping_timeout_ms: u64,
    /// How often the saga component looks for missed deadlines; 0 turns the check off.
    pub deadline_check_interval_ms: u64,
    /// Most orders timed out per check (one transaction).
    pub deadline_check_batch: i64,
}

impl SagaSettings {
    /// The timeout of `step` (`inventory`, `payment` or `shipping`).
    pub fn timeout(&self, step: &str) -> Option<std::time::Duration> {
        let ms = match step {
            "inventory" => self.inventory_timeout_ms,
            "payment" => self.payment_timeout_ms,
            "shipping" => self.shipping_timeout_ms,
            _ => return None,
        };
        Some(std::time::Duration::from_millis(ms))
    }
}

impl Default for SagaSettings {
    fn default() -> Self {
        SagaSettings {
            inventory_timeout_ms: 300_000,
            payment_timeout_ms: 300_000,
            shipping_timeout_ms: 600_000,
            deadline_check_interval_ms: 1_000,
            deadline_check_batch: 500,
        }
    }
}

pub struct OrderSaga {
    deadlines: SagaSettings,
}

impl OrderSaga {
    pub fn new(deadlines: SagaSettings) -> Self {
        OrderSaga { deadlines }
    }

    /// When the step awaited in `state` must have answered, counting from `since`.
    fn deadline(&self, state: &SagaState, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let timeout = self.deadlines.timeout(state.step_with_deadline()?)?;
        Some(since + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX))
    }
}

/// One order's saga row, as loaded and as it will be stored.
#[derive(Debug, Clone)]
pub struct Entry {
    state: SagaState,
    customer_id: String,
    total_minor: i64,
    currency: String,
    correlation_id: Option<Uuid>,
    deadline: Option<DateTime<Utc>>,
    attempts: i32,
    last_event_type: &'static str,
    last_event_id: Uuid,
    last_event_at: Option<DateTime<Utc>>,
    changed: bool,
    /// The row exists in `saga.orders` (loaded), so storing it is an update.
    stored: bool,
}

type Row = (
    String,
    String,
    Vec<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
    String,
    Option<Uuid>,
    Option<DateTime<Utc>>,
    i32,
    Uuid,
    Option<DateTime<Utc>>,
);

const SELECT_ROWS: &str =
    "SELECT order_id, state, pending, cancel_reason, cancel_detail, customer_id, total_minor,
        currency, correlation_id, deadline, attempts, last_event_id, last_event_at
 FROM saga.orders";

fn entry_from_row(row: Row) -> Result<(String, Entry), HandlerError> {
    let (
        order_id,
        state,
        pending,
        reason,
        detail,
        customer_id,
        total_minor,
        currency,
        correlation_id,
        deadline,
        attempts,
        last_event_id,
        last_event_at,
    ) = row;
    let state = SagaState::from_row(&state, &pending, reason.as_deref(), detail.as_deref())
        .map_err(|e| HandlerError::Rule(format!("order {order_id}: {e}")))?;
    Ok((
        order_id,
        Entry {
            state,
            customer_id,
            total_minor,
            currency,
            correlation_id,
            deadline,
            attempts,
            last_event_type: "",
            last_event_id,
            last_event_at,
            changed: false,
            stored: true,
        },
    ))
}

/// The saga state of one batch's orders.
pub type State = HashMap<String, Entry>;

#[async_trait]
impl Decider for OrderSaga {
    type State = State;
    type Question = Never;
    type Answer = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        // Every event of an order but its own final answers: its markers
        // (OrderCancellationAccepted, SagaStepTimedOut) it must see, to know where they landed
        // in the order's history. Stock and customer events belong to no order.
        event_type.concerns_order()
            && !matches!(
                event_type,
                EventType::OrderCompleted
                    | EventType::OrderCancelled
                    | EventType::OrderCancellationRejected
            )
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
        lock: bool,
    ) -> Result<State, HandlerError> {
        let order_ids = crate::step::order_ids(events);
        // Sorted ids, so that concurrent members (and the deadline check) lock rows in the
        // same order. Planned per call: a generic plan cached while the table was small would
        // keep scanning it whole as it grows.
        let lock = if lock {
            " ORDER BY order_id FOR UPDATE"
        } else {
            ""
        };
        let rows: Vec<Row> =
            sqlx::query_as(&format!("{SELECT_ROWS} WHERE order_id = ANY($1){lock}"))
                .persistent(false)
                .bind(&order_ids)
                .fetch_all(&mut *conn)
                .await?;
        let mut entries: State = HashMap::with_capacity(order_ids.len());
        for row in rows {
            let (order_id, entry) = entry_from_row(row)?;
            entries.insert(order_id, entry);
        }
        Ok(entries)
    }

    fn decide(
        &self,
        entries: &mut State,
        event: &Event,
        _answers: &Answers<()>,
    ) -> Result<Vec<EventBody>, Decline<Never>> {
        Ok(self.apply(entries, event))
    }

    async fn store(&self, tx: &mut PgConnection, entries: &State) -> Result<(), HandlerError> {
        store(tx, entries).await?;
        Ok(())
    }
}

impl OrderSaga {
    /// Apply one event to the batch's saga state; the saga's replies.
    pub fn apply(&self, entries: &mut State, event: &Event) -> Vec<EventBody> {
        let order_id = &event.meta.order_id;
        let transition = match decide(entries.get(order_id).map(|e| &e.state), &event.body) {
            Ok(transition) => transition,
            Err(ignored) => {
                tracing::info!(%order_id, event_type = %event.event_type(), reason = %ignored, "saga ignored event");
                return Vec::new();
            }
        };
        let mut total_minor = 0;
        let mut currency = String::new();
        if let Some(next) = transition.next {
            let entry = match (entries.get_mut(order_id), &event.body) {
                (Some(entry), _) => entry,
                (None, EventBody::OrderCreated(order)) => {
                    entries.entry(order_id.clone()).or_insert(Entry {
                        state: SagaState::AwaitingInventory,
                        customer_id: order.customer_id.clone(),
                        total_minor: order.total_minor(),
                        currency: order.currency.clone(),
                        correlation_id: Some(event.meta.correlation_id),
                        deadline: None,
                        attempts: 0,
                        last_event_type: "",
                        last_event_id: event.meta.event_id,
                        last_event_at: None,
                        changed: true,
                        stored: false,
                    })
                }
                // decide() starts a saga only from OrderCreated.
                (None, _) => return Vec::new(),
            };
            // A new wait starts a new deadline, counted from the event that started it.
            let moved = next.name() != entry.state.name()
                || matches!(event.body, EventBody::OrderCreated(_));
            if moved {
                entry.deadline = self.deadline(&next, event.meta.occurred_at);
            }
            entry.state = next;
            entry.last_event_type = event.event_type().as_str();
            entry.last_event_id = event.meta.event_id;
            entry.last_event_at = Some(event.meta.occurred_at);
            entry.changed = true;
            total_minor = entry.total_minor;
            currency = entry.currency.clone();
        }
        transition
            .commands
            .into_iter()
            .map(|command| match command {
                Command::Complete => EventBody::OrderCompleted(OrderCompleted {
                    total_minor,
                    currency: currency.clone(),
                }),
                Command::Cancel { reason, detail } => {
                    EventBody::OrderCancelled(OrderCancelled { reason, detail })
                }
                Command::AcceptCancellation {
                    reason,
                    requested_by,
                } => EventBody::OrderCancellationAccepted(OrderCancellationAccepted {
                    reason,
                    requested_by,
                }),
                Command::RejectCancellation { reason, detail } => {
                    EventBody::OrderCancellationRejected(OrderCancellationRejected {
                        reason,
                        detail,
                    })
                }
            })
            .collect()
    }
}

/// Write the changed rows: new orders with one `INSERT`, known ones with one `UPDATE … FROM
/// UNNEST` (no `ON CONFLICT`, whose speculative insert costs every updated row an index probe
/// and a retry).
async fn store(tx: &mut PgConnection, entries: &HashMap<String, Entry>) -> Result<(), sqlx::Error> {
    let (updated, inserted): (Changed, Changed) = entries
        .iter()
        .filter(|(_, e)| e.changed)
        .partition(|(_, e)| e.stored);
    if !inserted.is_empty() {
        let rows = Columns::of(&inserted);
        sqlx::query(
            "INSERT INTO saga.orders (order_id, state, awaiting, pending, cancel_reason, cancel_detail, customer_id,
                                      total_minor, currency, last_event_type, last_event_id, correlation_id,
                                      deadline, attempts, last_event_at)
             SELECT id, st, aw, COALESCE(string_to_array(NULLIF(pe, ''), ','), '{}'), re, de, cu, tot, cur, ty, ev,
                    co, dl, at, lt
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::text[], $10::text[], $11::uuid[], $12::uuid[], $13::timestamptz[],
                         $14::int[], $15::timestamptz[])
                  AS x(id, st, aw, pe, re, de, cu, tot, cur, ty, ev, co, dl, at, lt)",
        )
        .bind(&rows.ids)
        .bind(&rows.states)
        .bind(&rows.awaiting)
        .bind(&rows.pending)
        .bind(&rows.reasons)
        .bind(&rows.details)
        .bind(&rows.customers)
        .bind(&rows.totals)
        .bind(&rows.currencies)
        .bind(&rows.types)
        .bind(&rows.event_ids)
        .bind(&rows.correlations)
        .bind(&rows.deadlines)
        .bind(&rows.attempts)
        .bind(&rows.event_times)
        .execute(&mut *tx)
        .await?;
    }
    if !updated.is_empty() {
        let rows = Columns::of(&updated);
        sqlx::query(
            "UPDATE saga.orders AS o SET state = x.st, awaiting = x.aw,
                 pending = COALESCE(string_to_array(NULLIF(x.pe, ''), ','), '{}'), cancel_reason = x.re,
                 cancel_detail = x.de, last_event_type = x.ty, last_event_id = x.ev, deadline = x.dl,
                 attempts = x.at, last_event_at = x.lt, updated_at = now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::uuid[], $9::timestamptz[], $10::int[], $11::timestamptz[])
                  AS x(id, st, aw, pe, re, de, ty, ev, dl, at, lt)
             WHERE o.order_id = x.id",
        )
        .persistent(false)
        .bind(&rows.ids)
        .bind(&rows.states)
        .bind(&rows.awaiting)
        .bind(&rows.pending)
        .bind(&rows.reasons)
        .bind(&rows.details)
        .bind(&rows.types)
        .bind(&rows.event_ids)
        .bind(&rows.deadlines)
        .bind(&rows.attempts)
        .bind(&rows.event_times)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

type Changed<'a> = Vec<(&'a String, &'a Entry)>;

/// Saga rows as one array per column.
struct Columns<'a> {
    ids: Vec<&'a str>,
    states: Vec<&'a str>,
    awaiting: Vec<Option<&'a str>>,
    /// Postgres arrays cannot nest ragged arrays, so pending compensations travel as one
    /// comma-separated string per row.
    pending: Vec<String>,
    reasons: Vec<Option<&'a str>>,
    details: Vec<Option<&'a str>>,
    customers: Vec<&'a str>,
    totals: Vec<i64>,
    currencies: Vec<&'a str>,
    types: Vec<&'a str>,
    event_ids: Vec<Uuid>,
    correlations: Vec<Option<Uuid>>,
    deadlines: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<i32>,
    event_times: Vec<Option<DateTime<Utc>>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[(&'a String, &'a Entry)]) -> Self {
        Columns {
            ids: rows.iter().map(|(id, _)| id.as_str()).collect(),
            states: rows.iter().map(|(_, e)| e.state.name()).collect(),
            awaiting: rows.iter().map(|(_, e)| e.state.awaiting()).collect(),
            pending: rows
                .iter()
                .map(|(_, e)| {
                    let pending: Vec<&str> = e.state.pending().iter().map(|c| c.as_str()).collect();
                    pending.join(",")
                })
                .collect(),
            reasons: rows.iter().map(|(_, e)| e.state.cancellation().0).collect(),
            details: rows.iter().map(|(_, e)| e.state.cancellation().1).collect(),
            customers: rows.iter().map(|(_, e)| e.customer_id.as_str()).collect(),
            totals: rows.iter().map(|(_, e)| e.total_minor).collect(),
            currencies: rows.iter().map(|(_, e)| e.currency.as_str()).collect(),
            types: rows.iter().map(|(_, e)| e.last_event_type).collect(),
            event_ids: rows.iter().map(|(_, e)| e.last_event_id).collect(),
            correlations: rows.iter().map(|(_, e)| e.correlation_id).collect(),
            deadlines: rows.iter().map(|(_, e)| e.deadline).collect(),
            attempts: rows.iter().map(|(_, e)| e.attempts).collect(),
            event_times: rows.iter().map(|(_, e)| e.last_event_at).collect(),
        }
    }
}

/// What one deadline check did.
#[derive(Debug, Default, Clone)]
pub struct Expired {
    /// Orders given up because a step missed its deadline.
    pub orders: Vec<String>,
    /// The `SagaStepTimedOut` records written to the outbox, to publish.
    pub rows: Vec<OutboxRow>,
}

/// Give up every order whose awaited step missed its deadline by `now` (at most `limit`
/// orders): in one transaction, move each to compensating and write its `SagaStepTimedOut`
/// to the outbox. The caller publishes the returned rows; the runner's relay publishes them
/// if it does not.
///
/// `now` is a parameter so that tests control time. Rows locked by a saga member that is
/// handling the same orders are skipped and looked at on the next check.
pub async fn expire_due(
    pool: &PgPool,
    topic: &str,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Expired, HandlerError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT_ROWS} WHERE deadline <= $1
           AND state IN ('awaiting_inventory', 'awaiting_payment', 'awaiting_shipment')
         ORDER BY order_id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut expired = Expired::default();
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let (order_id, entry) = entry_from_row(row)?;
        if let Some((event, record)) = give_up_late(&mut tx, topic, &order_id, entry, now).await? {
            tracing::warn!(%order_id, step = %timed_out_step(&event), "saga step missed its deadline; giving the order up");
            records.push(record);
            expired.orders.push(order_id);
        }
    }
    expired.rows = outbox::insert(&mut tx, NAME, records).await?;
    tx.commit().await?;
    Ok(expired)
}

/// Give up `order_id` because the step it awaits missed its deadline, as of `now`: store the
/// compensating state and return the `SagaStepTimedOut` marker with its outbox record (not yet
/// inserted). `None` when the order awaits no step with a deadline.
async fn give_up_late(
    tx: &mut PgConnection,
    topic: &str,
    order_id: &str,
    mut entry: Entry,
    now: DateTime<Utc>,
) -> Result<Option<(Event, OutboxRecord)>, HandlerError> {
    let (Some(step), Some(deadline)) = (entry.state.step_with_deadline(), entry.deadline) else {
        return Ok(None);
    };
    let detail = format!(
        "{step} did not answer by {}",
        deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let Some(next) = time_out(&entry.state, detail) else {
        return Ok(None);
    };
    entry.attempts += 1;
    let event = Event {
        meta: Metadata {
            // One id per wait: a repeated check for the same wait writes the same event.
            event_id: events::reply_event_id(entry.last_event_id, "saga/deadline"),
            order_id: order_id.to_string(),
            occurred_at: now,
            correlation_id: entry.correlation_id.unwrap_or(entry.last_event_id),
            causation_id: entry.last_event_id,
        },
        body: EventBody::SagaStepTimedOut(SagaStepTimedOut {
            step: step.to_string(),
            deadline,
            attempts: entry.attempts,
        }),
    };
    let payload = events::encode(&event)
        .map_err(|e| HandlerError::Rule(format!("encoding SagaStepTimedOut: {e}")))?;
    let record = OutboxRecord {
        event_id: event.meta.event_id,
        event_type: EventType::SagaStepTimedOut.as_str().to_string(),
        order_id: order_id.to_string(),
        topic: topic.to_string(),
        key: None,
        payload: Some(payload),
        headers: vec![
            (
                "event_type".into(),
                EventType::SagaStepTimedOut.as_str().into(),
            ),
            ("event_id".into(), event.meta.event_id.to_string()),
        ],
    };
    sqlx::query(
        "UPDATE saga.orders SET state = $2, awaiting = $3, pending = $4, cancel_reason = $5,
             cancel_detail = $6, deadline = NULL, attempts = $7, updated_at = now()
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(next.name())
    .bind(next.awaiting())
    .bind(
        next.pending()
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(next.cancellation().0)
    .bind(next.cancellation().1)
    .bind(entry.attempts)
    .execute(&mut *tx)
    .await?;
    Ok(Some((event, record)))
}

fn timed_out_step(event: &Event) -> &str {
    match &event.body {
        EventBody::SagaStepTimedOut(marker) => &marker.step,
        _ => "",
    }
}

/// Restore only: give the order up again at the moment `marker` (a `SagaStepTimedOut` from the
/// archive) records, right after the saga applied the event the marker names as its cause,
/// which is where the deadline watch found it. The marker must come out the same, or the
/// rebuilt state disagrees with the archive. Returns the outbox row of the marker.
pub async fn replay_timeout(
    tx: &mut PgConnection,
    topic: &str,
    marker: &Event,
) -> Result<Vec<OutboxRow>, HandlerError> {
    let order_id = &marker.meta.order_id;
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT_ROWS} WHERE order_id = $1 FOR UPDATE"))
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Err(HandlerError::Diverged(format!(
            "SagaStepTimedOut {} for order {order_id}, which the saga never started",
            marker.meta.event_id
        )));
    };
    let (_, entry) = entry_from_row(row)?;
    let rebuilt = give_up_late(tx, topic, order_id, entry, marker.meta.occurred_at).await?;
    match rebuilt {
        Some((event, record)) if event == *marker => {
            Ok(outbox::insert(tx, NAME, vec![record]).await?)
        }
        Some((event, _)) => Err(HandlerError::Diverged(format!(
            "order {order_id}: the archive's SagaStepTimedOut is {:?}, the rebuilt state gives {:?}",
            marker.body, event.body
        ))),
        None => Err(HandlerError::Diverged(format!(
            "order {order_id} timed out in the archive, but in the rebuilt state it awaits no step"
        ))),
    }
}

/// The saga component's deadline watch: every `saga.deadline_check_interval_ms`, give up the
/// orders whose awaited step is late ([`expire_due`] with the wall clock) and publish their
/// `SagaStepTimedOut`. Errors are logged and retried on the next tick; a crash between commit
/// and publish leaves the rows to the saga runner's outbox relay.
pub async fn watch_deadlines(
    pool: PgPool,
    kafka: KafkaSettings,
    saga: SagaSettings,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let every = std::time::Duration::from_millis(saga.deadline_check_interval_ms);
    if every.is_zero() {
        tracing::info!("saga deadline watch is off (saga.deadline_check_interval_ms = 0)");
        return Ok(());
    }
    let client_id = format!("orderflow-{NAME}-deadlines-{}", std::process::id());
    let producer = platform::kafka::producer(&kafka, &client_id)?;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let expired = match expire_due(&pool, &kafka.topic, Utc::now(), saga.deadline_check_batch)
            .await
        {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "saga deadline check failed; trying again on the next tick");
                continue;
            }
        };
        if expired.rows.is_empty() {
            continue;
        }
        tracing::info!(
            orders = expired.orders.len(),
            "saga gave up orders past their deadline"
        );
        if let Err(error) = outbox::publish(&pool, &producer, &expired.rows).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "publishing SagaStepTimedOut failed; the outbox relay will retry"
            );
        }
    }
}

/// The saga's states an order can still leave, in the order an order passes them. Terminal
/// states (`completed`, `cancelled`) are not counted by [`open_per_state`].
pub const OPEN_STATES: [&str; 4] = [
    "awaiting_inventory",
    "awaiting_payment",
    "awaiting_shipment",
    "compensating",
];

/// Orders per open state (every state of [`OPEN_STATES`], 0 when none), for `orderflow
/// status` and the `orderflow_saga_orders` gauge. Reads the partial index `saga_orders_open`,
/// which holds open orders only: counting the terminal ones would read the whole table, and
/// grows with every order ever placed.
pub async fn open_per_state(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let found: HashMap<String, i64> = sqlx::query_as(
        "SELECT state, count(*) FROM saga.orders
         WHERE state NOT IN ('completed', 'cancelled') GROUP BY state",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let mut states: Vec<(String, i64)> = OPEN_STATES
        .iter()
        .map(|s| (s.to_string(), found.get(*s).copied().unwrap_or(0)))
        .collect();
    // A state this build does not know (a newer saga wrote it) still shows.
    let mut other: Vec<(String, i64)> = found
        .into_iter()
        .filter(|(s, _)| !OPEN_STATES.contains(&s.as_str()))
        .collect();
    other.sort();
    states.extend(other);
    Ok(states)
}

/// Orders whose awaited step is past its deadline at `now` and that the deadline watch has
/// not given up yet (it clears `deadline` when it does). Normally 0 or briefly a few; a number
/// that stays says the watch is not running (`saga.deadline_check_interval_ms`) or fails.
/// Reads the partial index `saga_orders_deadline`.
pub async fn deadlines_missed(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM saga.orders WHERE deadline IS NOT NULL AND deadline <= $1
           AND state IN ('awaiting_inventory', 'awaiting_payment', 'awaiting_shipment')",
    )
    .bind(now)
    .fetch_one(&mut *conn)
    .await
}

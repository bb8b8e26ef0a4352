//! The saga steps — inventory, payment, shipping and the order saga — and the runner that
//! gives each of them exactly-once effects on top of at-least-once Kafka delivery.
//!
//! A step is a [`Step`]: a name, the event types it reacts to, and a handler that changes the
//! step's own Postgres state and returns reply events. The [`runner`] owns everything else:
//! batching, the inbox, the outbox, publishing and offset commits. Steps never touch Kafka.

pub mod audit;
pub mod error;
pub mod give_up;
pub mod inventory;
pub mod parking;
pub mod payment;
pub mod redrive;
pub mod restore;
pub mod runner;
pub mod saga;
pub mod shipping;

pub use error::HandlerError;
pub use runner::{Fault, RunnerOptions, StepRunner};

use async_trait::async_trait;
use events::{Event, EventBody, EventType};
use sqlx::PgConnection;

/// One saga step. Handlers run inside the batch's transaction: everything they write commits
/// or rolls back together with the inbox row and the reply events.
#[async_trait]
pub trait Step: Send + Sync + 'static {
    /// Consumer group suffix, inbox and outbox key, and the salt of reply event ids. Never
    /// change it for a deployed step: its inbox would forget what it processed.
    fn name(&self) -> &'static str;

    /// Whether the step reacts to events of this type; others are skipped without a trace.
    fn wants(&self, event_type: EventType) -> bool;

    /// Apply `event` and return the events to emit in reply (often one, possibly none).
    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Vec<EventBody>, HandlerError>;

    /// Apply new events in log order and return each one's replies, in the same order. On
    /// failure, name the index of the event that failed; the runner rolls the transaction
    /// back. Steps override this to load and store state for the whole batch at once.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Vec<Vec<EventBody>>, (usize, HandlerError)> {
        let mut replies = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            replies.push(
                self.handle(tx, event)
                    .await
                    .map_err(|error| (index, error))?,
            );
        }
        Ok(replies)
    }
}

/// Every step of the pipeline by name, for `orderflow run --only`.
pub const STEP_NAMES: [&str; 4] = [inventory::NAME, payment::NAME, shipping::NAME, saga::NAME];

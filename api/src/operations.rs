//! The port through which the operator endpoints reach what only the binary builds: the steps,
//! wired to their providers (`orderflow::components::step`), which a redrive runs. `orderflow`
//! implements [`Operations`] and hands it to [`crate::start`]; this crate never builds a step.
//!
//! Object-safe and asynchronous through boxed futures, like [`crate::auth::Authenticator`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use consumers::redrive::RedriveReport;
use uuid::Uuid;

/// A boxed future of an operation.
pub type OperationFuture<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// The steps, by the names their dead letters and parked orders carry.
pub const STEPS: [&str; 4] = [
    consumers::inventory::NAME,
    consumers::payment::NAME,
    consumers::shipping::NAME,
    consumers::saga::NAME,
];

/// What the operator endpoints need from the process that serves them.
pub trait Operations: Send + Sync + 'static {
    /// Every consumer that may dead-letter records, by the name its dead letters carry.
    fn consumers(&self) -> Vec<&'static str> {
        let mut all = STEPS.to_vec();
        all.push(projections::NAME);
        all
    }

    /// The steps among them: they park orders, and their dead letters can be redriven.
    fn steps(&self) -> Vec<&'static str> {
        STEPS.to_vec()
    }

    /// Whether [`Operations::redrive`] can run here (`false`: redrive is `503`).
    fn can_redrive(&self) -> bool {
        true
    }

    /// Redrive `ids` (open dead letters of `step`, never empty) as `orderflow dlq redrive
    /// --consumer STEP --id ...` does, reporting each; with `dry_run`, commit and publish
    /// nothing. An `Err` is a failure of the database or the broker, not of a letter (a letter
    /// that fails again is a report).
    fn redrive<'a>(
        &'a self,
        step: &'a str,
        ids: &'a [Uuid],
        dry_run: bool,
    ) -> OperationFuture<'a, Vec<RedriveReport>>;
}

/// The operations of a server.
pub type SharedOperations = Arc<dyn Operations>;

/// A server started without the steps ([`crate::start`]): everything but a redrive works.
pub struct NoSteps;

impl Operations for NoSteps {
    fn can_redrive(&self) -> bool {
        false
    }

    fn redrive<'a>(
        &'a self,
        _step: &'a str,
        _ids: &'a [Uuid],
        _dry_run: bool,
    ) -> OperationFuture<'a, Vec<RedriveReport>> {
        Box::pin(std::future::ready(Err(anyhow::anyhow!(
            "this server was started without the steps"
        ))))
    }
}

//! The saga steps — inventory, payment, shipping and the order saga — and the runner that
//! gives each of them exactly-once effects on top of at-least-once Kafka delivery.
//!
//! A step is a [`Decider`]: a pure function from the state of a batch's orders, the batch's
//! events and the answers of its ports (payment provider, carrier) to new state and reply
//! events, plus how that state is loaded and stored (one statement per table). The [`engine`]
//! (live in [`runner`]; [`parking`], [`redrive`] and [`restore`] are its other modes) owns
//! everything else: batching, asking the ports outside any transaction ([`ports`]: timeouts,
//! circuit breakers), the inbox, the outbox, publishing, offset commits and the failure
//! policy. Steps never touch Kafka. The [`intake`] is a step too: it reads the intake topic
//! upstream producers write, and forwards each order, sealed, to the log.

pub mod audit;
pub mod commands;
pub mod engine;
pub mod error;
pub mod give_up;
#[cfg(test)]
mod given;
pub mod intake;
pub mod inventory;
pub mod parked;
pub mod parking;
pub mod payment;
pub mod ports;
pub mod redrive;
pub mod restore;
pub mod runner;
pub mod saga;
pub mod shipping;
pub mod step;

pub use error::HandlerError;
pub use runner::{Fault, RunnerOptions, StepRunner};
pub use step::{step, Decider, Source, Step};

/// Every step of the pipeline by name, for `orderflow run --only`.
pub const STEP_NAMES: [&str; 4] = [inventory::NAME, payment::NAME, shipping::NAME, saga::NAME];

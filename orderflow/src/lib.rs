//! The `orderflow` application: wires settings, Postgres, Kafka and the components of the
//! other crates into long-running processes, and holds the demo. The command line lives in
//! `main.rs`; everything here is callable from tests.

pub mod bench;
pub mod check;
pub mod components;
pub mod demo;
pub mod dlq;
pub mod replay;
pub mod restore;
pub mod state;
pub mod synth;

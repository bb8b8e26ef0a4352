//! End-to-end tests of the pipeline against the running broker (127.0.0.1:9092) and Postgres
//! (127.0.0.1:5432): start them with `scripts/dev-up`. Each test gets its own database,
//! topic and consumer groups.

mod analytics;
mod api_guards;
mod api_scale;
mod archive;
mod auth;
mod bench;
mod breaker;
mod check;
mod cli;
mod deadletters;
mod delivery;
mod evolution;
mod faults;
mod giveup;
mod http;
mod intake;
mod metrics;
mod operator;
mod outcomes;
mod parking;
mod privacy;
mod restore;
mod secure;
mod status;
mod support;
mod tls;
mod traces;
mod upstream;

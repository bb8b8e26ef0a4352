//! Integration tests of the `events` crate: schemas, wire format, decoding of hostile input,
//! domain rules. They use only the public API, plus apache-avro directly where a test plays
//! the part of another reader or of a faulty writer. They must not reach outside the
//! workspace's `schemas/` folder or depend on test order.

mod crafted;
mod evolution;
mod fingerprint;
mod fuzz;
mod roundtrip;
mod samples;
mod schemas;
mod validation;

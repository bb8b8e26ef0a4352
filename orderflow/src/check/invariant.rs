//! The invariants `orderflow check` decides: their names, as printed and in the JSON, and the
//! verdict on one of them. Used by every other part of the check; uses none.

/// Names of the invariants, as printed and in the JSON.
pub const TERMINAL: &str = "every order terminal";
pub const OUTCOMES: &str = "outcomes follow the demo's rules";
pub const PAYMENTS: &str = "at most one live authorization per order";
pub const STOCK: &str = "stock conserved per sku";
pub const DUPLICATES: &str = "no effect applied twice";
pub const LAG: &str = "every reply published and every group at the log end";
pub const REBUILD: &str = "every read model equals a fresh fold of the log";
pub const SET_ASIDE: &str = "nothing dead-lettered, nothing parked";

/// The verdict on one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
    pub examples: Vec<String>,
}

//! The verdict on each invariant: from what the audits and the lag probe found to a
//! [`CheckResult`] — pass or fail, a one-line detail and examples of what is off. Pure
//! functions, so every rule is tested here without a database or a broker (`--rebuild`'s
//! verdict is in `rebuild`).

use std::collections::BTreeMap;

use consumers::audit::{Payments, Stock, Terminal};
use platform::audit::Found;

use super::invariant::{CheckResult, DUPLICATES, LAG, PAYMENTS, SET_ASIDE, STOCK, TERMINAL};
use super::lag::{GroupLag, LagSnapshot, Waited};

/// Invariant 1. With `orders`, exactly that many (with the prefix) must exist in both the saga
/// and the read model.
pub fn terminal_result(t: &Terminal, orders: Option<u64>, prefix: Option<&str>) -> CheckResult {
    let which = prefix.map_or_else(String::new, |p| format!(" with id prefix {p:?}"));
    let count_ok = orders.is_none_or(|n| {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        t.saga_orders == n && t.read_orders == n
    });
    let passed = count_ok
        && t.saga_terminal == t.saga_orders
        && t.read_terminal == t.read_orders
        && t.disagree == 0
        && t.only_saga == 0
        && t.only_read == 0;
    let expected = orders.map_or_else(String::new, |n| format!(" (expected {n})"));
    let mut examples = t.open_groups.clone();
    if t.read_terminal < t.read_orders && t.open_groups.is_empty() {
        examples.push(format!(
            "read model: {} orders not terminal although the saga ended them",
            t.read_orders - t.read_terminal
        ));
    }
    examples.extend(t.disagreements.iter().cloned());
    CheckResult {
        name: TERMINAL,
        passed,
        detail: format!(
            "orders{which}: saga {}/{} terminal, read model {}/{} terminal{expected}; status differs \
             for {}, only in the saga {}, only in the read model {}",
            t.saga_terminal,
            t.saga_orders,
            t.read_terminal,
            t.read_orders,
            t.disagree,
            t.only_saga,
            t.only_read
        ),
        examples,
    }
}

/// Invariant 3.
pub fn payments_result(p: &Payments) -> CheckResult {
    CheckResult {
        name: PAYMENTS,
        passed: p.multiple_authorized == 0
            && p.cancelled_authorized == 0
            && p.completed_unpaid == 0
            && p.ledger_wrong == 0,
        detail: format!(
            "payments authorized {}, voided {}, declined {}; orders with more than one authorized {}; \
             cancelled with a live authorization {}; completed without one {}; ledger nets wrong for {}",
            p.authorized,
            p.voided,
            p.declined,
            p.multiple_authorized,
            p.cancelled_authorized,
            p.completed_unpaid,
            p.ledger_wrong
        ),
        examples: p.examples.clone(),
    }
}

/// Per sku, what is off: reserved against what live reservations hold, and with `initial`,
/// available + reserved against it (every sku of `initial` must have a stock row, but one set
/// to 0 that no order touched: `stock set SKU=0` appends no adjustment for a sku never
/// stocked, so the inventory step never made its row).
pub fn stock_problems(
    skus: &[consumers::audit::SkuStock],
    initial: Option<&BTreeMap<String, i64>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for s in skus {
        if s.reserved != s.held {
            problems.push(format!(
                "{}: reserved {} but live reservations hold {}",
                s.sku, s.reserved, s.held
            ));
        }
        if let Some(want) = initial.and_then(|i| i.get(&s.sku)) {
            if s.available + s.reserved != *want {
                problems.push(format!(
                    "{}: available {} + reserved {} = {}, initial {want}",
                    s.sku,
                    s.available,
                    s.reserved,
                    s.available + s.reserved
                ));
            }
        }
    }
    if let Some(initial) = initial {
        for (sku, qty) in initial {
            if *qty != 0 && !skus.iter().any(|s| &s.sku == sku) {
                problems.push(format!("{sku}: initial {qty}, but no stock row"));
            }
        }
    }
    problems
}

/// Invariant 4.
pub fn stock_result(stock: &Stock, initial: Option<&BTreeMap<String, i64>>) -> CheckResult {
    let problems = stock_problems(&stock.skus, initial);
    let available: i64 = stock.skus.iter().map(|s| s.available).sum();
    let reserved: i64 = stock.skus.iter().map(|s| s.reserved).sum();
    let against_initial = match initial {
        None => String::new(),
        Some(initial) => {
            let not_in_file = stock
                .skus
                .iter()
                .filter(|s| !initial.contains_key(&s.sku))
                .count();
            format!(
                "; initial {} over {} skus{}",
                initial.values().sum::<i64>(),
                initial.len(),
                if not_in_file > 0 {
                    format!(" ({not_in_file} skus with stock rows not in the file, not compared with it)")
                } else {
                    String::new()
                }
            )
        }
    };
    let mut examples = problems.clone();
    if stock.reserved_for_cancelled.count > 0 {
        examples.push(format!(
            "stock still reserved for cancelled orders: {}",
            stock.reserved_for_cancelled.examples.join(", ")
        ));
    }
    if stock.completed_unreserved.count > 0 {
        examples.push(format!(
            "completed orders without a reservation: {}",
            stock.completed_unreserved.examples.join(", ")
        ));
    }
    CheckResult {
        name: STOCK,
        passed: problems.is_empty()
            && stock.reserved_for_cancelled.count == 0
            && stock.completed_unreserved.count == 0,
        detail: format!(
            "{} skus, available {available} + reserved {reserved}{against_initial}; skus off {}; \
             reserved for cancelled orders {}; completed orders without a reservation {}",
            stock.skus.len(),
            problems.len(),
            stock.reserved_for_cancelled.count,
            stock.completed_unreserved.count
        ),
        examples,
    }
}

/// Invariant 5.
pub fn duplicates_result(
    steps: &consumers::audit::StepDuplicates,
    timeline: &Found,
    outbox: &Found,
) -> CheckResult {
    let mut examples = steps.examples.clone();
    if steps.reservations_dup > 0 {
        examples.push(format!(
            "inventory.reservations: {} extra rows",
            steps.reservations_dup
        ));
    }
    if steps.shipments_dup > 0 {
        examples.push(format!(
            "shipping.shipments: {} extra rows",
            steps.shipments_dup
        ));
    }
    examples.extend(timeline.examples.iter().cloned());
    examples.extend(outbox.examples.iter().cloned());
    CheckResult {
        name: DUPLICATES,
        passed: steps.total() == 0 && timeline.count == 0 && outbox.count == 0,
        detail: format!(
            "reservations {} (dup {}), ledger dup authorization/void/decline {}/{}/{}, shipments {} \
             (dup {}), timeline (order, event type) dup {}, outbox dup {}",
            steps.reservations,
            steps.reservations_dup,
            steps.ledger_authorization_dup,
            steps.ledger_void_dup,
            steps.ledger_decline_dup,
            steps.shipments,
            steps.shipments_dup,
            timeline.count,
            outbox.count
        ),
        examples,
    }
}

/// Invariant 6, from a snapshot taken after the wait (if any).
pub fn lag_result(snapshot: &LagSnapshot, waited: Option<Waited>) -> CheckResult {
    let wait = match waited {
        None => String::new(),
        Some(Waited::Reached(took)) => {
            format!("; zero lag reached after {:.1} s", took.as_secs_f64())
        }
        Some(Waited::TimedOut(limit)) => {
            format!("; zero lag NOT reached within {} s", limit.as_secs())
        }
    };
    let timed_out = matches!(waited, Some(Waited::TimedOut(_)));
    let mut examples: Vec<String> = snapshot
        .groups
        .iter()
        .filter(|g| !g.at_end())
        .map(GroupLag::describe)
        .collect();
    examples.extend(
        snapshot
            .unpublished
            .examples
            .iter()
            .map(|e| format!("unpublished: {e}")),
    );
    let groups: Vec<String> = snapshot
        .groups
        .iter()
        .map(|g| format!("{} {}", g.group, g.total()))
        .collect();
    CheckResult {
        name: LAG,
        passed: snapshot.zero() && !timed_out,
        detail: format!(
            "unpublished outbox rows {}; lag {} (log end {} over {} partitions){}{wait}",
            snapshot.unpublished.count,
            groups.join(", "),
            snapshot.ends.values().sum::<i64>(),
            snapshot.ends.len(),
            if snapshot.stable {
                ""
            } else {
                "; the log end moved while positions were read (the pipeline is not idle)"
            }
        ),
        examples,
    }
}

/// Invariant 8.
pub fn set_aside_result(dead: &platform::audit::DeadLetters, parked: &Found) -> CheckResult {
    let mut examples: Vec<String> = dead
        .open
        .examples
        .iter()
        .map(|e| format!("dead letter: {e}"))
        .collect();
    examples.extend(parked.examples.iter().map(|e| format!("parked: {e}")));
    CheckResult {
        name: SET_ASIDE,
        passed: dead.open.count == 0 && parked.count == 0,
        detail: format!(
            "pipeline.dead_letters {} open ({} redriven); pipeline.parked {}",
            dead.open.count, dead.redriven, parked.count
        ),
        examples,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use consumers::audit::SkuStock;

    fn sku(sku: &str, available: i64, reserved: i64, held: i64) -> SkuStock {
        SkuStock {
            sku: sku.into(),
            available,
            reserved,
            held,
        }
    }

    #[test]
    fn stock_is_compared_per_sku_with_reservations_and_the_initial_levels() {
        // Z is set to 0 and never stocked: no row, and nothing wrong.
        let initial: BTreeMap<String, i64> = [
            ("A".to_string(), 10),
            ("B".to_string(), 5),
            ("Z".to_string(), 0),
        ]
        .into();
        // (rows, with the initial levels?, problems found, by their start)
        let cases: Vec<(Vec<SkuStock>, bool, Vec<&str>)> = vec![
            (vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0)], true, vec![]),
            (vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0)], false, vec![]),
            (
                vec![sku("A", 7, 3, 2), sku("B", 5, 0, 0)],
                false,
                vec!["A: reserved 3 but live reservations hold 2"],
            ),
            (
                vec![sku("A", 8, 3, 3), sku("B", 5, 0, 0)],
                true,
                vec!["A: available 8 + reserved 3 = 11, initial 10"],
            ),
            (vec![sku("A", 8, 3, 3), sku("B", 5, 0, 0)], false, vec![]),
            (
                vec![sku("A", 7, 3, 3)],
                true,
                vec!["B: initial 5, but no stock row"],
            ),
            // Initial 0 and no row: never stocked, nothing to conserve.
            (vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0)], true, vec![]),
            // A sku only reservations know (no stock row) shows up with zero stock.
            (
                vec![sku("A", 7, 3, 3), sku("B", 5, 0, 0), sku("C", 0, 0, 2)],
                true,
                vec!["C: reserved 0 but live reservations hold 2"],
            ),
            (
                vec![sku("A", 9, 2, 3), sku("B", 5, 0, 0)],
                true,
                vec!["A: reserved 2", "A: available 9 + reserved 2"],
            ),
        ];
        for (rows, with_initial, want) in cases {
            let got = stock_problems(&rows, with_initial.then_some(&initial));
            assert_eq!(got.len(), want.len(), "{rows:?}: {got:?}");
            for (line, start) in got.iter().zip(&want) {
                assert!(
                    line.starts_with(start),
                    "{line:?} should start with {start:?}"
                );
            }
        }
    }

    fn snapshot(positions: &[(i32, i64)], unpublished: i64, stable: bool) -> LagSnapshot {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 20)].into();
        LagSnapshot {
            groups: vec![GroupLag::new(
                "g",
                &ends,
                &positions.iter().copied().collect(),
            )],
            ends,
            unpublished: Found {
                count: unpublished,
                examples: (0..unpublished).map(|i| format!("row {i}")).collect(),
            },
            stable,
            parked: 0,
        }
    }

    #[test]
    fn the_lag_check_needs_every_group_at_the_end_nothing_unpublished_and_a_still_log() {
        let at_end = [(0, 10), (1, 20)];
        let reached = Some(Waited::Reached(Duration::from_secs(3)));
        let timed_out = Some(Waited::TimedOut(Duration::from_secs(60)));
        // (snapshot, wait, passes, a piece of the detail)
        let cases = [
            (
                snapshot(&at_end, 0, true),
                None,
                true,
                "lag g 0 (log end 30 over 2 partitions)",
            ),
            (
                snapshot(&at_end, 0, true),
                reached,
                true,
                "zero lag reached after 3.0 s",
            ),
            (
                snapshot(&at_end, 0, true),
                timed_out,
                false,
                "NOT reached within 60 s",
            ),
            (
                snapshot(&[(0, 9), (1, 20)], 0, true),
                None,
                false,
                "lag g 1",
            ),
            (
                snapshot(&at_end, 2, true),
                None,
                false,
                "unpublished outbox rows 2",
            ),
            (
                snapshot(&at_end, 0, false),
                None,
                false,
                "the log end moved",
            ),
        ];
        for (snap, waited, passes, detail) in cases {
            let result = lag_result(&snap, waited);
            assert_eq!(result.passed, passes, "{}", result.detail);
            assert!(
                result.detail.contains(detail),
                "{:?} lacks {detail:?}",
                result.detail
            );
        }
        let failing = lag_result(&snapshot(&[(0, 9), (1, 20)], 1, true), None);
        assert_eq!(
            failing.examples,
            [
                "g lag 1 (worst partition 0: at 9, log end 10)",
                "unpublished: row 0"
            ]
        );
    }

    #[test]
    fn terminal_needs_the_expected_count_every_order_ended_and_both_sides_agreeing() {
        let all_done = Terminal {
            saga_orders: 3,
            saga_terminal: 3,
            read_orders: 3,
            read_terminal: 3,
            ..Terminal::default()
        };
        // (found, --orders, passes)
        let cases = [
            (all_done.clone(), None, true),
            (all_done.clone(), Some(3), true),
            (all_done.clone(), Some(4), false),
            (
                Terminal {
                    saga_terminal: 2,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (
                Terminal {
                    read_terminal: 2,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (
                Terminal {
                    disagree: 1,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (
                Terminal {
                    read_orders: 2,
                    read_terminal: 2,
                    only_saga: 1,
                    ..all_done.clone()
                },
                None,
                false,
            ),
            (Terminal::default(), None, true),
            (Terminal::default(), Some(1), false),
        ];
        for (found, orders, passes) in cases {
            assert_eq!(
                terminal_result(&found, orders, Some("demo-")).passed,
                passes,
                "{found:?} {orders:?}"
            );
        }
    }
}

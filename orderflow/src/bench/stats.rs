//! The benchmark's arithmetic, pure and table-tested: percentiles, pacing of an open loop,
//! rates and ratios to the raw limits, and the rule that says a rate was not kept up.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of ascending `sorted` values: the smallest value that at least
/// `q` of all values are at or below. `None` for no values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // Ranks are small integers; the float product is exact enough for them.
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

/// p50, p99, p99.9, max and mean of `values` (any order); `None` when empty.
pub fn summarize(mut values: Vec<f64>) -> Option<Percentiles> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    Some(Percentiles {
        count: values.len(),
        p50: percentile(&values, 0.50)?,
        p99: percentile(&values, 0.99)?,
        p999: percentile(&values, 0.999)?,
        max: *values.last()?,
        mean: values.iter().sum::<f64>() / values.len() as f64,
    })
}

/// When order `index` (0-based) of a loop paced at `rate` orders/s is due, from the loop's
/// start: order 0 at once, then one every 1/rate s. Together with `demo::due_by` (how many are
/// due by a moment) this is the open loop's schedule; sending never waits for the pipeline.
pub fn due_at(rate: NonZeroU32, index: usize) -> Duration {
    Duration::from_secs_f64(index as f64 / f64::from(rate.get()))
}

/// `count` per second over `secs`; `None` for an empty interval.
pub fn per_second(count: f64, secs: f64) -> Option<f64> {
    (secs > 0.0 && secs.is_finite()).then(|| count / secs)
}

/// `measured` as a fraction of `limit` (e.g. the pipeline's log records/s of the broker's raw
/// records/s); `None` when either is missing or the limit is not positive.
pub fn ratio(measured: Option<f64>, limit: Option<f64>) -> Option<f64> {
    match (measured, limit) {
        (Some(m), Some(l)) if l > 0.0 && m.is_finite() && l.is_finite() => Some(m / l),
        _ => None,
    }
}

/// The orders/s a raw limit would allow if the pipeline needed `per_order` of its units
/// (records, rows) per order and nothing else.
pub fn ceiling(limit_per_s: Option<f64>, per_order: Option<f64>) -> Option<f64> {
    match (limit_per_s, per_order) {
        (Some(l), Some(p)) if p > 0.0 => Some(l / p),
        _ => None,
    }
}

/// Median latency of the first and of the last quarter of a phase's orders (in publish
/// order; orders without a latency are left out).
pub fn quarter_medians(latencies_in_publish_order: &[Option<f64>]) -> Option<(f64, f64)> {
    let quarter = latencies_in_publish_order.len() / 4;
    if quarter == 0 {
        return None;
    }
    let median = |part: &[Option<f64>]| {
        let mut values: Vec<f64> = part.iter().flatten().copied().collect();
        values.sort_by(f64::total_cmp);
        percentile(&values, 0.5)
    };
    let n = latencies_in_publish_order.len();
    Some((
        median(&latencies_in_publish_order[..quarter])?,
        median(&latencies_in_publish_order[n - quarter..])?,
    ))
}

/// Latency (ms) an open loop may add between its first and last quarter and still count as
/// kept up: noise, not a queue.
pub const GROWTH_ALLOWANCE_MS: f64 = 500.0;

/// The share of the offered rate an open loop must complete to count as kept up.
pub const ACHIEVED_SHARE_MIN: f64 = 0.85;

/// Whether an open loop kept up with its offered rate: it completed at least
/// [`ACHIEVED_SHARE_MIN`] of the offered orders/s, and the median latency of the orders sent
/// last is at most twice that of the orders sent first plus [`GROWTH_ALLOWANCE_MS`]. A
/// pipeline slower than the offered rate builds a queue, so its latency climbs through the
/// phase and its completions fall behind.
pub fn kept_up(
    first_quarter_p50_ms: f64,
    last_quarter_p50_ms: f64,
    achieved_per_s: f64,
    offered_per_s: f64,
) -> bool {
    last_quarter_p50_ms <= 2.0 * first_quarter_p50_ms + GROWTH_ALLOWANCE_MS
        && achieved_per_s >= ACHIEVED_SHARE_MIN * offered_per_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        let cases: [(&[f64], f64, Option<f64>); 9] = [
            (&[], 0.5, None),
            (&[7.0], 0.5, Some(7.0)),
            (&[7.0], 0.999, Some(7.0)),
            (&[1.0, 2.0], 0.5, Some(1.0)),
            (&hundred, 0.50, Some(50.0)),
            (&hundred, 0.99, Some(99.0)),
            (&hundred, 0.999, Some(100.0)),
            (&thousand, 0.999, Some(999.0)),
            (&thousand, 1.0, Some(1000.0)),
        ];
        for (values, q, want) in cases {
            assert_eq!(
                percentile(values, q),
                want,
                "q {q} of {} values",
                values.len()
            );
        }
    }

    #[test]
    fn a_summary_is_ordered_and_ignores_input_order() {
        let values: Vec<f64> = (1..=2000).rev().map(|v| f64::from(v) / 2.0).collect();
        let s = summarize(values).expect("values");
        assert_eq!(s.count, 2000);
        assert_eq!((s.p50, s.p99, s.p999, s.max), (500.0, 990.0, 999.0, 1000.0));
        assert!((s.mean - 500.25).abs() < 1e-9);
        assert!(s.p50 <= s.p99 && s.p99 <= s.p999 && s.p999 <= s.max);
        assert_eq!(summarize(vec![]), None);
        assert_eq!(summarize(vec![f64::NAN]), None);
    }

    #[test]
    fn an_open_loop_sends_on_schedule() {
        let rate = |r| NonZeroU32::new(r).expect("not zero");
        let cases = [
            (rate(250), 0, Duration::ZERO),
            (rate(250), 1, Duration::from_millis(4)),
            (rate(250), 250, Duration::from_secs(1)),
            (rate(2000), 3, Duration::from_micros(1500)),
            (rate(1), 5, Duration::from_secs(5)),
        ];
        for (r, index, want) in cases {
            assert_eq!(due_at(r, index), want, "order {index} at {r}/s");
        }
        // due_at and demo::due_by agree: just after order i is due, i + 1 orders are due.
        for r in [1, 7, 250, 1000, 2000] {
            for i in [0usize, 1, 10, 999] {
                let at = due_at(rate(r), i) + Duration::from_nanos(1);
                assert_eq!(crate::demo::due_by(rate(r), at), i + 1, "{r}/s order {i}");
            }
        }
    }

    #[test]
    fn rates_ratios_and_ceilings() {
        assert_eq!(per_second(1000.0, 2.0), Some(500.0));
        assert_eq!(per_second(1000.0, 0.0), None);
        let cases = [
            (Some(50.0), Some(200.0), Some(0.25)),
            (Some(300.0), Some(200.0), Some(1.5)),
            (None, Some(200.0), None),
            (Some(50.0), None, None),
            (Some(50.0), Some(0.0), None),
        ];
        for (measured, limit, want) in cases {
            assert_eq!(ratio(measured, limit), want, "{measured:?} of {limit:?}");
        }
        assert_eq!(ceiling(Some(100_000.0), Some(5.0)), Some(20_000.0));
        assert_eq!(ceiling(Some(100_000.0), Some(0.0)), None);
        assert_eq!(ceiling(None, Some(5.0)), None);
    }

    #[test]
    fn a_growing_queue_is_not_kept_up() {
        let steady: Vec<Option<f64>> = (0..100).map(|i| Some(40.0 + f64::from(i % 7))).collect();
        let (first, last) = quarter_medians(&steady).expect("enough orders");
        assert!(kept_up(first, last, 100.0, 100.0), "{first} → {last}");

        let growing: Vec<Option<f64>> = (0..100)
            .map(|i| Some(100.0 + 50.0 * f64::from(i)))
            .collect();
        let (first, last) = quarter_medians(&growing).expect("enough orders");
        assert!(!kept_up(first, last, 100.0, 100.0), "{first} → {last}");

        // (first-quarter p50, last-quarter p50, achieved/s, offered/s)
        let cases = [
            (2000.0, 2400.0, 250.0, 250.0, true),
            (20.0, 530.0, 990.0, 1000.0, true),
            (20.0, 541.0, 1000.0, 1000.0, false),
            (1000.0, 2600.0, 500.0, 500.0, false),
            (50.0, 60.0, 850.0, 1000.0, true),
            (50.0, 60.0, 849.0, 1000.0, false),
            (900.0, 1500.0, 250.0, 300.0, false),
        ];
        for (first, last, achieved, offered, want) in cases {
            assert_eq!(
                kept_up(first, last, achieved, offered),
                want,
                "{first} → {last} ms, {achieved} of {offered}/s"
            );
        }
        assert_eq!(
            quarter_medians(&[Some(1.0), Some(2.0)]),
            None,
            "too few orders"
        );
        assert_eq!(quarter_medians(&[None, None, None, None]), None);
    }
}

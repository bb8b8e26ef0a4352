//! encode then decode gives back the event, for every type and the edge values the schema
//! must carry unchanged.

use crate::samples::{self, at};
use events::*;

fn round_trip(event: &Event) {
    let bytes = encode(event).unwrap_or_else(|e| panic!("{}: {e}", event.event_type()));
    let back = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", event.event_type()));
    assert_eq!(&back, event);
}

#[test]
fn every_sample_round_trips() {
    let all = samples::all();
    for event_type in EventType::ALL {
        assert!(
            all.iter().any(|e| e.event_type() == event_type),
            "no sample of {event_type}"
        );
    }
    for event in &all {
        round_trip(event);
    }
}

#[test]
fn line2_none_and_some_and_empty_round_trip() {
    for line2 in [None, Some("c/o Acme"), Some("")] {
        round_trip(&samples::order_created(line2));
    }
}

#[test]
fn timestamps_keep_their_microseconds() {
    for micros in [
        0,
        1,
        -1,
        1_717_171_717_123_456,
        -62_135_596_800_000_000, // 0001-01-01T00:00:00Z
        253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
    ] {
        let mut event = samples::order_created(None);
        event.meta.occurred_at = at(micros);
        round_trip(&event);
    }
}

#[test]
fn sub_microsecond_part_is_dropped_by_design() {
    // timestamp-micros cannot carry nanoseconds; producers should not expect them back.
    let mut event = samples::order_created(None);
    let with_nanos = event.meta.occurred_at + chrono::Duration::nanoseconds(789);
    event.meta.occurred_at = with_nanos;
    let back = decode(&encode(&event).expect("encodes")).expect("decodes");
    assert_eq!(
        back.meta.occurred_at,
        with_nanos - chrono::Duration::nanoseconds(789)
    );
}

#[test]
fn extreme_numbers_and_many_lines_round_trip() {
    let mut event = samples::order_created(None);
    if let EventBody::OrderCreated(order) = &mut event.body {
        order.lines = (1..=500)
            .map(|i| OrderLine {
                sku: format!("SKU-{i:04}"),
                quantity: i,
                unit_price_minor: i64::from(i) * 1_000_003,
            })
            .collect();
        order.lines[0].quantity = i32::MAX;
        order.lines[0].unit_price_minor = 1;
    }
    round_trip(&event);

    let mut completed = samples::of(EventType::OrderCompleted);
    if let EventBody::OrderCompleted(c) = &mut completed.body {
        c.total_minor = i64::MAX;
    }
    round_trip(&completed);

    let mut rejected = samples::of(EventType::InventoryRejected);
    if let EventBody::InventoryRejected(r) = &mut rejected.body {
        r.shortages[0].requested = i32::MAX;
        r.shortages[0].available = i32::MIN;
    }
    round_trip(&rejected);
    if let EventBody::InventoryRejected(r) = &mut rejected.body {
        r.shortages.clear();
    }
    round_trip(&rejected);
}

#[test]
fn encoding_is_deterministic() {
    for event in samples::all() {
        assert_eq!(
            encode(&event).expect("encodes"),
            encode(&event).expect("encodes")
        );
    }
}

#[test]
fn reply_event_id_is_deterministic_and_differs_per_step_and_cause() {
    let cause = samples::uuid(1);
    let other = samples::uuid(2);
    let a = reply_event_id(cause, "inventory");
    assert_eq!(a, reply_event_id(cause, "inventory"));
    assert_eq!(a.get_version_num(), 5);
    assert_ne!(a, reply_event_id(cause, "payment"));
    assert_ne!(a, reply_event_id(other, "inventory"));
    assert_ne!(a, cause);
    let steps = [
        "inventory",
        "payment",
        "shipping",
        "saga",
        "release",
        "void",
    ];
    let mut ids: Vec<_> = steps.iter().map(|s| reply_event_id(cause, s)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), steps.len());
}

use super::*;

#[test]
fn deltas_take_each_sku_to_its_level() {
    type Case = (
        &'static str,
        &'static [(&'static str, i64)],
        &'static [(&'static str, i64)],
        &'static [(&'static str, i64)],
    );
    let cases: [Case; 5] = [
        ("a new sku starts from 0", &[], &[("A", 5)], &[("A", 5)]),
        (
            "up and down",
            &[("A", 5), ("B", 7)],
            &[("A", 8), ("B", 2)],
            &[("A", 3), ("B", -5)],
        ),
        ("already there: nothing", &[("A", 5)], &[("A", 5)], &[]),
        ("to zero", &[("A", 5)], &[("A", 0)], &[("A", -5)]),
        (
            "from below zero (units taken while reserved)",
            &[("A", -2)],
            &[("A", 3)],
            &[("A", 5)],
        ),
    ];
    for (name, current, wanted, want) in cases {
        let current: BTreeMap<String, i64> =
            current.iter().map(|(s, q)| (s.to_string(), *q)).collect();
        let wanted: Vec<(String, i64)> = wanted.iter().map(|(s, q)| (s.to_string(), *q)).collect();
        let want: Vec<(String, i64)> = want.iter().map(|(s, q)| (s.to_string(), *q)).collect();
        assert_eq!(deltas_to(&current, &wanted), want, "{name}");
    }
}

#[test]
fn a_retried_command_names_the_same_events() {
    let command = Uuid::from_u128(7);
    let at = Utc::now();
    let first = stock_adjusted(command, "A", 3, "delivery", at);
    let again = stock_adjusted(command, "A", 3, "delivery", at);
    assert_eq!(first.meta.event_id, again.meta.event_id);
    assert_ne!(
        first.meta.event_id,
        stock_adjusted(command, "B", 3, "delivery", at)
            .meta
            .event_id,
        "one command, two skus: two events"
    );
    assert_ne!(
        first.meta.event_id,
        stock_adjusted(Uuid::from_u128(8), "A", 3, "delivery", at)
            .meta
            .event_id
    );
    // Block and unblock under one command id are still two events.
    assert_ne!(
        customer_blocked(command, "c1", "", at).meta.event_id,
        customer_unblocked(command, "c1", at).meta.event_id
    );
    for event in [
        first,
        customer_blocked(command, "c1", "fraud", at),
        customer_unblocked(command, "c1", at),
    ] {
        assert_eq!(events::validate(&event), Ok(()), "{event:?}");
        assert_eq!(event.meta.correlation_id, event.meta.event_id);
    }
}

#[test]
fn scrubbing_erases_clear_orders_of_the_customer_only() {
    let command = Uuid::from_u128(9);
    let mut clear = crate::given::created("o1", &[("A", 1, 100)], "DE");
    if let EventBody::OrderCreated(o) = &mut clear.body {
        o.shipping_address.name = "Ada Lovelace".into();
        o.contact = Some(events::Contact {
            email: "ada@example.com".into(),
            phone: None,
        });
    }
    let bytes = events::encode(&clear).unwrap();
    let mut sealed = clear.clone();
    if let EventBody::OrderCreated(o) = &mut sealed.body {
        privacy::seal(o, "o1", &privacy::DataKey::generate("c1")).unwrap();
    }
    let contains = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
    // A clear order of c1: re-encoded, decodes, no personal field left, facts kept.
    let new = scrubbed_payload(&bytes, "c1", command).expect("scrubbed");
    assert!(!contains(&new, "Ada") && !contains(&new, "ada@example.com"));
    let EventBody::OrderCreated(o) = events::decode(&new).unwrap().body else {
        panic!("not an order")
    };
    assert_eq!(
        (o.shipping_address.name.as_str(), o.contact, o.lines.len()),
        (ERASED, None, 1)
    );
    type Case<'a> = (&'a str, Vec<u8>, &'a str, bool);
    let cases: Vec<Case> = vec![
        ("another customer's order", bytes.clone(), "c2", false),
        (
            "a sealed order",
            events::encode(&sealed).unwrap(),
            "c1",
            false,
        ),
        (
            "undecodable bytes naming the customer",
            b"junk c1 junk".to_vec(),
            "c1",
            true,
        ),
        (
            "undecodable bytes not naming them",
            b"junk".to_vec(),
            "c1",
            false,
        ),
        (
            "another event",
            events::encode(&crate::given::authorized("o1")).unwrap(),
            "c1",
            false,
        ),
    ];
    for (name, payload, customer, replaced) in cases {
        assert_eq!(
            scrubbed_payload(&payload, customer, command).is_some(),
            replaced,
            "{name}"
        );
    }
    let doc = serde_json::json!({"customer_id": "c1", "shipping_address": {"name": "Ada",
        "line1": "12 St", "line2": "Flat", "city": "London", "postal_code": "SW1",
        "country": "GB"}, "contact": {"email": "ada@example.com"}});
    let erased = scrubbed_document(&doc).expect("changed");
    assert!(!erased.to_string().contains("Ada") && !erased.to_string().contains("London"));
    assert_eq!(erased["shipping_address"]["country"], "GB");
    assert_eq!(
        scrubbed_document(&erased),
        None,
        "a second scrub changes nothing"
    );
    assert_eq!(scrubbed_document(&serde_json::json!({"status": 202})), None);
}

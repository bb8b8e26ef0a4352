//! Domain rules: a table of bad orders and bad follow-up events, each refused with its own
//! `ValidationError`, by `validate_order`, by `encode`, and by `decode`.

use events::*;

use crate::samples;

fn order_with(change: impl FnOnce(&mut OrderCreated)) -> OrderCreated {
    let mut order = samples::order(None);
    change(&mut order);
    order
}

fn line(sku: &str, quantity: i32, unit_price_minor: i64) -> OrderLine {
    OrderLine {
        sku: sku.to_owned(),
        quantity,
        unit_price_minor,
    }
}

#[test]
fn bad_orders_table() {
    use ValidationError as V;
    let missing = |field| V::MissingField { field };
    let cases: Vec<(&str, &str, OrderCreated, ValidationError)> = vec![
        (
            "blank order id",
            "",
            samples::order(None),
            missing("order_id"),
        ),
        (
            "whitespace order id",
            " \t",
            samples::order(None),
            missing("order_id"),
        ),
        (
            "blank customer id",
            "ord-1",
            order_with(|o| o.customer_id = "  ".into()),
            missing("customer_id"),
        ),
        (
            "no lines",
            "ord-1",
            order_with(|o| o.lines.clear()),
            V::NoLines,
        ),
        (
            "too many lines",
            "ord-1",
            order_with(|o| o.lines = vec![line("A", 1, 1); 501]),
            V::TooManyLines {
                count: 501,
                max: 500,
            },
        ),
        (
            "quantity 0",
            "ord-1",
            order_with(|o| o.lines[1] = line("ABC-1", 0, 10)),
            V::NonPositiveQuantity {
                line: 2,
                sku: "ABC-1".into(),
                quantity: 0,
            },
        ),
        (
            "quantity -1",
            "ord-1",
            order_with(|o| o.lines[0].quantity = -1),
            V::NonPositiveQuantity {
                line: 1,
                sku: "ABC-1".into(),
                quantity: -1,
            },
        ),
        (
            "negative price",
            "ord-1",
            order_with(|o| o.lines[1].unit_price_minor = -5),
            V::NegativePrice {
                line: 2,
                sku: "XYZ-ü9".into(),
                price: -5,
            },
        ),
        (
            "blank sku",
            "ord-1",
            order_with(|o| o.lines[1].sku = String::new()),
            V::MissingLineField {
                line: 2,
                field: "sku",
            },
        ),
        (
            "currency XXX",
            "ord-1",
            order_with(|o| o.currency = "XXX".into()),
            V::UnknownCurrency { code: "XXX".into() },
        ),
        (
            "currency lower case",
            "ord-1",
            order_with(|o| o.currency = "eur".into()),
            V::UnknownCurrency { code: "eur".into() },
        ),
        (
            "country lower case",
            "ord-1",
            order_with(|o| o.shipping_address.country = "de".into()),
            V::InvalidCountry { code: "de".into() },
        ),
        (
            "country alpha-3",
            "ord-1",
            order_with(|o| o.shipping_address.country = "DEU".into()),
            V::InvalidCountry { code: "DEU".into() },
        ),
        (
            "country empty",
            "ord-1",
            order_with(|o| o.shipping_address.country = String::new()),
            V::InvalidCountry {
                code: String::new(),
            },
        ),
        (
            "country non-ASCII",
            "ord-1",
            order_with(|o| o.shipping_address.country = "DÉ".into()),
            V::InvalidCountry { code: "DÉ".into() },
        ),
        (
            "line subtotal overflows",
            "ord-1",
            order_with(|o| o.lines[0] = line("A", 2, i64::MAX)),
            V::TotalOverflow,
        ),
        (
            "total overflows",
            "ord-1",
            order_with(|o| o.lines = vec![line("A", 1, i64::MAX), line("B", 1, 1)]),
            V::TotalOverflow,
        ),
    ];
    let email = |reason: &str| V::InvalidEmail {
        reason: reason.to_owned(),
    };
    let phone = |reason: &str| V::InvalidPhone {
        reason: reason.to_owned(),
    };
    let contact_cases = [
        (
            "a@b",
            email("domain \"b\" must be dot-separated names, e.g. example.com"),
        ),
        ("ab", email("must be 3 to 254 characters, got 2")),
        ("ada.example.com", email("must contain an @")),
        ("ada@@example.com", email("must contain exactly one @")),
        ("a@b@example.com", email("must contain exactly one @")),
        (
            "@example.com",
            email("must have 1 to 64 characters before the @"),
        ),
        (
            "ada @example.com",
            email("must not contain spaces or control characters"),
        ),
        (
            "ada@example.com\n",
            email("must not contain spaces or control characters"),
        ),
        (
            "ada@example..com",
            email("domain \"example..com\" must be dot-separated names, e.g. example.com"),
        ),
        (
            "ada@-example.com",
            email("domain \"-example.com\" must be dot-separated names, e.g. example.com"),
        ),
        (
            "ada@example.",
            email("domain \"example.\" must be dot-separated names, e.g. example.com"),
        ),
    ];
    let long_local = format!("{}@example.com", "a".repeat(65));
    let long_email = format!("a@{}.com", "b".repeat(250));
    let mut cases = cases;
    for (address, error) in contact_cases
        .into_iter()
        .map(|(a, e)| (a.to_owned(), e))
        .chain([
            (
                long_local,
                email("must have 1 to 64 characters before the @"),
            ),
            (long_email, email("must be 3 to 254 characters, got 256")),
        ])
    {
        cases.push((
            "bad e-mail",
            "ord-1",
            order_with(|o| {
                o.contact = Some(Contact {
                    email: address,
                    phone: None,
                })
            }),
            error,
        ));
    }
    for (number, error) in [
        ("12", phone("must be 3 to 32 characters, got 2")),
        (
            &*"1".repeat(33),
            phone("must be 3 to 32 characters, got 33"),
        ),
        (
            "call me",
            phone("may hold only digits, spaces and + - ( ) ., found 'c'"),
        ),
        (
            "+49/30",
            phone("may hold only digits, spaces and + - ( ) ., found '/'"),
        ),
        ("+ (1)", phone("must have at least 3 digits, got 1")),
    ] {
        cases.push((
            "bad phone",
            "ord-1",
            order_with(|o| {
                o.contact = Some(Contact {
                    email: "ada@example.com".into(),
                    phone: Some(number.to_owned()),
                })
            }),
            error,
        ));
    }
    let sealed = |f: fn(&mut SealedPersonal)| {
        let mut order = samples::order_with_personal_data();
        f(order.sealed.as_mut().expect("sample has sealed data"));
        order
    };
    let sealed_error = |field, reason: &str| V::InvalidSealed {
        field,
        reason: reason.to_owned(),
    };
    cases.extend([
        (
            "blank key id",
            "ord-1",
            sealed(|s| s.key_id = " ".into()),
            sealed_error("key_id", "must be 1 to 200 characters, got 1"),
        ),
        (
            "blank algorithm",
            "ord-1",
            sealed(|s| s.algorithm.clear()),
            sealed_error("algorithm", "must be 1 to 200 characters, got 0"),
        ),
        (
            "no nonce",
            "ord-1",
            sealed(|s| s.nonce.clear()),
            sealed_error("nonce", "must be 1 to 64 bytes, got 0"),
        ),
        (
            "huge nonce",
            "ord-1",
            sealed(|s| s.nonce = vec![1; 65]),
            sealed_error("nonce", "must be 1 to 64 bytes, got 65"),
        ),
        (
            "no ciphertext",
            "ord-1",
            sealed(|s| s.ciphertext.clear()),
            sealed_error("ciphertext", "must be 1 to 65536 bytes, got 0"),
        ),
        (
            "huge ciphertext",
            "ord-1",
            sealed(|s| s.ciphertext = vec![1; 65_537]),
            sealed_error("ciphertext", "must be 1 to 65536 bytes, got 65537"),
        ),
    ]);
    for (name, order_id, order, expected) in cases {
        assert_eq!(
            validate_order(&order, order_id),
            Err(expected.clone()),
            "{name}"
        );

        let event = Event {
            meta: Metadata {
                order_id: order_id.to_owned(),
                ..samples::meta()
            },
            body: EventBody::OrderCreated(order),
        };
        assert_eq!(validate(&event), Err(expected.clone()), "{name}");
        match encode(&event) {
            Err(EncodeError::Invalid(e)) => assert_eq!(e, expected, "{name}"),
            other => panic!("{name}: encode should refuse, got {other:?}"),
        }
    }
}

#[test]
fn good_orders_pass() {
    assert_eq!(validate_order(&samples::order(None), "ord-1"), Ok(()));
    let edge = order_with(|o| {
        o.lines = vec![line("A", 1, 0); 500];
        o.currency = "JPY".into();
        o.shipping_address.country = "JP".into();
        o.shipping_address.line2 = Some(String::new());
    });
    assert_eq!(validate_order(&edge, "ord-1"), Ok(()));
    assert_eq!(
        validate_order(&samples::order_with_personal_data(), "ord-1"),
        Ok(())
    );
    for (email, phone) in [
        ("a@b.c", None),
        (
            "first.last+tag@mail.example.co.uk",
            Some("+49 (30) 123-45.67"),
        ),
        ("zoë@müller.example", Some("123")),
    ] {
        let order = order_with(|o| {
            o.contact = Some(Contact {
                email: email.to_owned(),
                phone: phone.map(str::to_owned),
            })
        });
        assert_eq!(validate_order(&order, "ord-1"), Ok(()), "{email} {phone:?}");
    }
}

#[test]
fn bad_follow_up_events_table() {
    use ValidationError as V;
    let with = |t: EventType, change: fn(&mut EventBody)| {
        let mut e = samples::of(t);
        change(&mut e.body);
        e
    };
    let cases: Vec<(&str, Event, ValidationError)> = vec![
        (
            "blank order id",
            {
                let mut e = samples::of(EventType::OrderCancelled);
                e.meta.order_id = String::new();
                e
            },
            V::MissingField { field: "order_id" },
        ),
        (
            "authorized negative amount",
            with(EventType::PaymentAuthorized, |b| {
                if let EventBody::PaymentAuthorized(p) = b {
                    p.amount_minor = -1;
                }
            }),
            V::NegativeAmount {
                field: "amount_minor",
                amount: -1,
            },
        ),
        (
            "authorized blank customer",
            with(EventType::PaymentAuthorized, |b| {
                if let EventBody::PaymentAuthorized(p) = b {
                    p.customer_id = String::new();
                }
            }),
            V::MissingField {
                field: "customer_id",
            },
        ),
        (
            "declined unknown currency",
            with(EventType::PaymentDeclined, |b| {
                if let EventBody::PaymentDeclined(p) = b {
                    p.currency = "eur".into();
                }
            }),
            V::UnknownCurrency { code: "eur".into() },
        ),
        (
            "voided negative amount",
            with(EventType::PaymentVoided, |b| {
                if let EventBody::PaymentVoided(p) = b {
                    p.amount_minor = i64::MIN;
                }
            }),
            V::NegativeAmount {
                field: "amount_minor",
                amount: i64::MIN,
            },
        ),
        (
            "completed negative total",
            with(EventType::OrderCompleted, |b| {
                if let EventBody::OrderCompleted(c) = b {
                    c.total_minor = -100;
                }
            }),
            V::NegativeAmount {
                field: "total_minor",
                amount: -100,
            },
        ),
        (
            "reserved quantity 0",
            with(EventType::InventoryReserved, |b| {
                if let EventBody::InventoryReserved(r) = b {
                    r.items[1].quantity = 0;
                }
            }),
            V::NonPositiveQuantity {
                line: 2,
                sku: "XYZ-ü9".into(),
                quantity: 0,
            },
        ),
        (
            "released blank sku",
            with(EventType::InventoryReleased, |b| {
                if let EventBody::InventoryReleased(r) = b {
                    r.items[0].sku = " ".into();
                }
            }),
            V::MissingLineField {
                line: 1,
                field: "sku",
            },
        ),
        (
            "rejected blank sku",
            with(EventType::InventoryRejected, |b| {
                if let EventBody::InventoryRejected(r) = b {
                    r.shortages[0].sku = String::new();
                }
            }),
            V::MissingLineField {
                line: 1,
                field: "sku",
            },
        ),
    ];
    for (name, event, expected) in cases {
        assert_eq!(validate(&event), Err(expected.clone()), "{name}");
        assert!(
            matches!(encode(&event), Err(EncodeError::Invalid(ref e)) if *e == expected),
            "{name}"
        );
    }
}

#[test]
fn messages_say_what_and_where() {
    use ValidationError as V;
    let table = [
        (
            V::NonPositiveQuantity {
                line: 2,
                sku: "ABC-1".into(),
                quantity: 0,
            },
            "line 2 (sku ABC-1): quantity must be > 0, got 0",
        ),
        (
            V::NegativePrice {
                line: 1,
                sku: "A".into(),
                price: -5,
            },
            "line 1 (sku A): unit price must be >= 0, got -5",
        ),
        (
            V::MissingField {
                field: "customer_id",
            },
            "customer_id must not be blank",
        ),
        (
            V::MissingLineField {
                line: 3,
                field: "sku",
            },
            "line 3: sku must not be blank",
        ),
        (V::NoLines, "order has no lines"),
        (
            V::TooManyLines {
                count: 501,
                max: 500,
            },
            "order has 501 lines, at most 500 are allowed",
        ),
        (
            V::UnknownCurrency { code: "eur".into() },
            "currency \"eur\" is not a known ISO 4217 code (upper case, e.g. EUR)",
        ),
        (
            V::InvalidCountry { code: "de".into() },
            "shipping_address.country \"de\" must be two upper-case letters (ISO 3166-1 alpha-2)",
        ),
        (V::TotalOverflow, "order total overflows 64-bit minor units"),
        (
            V::NegativeAmount {
                field: "amount_minor",
                amount: -1,
            },
            "amount_minor must be >= 0, got -1",
        ),
    ];
    for (error, message) in table {
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn currency_lookup_is_exact() {
    assert!(is_known_currency("EUR"));
    assert!(!is_known_currency("eur"));
    assert!(!is_known_currency("XXX"));
}

/// Stock and customer events: their rules, and the key each must carry as its order id.
#[test]
fn bad_stock_and_customer_events_table() {
    use ValidationError as V;
    let with = |t: EventType, change: fn(&mut Event)| {
        let mut e = samples::of(t);
        change(&mut e);
        e
    };
    let cases: Vec<(&str, Event, ValidationError)> = vec![
        (
            "adjustment of nothing",
            with(EventType::StockAdjusted, |e| {
                if let EventBody::StockAdjusted(s) = &mut e.body {
                    s.delta = 0;
                }
            }),
            V::ZeroDelta,
        ),
        (
            "adjustment without a reason",
            with(EventType::StockAdjusted, |e| {
                if let EventBody::StockAdjusted(s) = &mut e.body {
                    s.reason = " ".into();
                }
            }),
            V::MissingField { field: "reason" },
        ),
        (
            "adjustment of a blank sku",
            with(EventType::StockAdjusted, |e| {
                if let EventBody::StockAdjusted(s) = &mut e.body {
                    s.sku = String::new();
                }
                e.meta.order_id = "stock:".into();
            }),
            V::MissingField { field: "sku" },
        ),
        (
            "adjustment keyed by an order",
            with(EventType::StockAdjusted, |e| {
                e.meta.order_id = "ord-1".into()
            }),
            V::WrongKey {
                expected: "stock:XYZ-ü9".into(),
                found: "ord-1".into(),
            },
        ),
        (
            "adjustment keyed by another sku",
            with(EventType::StockAdjusted, |e| {
                e.meta.order_id = "stock:ABC-1".into()
            }),
            V::WrongKey {
                expected: "stock:XYZ-ü9".into(),
                found: "stock:ABC-1".into(),
            },
        ),
        (
            "block of a blank customer",
            with(EventType::CustomerBlocked, |e| {
                if let EventBody::CustomerBlocked(b) = &mut e.body {
                    b.customer_id = String::new();
                }
            }),
            V::MissingField {
                field: "customer_id",
            },
        ),
        (
            "block keyed by another customer",
            with(EventType::CustomerBlocked, |e| {
                e.meta.order_id = "customer:cust-8".into()
            }),
            V::WrongKey {
                expected: "customer:cust-7".into(),
                found: "customer:cust-8".into(),
            },
        ),
        (
            "erasure keyed by another customer",
            with(EventType::CustomerForgotten, |e| {
                e.meta.order_id = "customer:cust-8".into()
            }),
            V::WrongKey {
                expected: "customer:cust-7".into(),
                found: "customer:cust-8".into(),
            },
        ),
        (
            "unblock keyed by a stock key",
            with(EventType::CustomerUnblocked, |e| {
                e.meta.order_id = "stock:cust-7".into()
            }),
            V::WrongKey {
                expected: "customer:cust-7".into(),
                found: "stock:cust-7".into(),
            },
        ),
    ];
    for (name, event, expected) in cases {
        assert_eq!(validate(&event), Err(expected.clone()), "{name}");
        assert!(
            matches!(encode(&event), Err(EncodeError::Invalid(ref e)) if *e == expected),
            "{name}"
        );
    }
    // An order may not take a key that stock and customer events use.
    for (id, prefix) in [("stock:A", "stock:"), ("customer:c1", "customer:")] {
        assert_eq!(
            validate_order(&samples::order(None), id),
            Err(V::ReservedOrderId {
                order_id: id.into(),
                prefix,
            }),
            "{id}"
        );
    }
    // A negative delta is an adjustment like any other, and every sample is valid.
    for t in [
        EventType::StockAdjusted,
        EventType::CustomerBlocked,
        EventType::CustomerUnblocked,
        EventType::CustomerForgotten,
    ] {
        assert_eq!(validate(&samples::of(t)), Ok(()), "{t}");
        assert!(!t.concerns_order(), "{t}");
    }
    assert!(EventType::OrderCreated.concerns_order());
}

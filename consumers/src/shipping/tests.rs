use super::*;
use crate::given::{self, authorized, cancel_accepted, created, timed_out};
use crate::ports::Failure;

fn schedule_key(order: &str) -> Uuid {
    events::reply_event_id(authorized(order).meta.event_id, "shipment-id")
}

fn scheduled(order: &str) -> (Uuid, Result<Answer, Failure>) {
    (
        schedule_key(order),
        Ok(Answer::Schedule(CarrierDecision::Scheduled {
            tracking_number: format!("TRK-{order}"),
        })),
    )
}

/// Given answers from the carrier, when these events arrive, then these outcomes.
#[test]
fn decisions() {
    let cancel_key = events::reply_event_id(cancel_accepted("o1").meta.event_id, "shipment-cancel");
    type Case = (
        &'static str,
        Vec<(Uuid, Result<Answer, Failure>)>,
        Vec<Event>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "asks the carrier once payment is authorized",
            vec![],
            vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
            &["-", "ask"],
        ),
        (
            "scheduled",
            vec![scheduled("o1")],
            vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
            &["-", "ShipmentScheduled"],
        ),
        (
            "refused by the carrier",
            vec![(
                schedule_key("o1"),
                Ok(Answer::Schedule(CarrierDecision::Refused {
                    reason: "destination_not_served".into(),
                })),
            )],
            vec![created("o1", &[("A", 1, 100)], "AQ"), authorized("o1")],
            &["-", "ShipmentFailed"],
        ),
        (
            "the carrier timed out",
            vec![(
                schedule_key("o1"),
                Err(Failure {
                    service: "carrier",
                    message: "no answer within 5000 ms".into(),
                    retryable: true,
                    unavailable: false,
                }),
            )],
            vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
            &["-", "fail:provider"],
        ),
        (
            "authorized for an order shipping never saw",
            vec![],
            vec![authorized("o1")],
            &["fail:rule"],
        ),
        (
            "a second shipment is refused",
            vec![scheduled("o1")],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                authorized("o1"),
                given::event("o1", "authorized-again", authorized("o1").body),
            ],
            &["-", "ShipmentScheduled", "fail:rule"],
        ),
        (
            "given up before shipping: failed without asking",
            vec![],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                timed_out("o1", "payment"),
                authorized("o1"),
            ],
            &["-", "-", "ShipmentFailed"],
        ),
        (
            "cancelled after scheduling: called off, once",
            vec![scheduled("o1"), (cancel_key, Ok(Answer::Cancelled))],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                authorized("o1"),
                cancel_accepted("o1"),
                timed_out("o1", "shipping"),
            ],
            &["-", "ShipmentScheduled", "ShipmentCancelled", "-"],
        ),
        (
            "cancelled with nothing scheduled",
            vec![],
            vec![created("o1", &[("A", 1, 100)], "DE"), cancel_accepted("o1")],
            &["-", "-"],
        ),
    ];
    for (name, answers, events, outcomes) in cases {
        let mut known = Answers::new();
        for (key, answer) in answers {
            known.insert(key, answer);
        }
        let mut state = State::default();
        let got: Vec<String> = events
            .iter()
            .map(|e| given::describe(decide("post", &mut state, e, &known)))
            .collect();
        assert_eq!(got, outcomes, "{name}");
    }
}

#[test]
fn the_question_names_the_destination_and_a_duplicate_order_keeps_the_first() {
    let mut state = State::default();
    decide(
        "post",
        &mut state,
        &created("o1", &[("A", 1, 1)], "FR"),
        &Answers::new(),
    )
    .unwrap();
    let again = given::event("o1", "again", created("o1", &[("A", 1, 1)], "AQ").body);
    decide("post", &mut state, &again, &Answers::new()).unwrap();
    let asked = decide("post", &mut state, &authorized("o1"), &Answers::new());
    let Err(Decline::Ask(Call::Schedule(request))) = asked else {
        panic!("expected a question, got {asked:?}");
    };
    assert_eq!(request.country, "FR");
    assert_eq!(request.shipment_id, schedule_key("o1"));
}

/// `created` of `order` for customer `c1`, sealed under `key` as if for order `sealed_for`
/// (another id than `order` swaps the order id), then changed by `change`.
fn sealed_created(
    order: &str,
    sealed_for: &str,
    key: &privacy::DataKey,
    change: impl Fn(&mut SealedPersonal),
) -> Event {
    let mut event = created(order, &[("A", 1, 100)], "DE");
    let EventBody::OrderCreated(created) = &mut event.body else {
        unreachable!()
    };
    created.shipping_address.name = "Ada Lovelace".into();
    privacy::seal(created, sealed_for, key).unwrap();
    change(created.sealed.as_mut().unwrap());
    event
}

fn forgotten(customer: &str, keys: Vec<Uuid>) -> Event {
    given::event(
        &events::customer_key(customer),
        "forgotten",
        EventBody::CustomerForgotten(events::CustomerForgotten {
            customer_id: customer.into(),
            key_ids: keys,
        }),
    )
}

/// Sealed addresses: given the key's state, when these events arrive, then these outcomes
/// (a refusal names its typed reason), and the address the carrier is asked with.
#[test]
fn sealed_addresses() {
    let key = privacy::DataKey::generate("c1");
    let other = privacy::DataKey::generate("c1");
    let unchanged = |_: &mut SealedPersonal| {};
    type Case = (
        &'static str,
        Option<KeyState>,
        Vec<Event>,
        &'static [&'static str],
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "opened in memory for the carrier",
            Some(KeyState::Live(key.clone())),
            vec![
                sealed_created("o1", "o1", &key, unchanged),
                authorized("o1"),
            ],
            &["-", "ask"],
            Some("Ada Lovelace"),
        ),
        (
            "a changed ciphertext byte is refused",
            Some(KeyState::Live(key.clone())),
            vec![sealed_created("o1", "o1", &key, |s| s.ciphertext[3] ^= 1)],
            &["fail:rule (tampered)"],
            None,
        ),
        (
            "sealed for another order id (swapped) is refused",
            Some(KeyState::Live(key.clone())),
            vec![sealed_created("o1", "o2", &key, unchanged)],
            &["fail:rule (tampered)"],
            None,
        ),
        (
            "naming another live key of the customer is refused",
            Some(KeyState::Live(key.clone())),
            vec![sealed_created("o1", "o1", &key, |s| {
                s.key_id = other.id.to_string()
            })],
            &["fail:rule (tampered)"],
            None,
        ),
        (
            "a key id that is no UUID is refused",
            Some(KeyState::Live(key.clone())),
            vec![sealed_created("o1", "o1", &key, |s| s.key_id = "k".into())],
            &["fail:rule (bad_key_id)"],
            None,
        ),
        (
            "an unknown algorithm is refused",
            Some(KeyState::Live(key.clone())),
            vec![sealed_created("o1", "o1", &key, |s| {
                s.algorithm = "ROT13".into()
            })],
            &["fail:rule (unknown_algorithm)"],
            None,
        ),
        (
            "a destroyed key: kept as erased, the carrier asked without an address",
            Some(KeyState::Destroyed),
            vec![
                sealed_created("o1", "o1", &key, unchanged),
                authorized("o1"),
            ],
            &["-", "ask"],
            None,
        ),
        (
            "forgotten mid-flight: erased before the carrier is asked",
            Some(KeyState::Live(key.clone())),
            vec![
                sealed_created("o1", "o1", &key, unchanged),
                forgotten("c1", vec![key.id]),
                authorized("o1"),
            ],
            &["-", "-", "ask"],
            None,
        ),
        (
            "no key here (a restore without the key backup): kept, not opened",
            None,
            vec![
                sealed_created("o1", "o1", &key, unchanged),
                authorized("o1"),
            ],
            &["-", "ask"],
            None,
        ),
        (
            "a plain (legacy) order: its clear address, as before",
            None,
            vec![created("o1", &[("A", 1, 100)], "DE"), authorized("o1")],
            &["-", "ask"],
            Some("N"),
        ),
    ];
    for (name, key_state, events, outcomes, asked_name) in cases {
        let mut state = State::default();
        if let Some(k) = key_state {
            state.keys.insert(key.id, k);
        }
        state.keys.insert(other.id, KeyState::Live(other.clone()));
        let mut asked = None;
        let got: Vec<String> = events
            .iter()
            .map(|e| match decide("post", &mut state, e, &Answers::new()) {
                Err(Decline::Fail(HandlerError::Rule(message))) => {
                    assert!(message.contains("order o1"), "{name}: {message}");
                    let reason = message.split(['(', ')']).nth(1).unwrap_or("?");
                    format!("fail:rule ({reason})")
                }
                Err(Decline::Ask(Call::Schedule(request))) => {
                    asked = Some(request);
                    "ask".into()
                }
                other => given::describe(other),
            })
            .collect();
        assert_eq!(got, outcomes, "{name}");
        if let Some(request) = asked {
            assert_eq!(
                request.address.as_ref().map(|a| a.name.as_str()),
                asked_name,
                "{name}"
            );
            // The simulated carrier refuses to ship without an address.
            let decision = futures::executor::block_on(
                SimulatedCarrier::new("post".into(), vec![]).schedule(&request),
            )
            .unwrap();
            let refused = matches!(&decision, CarrierDecision::Refused { reason } if reason == ADDRESS_ERASED);
            assert_eq!(refused, asked_name.is_none(), "{name}: {decision:?}");
            assert!(
                !format!("{request:?}").contains("Ada"),
                "{name}: Debug leaks"
            );
        }
    }
}

#[test]
fn an_erased_address_fails_the_shipment_and_a_forget_scrubs_kept_copies() {
    let key = privacy::DataKey::generate("c1");
    let mut state = State::default();
    state.keys.insert(key.id, KeyState::Live(key.clone()));
    let created = sealed_created("o1", "o1", &key, |_| {});
    decide("post", &mut state, &created, &Answers::new()).unwrap();
    assert!(matches!(state.destinations["o1"].kept, Kept::Sealed(_)));
    decide(
        "post",
        &mut state,
        &forgotten("c1", vec![key.id]),
        &Answers::new(),
    )
    .unwrap();
    assert_eq!(state.destinations["o1"].kept, Kept::Erased);
    assert_eq!(state.destinations["o1"].kept.to_column(), None);
    assert_eq!(state.forgotten, vec!["c1".to_string()]);
    let answers = {
        let mut a = Answers::new();
        a.insert(
            schedule_key("o1"),
            Ok(Answer::Schedule(CarrierDecision::Refused {
                reason: ADDRESS_ERASED.into(),
            })),
        );
        a
    };
    let replies = decide("post", &mut state, &authorized("o1"), &answers).unwrap();
    assert!(
        matches!(&replies[..], [EventBody::ShipmentFailed(f)] if f.reason == ADDRESS_ERASED),
        "{replies:?}"
    );
    // A kept sealed copy reads back as what was stored.
    let EventBody::OrderCreated(order) = &created.body else {
        unreachable!()
    };
    let kept = Kept::Sealed(order.sealed.clone().unwrap());
    assert_eq!(Kept::from_column(kept.to_column()), kept);
    let plain = Kept::Plain(serde_json::json!({"name": "N"}));
    assert_eq!(Kept::from_column(plain.to_column()), plain);
    // An address scrubbed in clear is no address either.
    let scrubbed = ShipmentRequest {
        shipment_id: Uuid::nil(),
        order_id: "o1".into(),
        country: "DE".into(),
        address: Some(Box::new(Address {
            name: privacy::personal::ERASED.into(),
            line1: privacy::personal::ERASED.into(),
            line2: None,
            city: privacy::personal::ERASED.into(),
            postal_code: privacy::personal::ERASED.into(),
            country: "DE".into(),
        })),
    };
    assert_eq!(
        futures::executor::block_on(
            SimulatedCarrier::new("post".into(), vec![]).schedule(&scrubbed)
        )
        .unwrap(),
        CarrierDecision::Refused {
            reason: ADDRESS_ERASED.into()
        }
    );
}

use super::*;
use crate::given::{self, cancel_accepted, created, reserved, ship_failed, timed_out};
use crate::ports::Failure;

fn payment() -> Payment {
    Payment::new(Arc::new(NoProvider))
}

/// When blocks and unblocks arrive (any number, of several customers, in one batch), then
/// no reply and the last one per customer is what the batch stores.
#[test]
fn blocks_and_unblocks() {
    use crate::given::{blocked, unblocked};
    type Case = (&'static str, Vec<Event>, &'static [(&'static str, bool)]);
    let cases: Vec<Case> = vec![
        ("a block", vec![blocked("c1", "b1")], &[("c1", true)]),
        ("an unblock", vec![unblocked("c1", "u1")], &[("c1", false)]),
        (
            "block then unblock: unblocked",
            vec![blocked("c1", "b1"), unblocked("c1", "u1")],
            &[("c1", false)],
        ),
        (
            "unblock then block: blocked",
            vec![unblocked("c1", "u1"), blocked("c1", "b1")],
            &[("c1", true)],
        ),
        (
            "two customers apart",
            vec![
                blocked("c1", "b1"),
                blocked("c2", "b2"),
                unblocked("c1", "u1"),
            ],
            &[("c1", false), ("c2", true)],
        ),
    ];
    for (name, events, want) in cases {
        let mut state = State::default();
        let got = given::run(&payment(), &mut state, &Answers::new(), &events);
        assert!(got.iter().all(|o| o == "-"), "{name}: {got:?}");
        assert_eq!(state.blocks.len(), want.len(), "{name}");
        for (customer, is_blocked) in want {
            let block = &state.blocks[*customer];
            assert_eq!(
                matches!(block, Block::Blocked { .. }),
                *is_blocked,
                "{name}: {customer}"
            );
        }
    }
    let p = payment();
    assert!(p.wants(EventType::CustomerBlocked) && p.wants(EventType::CustomerUnblocked));
}

fn authorization_key(order: &str) -> Uuid {
    events::reply_event_id(reserved(order).meta.event_id, "payment-id")
}

fn void_key(event: &Event) -> Uuid {
    events::reply_event_id(event.meta.event_id, "payment-void")
}

fn authorized_answer(order: &str) -> (Uuid, Result<Answer, Failure>) {
    (
        authorization_key(order),
        Ok(Answer::Authorization(AuthorizationDecision::Authorized {
            provider_reference: format!("ref-{order}"),
        })),
    )
}

fn failure(retryable: bool, unavailable: bool) -> Failure {
    Failure {
        service: "payment provider",
        message: "503".into(),
        retryable,
        unavailable,
    }
}

/// Given answers from the provider, when these events arrive, then these outcomes.
#[test]
fn decisions() {
    let step = Payment::new(Arc::new(NoProvider));
    let void_after_ship = void_key(&ship_failed("o1"));
    let void_after_timeout = void_key(&timed_out("o1", "shipping"));
    type Case = (
        &'static str,
        Vec<(Uuid, Result<Answer, Failure>)>,
        Vec<Event>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "asks the provider once the stock is reserved",
            vec![],
            vec![created("o1", &[("A", 1, 100)], "DE"), reserved("o1")],
            &["-", "ask"],
        ),
        (
            "authorized",
            vec![authorized_answer("o1")],
            vec![created("o1", &[("A", 1, 100)], "DE"), reserved("o1")],
            &["-", "PaymentAuthorized"],
        ),
        (
            "declined",
            vec![(
                authorization_key("o1"),
                Ok(Answer::Authorization(AuthorizationDecision::Declined {
                    reason: "customer_blocked".into(),
                })),
            )],
            vec![created("o1", &[("A", 1, 100)], "DE"), reserved("o1")],
            &["-", "PaymentDeclined"],
        ),
        (
            "the provider failed: retryable",
            vec![(authorization_key("o1"), Err(failure(true, false)))],
            vec![created("o1", &[("A", 1, 100)], "DE"), reserved("o1")],
            &["-", "fail:provider"],
        ),
        (
            "the breaker is open: unavailable",
            vec![(authorization_key("o1"), Err(failure(true, true)))],
            vec![created("o1", &[("A", 1, 100)], "DE"), reserved("o1")],
            &["-", "fail:unavailable"],
        ),
        (
            "reserved for an order payment never saw",
            vec![],
            vec![reserved("o1")],
            &["fail:rule"],
        ),
        (
            "a second authorization is refused",
            vec![authorized_answer("o1")],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                reserved("o1"),
                given::event("o1", "reserved-again", reserved("o1").body),
            ],
            &["-", "PaymentAuthorized", "fail:rule"],
        ),
        (
            "given up before payment: declined without asking",
            vec![],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                timed_out("o1", "inventory"),
                reserved("o1"),
            ],
            &["-", "-", "PaymentDeclined"],
        ),
        (
            "shipment failed: the authorization is voided, once",
            vec![
                authorized_answer("o1"),
                (void_after_ship, Ok(Answer::Voided)),
            ],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                reserved("o1"),
                ship_failed("o1"),
                timed_out("o1", "shipping"),
            ],
            &["-", "PaymentAuthorized", "PaymentVoided", "-"],
        ),
        (
            "given up after authorization: asks to void",
            vec![authorized_answer("o1")],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                reserved("o1"),
                timed_out("o1", "shipping"),
            ],
            &["-", "PaymentAuthorized", "ask"],
        ),
        (
            "given up after authorization: voided",
            vec![
                authorized_answer("o1"),
                (void_after_timeout, Ok(Answer::Voided)),
            ],
            vec![
                created("o1", &[("A", 1, 100)], "DE"),
                reserved("o1"),
                timed_out("o1", "shipping"),
            ],
            &["-", "PaymentAuthorized", "PaymentVoided"],
        ),
        (
            "cancelled before payment: nothing to void",
            vec![],
            vec![created("o1", &[("A", 1, 100)], "DE"), cancel_accepted("o1")],
            &["-", "-"],
        ),
        (
            "shipment failed for an order without payment",
            vec![],
            vec![ship_failed("o1")],
            &["fail:rule"],
        ),
    ];
    for (name, answers, events, outcomes) in cases {
        let mut known = Answers::new();
        for (key, answer) in answers {
            known.insert(key, answer);
        }
        let mut state = State::default();
        let got = given::run(&step, &mut state, &known, &events);
        assert_eq!(got, outcomes, "{name}");
    }
}

#[test]
fn the_question_and_the_ledger_carry_the_order_terms() {
    let mut state = State::default();
    let order = created("o1", &[("A", 2, 150), ("B", 1, 200)], "DE");
    decide(&mut state, &order, &Answers::new()).unwrap();
    // A duplicate OrderCreated changes nothing: the first one stands.
    let again = given::event("o1", "again", created("o1", &[("A", 9, 1)], "DE").body);
    decide(&mut state, &again, &Answers::new()).unwrap();
    let Err(Decline::Ask(Call::Authorize(request))) =
        decide(&mut state.clone(), &reserved("o1"), &Answers::new())
    else {
        panic!("expected a question");
    };
    assert_eq!(
        request,
        AuthorizationRequest {
            idempotency_key: authorization_key("o1"),
            customer_id: "c1".into(),
            amount_minor: 500,
            currency: "EUR".into(),
        }
    );
    let mut answers = Answers::new();
    let (key, answer) = authorized_answer("o1");
    answers.insert(key, answer);
    decide(&mut state, &reserved("o1"), &answers).unwrap();
    let marker = timed_out("o1", "shipping");
    answers.insert(void_key(&marker), Ok(Answer::Voided));
    decide(&mut state, &marker, &answers).unwrap();
    let ledger: Vec<(&str, i64)> = state
        .ledger
        .iter()
        .map(|e| (e.entry, e.amount_minor))
        .collect();
    assert_eq!(ledger, [("authorization", 500), ("void", -500)]);
    assert_eq!(state.payments["o1"].status, Status::Voided);
    assert_eq!(state.abandoned.reason("o1"), Some("step_timed_out"));
}

struct NoProvider;

#[async_trait]
impl PaymentProvider for NoProvider {
    async fn authorize(
        &self,
        _: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError> {
        unreachable!("deciders never call the provider")
    }
    async fn void(&self, _: &str, _: Uuid) -> Result<(), HandlerError> {
        unreachable!("deciders never call the provider")
    }
}

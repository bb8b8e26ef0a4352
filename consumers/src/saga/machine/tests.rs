use super::*;
use events::*;
use uuid::Uuid;

fn created() -> EventBody {
    EventBody::OrderCreated(OrderCreated {
        customer_id: "c1".into(),
        lines: vec![OrderLine {
            sku: "A".into(),
            quantity: 1,
            unit_price_minor: 100,
        }],
        currency: "EUR".into(),
        shipping_address: Address {
            name: "N".into(),
            line1: "L".into(),
            line2: None,
            city: "C".into(),
            postal_code: "1".into(),
            country: "DE".into(),
        },
        contact: None,
        sealed: None,
    })
}
fn reserved() -> EventBody {
    EventBody::InventoryReserved(InventoryReserved {
        reservation_id: Uuid::nil(),
        items: vec![],
    })
}
fn rejected() -> EventBody {
    EventBody::InventoryRejected(InventoryRejected {
        reason: "short A".into(),
        shortages: vec![],
    })
}
fn authorized() -> EventBody {
    EventBody::PaymentAuthorized(PaymentAuthorized {
        payment_id: Uuid::nil(),
        customer_id: "c1".into(),
        amount_minor: 100,
        currency: "EUR".into(),
        provider_reference: "r".into(),
    })
}
fn declined() -> EventBody {
    EventBody::PaymentDeclined(PaymentDeclined {
        customer_id: "c1".into(),
        amount_minor: 100,
        currency: "EUR".into(),
        reason: "amount_over_limit".into(),
    })
}
fn scheduled() -> EventBody {
    EventBody::ShipmentScheduled(ShipmentScheduled {
        shipment_id: Uuid::nil(),
        carrier: "c".into(),
        tracking_number: "t".into(),
    })
}
fn ship_failed() -> EventBody {
    EventBody::ShipmentFailed(ShipmentFailed {
        carrier: "c".into(),
        reason: "destination_not_served".into(),
    })
}
fn released() -> EventBody {
    EventBody::InventoryReleased(InventoryReleased {
        reservation_id: Uuid::nil(),
        items: vec![],
        reason: "x".into(),
    })
}
fn voided() -> EventBody {
    EventBody::PaymentVoided(PaymentVoided {
        payment_id: Uuid::nil(),
        amount_minor: 100,
        currency: "EUR".into(),
        reason: "x".into(),
    })
}
fn shipment_cancelled() -> EventBody {
    EventBody::ShipmentCancelled(ShipmentCancelled {
        shipment_id: Uuid::nil(),
        carrier: "c".into(),
        reason: "order_cancelled".into(),
    })
}
fn request() -> EventBody {
    EventBody::OrderCancellationRequested(OrderCancellationRequested {
        reason: "customer_request".into(),
        requested_by: "c1".into(),
    })
}
fn accepted() -> EventBody {
    EventBody::OrderCancellationAccepted(OrderCancellationAccepted {
        reason: "customer_request".into(),
        requested_by: "c1".into(),
    })
}
fn timed_out(step: &str) -> EventBody {
    EventBody::SagaStepTimedOut(SagaStepTimedOut {
        step: step.into(),
        deadline: chrono::DateTime::UNIX_EPOCH,
        attempts: 1,
    })
}
fn compensating(pending: &[Pending], reason: &str, detail: &str) -> SagaState {
    SagaState::Compensating {
        pending: pending.iter().copied().collect(),
        reason: reason.into(),
        detail: detail.into(),
    }
}
fn cancelled(reason: &str, detail: &str) -> SagaState {
    SagaState::Cancelled {
        reason: reason.into(),
        detail: detail.into(),
    }
}
fn cancel_cmd(reason: &str, detail: &str) -> Vec<Command> {
    vec![Command::Cancel {
        reason: reason.into(),
        detail: detail.into(),
    }]
}

#[test]
fn transitions() {
    use Pending::*;
    use SagaState::*;
    let decline_detail = "payment declined: amount_over_limit";
    let ship_detail = "shipment failed: destination_not_served";
    // given state, when event, then next state and commands
    let table: Vec<(Option<SagaState>, EventBody, SagaState, Vec<Command>)> = vec![
        (None, created(), AwaitingInventory, vec![]),
        (Some(AwaitingInventory), reserved(), AwaitingPayment, vec![]),
        (
            Some(AwaitingInventory),
            rejected(),
            cancelled("out_of_stock", "short A"),
            cancel_cmd("out_of_stock", "short A"),
        ),
        (
            Some(AwaitingPayment),
            authorized(),
            AwaitingShipment,
            vec![],
        ),
        (
            Some(AwaitingPayment),
            declined(),
            compensating(&[ReleaseInventory], "payment_declined", decline_detail),
            vec![],
        ),
        (
            Some(AwaitingShipment),
            scheduled(),
            Completed,
            vec![Command::Complete],
        ),
        (
            Some(AwaitingShipment),
            ship_failed(),
            compensating(
                &[ReleaseInventory, VoidPayment],
                "shipment_failed",
                ship_detail,
            ),
            vec![],
        ),
        (
            Some(compensating(
                &[ReleaseInventory],
                "payment_declined",
                decline_detail,
            )),
            released(),
            cancelled("payment_declined", decline_detail),
            cancel_cmd("payment_declined", decline_detail),
        ),
        (
            Some(compensating(
                &[ReleaseInventory, VoidPayment],
                "shipment_failed",
                ship_detail,
            )),
            voided(),
            compensating(&[ReleaseInventory], "shipment_failed", ship_detail),
            vec![],
        ),
        (
            Some(compensating(
                &[ReleaseInventory, VoidPayment],
                "shipment_failed",
                ship_detail,
            )),
            released(),
            compensating(&[VoidPayment], "shipment_failed", ship_detail),
            vec![],
        ),
        (
            Some(compensating(&[VoidPayment], "shipment_failed", ship_detail)),
            voided(),
            cancelled("shipment_failed", ship_detail),
            cancel_cmd("shipment_failed", ship_detail),
        ),
    ];
    for (i, (given, when, then_state, then_commands)) in table.into_iter().enumerate() {
        let got = decide(given.as_ref(), &when).unwrap_or_else(|e| panic!("row {i}: ignored: {e}"));
        assert_eq!(got.next, Some(then_state), "row {i}");
        assert_eq!(got.commands, then_commands, "row {i}");
    }
}

#[test]
fn ignored_events() {
    use SagaState::*;
    let table: Vec<(Option<SagaState>, EventBody, Ignored)> = vec![
        (
            None,
            reserved(),
            Ignored::Unknown {
                event: "InventoryReserved",
            },
        ),
        (Some(AwaitingPayment), created(), Ignored::DuplicateOrder),
        (
            Some(Completed),
            ship_failed(),
            Ignored::Finished {
                state: "completed",
                event: "ShipmentFailed",
            },
        ),
        (
            Some(cancelled("out_of_stock", "")),
            authorized(),
            Ignored::Finished {
                state: "cancelled",
                event: "PaymentAuthorized",
            },
        ),
        (
            Some(AwaitingInventory),
            authorized(),
            Ignored::Unexpected {
                state: "awaiting_inventory",
                event: "PaymentAuthorized",
            },
        ),
        (
            Some(AwaitingShipment),
            declined(),
            Ignored::Unexpected {
                state: "awaiting_shipment",
                event: "PaymentDeclined",
            },
        ),
        (
            Some(compensating(
                &[Pending::ReleaseInventory],
                "payment_declined",
                "",
            )),
            voided(),
            Ignored::Unexpected {
                state: "compensating",
                event: "PaymentVoided",
            },
        ),
    ];
    for (i, (given, when, want)) in table.into_iter().enumerate() {
        assert_eq!(decide(given.as_ref(), &when), Err(want), "row {i}");
    }
}

#[test]
fn states_survive_their_row_form() {
    let states = [
        SagaState::AwaitingInventory,
        SagaState::AwaitingPayment,
        SagaState::AwaitingShipment,
        compensating(
            &[Pending::ReleaseInventory, Pending::VoidPayment],
            "shipment_failed",
            "d",
        ),
        SagaState::Completed,
        cancelled("out_of_stock", "short"),
    ];
    for state in states {
        let pending: Vec<String> = state
            .pending()
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        let (reason, detail) = state.cancellation();
        assert_eq!(
            SagaState::from_row(state.name(), &pending, reason, detail),
            Ok(state.clone())
        );
    }
    assert!(SagaState::from_row("bogus", &[], None, None).is_err());
}

const REQUEST_DETAIL: &str = "cancellation requested by c1: customer_request";

#[test]
fn cancellation_requests() {
    use Pending::*;
    use SagaState::*;
    let accept = vec![Command::AcceptCancellation {
        reason: "customer_request".into(),
        requested_by: "c1".into(),
    }];
    let reject = |reason: &str, detail: &str| {
        vec![Command::RejectCancellation {
            reason: reason.into(),
            detail: detail.into(),
        }]
    };
    let cancelling = |pending: &[Pending]| {
        Some(compensating(
            pending,
            REASON_CANCELLATION_REQUESTED,
            REQUEST_DETAIL,
        ))
    };
    // given state, when a request arrives, then next state and commands
    let table: Vec<(Option<SagaState>, Option<SagaState>, Vec<Command>)> = vec![
        (
            Some(AwaitingInventory),
            cancelling(&[Marker, InventoryReply]),
            accept.clone(),
        ),
        (
            Some(AwaitingPayment),
            cancelling(&[Marker, ReleaseInventory, PaymentReply]),
            accept.clone(),
        ),
        (
            Some(AwaitingShipment),
            cancelling(&[Marker, ReleaseInventory, VoidPayment, ShippingReply]),
            accept,
        ),
        (
            Some(Completed),
            Some(Completed),
            reject(
                "already_shipped",
                "the order was completed: its shipment is scheduled",
            ),
        ),
        (
            Some(cancelled("out_of_stock", "")),
            Some(cancelled("out_of_stock", "")),
            reject("already_cancelled", "the order is already cancelled"),
        ),
        (
            Some(compensating(&[ReleaseInventory], "payment_declined", "")),
            Some(compensating(&[ReleaseInventory], "payment_declined", "")),
            reject("already_cancelling", "the order is already being cancelled"),
        ),
        (
            None,
            None,
            reject("unknown_order", "no order with this id was created"),
        ),
    ];
    for (i, (given, then_state, then_commands)) in table.into_iter().enumerate() {
        let got =
            decide(given.as_ref(), &request()).unwrap_or_else(|e| panic!("row {i}: ignored: {e}"));
        assert_eq!(got.next, then_state, "row {i}");
        assert_eq!(got.commands, then_commands, "row {i}");
    }
}

/// One input of a scenario: an event read from the log, or a missed deadline.
// A handful per test, built inline: boxing the event would only add noise.
#[allow(clippy::large_enum_variant)]
enum Input {
    Log(EventBody),
    Deadline,
}

/// Run a scenario from nothing; returns the final state and every command, in order.
fn run(inputs: Vec<Input>) -> (Option<SagaState>, Vec<Command>) {
    let mut state = None;
    let mut commands = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        match input {
            Input::Log(event) => {
                let transition = decide(state.as_ref(), &event)
                    .unwrap_or_else(|e| panic!("input {i}: ignored: {e}"));
                state = transition.next;
                commands.extend(transition.commands);
            }
            Input::Deadline => {
                let current = state.as_ref().expect("a deadline needs an order");
                state = Some(
                    time_out(current, "late".into())
                        .unwrap_or_else(|| panic!("input {i}: no deadline in {current:?}")),
                );
            }
        }
    }
    (state, commands)
}

/// Giving an order up waits for exactly the replies and compensations that the marker's
/// place in the log implies, whichever side of the marker each reply lands on.
#[test]
fn giving_up_waits_for_what_the_marker_implies() {
    use Input::*;
    let requested = || cancelled(REASON_CANCELLATION_REQUESTED, REQUEST_DETAIL);
    let timed = || cancelled(REASON_STEP_TIMED_OUT, "late");
    let table: Vec<(&str, Vec<Input>, SagaState)> = vec![
        (
            "cancelled before inventory answered, stock reserved before the marker: \
             payment and shipping answer too, and both are undone",
            vec![
                Log(created()),
                Log(request()),
                Log(reserved()),
                Log(authorized()),
                Log(accepted()),
                Log(scheduled()),
                Log(released()),
                Log(voided()),
                Log(shipment_cancelled()),
            ],
            requested(),
        ),
        (
            "cancelled before inventory answered, stock reserved after the marker: \
             payment refuses, only the release is awaited",
            vec![
                Log(created()),
                Log(request()),
                Log(accepted()),
                Log(reserved()),
                Log(released()),
            ],
            requested(),
        ),
        (
            "cancelled before inventory answered, inventory rejects",
            vec![
                Log(created()),
                Log(request()),
                Log(accepted()),
                Log(rejected()),
            ],
            requested(),
        ),
        (
            "cancelled while awaiting payment, payment declines before the marker",
            vec![
                Log(created()),
                Log(reserved()),
                Log(request()),
                Log(declined()),
                Log(accepted()),
                Log(released()),
            ],
            requested(),
        ),
        (
            "payment timed out, then authorised late: the authorisation is voided",
            vec![
                Log(created()),
                Log(reserved()),
                Deadline,
                Log(timed_out("payment")),
                Log(authorized()),
                Log(released()),
                Log(voided()),
            ],
            timed(),
        ),
        (
            "shipping timed out, then scheduled late: the shipment is cancelled",
            vec![
                Log(created()),
                Log(reserved()),
                Log(authorized()),
                Deadline,
                Log(scheduled()),
                Log(timed_out("shipping")),
                Log(shipment_cancelled()),
                Log(voided()),
                Log(released()),
            ],
            timed(),
        ),
        (
            "inventory timed out and never answers before the marker; it rejects after",
            vec![
                Log(created()),
                Deadline,
                Log(timed_out("inventory")),
                Log(rejected()),
            ],
            timed(),
        ),
    ];
    for (name, inputs, want) in table {
        let (state, commands) = run(inputs);
        assert_eq!(state, Some(want.clone()), "{name}");
        let cancels: Vec<&Command> = commands
            .iter()
            .filter(|c| matches!(c, Command::Cancel { .. }))
            .collect();
        assert_eq!(cancels.len(), 1, "{name}: exactly one OrderCancelled");
    }
}

/// The order is not cancelled while anything the marker implies is outstanding.
#[test]
fn giving_up_does_not_end_early() {
    use Input::*;
    let (state, _) = run(vec![
        Log(created()),
        Log(request()),
        Log(reserved()),
        Log(accepted()),
        Log(released()),
    ]);
    // Stock was reserved before the marker, so payment was asked and will answer.
    assert_eq!(
        state,
        Some(compensating(
            &[Pending::PaymentReply],
            REASON_CANCELLATION_REQUESTED,
            REQUEST_DETAIL
        ))
    );
    let (state, _) = run(vec![
        Log(created()),
        Log(reserved()),
        Deadline,
        Log(timed_out("payment")),
        Log(authorized()),
        Log(released()),
    ]);
    assert_eq!(
        state,
        Some(compensating(
            &[Pending::VoidPayment],
            REASON_STEP_TIMED_OUT,
            "late"
        ))
    );
}

#[test]
fn only_forward_states_time_out() {
    use SagaState::*;
    for state in [AwaitingInventory, AwaitingPayment, AwaitingShipment] {
        assert!(time_out(&state, String::new()).is_some(), "{state:?}");
    }
    for state in [
        Completed,
        cancelled("x", ""),
        compensating(&[Pending::VoidPayment], "x", ""),
    ] {
        assert_eq!(time_out(&state, String::new()), None, "{state:?}");
    }
}

//! The order saga's decisions as a pure function of (state, event): no I/O, no clock, so
//! every path is a row in a table-driven test.
//!
//! Happy path: awaiting inventory → awaiting payment → awaiting shipment → completed.
//! A failure after stock was reserved first waits for its compensations (stock released,
//! payment voided), which the inventory and payment steps perform on seeing the failure;
//! the order is cancelled once all of them are confirmed.

use std::collections::BTreeSet;
use std::fmt;

use events::EventBody;

/// A compensation the saga waits for before it cancels an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compensation {
    ReleaseInventory,
    VoidPayment,
}

impl Compensation {
    pub fn as_str(self) -> &'static str {
        match self {
            Compensation::ReleaseInventory => "release_inventory",
            Compensation::VoidPayment => "void_payment",
        }
    }

    fn parse(text: &str) -> Option<Compensation> {
        match text {
            "release_inventory" => Some(Compensation::ReleaseInventory),
            "void_payment" => Some(Compensation::VoidPayment),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaState {
    AwaitingInventory,
    AwaitingPayment,
    AwaitingShipment,
    Compensating {
        pending: BTreeSet<Compensation>,
        reason: String,
        detail: String,
    },
    Completed,
    Cancelled {
        reason: String,
        detail: String,
    },
}

/// What the saga emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Complete,
    Cancel { reason: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: SagaState,
    pub commands: Vec<Command>,
}

/// Why an event changes nothing. Not an error: logged and recorded in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// A second `OrderCreated` for an order the saga already follows.
    DuplicateOrder,
    /// The order already ended; a late event cannot change that.
    Finished {
        state: &'static str,
        event: &'static str,
    },
    /// The event does not fit the order's state (for example a reply nobody asked for).
    Unexpected {
        state: &'static str,
        event: &'static str,
    },
    /// An event for an order whose `OrderCreated` the saga never saw.
    Unknown { event: &'static str },
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::DuplicateOrder => {
                write!(f, "duplicate OrderCreated for an order already in progress")
            }
            Ignored::Finished { state, event } => {
                write!(f, "{event} arrived after the order was {state}")
            }
            Ignored::Unexpected { state, event } => write!(f, "{event} does not fit state {state}"),
            Ignored::Unknown { event } => {
                write!(f, "{event} for an order the saga never saw created")
            }
        }
    }
}

impl SagaState {
    pub fn name(&self) -> &'static str {
        match self {
            SagaState::AwaitingInventory => "awaiting_inventory",
            SagaState::AwaitingPayment => "awaiting_payment",
            SagaState::AwaitingShipment => "awaiting_shipment",
            SagaState::Compensating { .. } => "compensating",
            SagaState::Completed => "completed",
            SagaState::Cancelled { .. } => "cancelled",
        }
    }

    /// The step whose reply the saga waits for, if any.
    pub fn awaiting(&self) -> Option<&'static str> {
        match self {
            SagaState::AwaitingInventory => Some("inventory"),
            SagaState::AwaitingPayment => Some("payment"),
            SagaState::AwaitingShipment => Some("shipping"),
            SagaState::Compensating { .. } => Some("compensation"),
            SagaState::Completed | SagaState::Cancelled { .. } => None,
        }
    }

    pub fn pending(&self) -> Vec<Compensation> {
        match self {
            SagaState::Compensating { pending, .. } => pending.iter().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// (reason, detail) once the order is failing or cancelled.
    pub fn cancellation(&self) -> (Option<&str>, Option<&str>) {
        match self {
            SagaState::Compensating { reason, detail, .. }
            | SagaState::Cancelled { reason, detail } => (Some(reason), Some(detail)),
            _ => (None, None),
        }
    }

    /// Rebuild a state from its stored columns.
    pub fn from_row(
        state: &str,
        pending: &[String],
        reason: Option<&str>,
        detail: Option<&str>,
    ) -> Result<SagaState, String> {
        let reason = || reason.unwrap_or_default().to_string();
        let detail = || detail.unwrap_or_default().to_string();
        Ok(match state {
            "awaiting_inventory" => SagaState::AwaitingInventory,
            "awaiting_payment" => SagaState::AwaitingPayment,
            "awaiting_shipment" => SagaState::AwaitingShipment,
            "completed" => SagaState::Completed,
            "cancelled" => SagaState::Cancelled {
                reason: reason(),
                detail: detail(),
            },
            "compensating" => SagaState::Compensating {
                pending: pending
                    .iter()
                    .map(|p| {
                        Compensation::parse(p)
                            .ok_or_else(|| format!("unknown compensation {p:?} in saga state"))
                    })
                    .collect::<Result<_, _>>()?,
                reason: reason(),
                detail: detail(),
            },
            other => return Err(format!("unknown saga state {other:?}")),
        })
    }

    fn is_finished(&self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Cancelled { .. })
    }
}

fn go(next: SagaState) -> Result<Transition, Ignored> {
    Ok(Transition {
        next,
        commands: Vec::new(),
    })
}

fn cancel(reason: &str, detail: String) -> Result<Transition, Ignored> {
    Ok(Transition {
        next: SagaState::Cancelled {
            reason: reason.to_string(),
            detail: detail.clone(),
        },
        commands: vec![Command::Cancel {
            reason: reason.to_string(),
            detail,
        }],
    })
}

fn compensate(
    pending: &[Compensation],
    reason: &str,
    detail: String,
) -> Result<Transition, Ignored> {
    go(SagaState::Compensating {
        pending: pending.iter().copied().collect(),
        reason: reason.to_string(),
        detail,
    })
}

/// The saga's next state and commands for `event`, given the order's current state (`None`
/// when the saga has not seen the order yet).
pub fn decide(state: Option<&SagaState>, event: &EventBody) -> Result<Transition, Ignored> {
    let event_name = event.event_type().as_str();
    let Some(state) = state else {
        return match event {
            EventBody::OrderCreated(_) => go(SagaState::AwaitingInventory),
            _ => Err(Ignored::Unknown { event: event_name }),
        };
    };
    if let EventBody::OrderCreated(_) = event {
        return Err(Ignored::DuplicateOrder);
    }
    if state.is_finished() {
        return Err(Ignored::Finished {
            state: state.name(),
            event: event_name,
        });
    }
    match (state, event) {
        (SagaState::AwaitingInventory, EventBody::InventoryReserved(_)) => {
            go(SagaState::AwaitingPayment)
        }
        (SagaState::AwaitingInventory, EventBody::InventoryRejected(r)) => {
            cancel("out_of_stock", r.reason.clone())
        }
        (SagaState::AwaitingPayment, EventBody::PaymentAuthorized(_)) => {
            go(SagaState::AwaitingShipment)
        }
        (SagaState::AwaitingPayment, EventBody::PaymentDeclined(d)) => compensate(
            &[Compensation::ReleaseInventory],
            "payment_declined",
            format!("payment declined: {}", d.reason),
        ),
        (SagaState::AwaitingShipment, EventBody::ShipmentScheduled(_)) => Ok(Transition {
            next: SagaState::Completed,
            commands: vec![Command::Complete],
        }),
        (SagaState::AwaitingShipment, EventBody::ShipmentFailed(f)) => compensate(
            &[Compensation::ReleaseInventory, Compensation::VoidPayment],
            "shipment_failed",
            format!("shipment failed: {}", f.reason),
        ),
        (
            SagaState::Compensating {
                pending,
                reason,
                detail,
            },
            EventBody::InventoryReleased(_) | EventBody::PaymentVoided(_),
        ) => {
            let done = match event {
                EventBody::InventoryReleased(_) => Compensation::ReleaseInventory,
                _ => Compensation::VoidPayment,
            };
            if !pending.contains(&done) {
                return Err(Ignored::Unexpected {
                    state: state.name(),
                    event: event_name,
                });
            }
            let mut left = pending.clone();
            left.remove(&done);
            if left.is_empty() {
                cancel(reason, detail.clone())
            } else {
                go(SagaState::Compensating {
                    pending: left,
                    reason: reason.clone(),
                    detail: detail.clone(),
                })
            }
        }
        _ => Err(Ignored::Unexpected {
            state: state.name(),
            event: event_name,
        }),
    }
}

#[cfg(test)]
mod tests {
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
    fn compensating(pending: &[Compensation], reason: &str, detail: &str) -> SagaState {
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
        use Compensation::*;
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
            let got =
                decide(given.as_ref(), &when).unwrap_or_else(|e| panic!("row {i}: ignored: {e}"));
            assert_eq!(got.next, then_state, "row {i}");
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
                    &[Compensation::ReleaseInventory],
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
                &[Compensation::ReleaseInventory, Compensation::VoidPayment],
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
}

//! The order saga's decisions as a pure function of (state, event): no I/O, no clock, so
//! every path is a row in a table-driven test.
//!
//! Happy path: awaiting inventory → awaiting payment → awaiting shipment → completed.
//!
//! A failure after stock was reserved first waits for its compensations (stock released,
//! payment voided), which the inventory and payment steps perform on seeing the failure;
//! the order is cancelled once all of them are confirmed.
//!
//! The saga can also *give an order up*: when a cancellation request is accepted or a step
//! misses its deadline. It then appends one marker event (`OrderCancellationAccepted` or
//! `SagaStepTimedOut`); every step undoes what it holds for the order when it reaches the
//! marker and refuses (with a decline-style reply) work it is asked for after it. Since all
//! events of an order are on one partition, the saga and every step see the marker at the
//! same place in the order's history, so the saga can tell exactly which replies and
//! compensations are still to come: a step request that precedes the marker will be answered
//! (and its success undone), one that follows it will be refused.

use std::collections::BTreeSet;
use std::fmt;

use events::EventBody;

/// Something the saga waits for before it cancels an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pending {
    /// The saga's own marker (`OrderCancellationAccepted` / `SagaStepTimedOut`) is not yet
    /// back from the log: events before it are answered by the steps as usual.
    Marker,
    /// The inventory step's answer to `OrderCreated`.
    InventoryReply,
    /// The payment step's answer to `InventoryReserved`.
    PaymentReply,
    /// The shipping step's answer to `PaymentAuthorized`.
    ShippingReply,
    /// `InventoryReleased`.
    ReleaseInventory,
    /// `PaymentVoided`.
    VoidPayment,
    /// `ShipmentCancelled`.
    CancelShipment,
}

impl Pending {
    pub fn as_str(self) -> &'static str {
        match self {
            Pending::Marker => "marker",
            Pending::InventoryReply => "inventory_reply",
            Pending::PaymentReply => "payment_reply",
            Pending::ShippingReply => "shipping_reply",
            Pending::ReleaseInventory => "release_inventory",
            Pending::VoidPayment => "void_payment",
            Pending::CancelShipment => "cancel_shipment",
        }
    }

    fn parse(text: &str) -> Option<Pending> {
        Some(match text {
            "marker" => Pending::Marker,
            "inventory_reply" => Pending::InventoryReply,
            "payment_reply" => Pending::PaymentReply,
            "shipping_reply" => Pending::ShippingReply,
            "release_inventory" => Pending::ReleaseInventory,
            "void_payment" => Pending::VoidPayment,
            "cancel_shipment" => Pending::CancelShipment,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaState {
    AwaitingInventory,
    AwaitingPayment,
    AwaitingShipment,
    Compensating {
        pending: BTreeSet<Pending>,
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
    Cancel {
        reason: String,
        detail: String,
    },
    /// Emit `OrderCancellationAccepted`, the marker of a customer cancellation.
    AcceptCancellation {
        reason: String,
        requested_by: String,
    },
    /// Emit `OrderCancellationRejected`.
    RejectCancellation {
        reason: String,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `None` only for a cancellation request of an order the saga never saw: it is refused
    /// and no state is kept.
    pub next: Option<SagaState>,
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

/// The cancellation reason codes the saga writes on `OrderCancelled` when it gives an order up.
pub const REASON_CANCELLATION_REQUESTED: &str = "cancellation_requested";
pub const REASON_STEP_TIMED_OUT: &str = "step_timed_out";

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

    /// The step a deadline applies to: the awaited step of the three forward states.
    pub fn step_with_deadline(&self) -> Option<&'static str> {
        match self {
            SagaState::AwaitingInventory
            | SagaState::AwaitingPayment
            | SagaState::AwaitingShipment => self.awaiting(),
            _ => None,
        }
    }

    pub fn pending(&self) -> Vec<Pending> {
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
                        Pending::parse(p)
                            .ok_or_else(|| format!("unknown pending item {p:?} in saga state"))
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
        next: Some(next),
        commands: Vec::new(),
    })
}

fn cancel(reason: &str, detail: String) -> Result<Transition, Ignored> {
    Ok(Transition {
        next: Some(SagaState::Cancelled {
            reason: reason.to_string(),
            detail: detail.clone(),
        }),
        commands: vec![Command::Cancel {
            reason: reason.to_string(),
            detail,
        }],
    })
}

fn compensate(pending: &[Pending], reason: &str, detail: String) -> Result<Transition, Ignored> {
    go(SagaState::Compensating {
        pending: pending.iter().copied().collect(),
        reason: reason.to_string(),
        detail,
    })
}

/// What giving the order up in `state` leaves to wait for, marker included; `None` once the
/// order is past the point where it can be given up (shipped, failing or ended).
pub fn give_up(state: &SagaState) -> Option<BTreeSet<Pending>> {
    use Pending::*;
    let pending: &[Pending] = match state {
        SagaState::AwaitingInventory => &[Marker, InventoryReply],
        SagaState::AwaitingPayment => &[Marker, ReleaseInventory, PaymentReply],
        SagaState::AwaitingShipment => &[Marker, ReleaseInventory, VoidPayment, ShippingReply],
        _ => return None,
    };
    Some(pending.iter().copied().collect())
}

/// The saga's state after a step missed its deadline in `state`, or `None` if `state` has no
/// deadline. The caller emits `SagaStepTimedOut` as the marker.
pub fn time_out(state: &SagaState, detail: String) -> Option<SagaState> {
    Some(SagaState::Compensating {
        pending: give_up(state)?,
        reason: REASON_STEP_TIMED_OUT.to_string(),
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
            EventBody::OrderCancellationRequested(_) => Ok(Transition {
                next: None,
                commands: vec![Command::RejectCancellation {
                    reason: "unknown_order".to_string(),
                    detail: "no order with this id was created".to_string(),
                }],
            }),
            _ => Err(Ignored::Unknown { event: event_name }),
        };
    };
    if let EventBody::OrderCreated(_) = event {
        return Err(Ignored::DuplicateOrder);
    }
    if let EventBody::OrderCancellationRequested(request) = event {
        return Ok(request_cancellation(state, request));
    }
    if state.is_finished() {
        return Err(Ignored::Finished {
            state: state.name(),
            event: event_name,
        });
    }
    let unexpected = || Ignored::Unexpected {
        state: state.name(),
        event: event_name,
    };
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
            &[Pending::ReleaseInventory],
            "payment_declined",
            format!("payment declined: {}", d.reason),
        ),
        (SagaState::AwaitingShipment, EventBody::ShipmentScheduled(_)) => Ok(Transition {
            next: Some(SagaState::Completed),
            commands: vec![Command::Complete],
        }),
        (SagaState::AwaitingShipment, EventBody::ShipmentFailed(f)) => compensate(
            &[Pending::ReleaseInventory, Pending::VoidPayment],
            "shipment_failed",
            format!("shipment failed: {}", f.reason),
        ),
        (
            SagaState::Compensating {
                pending,
                reason,
                detail,
            },
            _,
        ) => {
            let mut left = pending.clone();
            // Before the marker, a step's success asks the next step, which will answer;
            // after it, the next step refuses without being counted on.
            let marker_ahead = pending.contains(&Pending::Marker);
            let (done, then): (Pending, &[Pending]) = match event {
                EventBody::OrderCancellationAccepted(_) | EventBody::SagaStepTimedOut(_) => {
                    (Pending::Marker, &[])
                }
                EventBody::InventoryReserved(_) if marker_ahead => (
                    Pending::InventoryReply,
                    &[Pending::ReleaseInventory, Pending::PaymentReply],
                ),
                EventBody::InventoryReserved(_) => {
                    (Pending::InventoryReply, &[Pending::ReleaseInventory])
                }
                EventBody::InventoryRejected(_) => (Pending::InventoryReply, &[]),
                EventBody::PaymentAuthorized(_) if marker_ahead => (
                    Pending::PaymentReply,
                    &[Pending::VoidPayment, Pending::ShippingReply],
                ),
                EventBody::PaymentAuthorized(_) => (Pending::PaymentReply, &[Pending::VoidPayment]),
                // A decline or a failed shipment makes the earlier steps undo their work,
                // which the saga already waits for.
                EventBody::PaymentDeclined(_) => (Pending::PaymentReply, &[]),
                EventBody::ShipmentScheduled(_) => {
                    (Pending::ShippingReply, &[Pending::CancelShipment])
                }
                EventBody::ShipmentFailed(_) => (Pending::ShippingReply, &[]),
                EventBody::InventoryReleased(_) => (Pending::ReleaseInventory, &[]),
                EventBody::PaymentVoided(_) => (Pending::VoidPayment, &[]),
                EventBody::ShipmentCancelled(_) => (Pending::CancelShipment, &[]),
                _ => return Err(unexpected()),
            };
            if !left.remove(&done) {
                return Err(unexpected());
            }
            left.extend(then.iter().copied());
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
        _ => Err(unexpected()),
    }
}

/// Accept a cancellation request while the order has not shipped; refuse it otherwise.
fn request_cancellation(
    state: &SagaState,
    request: &events::OrderCancellationRequested,
) -> Transition {
    let reject = |reason: &str, detail: &str| Transition {
        next: Some(state.clone()),
        commands: vec![Command::RejectCancellation {
            reason: reason.to_string(),
            detail: detail.to_string(),
        }],
    };
    match (give_up(state), state) {
        (Some(pending), _) => Transition {
            next: Some(SagaState::Compensating {
                pending,
                reason: REASON_CANCELLATION_REQUESTED.to_string(),
                detail: format!(
                    "cancellation requested by {}: {}",
                    request.requested_by, request.reason
                ),
            }),
            commands: vec![Command::AcceptCancellation {
                reason: request.reason.clone(),
                requested_by: request.requested_by.clone(),
            }],
        },
        (None, SagaState::Completed) => reject(
            "already_shipped",
            "the order was completed: its shipment is scheduled",
        ),
        (None, SagaState::Cancelled { .. }) => {
            reject("already_cancelled", "the order is already cancelled")
        }
        (None, _) => reject("already_cancelling", "the order is already being cancelled"),
    }
}

#[cfg(test)]
mod tests;

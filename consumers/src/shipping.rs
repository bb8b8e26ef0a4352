//! The shipping step: remembers each order's address from `OrderCreated` and schedules a
//! shipment with the carrier once payment is authorized; calls a scheduled shipment off when
//! the saga gives the order up (see [`crate::give_up`]).
//!
//! The carrier is a trait; [`SimulatedCarrier`] fails by one documented rule: it does not
//! deliver to the countries listed in `shipping.unserved_countries` (default `AQ`), and
//! answers `destination_not_served`.

use std::sync::Arc;

use async_trait::async_trait;
use events::{Event, EventBody, EventType, ShipmentCancelled, ShipmentFailed, ShipmentScheduled};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{give_up, HandlerError, Step};

pub const NAME: &str = "shipping";
const SCHEMA: &str = "shipping";

#[derive(Debug, Clone)]
pub struct ShipmentRequest {
    pub shipment_id: Uuid,
    pub order_id: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierDecision {
    Scheduled { tracking_number: String },
    Refused { reason: String },
}

#[async_trait]
pub trait Carrier: Send + Sync {
    fn name(&self) -> &str;
    async fn schedule(&self, request: &ShipmentRequest) -> Result<CarrierDecision, HandlerError>;
    /// Call a scheduled shipment off before it leaves. Cancelling twice must be harmless.
    async fn cancel(&self, shipment_id: Uuid, tracking_number: &str) -> Result<(), HandlerError>;
}

pub struct SimulatedCarrier {
    name: String,
    unserved_countries: Vec<String>,
}

impl SimulatedCarrier {
    pub fn new(name: String, unserved_countries: Vec<String>) -> Self {
        SimulatedCarrier {
            name,
            unserved_countries,
        }
    }
}

#[async_trait]
impl Carrier for SimulatedCarrier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn schedule(&self, request: &ShipmentRequest) -> Result<CarrierDecision, HandlerError> {
        if self
            .unserved_countries
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&request.country))
        {
            return Ok(CarrierDecision::Refused {
                reason: "destination_not_served".into(),
            });
        }
        Ok(CarrierDecision::Scheduled {
            tracking_number: format!("TRK{}", &request.shipment_id.simple().to_string()[..12]),
        })
    }

    async fn cancel(&self, _shipment_id: Uuid, _tracking_number: &str) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub struct Shipping {
    carrier: Arc<dyn Carrier>,
}

impl Shipping {
    pub fn new(carrier: Arc<dyn Carrier>) -> Self {
        Shipping { carrier }
    }
}

#[async_trait]
impl Step for Shipping {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderCreated | EventType::PaymentAuthorized
        ) || give_up::is_marker(event_type)
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let order_id = &event.meta.order_id;
        match &event.body {
            EventBody::OrderCreated(order) => {
                let address = serde_json::to_value(&order.shipping_address).map_err(|e| {
                    HandlerError::Rule(format!("address of order {order_id} cannot be stored: {e}"))
                })?;
                sqlx::query(
                    "INSERT INTO shipping.orders (order_id, address, country) VALUES ($1, $2, $3)
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(address)
                .bind(&order.shipping_address.country)
                .execute(&mut *tx)
                .await?;
                Ok(Vec::new())
            }
            EventBody::PaymentAuthorized(_) => self.schedule(tx, event).await,
            body => match give_up::reason(body) {
                Some(reason) => {
                    give_up::record(tx, SCHEMA, event, reason).await?;
                    self.cancel(tx, event, reason).await
                }
                None => Ok(Vec::new()),
            },
        }
    }
}

impl Shipping {
    async fn schedule(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let order_id = &event.meta.order_id;
        let country: Option<String> =
            sqlx::query_scalar("SELECT country FROM shipping.orders WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(country) = country else {
            return Err(HandlerError::Rule(format!(
                "PaymentAuthorized for order {order_id}, whose OrderCreated shipping never saw"
            )));
        };
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM shipping.shipments WHERE order_id = $1)",
        )
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            return Err(HandlerError::Rule(format!(
                "order {order_id} already has a shipment; not scheduling again"
            )));
        }
        let shipment_id = events::reply_event_id(event.meta.event_id, "shipment-id");
        let carrier = self.carrier.name().to_string();
        if let Some(why) = give_up::abandoned(tx, SCHEMA, order_id).await? {
            // Given up before shipping was asked: never book the carrier.
            tracing::info!(%order_id, reason = %why, "order was given up; not scheduling");
            sqlx::query(
                "INSERT INTO shipping.shipments (order_id, shipment_id, carrier, status, failure_reason, country)
                 VALUES ($1, $2, $3, 'failed', $4, $5)",
            )
            .bind(order_id)
            .bind(shipment_id)
            .bind(&carrier)
            .bind(give_up::REFUSED)
            .bind(&country)
            .execute(&mut *tx)
            .await?;
            return Ok(vec![EventBody::ShipmentFailed(ShipmentFailed {
                carrier,
                reason: give_up::REFUSED.to_string(),
            })]);
        }
        let request = ShipmentRequest {
            shipment_id,
            order_id: order_id.clone(),
            country: country.clone(),
        };
        let decision = self.carrier.schedule(&request).await?;
        let (status, tracking, failure) = match &decision {
            CarrierDecision::Scheduled { tracking_number } => {
                ("scheduled", Some(tracking_number.clone()), None)
            }
            CarrierDecision::Refused { reason } => ("failed", None, Some(reason.clone())),
        };
        sqlx::query(
            "INSERT INTO shipping.shipments (order_id, shipment_id, carrier, status, tracking_number, failure_reason, country)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order_id)
        .bind(shipment_id)
        .bind(&carrier)
        .bind(status)
        .bind(&tracking)
        .bind(&failure)
        .bind(&country)
        .execute(&mut *tx)
        .await?;
        Ok(vec![match decision {
            CarrierDecision::Scheduled { tracking_number } => {
                EventBody::ShipmentScheduled(ShipmentScheduled {
                    shipment_id,
                    carrier,
                    tracking_number,
                })
            }
            CarrierDecision::Refused { reason } => {
                EventBody::ShipmentFailed(ShipmentFailed { carrier, reason })
            }
        }])
    }

    /// Compensation: call off a scheduled shipment. Cancelling twice, or an order with no
    /// scheduled shipment, emits nothing.
    async fn cancel(
        &self,
        tx: &mut PgConnection,
        event: &Event,
        reason: &str,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let order_id = &event.meta.order_id;
        let row: Option<(Uuid, String, String, Option<String>)> = sqlx::query_as(
            "SELECT shipment_id, carrier, status, tracking_number FROM shipping.shipments
             WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((shipment_id, carrier, status, tracking)) = row else {
            return Ok(Vec::new());
        };
        if status != "scheduled" {
            tracing::info!(%order_id, status, "no scheduled shipment to cancel");
            return Ok(Vec::new());
        }
        self.carrier
            .cancel(shipment_id, tracking.as_deref().unwrap_or_default())
            .await?;
        sqlx::query(
            "UPDATE shipping.shipments SET status = 'cancelled', failure_reason = $2 WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        Ok(vec![EventBody::ShipmentCancelled(ShipmentCancelled {
            shipment_id,
            carrier,
            reason: reason.to_string(),
        })])
    }
}

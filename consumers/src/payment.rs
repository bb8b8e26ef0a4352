//! The payment step: remembers each order's amount from `OrderCreated`, authorizes it with
//! the payment provider once its stock is reserved, and voids the authorization when shipping
//! fails or the saga gives the order up (see [`crate::give_up`]). `payment.payments` holds each order's payment; `payment.ledger` every movement.
//!
//! The provider is a trait; [`SimulatedProvider`] declines by two documented rules:
//! the order total is above `payment.decline_over_minor` (`amount_over_limit`), or the
//! customer is listed in `payment.blocked_customers` (`customer_blocked`).

use std::sync::Arc;

use async_trait::async_trait;
use events::{Event, EventBody, EventType, PaymentAuthorized, PaymentDeclined, PaymentVoided};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{give_up, HandlerError, Step};

pub const NAME: &str = "payment";
const SCHEMA: &str = "payment";

/// What the provider is asked to authorize. `idempotency_key` is stable across re-deliveries,
/// so a provider that honours it never charges twice.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub idempotency_key: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationDecision {
    Authorized { provider_reference: String },
    Declined { reason: String },
}

#[async_trait]
pub trait PaymentProvider: Send + Sync {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError>;
    async fn void(
        &self,
        provider_reference: &str,
        idempotency_key: Uuid,
    ) -> Result<(), HandlerError>;
}

/// A provider with deterministic, documented rules, for demos and tests.
pub struct SimulatedProvider {
    pool: PgPool,
    decline_over_minor: i64,
}

impl SimulatedProvider {
    pub fn new(pool: PgPool, decline_over_minor: i64) -> Self {
        SimulatedProvider {
            pool,
            decline_over_minor,
        }
    }
}

#[async_trait]
impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> Result<AuthorizationDecision, HandlerError> {
        if request.amount_minor > self.decline_over_minor {
            return Ok(AuthorizationDecision::Declined {
                reason: "amount_over_limit".into(),
            });
        }
        let blocked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM payment.blocked_customers WHERE customer_id = $1)",
        )
        .bind(&request.customer_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| HandlerError::Provider {
            provider: "simulated",
            message: e.to_string(),
            retryable: platform::db::is_retryable(&e),
        })?;
        if blocked {
            return Ok(AuthorizationDecision::Declined {
                reason: "customer_blocked".into(),
            });
        }
        Ok(AuthorizationDecision::Authorized {
            provider_reference: format!("sim-{}", request.idempotency_key.simple()),
        })
    }

    async fn void(
        &self,
        _provider_reference: &str,
        _idempotency_key: Uuid,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub struct Payment {
    provider: Arc<dyn PaymentProvider>,
}

impl Payment {
    pub fn new(provider: Arc<dyn PaymentProvider>) -> Self {
        Payment { provider }
    }
}

#[async_trait]
impl Step for Payment {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::OrderCreated | EventType::InventoryReserved | EventType::ShipmentFailed
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
                let inserted = sqlx::query(
                    "INSERT INTO payment.orders (order_id, customer_id, amount_minor, currency) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(&order.customer_id)
                .bind(order.total_minor())
                .bind(&order.currency)
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    tracing::warn!(%order_id, "duplicate OrderCreated; the first one stands");
                }
                Ok(Vec::new())
            }
            EventBody::InventoryReserved(_) => self.authorize(tx, event).await,
            EventBody::ShipmentFailed(_) => self.void(tx, event, "shipment_failed").await,
            body => match give_up::reason(body) {
                Some(reason) => {
                    give_up::record(tx, SCHEMA, event, reason).await?;
                    self.void(tx, event, reason).await
                }
                None => Ok(Vec::new()),
            },
        }
    }
}

impl Payment {
    async fn authorize(
        &self,
        tx: &mut PgConnection,
        event: &Event,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let order_id = &event.meta.order_id;
        let order: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT customer_id, amount_minor, currency FROM payment.orders WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((customer_id, amount_minor, currency)) = order else {
            return Err(HandlerError::Rule(format!(
                "InventoryReserved for order {order_id}, whose OrderCreated payment never saw"
            )));
        };
        let existing: Option<String> =
            sqlx::query_scalar("SELECT status FROM payment.payments WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(status) = existing {
            return Err(HandlerError::Rule(format!(
                "order {order_id} already has a payment ({status}); not charging again"
            )));
        }
        let payment_id = events::reply_event_id(event.meta.event_id, "payment-id");
        if let Some(why) = give_up::abandoned(tx, SCHEMA, order_id).await? {
            // Given up before payment was asked: never call the provider.
            tracing::info!(%order_id, reason = %why, "order was given up; not authorizing");
            sqlx::query(
                "INSERT INTO payment.payments (payment_id, order_id, customer_id, amount_minor, currency, status, decline_reason)
                 VALUES ($1, $2, $3, $4, $5, 'declined', $6)",
            )
            .bind(payment_id)
            .bind(order_id)
            .bind(&customer_id)
            .bind(amount_minor)
            .bind(&currency)
            .bind(give_up::REFUSED)
            .execute(&mut *tx)
            .await?;
            return Ok(vec![EventBody::PaymentDeclined(PaymentDeclined {
                customer_id,
                amount_minor,
                currency,
                reason: give_up::REFUSED.to_string(),
            })]);
        }
        let request = AuthorizationRequest {
            idempotency_key: payment_id,
            customer_id: customer_id.clone(),
            amount_minor,
            currency: currency.clone(),
        };
        let decision = self.provider.authorize(&request).await?;
        let (status, entry, reference, decline_reason) = match &decision {
            AuthorizationDecision::Authorized { provider_reference } => (
                "authorized",
                "authorization",
                Some(provider_reference.clone()),
                None,
            ),
            AuthorizationDecision::Declined { reason } => {
                ("declined", "decline", None, Some(reason.clone()))
            }
        };
        sqlx::query(
            "INSERT INTO payment.payments (payment_id, order_id, customer_id, amount_minor, currency, status, decline_reason, provider_reference)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(payment_id)
        .bind(order_id)
        .bind(&customer_id)
        .bind(amount_minor)
        .bind(&currency)
        .bind(status)
        .bind(&decline_reason)
        .bind(&reference)
        .execute(&mut *tx)
        .await?;
        ledger(
            tx,
            payment_id,
            order_id,
            entry,
            amount_minor,
            &currency,
            event.meta.event_id,
        )
        .await?;
        Ok(vec![match decision {
            AuthorizationDecision::Authorized { provider_reference } => {
                EventBody::PaymentAuthorized(PaymentAuthorized {
                    payment_id,
                    customer_id,
                    amount_minor,
                    currency,
                    provider_reference,
                })
            }
            AuthorizationDecision::Declined { reason } => {
                EventBody::PaymentDeclined(PaymentDeclined {
                    customer_id,
                    amount_minor,
                    currency,
                    reason,
                })
            }
        }])
    }

    /// Compensation: void an authorization. Voiding twice, or an order never authorized,
    /// emits nothing.
    async fn void(
        &self,
        tx: &mut PgConnection,
        event: &Event,
        reason: &str,
    ) -> Result<Vec<EventBody>, HandlerError> {
        let order_id = &event.meta.order_id;
        let row: Option<(Uuid, String, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT payment_id, status, amount_minor, currency, provider_reference FROM payment.payments
             WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((payment_id, status, amount_minor, currency, reference)) = row else {
            if give_up::is_marker(event.event_type()) {
                // Given up before payment was asked: nothing to void.
                return Ok(Vec::new());
            }
            return Err(HandlerError::Rule(format!(
                "order {order_id} has no payment to void"
            )));
        };
        if status != "authorized" {
            tracing::info!(%order_id, status, "nothing to void");
            return Ok(Vec::new());
        }
        self.provider
            .void(
                reference.as_deref().unwrap_or_default(),
                events::reply_event_id(event.meta.event_id, "payment-void"),
            )
            .await?;
        sqlx::query("UPDATE payment.payments SET status = 'voided', updated_at = now() WHERE payment_id = $1")
            .bind(payment_id)
            .execute(&mut *tx)
            .await?;
        ledger(
            tx,
            payment_id,
            order_id,
            "void",
            -amount_minor,
            &currency,
            event.meta.event_id,
        )
        .await?;
        Ok(vec![EventBody::PaymentVoided(PaymentVoided {
            payment_id,
            amount_minor,
            currency,
            reason: reason.to_string(),
        })])
    }
}

async fn ledger(
    tx: &mut PgConnection,
    payment_id: Uuid,
    order_id: &str,
    entry: &str,
    amount_minor: i64,
    currency: &str,
    caused_by: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment.ledger (payment_id, order_id, entry, amount_minor, currency, caused_by) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(payment_id)
    .bind(order_id)
    .bind(entry)
    .bind(amount_minor)
    .bind(currency)
    .bind(caused_by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

//! `Prefer: wait` without polling per request: one Postgres `LISTEN` connection per server on
//! the channel the projector announces changed orders on ([`projections::changes`]), fanned out
//! to the requests waiting on those orders. Each waiter also looks again every
//! `api.wait_poll_ms`, a bounded fallback for announcements missed while the connection was
//! being re-established (it re-wakes every waiter when it is back, too).
//!
//! Waiters are bounded (`api.wait_waiters_max`): past the bound a request is answered at once,
//! without `Preference-Applied`. Nothing here reads an order; [`crate::orders`] does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use projections::changes::{self, Changed};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The requests waiting for orders to change.
pub struct OrderWaits {
    by_order: Mutex<HashMap<String, Arc<Notify>>>,
    slots: Arc<Semaphore>,
}

/// One request's wait on one order: [`Waiter::notify`] is woken when the order may have
/// changed. Leaves the registry when dropped.
pub struct Waiter {
    waits: Arc<OrderWaits>,
    order_id: String,
    pub notify: Arc<Notify>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut by_order = self.waits.lock();
        // The registry and this waiter hold the last two references: nobody else waits.
        if by_order
            .get(&self.order_id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2)
        {
            by_order.remove(&self.order_id);
        }
    }
}

impl OrderWaits {
    /// A registry admitting at most `max` waiters at once.
    pub fn new(max: usize) -> Arc<OrderWaits> {
        Arc::new(OrderWaits {
            by_order: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // The map stays consistent whatever a panicking holder did: every change is one call.
        self.by_order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait on `order_id`, or `None` when `api.wait_waiters_max` requests wait already.
    pub fn wait_on(self: &Arc<Self>, order_id: &str) -> Option<Waiter> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let notify = self
            .lock()
            .entry(order_id.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Some(Waiter {
            waits: self.clone(),
            order_id: order_id.to_string(),
            notify,
            _slot: slot,
        })
    }

    /// Wake the waiters of what `changed` names.
    pub fn wake(&self, changed: &Changed) {
        let by_order = self.lock();
        match changed {
            Changed::All => by_order.values().for_each(|n| n.notify_waiters()),
            Changed::Orders(ids) => {
                for id in ids {
                    if let Some(n) = by_order.get(id) {
                        n.notify_waiters();
                    }
                }
            }
        }
    }

    /// How many requests wait now.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|n| Arc::strong_count(n) - 1).sum()
    }

    /// Until `shutdown`: listen on the projector's channel and wake the waiters it names. A
    /// lost connection is re-established (every waiter is woken then, to look again).
    pub fn spawn_listener(self: &Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let waits = self.clone();
        tokio::spawn(async move {
            let mut listener = loop {
                let connected = async {
                    let mut l = PgListener::connect_with(&pool).await?;
                    l.listen(changes::CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match connected.await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for order changes; Prefer: wait polls until it can");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            };
            tracing::debug!(channel = changes::CHANNEL, "listening for order changes");
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = listener.try_recv() => r,
                };
                match received {
                    Ok(Some(n)) => waits.wake(&changes::parse(n.payload())),
                    // The connection was lost; the next receive re-connects and listens again.
                    // What was announced meanwhile is unknown: every waiter looks again.
                    Ok(None) => {
                        tracing::warn!("the order-changes connection was lost; re-connecting");
                        waits.wake(&Changed::All);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for order changes failed; retrying");
                        waits.wake(&Changed::All);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};

    fn ready(f: Pin<&mut impl Future>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    #[tokio::test]
    async fn waiters_are_bounded_woken_by_order_and_leave_when_dropped() {
        let waits = OrderWaits::new(2);
        let a = waits.wait_on("o-1").expect("a slot");
        let b = waits.wait_on("o-2").expect("a slot");
        assert!(waits.wait_on("o-3").is_none(), "past the bound");
        assert_eq!(waits.waiting(), 2);

        {
            let woken = a.notify.notified();
            let other = b.notify.notified();
            tokio::pin!(woken, other);
            woken.as_mut().enable();
            other.as_mut().enable();
            waits.wake(&Changed::Orders(vec!["o-1".into(), "o-9".into()]));
            assert!(ready(woken.as_mut()), "o-1 woken");
            assert!(!ready(other.as_mut()), "o-2 not");
            waits.wake(&Changed::All);
            assert!(ready(other.as_mut()), "all woken");
        }

        drop(a);
        assert_eq!(waits.waiting(), 1);
        assert!(waits.lock().get("o-1").is_none(), "left the registry");
        let c = waits.wait_on("o-2").expect("a freed slot");
        drop(b);
        assert!(
            waits.lock().get("o-2").is_some(),
            "still waited on by another"
        );
        drop(c);
        assert_eq!(waits.waiting(), 0);
    }
}

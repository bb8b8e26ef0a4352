//! Token buckets per principal (per client address for unauthenticated requests), one keyed
//! [`governor`] limiter per role with that role's [`Limit`], and the values of the rate-limit
//! headers.
//!
//! Header naming: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` as in
//! draft-ietf-httpapi-ratelimit-headers up to -06 (later drafts fold them into `RateLimit` and
//! `RateLimit-Policy`; the three separate fields are what most clients and gateways read
//! today). `Limit` is the bucket's size (its burst), `Remaining` the requests that may be made
//! now, `Reset` the seconds until the bucket is full again. A refused request also carries
//! `Retry-After`: the seconds until one more request is allowed.
//!
//! Keyed state is bounded: [`Limiter::retain_recent`] (called on a timer) forgets keys whose
//! bucket is full again, which is indistinguishable from never having seen them.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::flags::{Limit, RateLimits};
use crate::principal::Role;

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Who a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Role(Role),
    /// No valid credentials: keyed by client address.
    Unauthenticated,
}

impl Class {
    fn role(self) -> Option<Role> {
        match self {
            Class::Role(r) => Some(r),
            Class::Unauthenticated => None,
        }
    }
}

/// The verdict on one request, with its header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// `Some(seconds)` when the request is refused (`429`, `Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.retry_after_secs.is_none()
    }

    /// `(name, value)` of the headers every answer carries.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ]
    }
}

struct Bucket {
    limit: Limit,
    limiter: Keyed,
}

fn bucket(limit: Limit) -> Bucket {
    let per_minute = NonZeroU32::new(limit.per_minute.max(1)).expect("max(1) is not zero");
    let burst = NonZeroU32::new(limit.burst.max(1)).expect("max(1) is not zero");
    let quota = Quota::per_minute(per_minute).allow_burst(burst);
    Bucket {
        limit,
        limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
    }
}

/// The buckets of every class, replaceable whole when the limits change.
pub struct Limiter {
    buckets: RwLock<HashMap<Class, Arc<Bucket>>>,
    clock: DefaultClock,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limiter {
    pub fn new(limits: &RateLimits) -> Limiter {
        let limiter = Limiter {
            buckets: RwLock::new(HashMap::new()),
            clock: DefaultClock::default(),
        };
        limiter.set_limits(limits);
        limiter
    }

    /// Put `limits` in force. A class whose limit did not change keeps its buckets (and what
    /// its callers used); a changed one starts with full buckets.
    pub fn set_limits(&self, limits: &RateLimits) {
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        let classes = Role::ALL
            .into_iter()
            .map(Class::Role)
            .chain([Class::Unauthenticated]);
        for class in classes {
            let limit = limits.of(class.role());
            if buckets.get(&class).map(|b| b.limit) != Some(limit) {
                buckets.insert(class, Arc::new(bucket(limit)));
            }
        }
    }

    /// Take one request from `key`'s bucket of `class`.
    pub fn check(&self, class: Class, key: &str) -> Decision {
        let bucket = self
            .buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&class)
            .cloned()
            .expect("set_limits fills every class");
        let limit = bucket.limit.burst.max(1);
        let interval = Duration::from_secs(60) / bucket.limit.per_minute.max(1);
        match bucket.limiter.check_key(&key.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                Decision {
                    limit,
                    remaining,
                    reset_secs: ceil_secs(interval * (limit - remaining)),
                    retry_after_secs: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    limit,
                    remaining: 0,
                    reset_secs: ceil_secs(interval * limit),
                    retry_after_secs: Some(ceil_secs(wait).max(1)),
                }
            }
        }
    }

    /// Forget the keys whose buckets are full again (call on a timer to bound memory).
    pub fn retain_recent(&self) {
        for bucket in self
            .buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }

    /// Keys currently remembered, over all classes.
    pub fn keys(&self) -> usize {
        self.buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|b| b.limiter.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(burst: u32) -> RateLimits {
        let slow = Limit {
            per_minute: 1,
            burst,
        };
        RateLimits {
            customer: slow,
            service: slow,
            operator: slow,
            analyst: slow,
            unauthenticated: slow,
        }
    }

    #[test]
    fn the_bucket_counts_down_then_refuses_with_retry_after() {
        let limiter = Limiter::new(&limits(3));
        let class = Class::Role(Role::Customer);
        let seen: Vec<(u32, bool)> = (0..4)
            .map(|_| {
                let d = limiter.check(class, "c-1");
                (d.remaining, d.allowed())
            })
            .collect();
        assert_eq!(seen, vec![(2, true), (1, true), (0, true), (0, false)]);
        let refused = limiter.check(class, "c-1");
        assert_eq!(refused.limit, 3);
        // One token per minute: the next one is up to a minute away, never zero.
        let retry = refused.retry_after_secs.unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(
            refused.headers().map(|(n, _)| n),
            ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
        );
        // Buckets are per key and per class.
        assert!(limiter.check(class, "c-2").allowed());
        assert!(limiter.check(Class::Role(Role::Service), "c-1").allowed());
        assert!(limiter.check(Class::Unauthenticated, "127.0.0.1").allowed());
    }

    #[test]
    fn new_limits_apply_to_changed_classes_only() {
        let limiter = Limiter::new(&limits(1));
        assert!(limiter.check(Class::Role(Role::Service), "s").allowed());
        assert!(limiter.check(Class::Role(Role::Analyst), "a").allowed());
        assert!(!limiter.check(Class::Role(Role::Service), "s").allowed());
        let mut raised = limits(1);
        raised.service = Limit {
            per_minute: 1,
            burst: 5,
        };
        limiter.set_limits(&raised);
        let d = limiter.check(Class::Role(Role::Service), "s");
        assert_eq!((d.limit, d.remaining, d.allowed()), (5, 4, true));
        assert!(
            !limiter.check(Class::Role(Role::Analyst), "a").allowed(),
            "unchanged classes keep their state"
        );
    }

    #[test]
    fn keyed_state_stays_bounded() {
        let limiter = Limiter::new(&RateLimits {
            unauthenticated: Limit {
                per_minute: 60_000,
                burst: 1,
            },
            ..limits(1)
        });
        for i in 0..1000 {
            limiter.check(
                Class::Unauthenticated,
                &format!("10.0.{}.{}", i / 256, i % 256),
            );
        }
        assert_eq!(limiter.keys(), 1000);
        // 1000 per second refills a one-request bucket within a millisecond.
        std::thread::sleep(Duration::from_millis(20));
        limiter.retain_recent();
        assert_eq!(limiter.keys(), 0);
    }
}

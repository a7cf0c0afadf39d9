//! The in-process limiter: two governor keyed GCRA limiters (per principal, per connector).
//! Idle keys are evicted on a timer (`retain_recent` + `shrink_to_fit`), so memory stays bounded
//! however many distinct principals pass through.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota as GovernorQuota, RateLimiter};

use super::{QuotaName, Verdict};
use crate::config::Quota;

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

fn governor_quota(quota: &Quota) -> GovernorQuota {
    // A rate so high that its interval rounds to zero means "one per nanosecond".
    let interval = quota.rate.emission_interval().max(Duration::from_nanos(1));
    GovernorQuota::with_period(interval)
        .unwrap_or_else(|| GovernorQuota::per_second(NonZeroU32::MIN))
        .allow_burst(quota.burst)
}

/// Per-principal and per-connector GCRA limiters in memory.
pub struct MemoryLimiter<C: Clock = DefaultClock> {
    principal: Keyed<C>,
    connector: Keyed<C>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for MemoryLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("principals", &self.principal.len())
            .field("connectors", &self.connector.len())
            .finish()
    }
}

impl MemoryLimiter<DefaultClock> {
    /// Limiters on the system's monotonic clock.
    pub fn new(per_principal: &Quota, per_connector: &Quota) -> Self {
        Self::with_clock(per_principal, per_connector, DefaultClock::default())
    }
}

impl<C: Clock + Clone> MemoryLimiter<C> {
    /// Limiters on `clock` (governor's `FakeRelativeClock` in tests).
    pub fn with_clock(per_principal: &Quota, per_connector: &Quota, clock: C) -> Self {
        let principal = RateLimiter::dashmap_with_clock(governor_quota(per_principal), clock.clone()).with_middleware();
        let connector = RateLimiter::dashmap_with_clock(governor_quota(per_connector), clock.clone()).with_middleware();
        Self { principal, connector, clock }
    }
}

impl<C: Clock> MemoryLimiter<C> {
    /// Decides one write: it must pass both quotas. The principal's quota is checked first; a
    /// write refused by its connector's quota has still spent one of the principal's.
    pub fn decide(&self, principal: &str, connector: &str) -> Verdict {
        let principal_state = match self.principal.check_key(&principal.to_owned()) {
            Ok(state) => state,
            Err(not_until) => {
                return Verdict::Limited {
                    quota: QuotaName::PerPrincipal,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                };
            }
        };
        match self.connector.check_key(&connector.to_owned()) {
            Ok(connector_state) => Verdict::Allowed {
                principal_remaining: principal_state.remaining_burst_capacity(),
                connector_remaining: connector_state.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                quota: QuotaName::PerConnector,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Drops the state of keys idle long enough to be back at full burst, and returns memory.
    pub fn evict_idle(&self) {
        for limiter in [&self.principal, &self.connector] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently tracked: (principals, connectors).
    pub fn tracked(&self) -> (usize, usize) {
        (self.principal.len(), self.connector.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rate;
    use governor::clock::FakeRelativeClock;

    fn quota(rate: &str, burst: u32) -> Quota {
        Quota { rate: parse_rate(rate).unwrap(), burst: NonZeroU32::new(burst).unwrap() }
    }

    fn allowed(v: &Verdict) -> bool {
        matches!(v, Verdict::Allowed { .. })
    }

    #[test]
    fn a_burst_then_one_per_emission_interval_no_double_burst_at_a_window_edge() {
        let clock = FakeRelativeClock::default();
        let limiter = MemoryLimiter::with_clock(&quota("60/min", 3), &quota("1000/s", 1000), clock.clone());
        for _ in 0..3 {
            assert!(allowed(&limiter.decide("p", "c")));
        }
        let Verdict::Limited { quota, retry_after } = limiter.decide("p", "c") else { panic!("4th allowed") };
        assert_eq!(quota, QuotaName::PerPrincipal);
        assert_eq!(retry_after, Duration::from_secs(1));
        // A fixed window would refill all 3 at the minute mark; GCRA refills one per second.
        clock.advance(Duration::from_secs(1));
        assert!(allowed(&limiter.decide("p", "c")));
        assert!(!allowed(&limiter.decide("p", "c")));
        clock.advance(Duration::from_secs(60));
        let passed = (0..10).filter(|_| allowed(&limiter.decide("p", "c"))).count();
        assert_eq!(passed, 3, "after idling, only the burst, never more");
    }

    #[test]
    fn both_quotas_must_pass_and_keys_are_separate() {
        let clock = FakeRelativeClock::default();
        let limiter = MemoryLimiter::with_clock(&quota("10/s", 10), &quota("1/min", 2), clock);
        assert!(allowed(&limiter.decide("alice", "c1")));
        assert!(allowed(&limiter.decide("bob", "c1")));
        let Verdict::Limited { quota, retry_after } = limiter.decide("carol", "c1") else {
            panic!("connector quota ignored")
        };
        assert_eq!(quota, QuotaName::PerConnector);
        assert!(retry_after > Duration::from_secs(20));
        assert!(allowed(&limiter.decide("carol", "c2")));
    }

    #[test]
    fn idle_keys_are_evicted() {
        let clock = FakeRelativeClock::default();
        let limiter = MemoryLimiter::with_clock(&quota("10/s", 2), &quota("10/s", 2), clock.clone());
        for i in 0..1000 {
            limiter.decide(&format!("p{i}"), "c");
        }
        assert_eq!(limiter.tracked().0, 1000);
        clock.advance(Duration::from_secs(10));
        limiter.evict_idle();
        assert_eq!(limiter.tracked(), (0, 0));
    }
}

//! Circuit breaker per upstream: after a run of failed fetches, stop calling the upstream for a
//! cool-down; then let one probe through (half-open); a good probe closes it, a bad one re-opens.
//!
//! A "failure" is a fetch that ended without a usable answer after its retries: connect error,
//! timeout, 5xx, 429. Any other answer (200, 304, 404, even 401) proves the upstream is up.
//! While open, requests are served stale where a copy exists, else fail fast with a 503.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::routes::Api;

/// Breaker state, as `/health` and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    /// Times opened since it was last closed (the cool-down doubles with each).
    opened: u32,
    /// Unix ms until which the breaker stays open.
    open_until: Option<u64>,
    probing: bool,
}

/// One breaker. `threshold` 0 disables it.
///
/// The cool-down is `cooldown` each time ([`Breaker::new`]), or with [`Breaker::with_backoff`]
/// `first` on the first opening, doubling on each re-opening (a failed probe) up to `cooldown`:
/// a dependency back after a short blip (a Redis failover) is probed, and used again, within a
/// fraction of the cool-down, while a long outage is still probed once per `cooldown`.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    first: Duration,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// Permission to call the upstream; report the outcome with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: call away.
    Normal,
    /// Half-open: this call is the probe.
    Probe,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self::with_backoff(threshold, cooldown, cooldown)
    }

    /// A breaker whose cool-down starts at `first` and doubles up to `cooldown` while its probes
    /// fail.
    pub fn with_backoff(threshold: u32, first: Duration, cooldown: Duration) -> Self {
        let inner = Inner { failures: 0, opened: 0, open_until: None, probing: false };
        Self { threshold, first: first.min(cooldown), cooldown, inner: Mutex::new(inner) }
    }

    /// Opens it from `now` for the cool-down its openings so far call for.
    fn open(&self, s: &mut Inner, now: u64) {
        let doubled = self.first.saturating_mul(1u32 << s.opened.min(20));
        s.opened = s.opened.saturating_add(1);
        s.open_until = Some(now.saturating_add(doubled.min(self.cooldown).as_millis() as u64));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May we call the upstream now? `Err(wait)` while open (or while another probe runs).
    pub fn try_acquire(&self, now: u64) -> Result<Permit, Duration> {
        if self.threshold == 0 {
            return Ok(Permit::Normal);
        }
        let mut s = self.lock();
        match s.open_until {
            None => Ok(Permit::Normal),
            Some(until) if now < until => Err(Duration::from_millis(until - now)),
            Some(_) if s.probing => Err(Duration::from_secs(1)),
            Some(_) => {
                s.probing = true;
                Ok(Permit::Probe)
            }
        }
    }

    /// Records a fetch's outcome. Returns the new state when it changed.
    pub fn record(&self, permit: Permit, ok: bool, now: u64) -> Option<BreakerState> {
        if self.threshold == 0 {
            return None;
        }
        let mut s = self.lock();
        let before = Self::state_of(&s, now);
        if permit == Permit::Probe {
            s.probing = false;
        }
        if ok {
            s.failures = 0;
            s.opened = 0;
            s.open_until = None;
        } else {
            s.failures = s.failures.saturating_add(1);
            // A failed probe re-opens it; a failure while it is open already (a call let
            // through before it opened) does not push the probe further out.
            let open_now = matches!(s.open_until, Some(until) if now < until);
            if permit == Permit::Probe || (s.failures >= self.threshold && !open_now) {
                self.open(&mut s, now);
            }
        }
        let after = Self::state_of(&s, now);
        (before != after).then_some(after)
    }

    fn state_of(s: &Inner, now: u64) -> BreakerState {
        match s.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    pub fn state(&self, now: u64) -> BreakerState {
        if self.threshold == 0 {
            return BreakerState::Closed;
        }
        Self::state_of(&self.lock(), now)
    }

    /// Opens the breaker now, whatever the count (a dependency that hangs: one timeout is
    /// enough evidence, and every further call would cost a full deadline).
    pub fn trip(&self, now: u64) -> Option<BreakerState> {
        if self.threshold == 0 {
            return None;
        }
        let mut s = self.lock();
        let before = Self::state_of(&s, now);
        s.failures = s.failures.max(self.threshold);
        if !matches!(s.open_until, Some(until) if now < until) {
            self.open(&mut s, now);
        }
        s.probing = false;
        let after = Self::state_of(&s, now);
        (before != after).then_some(after)
    }

    /// Gives a probe permit back unused (its fetch was dropped before reporting): the next
    /// request may probe at once instead of the breaker staying half-open with no probe.
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Probe {
            self.lock().probing = false;
        }
    }

    /// Failed fetches in a row so far.
    pub fn failures(&self) -> u32 {
        self.lock().failures
    }
}

/// One breaker per upstream API.
pub struct Breakers {
    /// [`Api::index`] order.
    by_api: [Breaker; 4],
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { by_api: Api::ALL.map(|_| Breaker::new(threshold, cooldown)) }
    }

    pub fn get(&self, api: Api) -> &Breaker {
        &self.by_api[api.index()]
    }

    /// Asks `api`'s breaker for a permit, as a guard that gives a probe back if dropped
    /// unreported (a fetch task cancelled mid-way).
    pub fn acquire(self: &Arc<Self>, api: Api, now: u64) -> Result<PermitGuard, Duration> {
        let permit = self.get(api).try_acquire(now)?;
        Ok(PermitGuard { breakers: self.clone(), api, permit: Some(permit) })
    }
}

/// A permit held by a fetch. Report its outcome with [`PermitGuard::record`]; dropping it
/// unreported releases it.
pub struct PermitGuard {
    breakers: Arc<Breakers>,
    api: Api,
    permit: Option<Permit>,
}

impl PermitGuard {
    pub fn is_probe(&self) -> bool {
        self.permit == Some(Permit::Probe)
    }

    /// Records the fetch's outcome; the new state when it changed.
    pub fn record(mut self, ok: bool, now: u64) -> Option<BreakerState> {
        let permit = self.permit.take()?;
        self.breakers.get(self.api).record(permit, ok, now)
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breakers.get(self.api).release(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = 1_000_000u64;
        for i in 0..2 {
            assert_eq!(b.try_acquire(t0), Ok(Permit::Normal), "call {i}");
            assert_eq!(b.record(Permit::Normal, false, t0), None);
        }
        assert_eq!(b.record(Permit::Normal, false, t0), Some(BreakerState::Open));
        assert_eq!(b.try_acquire(t0 + 4000), Err(Duration::from_secs(6)));
        let t1 = t0 + 10_000;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(t1), Ok(Permit::Probe));
        assert!(b.try_acquire(t1).is_err(), "one probe at a time");
        // A failed probe re-opens for a full cool-down.
        assert_eq!(b.record(Permit::Probe, false, t1), Some(BreakerState::Open));
        assert!(b.try_acquire(t1 + 9000).is_err());
        let t2 = t1 + 10_000;
        assert_eq!(b.try_acquire(t2), Ok(Permit::Probe));
        assert_eq!(b.record(Permit::Probe, true, t2), Some(BreakerState::Closed));
        assert_eq!(b.try_acquire(t2), Ok(Permit::Normal));
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn with_backoff_the_cool_down_doubles_while_probes_fail_and_starts_over_once_closed() {
        let b = Breaker::with_backoff(1, Duration::from_millis(250), Duration::from_secs(5));
        let mut t = 1_000_000u64;
        assert_eq!(b.record(Permit::Normal, false, t), Some(BreakerState::Open));
        let mut waits = Vec::new();
        for _ in 0..7 {
            let Err(wait) = b.try_acquire(t) else { panic!("open") };
            waits.push(wait.as_millis());
            t += wait.as_millis() as u64;
            assert_eq!(b.try_acquire(t), Ok(Permit::Probe));
            assert_eq!(b.record(Permit::Probe, false, t), Some(BreakerState::Open));
        }
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        t += 5000;
        assert_eq!(b.try_acquire(t), Ok(Permit::Probe));
        assert_eq!(b.record(Permit::Probe, true, t), Some(BreakerState::Closed));
        assert_eq!(b.record(Permit::Normal, false, t), Some(BreakerState::Open));
        assert_eq!(b.try_acquire(t), Err(Duration::from_millis(250)), "closed in between: short again");
        // Calls let through before it opened fail later: the probe is not pushed out.
        assert_eq!(b.record(Permit::Normal, false, t + 100), None);
        assert_eq!(b.trip(t + 100), None);
        assert_eq!(b.try_acquire(t + 250), Ok(Permit::Probe));
    }

    #[test]
    fn a_probe_dropped_unreported_is_given_back() {
        let b = Arc::new(Breakers::new(1, Duration::from_secs(10)));
        let g = b.acquire(Api::Raster, 0).unwrap();
        assert_eq!(g.record(false, 0), Some(BreakerState::Open));
        let probe = b.acquire(Api::Raster, 10_000).unwrap();
        assert!(probe.is_probe());
        assert!(b.acquire(Api::Raster, 10_000).is_err(), "one probe at a time");
        drop(probe); // the fetch task was cancelled
        let again = b.acquire(Api::Raster, 10_001).expect("the probe was given back");
        assert!(again.is_probe());
        assert_eq!(again.record(true, 10_002), Some(BreakerState::Closed));
        assert!(!b.acquire(Api::Vector, 10_002).unwrap().is_probe());
    }

    #[test]
    fn a_success_resets_the_run_and_zero_disables() {
        let b = Breaker::new(2, Duration::from_secs(1));
        let t = 5u64;
        b.record(Permit::Normal, false, t);
        b.record(Permit::Normal, true, t);
        b.record(Permit::Normal, false, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        let off = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..10 {
            off.record(Permit::Normal, false, t);
        }
        assert_eq!(off.try_acquire(t), Ok(Permit::Normal));
    }
}

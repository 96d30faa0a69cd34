//! Circuit breaker per upstream: after a run of failed fetches, stop calling the upstream for a
//! cool-down; then let one probe through (half-open); a good probe closes it, a bad one re-opens.
//!
//! A "failure" is a fetch that ended without a usable answer after its retries: connect error,
//! timeout, 5xx, 429. Any other answer (200, 304, 404, even 401) proves the upstream is up.
//! While open, requests are served stale where a copy exists, else fail fast with a 503.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    open_until: Option<Instant>,
    probing: bool,
}

/// One breaker. `threshold` 0 disables it.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
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
        Self { threshold, cooldown, inner: Mutex::new(Inner { failures: 0, open_until: None, probing: false }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May we call the upstream now? `Err(wait)` while open (or while another probe runs).
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Duration> {
        if self.threshold == 0 {
            return Ok(Permit::Normal);
        }
        let mut s = self.lock();
        match s.open_until {
            None => Ok(Permit::Normal),
            Some(until) if now < until => Err(until - now),
            Some(_) if s.probing => Err(Duration::from_secs(1)),
            Some(_) => {
                s.probing = true;
                Ok(Permit::Probe)
            }
        }
    }

    /// Records a fetch's outcome. Returns the new state when it changed.
    pub fn record(&self, permit: Permit, ok: bool, now: Instant) -> Option<BreakerState> {
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
            s.open_until = None;
        } else {
            s.failures = s.failures.saturating_add(1);
            if permit == Permit::Probe || s.failures >= self.threshold {
                s.open_until = Some(now + self.cooldown);
            }
        }
        let after = Self::state_of(&s, now);
        (before != after).then_some(after)
    }

    fn state_of(s: &Inner, now: Instant) -> BreakerState {
        match s.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        if self.threshold == 0 {
            return BreakerState::Closed;
        }
        Self::state_of(&self.lock(), now)
    }

    /// Failed fetches in a row so far.
    pub fn failures(&self) -> u32 {
        self.lock().failures
    }
}

/// One breaker per upstream API.
pub struct Breakers {
    pub raster: Breaker,
    pub vector: Breaker,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { raster: Breaker::new(threshold, cooldown), vector: Breaker::new(threshold, cooldown) }
    }

    pub fn get(&self, api: crate::routes::Api) -> &Breaker {
        match api {
            crate::routes::Api::Raster => &self.raster,
            crate::routes::Api::Vector => &self.vector,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..2 {
            assert_eq!(b.try_acquire(t0), Ok(Permit::Normal), "call {i}");
            assert_eq!(b.record(Permit::Normal, false, t0), None);
        }
        assert_eq!(b.record(Permit::Normal, false, t0), Some(BreakerState::Open));
        assert_eq!(b.try_acquire(t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(t1), Ok(Permit::Probe));
        assert!(b.try_acquire(t1).is_err(), "one probe at a time");
        // A failed probe re-opens for a full cool-down.
        assert_eq!(b.record(Permit::Probe, false, t1), Some(BreakerState::Open));
        assert!(b.try_acquire(t1 + Duration::from_secs(9)).is_err());
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.try_acquire(t2), Ok(Permit::Probe));
        assert_eq!(b.record(Permit::Probe, true, t2), Some(BreakerState::Closed));
        assert_eq!(b.try_acquire(t2), Ok(Permit::Normal));
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn a_success_resets_the_run_and_zero_disables() {
        let b = Breaker::new(2, Duration::from_secs(1));
        let t = Instant::now();
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

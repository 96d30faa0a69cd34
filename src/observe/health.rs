//! What the service knows about its own health: readiness, what was last seen of each upstream
//! (passive: from real traffic, so checking health never costs a tile), and the last upstream
//! authentication failure. `/health` (in [`crate::http::admin::health`]) reports it with the cache tiers'
//! problems and the circuit breakers.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use crate::base::clock::SharedClock;
use crate::domain::routes::Api;

/// How long a 401/403 from the upstream keeps `/health` degraded after the last one.
pub const AUTH_FAILURE_WINDOW_MS: u64 = 10 * 60 * 1000;

#[derive(Default)]
struct Observed {
    last_ok_ms: AtomicU64,
    last_error_ms: AtomicU64,
    last_error: Mutex<Option<&'static str>>,
}

/// Readiness and upstream observations, shared by all workers.
pub struct Health {
    ready: AtomicBool,
    started: Instant,
    clock: SharedClock,
    /// [`Api::index`] order.
    observed: [Observed; 4],
    auth_failure_ms: AtomicU64,
    auth_failure_status: AtomicU16,
}

impl Health {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            ready: AtomicBool::new(false),
            started: Instant::now(),
            clock,
            observed: Default::default(),
            auth_failure_ms: AtomicU64::new(0),
            auth_failure_status: AtomicU16::new(0),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn observed(&self, api: Api) -> &Observed {
        &self.observed[api.index()]
    }

    pub fn upstream_ok(&self, api: Api) {
        self.observed(api).last_ok_ms.store(self.clock.now_ms(), Ordering::Relaxed);
    }

    pub fn upstream_failed(&self, api: Api, what: &'static str) {
        let o = self.observed(api);
        o.last_error_ms.store(self.clock.now_ms(), Ordering::Relaxed);
        if let Ok(mut e) = o.last_error.lock() {
            *e = Some(what);
        }
    }

    pub fn auth_failed(&self, status: u16) {
        self.auth_failure_ms.store(self.clock.now_ms(), Ordering::Relaxed);
        self.auth_failure_status.store(status, Ordering::Relaxed);
    }

    /// The last 401/403 if it is recent: (unix ms, status).
    pub fn recent_auth_failure(&self) -> Option<(u64, u16)> {
        let at = self.auth_failure_ms.load(Ordering::Relaxed);
        (at > 0 && self.clock.now_ms().saturating_sub(at) < AUTH_FAILURE_WINDOW_MS)
            .then(|| (at, self.auth_failure_status.load(Ordering::Relaxed)))
    }

    /// JSON for one upstream, and whether its last call failed.
    pub fn upstream_json(&self, api: Api, base: &str) -> (serde_json::Value, bool) {
        let o = self.observed(api);
        let ok = o.last_ok_ms.load(Ordering::Relaxed);
        let err = o.last_error_ms.load(Ordering::Relaxed);
        let reachable = match (ok, err) {
            (0, 0) => None,
            (ok, err) => Some(ok >= err),
        };
        let last_error = o.last_error.lock().ok().and_then(|e| *e);
        let ms = |t: u64| (t > 0).then_some(t);
        (
            json!({
                "base_url": base,
                "reachable": reachable,
                "last_success_unix_ms": ms(ok),
                "last_error_unix_ms": ms(err),
                "last_error": last_error,
            }),
            reachable == Some(false),
        )
    }
}

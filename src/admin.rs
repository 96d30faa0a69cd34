//! Operational endpoints and the state behind them: `/live`, `/ready`, `/health`.
//!
//! * `/live`: 200 while the process serves HTTP at all.
//! * `/ready`: 200 once the cache is open and the server bound; 503 while starting and draining.
//! * `/health`: JSON with the cache tiers, what we last saw of each upstream (passive: from real
//!   traffic, so checking health never costs a tile), version and uptime. `status` is `degraded`
//!   when the upstream rejected our key recently or the last upstream call failed.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::proxy::{now_ms, AppState};
use crate::routes::Api;

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
    raster: Observed,
    vector: Observed,
    auth_failure_ms: AtomicU64,
    auth_failure_status: AtomicU16,
    cache_problem: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            started: Instant::now(),
            raster: Observed::default(),
            vector: Observed::default(),
            auth_failure_ms: AtomicU64::new(0),
            auth_failure_status: AtomicU16::new(0),
            cache_problem: None,
        }
    }
}

impl Health {
    /// Health with a standing cache problem (e.g. the disk tier could not be opened).
    pub fn with_cache_problem(problem: Option<String>) -> Self {
        Self { cache_problem: problem, ..Self::default() }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn observed(&self, api: Api) -> &Observed {
        match api {
            Api::Raster => &self.raster,
            Api::Vector => &self.vector,
        }
    }

    pub fn upstream_ok(&self, api: Api) {
        self.observed(api).last_ok_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn upstream_failed(&self, api: Api, what: &'static str) {
        let o = self.observed(api);
        o.last_error_ms.store(now_ms(), Ordering::Relaxed);
        if let Ok(mut e) = o.last_error.lock() {
            *e = Some(what);
        }
    }

    pub fn auth_failed(&self, status: u16) {
        self.auth_failure_ms.store(now_ms(), Ordering::Relaxed);
        self.auth_failure_status.store(status, Ordering::Relaxed);
    }

    fn upstream_json(&self, api: Api, base: &str) -> (serde_json::Value, bool) {
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

/// `GET /live`.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

/// `GET /ready`.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.health.is_ready() {
        HttpResponse::Ok().json(json!({"ready": true}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"ready": false}))
    }
}

/// `GET /health`.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let h = &state.health;
    let (raster, raster_down) = h.upstream_json(Api::Raster, state.upstream.base(Api::Raster));
    let (vector, vector_down) = h.upstream_json(Api::Vector, state.upstream.base(Api::Vector));
    let auth_ms = h.auth_failure_ms.load(Ordering::Relaxed);
    let auth_recent = auth_ms > 0 && now_ms().saturating_sub(auth_ms) < AUTH_FAILURE_WINDOW_MS;
    let mut problems = Vec::new();
    if auth_recent {
        problems.push(format!(
            "upstream answered {} to our key (HERE_API_KEY invalid or expired?)",
            h.auth_failure_status.load(Ordering::Relaxed)
        ));
    }
    if raster_down {
        problems.push("raster upstream: last call failed".to_string());
    }
    if vector_down {
        problems.push("vector upstream: last call failed".to_string());
    }
    if let Some(p) = &h.cache_problem {
        problems.push(format!("disk tier disabled: {p}"));
    }
    let now = std::time::Instant::now();
    let mut breakers = serde_json::Map::new();
    for api in [Api::Raster, Api::Vector] {
        let b = state.breakers.get(api);
        let st = b.state(now);
        if st != crate::breaker::BreakerState::Closed {
            problems.push(format!("{} upstream: circuit breaker {}", api.as_str(), st.as_str()));
        }
        breakers.insert(api.as_str().into(), json!({"state": st.as_str(), "consecutive_failures": b.failures()}));
    }
    let status = if !h.is_ready() {
        "starting_or_draining"
    } else if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(json!({
        "status": status,
        "problems": problems,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": h.started.elapsed().as_secs(),
        "ready": h.is_ready(),
        "cache": state.cache.status(),
        "in_flight_fetches": state.flights.len(),
        "upstream": {"raster": raster, "vector": vector},
        "circuit_breakers": breakers,
        "upstream_auth_failure_unix_ms": (auth_ms > 0).then_some(auth_ms),
    }))
}

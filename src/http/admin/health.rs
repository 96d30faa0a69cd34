//! Operational endpoints: `/live`, `/ready`, `/health`.
//!
//! * `/live`: 200 while the process serves HTTP at all.
//! * `/ready`: 200 once the cache is open and the server bound; 503 while starting and draining.
//! * `/health`: JSON with the cache tiers, what we last saw of each upstream, the circuit
//!   breakers, version and uptime. `status` is `degraded` when the upstream rejected our key
//!   recently, the last upstream call failed, a breaker is not closed, or a cache tier has a
//!   problem (e.g. the disk tier could not be opened or reserved).

use actix_web::HttpResponse;
use serde_json::json;

use crate::domain::breaker::BreakerState;
use crate::domain::routes::Api;
use crate::http::state::State;

/// `GET /live`.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

/// `GET /ready`.
pub async fn ready(state: State) -> HttpResponse {
    let state = state.get_ref();
    if state.health.is_ready() {
        HttpResponse::Ok().json(json!({"ready": true}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"ready": false}))
    }
}

/// `GET /health`.
pub async fn health(state: State) -> HttpResponse {
    let state = state.get_ref();
    let h = &state.health;
    let auth = h.recent_auth_failure();
    let mut problems = Vec::new();
    if let Some((_, status)) = auth {
        problems.push(format!("upstream answered {status} to our key (HERE_API_KEY invalid or expired?)"));
    }
    let mut upstream = serde_json::Map::new();
    for api in Api::ALL {
        let (json, down) = h.upstream_json(api, state.upstream.base(api));
        if down {
            problems.push(format!("{} upstream: last call failed", api.as_str().replace('_', " ")));
        }
        upstream.insert(api.as_str().into(), json);
    }
    problems.extend(state.cache.problems());
    let now = state.clock.now_ms();
    let mut breakers = serde_json::Map::new();
    for api in Api::ALL {
        let b = state.breakers.get(api);
        let st = b.state(now);
        if st != BreakerState::Closed {
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
        "uptime_seconds": h.uptime_secs(),
        "ready": h.is_ready(),
        "cache": state.cache.status(),
        "in_flight_fetches": state.flights.len(),
        "upstream": upstream,
        "circuit_breakers": breakers,
        "upstream_auth_failure_unix_ms": auth.map(|(at, _)| at),
        "config": config_json(&state.loaded),
    }))
}

/// The loaded configuration: its hash, when it was loaded, and what waits for a restart.
fn config_json(loaded: &crate::http::state::Loaded) -> serde_json::Value {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(loaded.at_ms);
    json!({
        "hash": loaded.hash,
        "loaded_unix_ms": loaded.at_ms,
        "loaded_at": httpdate::fmt_http_date(at),
        "needs_restart": loaded.needs_restart,
    })
}

//! The tile request path: parse -> key -> cache -> decide -> answer from cache, or join/lead the
//! one upstream fetch for the key and stream its body.
//!
//! The fetch itself runs in its own task on the leader's worker ([`run_fetch`]), so a client
//! that disconnects does not waste a tile we already pay for: the body is still stored.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::admin::Health;
use crate::breaker::{Breakers, Permit};
use crate::cache::{Entry, TileCache};
use crate::config::{Policy, Settings};
use crate::error::{ProxyError, UpstreamFailure};
use crate::flight::{End, FlightHead, FlightWriter, Flights, Join};
use crate::freshness::{self, Decision};
use crate::key::{stable_hash, CacheKey};
use crate::metrics::Metrics;
use crate::routes::{self, ParseOptions, TileRequest};
use crate::telemetry;
use crate::upstream::{self, UpstreamConfig};

/// Shared by every worker.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub cache: Arc<TileCache>,
    pub flights: Arc<Flights>,
    pub metrics: Arc<Metrics>,
    pub upstream: Arc<UpstreamConfig>,
    pub health: Arc<Health>,
    pub breakers: Arc<Breakers>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// GET/HEAD on every tile route.
pub async fn tile(req: HttpRequest, state: web::Data<AppState>, client: web::Data<awc::Client>) -> HttpResponse {
    let opts = ParseOptions { reject_unknown_params: state.settings.reject_unknown_params };
    let parsed = routes::parse(req.path(), req.query_string(), opts);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return match parsed {
            Ok(None) => ProxyError::NotFound.response(),
            _ => ProxyError::MethodNotAllowed.response(),
        };
    }
    let t = match parsed {
        Ok(Some(t)) => t,
        Ok(None) => return ProxyError::NotFound.response(),
        Err(e) => {
            telemetry::note(&req, |a| a.cache = "invalid");
            state.metrics.requests.with_label_values(&["_invalid", "invalid"]).inc();
            return ProxyError::BadRequest(e).response();
        }
    };
    let key = CacheKey::of(&t);
    let index: &str = state.metrics.index_label(key.index());
    telemetry::note(&req, |a| {
        a.index = index.to_string();
        a.tile = format!("{}/{}/{}", t.api.as_str(), t.resource, t.zxy());
    });
    let policy = state.settings.policy(&t.index);
    let now = now_ms();

    // `expired`: an old copy, used to revalidate (If-None-Match) and, if `usable`, to stand in
    // for a failing upstream.
    let mut expired: Option<(Entry, bool)> = None;
    if let Some((entry, source)) = state.cache.get(&key).await {
        match freshness::decide(&entry, policy, now) {
            Decision::Fresh => {
                let label = if entry.status == 200 { "hit" } else { "negative_hit" };
                state.metrics.hits_by_tier.with_label_values(&[index, source.as_str()]).inc();
                return answer_entry(&req, &state, index, &entry, policy, now, label, None);
            }
            Decision::StaleWhileRevalidate => {
                if let Join::Leader(writer, _reader) = state.flights.join(&key) {
                    spawn_fetch(writer, &state, &client, t, Some(entry.clone()), index.to_string(), policy.clone());
                }
                return answer_entry(&req, &state, index, &entry, policy, now, "stale", Some("revalidating"));
            }
            Decision::Fetch { fallback: usable } => {
                tracing::debug!(source = source.as_str(), usable, "expired entry found");
                expired = Some((entry, usable));
            }
        }
    }

    let (mut reader, label) = match state.flights.join(&key) {
        Join::Leader(writer, reader) => {
            let revalidate = expired.as_ref().map(|(e, _)| e.clone());
            spawn_fetch(writer, &state, &client, t, revalidate, index.to_string(), policy.clone());
            (reader, "miss")
        }
        Join::Follower(reader) => (reader, "coalesced"),
    };
    let s = &state.settings.upstream;
    let bound = s.head_timeout * s.retry_attempts as u32 + s.retry_total + Duration::from_secs(1);
    let head = match tokio::time::timeout(bound, reader.head()).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamFailure::Timeout),
    };
    match head {
        Ok(head) => {
            telemetry::note(&req, |a| a.cache = label);
            state.metrics.requests.with_label_values(&[index, label]).inc();
            if head.status == 200 && not_modified(&req, head.etag.as_ref()) {
                return head_builder(&head).status(StatusCode::NOT_MODIFIED).finish();
            }
            let bytes = state.metrics.bytes_served.with_label_values(&[index, label]);
            let mut builder = head_builder(&head);
            if let Some(len) = head.content_length {
                builder.no_chunking(len);
            }
            builder.streaming(reader.into_body().inspect(move |c| {
                if let Ok(c) = c {
                    bytes.inc_by(c.len() as u64);
                }
            }))
        }
        Err(failure) => match expired {
            Some((entry, true)) if freshness::usable_if_error(&entry, policy, now_ms()) => {
                answer_entry(&req, &state, index, &entry, policy, now_ms(), "stale", Some(failure.label()))
            }
            _ => {
                telemetry::note(&req, |a| a.cache = "error");
                state.metrics.requests.with_label_values(&[index, "error"]).inc();
                ProxyError::Upstream(failure).response()
            }
        },
    }
}

fn head_builder(head: &FlightHead) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY));
    if let Some(ct) = &head.content_type {
        b.insert_header((header::CONTENT_TYPE, ct.clone()));
    }
    if let Some(etag) = &head.etag {
        b.insert_header((header::ETAG, etag.clone()));
    }
    match &head.cache_control {
        Some(cc) => b.insert_header((header::CACHE_CONTROL, cc.as_str())),
        None => b.insert_header((header::CACHE_CONTROL, "no-store")),
    };
    b.insert_header((header::AGE, head.age_secs));
    b.insert_header(("X-Cache", head.x_cache));
    if let Some(reason) = head.reason {
        b.insert_header(("X-Cache-Reason", reason));
    }
    if let Some(ra) = &head.retry_after {
        b.insert_header((header::RETRY_AFTER, ra.clone()));
    }
    b
}

/// True when the client's `If-None-Match` names `etag` (or is `*`).
pub fn not_modified(req: &HttpRequest, etag: Option<&HeaderValue>) -> bool {
    let (Some(inm), Some(etag)) = (req.headers().get(header::IF_NONE_MATCH), etag) else {
        return false;
    };
    let (Ok(inm), Ok(etag)) = (inm.to_str(), etag.to_str()) else {
        return false;
    };
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let etag = strip(etag);
    inm.split(',').any(|c| c.trim() == "*" || strip(c) == etag)
}

/// Answers from a cache entry (`HIT`, `STALE`, or a remembered 404/204).
#[allow(clippy::too_many_arguments)]
fn answer_entry(
    req: &HttpRequest,
    state: &AppState,
    index: &str,
    entry: &Entry,
    policy: &Policy,
    now: u64,
    label: &'static str,
    reason: Option<&'static str>,
) -> HttpResponse {
    telemetry::note(req, |a| a.cache = label);
    state.metrics.requests.with_label_values(&[index, label]).inc();
    let x_cache = if label == "stale" { "STALE" } else { "HIT" };
    let mut b = HttpResponse::build(StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK));
    b.insert_header(("X-Cache", x_cache));
    b.insert_header((header::AGE, entry.age_secs(now)));
    b.insert_header((header::CACHE_CONTROL, freshness::client_cache_control(policy, entry.remaining_secs(now))));
    if let Some(r) = reason {
        b.insert_header(("X-Cache-Reason", r));
        let warning = if r == "revalidating" { "110 - \"Response is Stale\"" } else { "111 - \"Revalidation Failed\"" };
        b.insert_header((header::WARNING, warning));
    }
    if let Some(etag) = &entry.etag {
        b.insert_header((header::ETAG, etag.clone()));
    }
    if entry.status == 200 && not_modified(req, entry.etag.as_ref()) {
        return b.status(StatusCode::NOT_MODIFIED).finish();
    }
    if entry.status == 204 {
        return b.finish();
    }
    b.insert_header((header::CONTENT_TYPE, entry.content_type.clone()));
    state.metrics.bytes_served.with_label_values(&[index, label]).inc_by(entry.body.len() as u64);
    b.body(entry.body.clone())
}

/// Everything a fetch task needs, owned (the task outlives the request).
struct FetchCtx {
    state: web::Data<AppState>,
    client: awc::Client,
    tile: TileRequest,
    /// The old copy being refreshed: its ETag is sent as `If-None-Match`.
    stale: Option<Entry>,
    index: String,
    policy: Policy,
}

fn spawn_fetch(
    writer: FlightWriter,
    state: &web::Data<AppState>,
    client: &web::Data<awc::Client>,
    tile: TileRequest,
    stale: Option<Entry>,
    index: String,
    policy: Policy,
) {
    // Only a 200 with an ETag can be revalidated.
    let stale = stale.filter(|e| e.status == 200 && e.etag.is_some());
    let ctx = FetchCtx { state: state.clone(), client: client.get_ref().clone(), tile, stale, index, policy };
    // awc futures are not Send: the fetch runs on this worker's local runtime.
    actix_web::rt::spawn(run_fetch(writer, ctx));
}

/// Runs one upstream fetch for a flight, through the circuit breaker.
async fn run_fetch(writer: FlightWriter, ctx: FetchCtx) {
    let breaker = ctx.state.breakers.get(ctx.tile.api);
    let permit = match breaker.try_acquire(std::time::Instant::now()) {
        Ok(p) => p,
        Err(wait) => {
            writer.finish(End::Failed(UpstreamFailure::BreakerOpen { retry_after_secs: wait.as_secs().max(1) }));
            return;
        }
    };
    let healthy = fetch_and_relay(writer, &ctx).await;
    if let Some(new_state) = breaker.record(permit, healthy, std::time::Instant::now()) {
        let open = matches!(new_state, crate::breaker::BreakerState::Open);
        ctx.state.metrics.breaker_open.with_label_values(&[ctx.tile.api.as_str()]).set(i64::from(open));
        if open {
            tracing::error!(upstream = ctx.tile.api.as_str(), "circuit breaker opened: upstream calls paused");
        } else {
            tracing::warn!(upstream = ctx.tile.api.as_str(), state = new_state.as_str(), "circuit breaker changed");
        }
    }
    if permit == Permit::Probe {
        tracing::info!(upstream = ctx.tile.api.as_str(), healthy, "circuit breaker probe done");
    }
}

/// Retries, relays the head and every body chunk, and stores the answer only after a clean,
/// complete body. Returns whether the upstream behaved (for the breaker).
async fn fetch_and_relay(writer: FlightWriter, ctx: &FetchCtx) -> bool {
    let state = &ctx.state;
    let m = &state.metrics;
    let url = state.upstream.url(&ctx.tile);
    let etag = ctx.stale.as_ref().and_then(|e| e.etag.as_ref());
    let mut attempts = 0u32;
    let result = upstream::fetch_head(&ctx.client, &state.upstream, &url, etag, |log| {
        attempts += 1;
        m.upstream_requests.with_label_values(&[&ctx.index, &log.status_label]).inc();
        m.upstream_latency.with_label_values(&[&ctx.index]).observe(log.elapsed.as_secs_f64());
    })
    .await;
    drop(url);
    if attempts > 1 {
        m.upstream_retries.with_label_values(&[&ctx.index]).inc_by(u64::from(attempts - 1));
    }
    let mut response = match result {
        Ok(r) => r,
        Err(failure) => {
            state.health.upstream_failed(ctx.tile.api, failure.label());
            tracing::warn!(index = %ctx.index, failure = failure.label(), attempts, "upstream fetch failed");
            writer.finish(End::Failed(failure));
            return false;
        }
    };
    let status = response.status().as_u16();
    let now = now_ms();
    let hdr = |name: header::HeaderName| response.headers().get(name).cloned();

    match status {
        304 => {
            if let Some(old) = ctx.stale.clone() {
                state.health.upstream_ok(ctx.tile.api);
                m.revalidations.with_label_values(&[&ctx.index, "not_modified"]).inc();
                let ttl = freshness::ttl_for(
                    &ctx.policy,
                    hdr(header::CACHE_CONTROL).as_ref().and_then(|v| v.to_str().ok()),
                    state.settings.default_ttl,
                    state.settings.ttl_cap,
                )
                .unwrap_or(Duration::ZERO);
                let entry = Entry { stored_at_ms: now, fresh_until_ms: now + ttl.as_millis() as u64, ..old };
                state.cache.insert(writer.key(), entry.clone());
                m.inserts.with_label_values(&[&ctx.index]).inc();
                let head = entry_head(&entry, &ctx.policy, now, "MISS");
                writer.complete_with(head, entry.body);
                return true;
            }
            // A 304 we did not ask for: nothing to relay.
            writer.finish(End::Failed(UpstreamFailure::Status(304)));
            return true;
        }
        401 | 403 => {
            m.auth_failures.with_label_values(&[&status.to_string()]).inc();
            state.health.auth_failed(status);
            tracing::error!(status, "the upstream rejected the HERE API key: check HERE_API_KEY");
            writer.finish(End::Failed(UpstreamFailure::Auth));
            return true;
        }
        429 => {
            let secs = hdr(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok().and_then(upstream::parse_retry_after))
                .map(|d| d.as_secs());
            state.health.upstream_failed(ctx.tile.api, "rate_limited");
            writer.finish(End::Failed(UpstreamFailure::RateLimited { retry_after_secs: secs }));
            return false;
        }
        s if s >= 500 => {
            state.health.upstream_failed(ctx.tile.api, "upstream_error");
            writer.finish(End::Failed(UpstreamFailure::Status(s)));
            return false;
        }
        _ => {}
    }
    state.health.upstream_ok(ctx.tile.api);
    if ctx.stale.is_some() && status == 200 {
        m.revalidations.with_label_values(&[&ctx.index, "modified"]).inc();
    }

    // What may be stored, and for how long.
    let ttl = match status {
        200 => freshness::ttl_for(
            &ctx.policy,
            hdr(header::CACHE_CONTROL).as_ref().and_then(|v| v.to_str().ok()),
            state.settings.default_ttl,
            state.settings.ttl_cap,
        ),
        404 | 204 if !ctx.policy.negative_ttl.is_zero() => Some(ctx.policy.negative_ttl.min(state.settings.ttl_cap)),
        _ => None,
    };
    let content_length =
        response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let content_type = hdr(header::CONTENT_TYPE).unwrap_or_else(|| HeaderValue::from_static(ctx.tile.content_type()));
    let upstream_etag = hdr(header::ETAG);
    let max_entry = state.settings.max_entry_size;
    // Only a body whose length the upstream announced can be checked for completeness (awc
    // reports a connection cut mid-body as a clean end), so only those are stored.
    let storable = ttl.is_some() && (status == 204 || content_length.is_some_and(|l| l <= max_entry as u64));
    if ttl.is_some() && status != 204 && content_length.is_none() {
        m.not_stored.with_label_values(&[&ctx.index, "no_length"]).inc();
    }
    writer.head(FlightHead {
        status,
        content_type: Some(content_type.clone()),
        etag: upstream_etag.clone(),
        content_length: if status == 204 { None } else { content_length },
        cache_control: match (status, ttl) {
            (200, Some(ttl)) => Some(freshness::client_cache_control(&ctx.policy, ttl.as_secs())),
            _ => None,
        },
        x_cache: "MISS",
        age_secs: 0,
        retry_after: None,
        reason: None,
    });

    // Relay the body chunk by chunk, keeping a copy only while it may still be stored.
    let deadline = tokio::time::Instant::now() + state.upstream.settings.body_timeout;
    let mut copy = storable.then(|| BytesMut::with_capacity(content_length.unwrap_or(16 << 10) as usize));
    let mut received: u64 = 0;
    let outcome = loop {
        match tokio::time::timeout_at(deadline, response.next()).await {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                if let Some(buf) = copy.as_mut() {
                    if buf.len() + chunk.len() <= max_entry {
                        buf.extend_from_slice(&chunk);
                    } else {
                        copy = None;
                        m.not_stored.with_label_values(&[&ctx.index, "too_large"]).inc();
                    }
                }
                writer.chunk(chunk);
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(_))) => break Err(UpstreamFailure::Body),
            Err(_) => break Err(UpstreamFailure::Timeout),
        }
    };
    let outcome = match (outcome, content_length) {
        (Ok(()), Some(len)) if len != received && status != 204 => Err(UpstreamFailure::Body),
        (o, _) => o,
    };
    match outcome {
        Ok(()) => {
            if let (Some(buf), Some(ttl)) = (copy, ttl) {
                let body = buf.freeze();
                let etag = upstream_etag.or_else(|| derived_etag(&body));
                let entry = Entry {
                    status,
                    content_type,
                    etag,
                    stored_at_ms: now,
                    fresh_until_ms: now + ttl.as_millis() as u64,
                    body,
                };
                state.cache.insert(writer.key(), entry);
                m.inserts.with_label_values(&[&ctx.index]).inc();
            } else if status == 200 && ttl.is_none() {
                m.not_stored.with_label_values(&[&ctx.index, "no_store"]).inc();
            }
            writer.finish(End::Complete);
            true
        }
        Err(failure) => {
            m.not_stored.with_label_values(&[&ctx.index, "truncated"]).inc();
            m.upstream_requests.with_label_values(&[&ctx.index, failure.label()]).inc();
            state.health.upstream_failed(ctx.tile.api, failure.label());
            tracing::warn!(index = %ctx.index, failure = failure.label(), received, "upstream body failed; nothing stored");
            writer.finish(End::Failed(failure));
            false
        }
    }
}

/// A strong ETag from the body, for upstreams that send none.
fn derived_etag(body: &Bytes) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"tp-{}\"", stable_hash(body, 24))).ok()
}

fn entry_head(entry: &Entry, policy: &Policy, now: u64, x_cache: &'static str) -> FlightHead {
    FlightHead {
        status: entry.status,
        content_type: Some(entry.content_type.clone()),
        etag: entry.etag.clone(),
        content_length: Some(entry.body.len() as u64),
        cache_control: Some(freshness::client_cache_control(policy, entry.remaining_secs(now))),
        x_cache,
        age_secs: entry.age_secs(now),
        retry_after: None,
        reason: None,
    }
}

//! One upstream fetch for a flight: ask (with retries), [`plan`] what the answer means (a pure
//! rule of `domain::plan`), relay it to the flight's readers, and store it.
//!
//! [`run`] executes a plan: it streams a 200's body chunk by chunk to every reader (within the
//! flight's byte budget), keeps a copy only while it may still be stored, and stores it after a
//! clean end whose length matches `Content-Length` (awc reports a connection cut mid-body as a
//! clean end, so bodies without a length are relayed but not stored).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::domain::breaker::BreakerState;
use crate::domain::entry::{Entry, Freshness, Meta};
use crate::domain::failure::UpstreamFailure;
use crate::domain::plan::{plan, Plan, UpstreamHead, MAX_SMALL_BODY};
use crate::domain::routes::{Api, TileRequest};
use crate::domain::scrub::scrub;
use crate::observe::metrics::{NotStored, Revalidation};
use crate::protect::budget::Account;
use crate::service::core::Core;
use crate::store::flight::{End, FlightHead, FlightWriter};
use crate::upstream::{self, Validator};

/// Everything a fetch task needs, owned (the task outlives the request).
pub struct FetchCtx {
    pub core: Arc<Core>,
    pub client: awc::Client,
    pub tile: TileRequest,
    /// The old copy being refreshed: its ETag is sent as `If-None-Match`, else its
    /// `Last-Modified` as `If-Modified-Since` ([`Validator::of`]).
    pub stale: Option<Entry>,
    /// Metrics label of the index that started the fetch.
    pub index: String,
}

/// Runs one upstream fetch for a flight, through the circuit breaker. The breaker permit is a
/// guard: if this task is dropped mid-way, a probe permit is given back.
pub async fn run(writer: FlightWriter, ctx: FetchCtx) {
    let st = &ctx.core;
    let api = ctx.tile.api;
    let permit = match st.breakers.acquire(api, st.clock.now_ms()) {
        Ok(p) => p,
        Err(wait) => {
            writer.finish(End::Failed(UpstreamFailure::BreakerOpen { retry_after_secs: wait.as_secs().max(1) }));
            return;
        }
    };
    let probe = permit.is_probe();
    let budget = st.settings.policy_for(&ctx.tile.index, api.is_traffic()).budget;
    let account = Account::of(api.is_traffic());
    if let Err(spent) = st.protect.budgets.charge(&ctx.index, account, budget).await {
        tracing::debug!(index = ctx.index, failure = spent.label(), "upstream budget spent; fetch refused");
        writer.finish(End::Failed(spent));
        return;
    }
    let healthy = fetch(writer, &ctx).await;
    note_breaker(st, api, permit.record(healthy, st.clock.now_ms()));
    if probe {
        tracing::info!(upstream = api.as_str(), healthy, "circuit breaker probe done");
    }
}

/// Publishes a breaker's new state (metric, log), when a recorded outcome changed it.
pub fn note_breaker(st: &Core, api: Api, new_state: Option<BreakerState>) {
    let Some(new_state) = new_state else { return };
    let open = matches!(new_state, BreakerState::Open);
    st.metrics.breaker_open.with_label_values(&[api.as_str()]).set(i64::from(open));
    if open {
        tracing::error!(upstream = api.as_str(), "circuit breaker opened: upstream calls paused");
    } else {
        tracing::warn!(upstream = api.as_str(), state = new_state.as_str(), "circuit breaker changed");
    }
}

/// Records an upstream answer that is not relayed (`status`, as [`plan`] or the metadata fetch
/// judged it): a refused key is loud (metric, `/health`, an error line); otherwise `/health`
/// learns whether the upstream itself works.
pub fn note_refused(st: &Core, api: Api, status: u16, failure: &UpstreamFailure, upstream_ok: bool) {
    match failure {
        UpstreamFailure::Auth => {
            st.metrics.auth_failures.with_label_values(&[&status.to_string()]).inc();
            st.health.auth_failed(status);
            tracing::error!(status, "the upstream rejected the HERE API key: check HERE_API_KEY");
        }
        f if !upstream_ok => st.health.upstream_failed(api, f.label()),
        _ => st.health.upstream_ok(api),
    }
}

/// Asks the upstream, plans, relays, stores. Returns whether the upstream behaved.
async fn fetch(writer: FlightWriter, ctx: &FetchCtx) -> bool {
    let st = &ctx.core;
    let m = &st.metrics;
    let index = ctx.index.as_str();
    let validator = ctx.stale.as_ref().and_then(|e| Validator::of(&e.meta));
    let mut attempts = 0u32;
    // What the transport said about the last failed attempt (for the log line).
    let mut transport_error = None;
    // The last attempt's time to its head; plus the body's time below: the entry's `fetch_ms`.
    let mut head_time = Duration::ZERO;
    let result = {
        let url = st.upstream.url(&ctx.tile);
        let gate = || st.protect.cap.admit(ctx.tile.api);
        upstream::fetch_head(&ctx.client, &st.upstream, &url, validator.as_ref(), gate, |log| {
            attempts += 1;
            head_time = log.elapsed;
            transport_error = log.error;
            if let Ok(status) = log.status_label.parse::<u16>() {
                st.bill.upstream_answer(index, ctx.tile.api, status);
            }
            m.upstream_requests
                .with_label_values(&[index, &log.status_label, log.protocol, ctx.tile.api.as_str()])
                .inc();
            m.upstream_latency.with_label_values(&[index]).observe(log.elapsed.as_secs_f64());
        })
        .await
    };
    if attempts > 1 {
        m.upstream_retries.with_label_values(&[index]).inc_by(u64::from(attempts - 1));
    }
    let mut response = match result {
        Ok(r) => r,
        Err(failure @ UpstreamFailure::Busy { .. }) => {
            if attempts == 0 {
                // Nothing was sent: the fetch is not paid for.
                let traffic = ctx.tile.api.is_traffic();
                let budget = st.settings.policy_for(&ctx.tile.index, traffic).budget;
                st.protect.budgets.refund(&ctx.index, Account::of(traffic), budget).await;
            }
            tracing::warn!(index, attempts, "upstream rate cap queue full; fetch refused");
            writer.finish(End::Failed(failure));
            return true;
        }
        Err(failure) => {
            st.health.upstream_failed(ctx.tile.api, failure.label());
            // The upstream's base URL (never the request URL: it holds the key) and what the
            // transport said, so "connect_error" names the host and the OS error.
            tracing::warn!(
                index,
                failure = failure.label(),
                attempts,
                upstream = st.upstream.base(ctx.tile.api),
                error = transport_error.as_deref().unwrap_or("-"),
                "upstream fetch failed"
            );
            writer.finish(End::Failed(failure));
            return false;
        }
    };
    let body_started = std::time::Instant::now();
    let fetch_ms = move || u32::try_from((head_time + body_started.elapsed()).as_millis()).unwrap_or(u32::MAX);
    let status = response.status().as_u16();
    let head = UpstreamHead::from_headers(response.headers());
    let now = st.clock.now_ms();
    let revalidating = ctx.stale.is_some();
    match plan(status, &head, &ctx.tile, revalidating, st.settings.max_entry_size, now) {
        Plan::Fail { failure, upstream_ok } => {
            note_refused(st, ctx.tile.api, status, &failure, upstream_ok);
            if upstream_ok && failure != UpstreamFailure::Auth {
                tracing::warn!(index, status, failure = failure.label(), "unexpected upstream status; not relayed");
            }
            writer.finish(End::Failed(failure));
            upstream_ok
        }
        Plan::NotModified { freshness, last_modified } => {
            st.health.upstream_ok(ctx.tile.api);
            let Some(old) = ctx.stale.clone() else {
                writer.finish(End::Failed(UpstreamFailure::Status(304)));
                return true;
            };
            m.count_revalidation(index, Revalidation::NotModified);
            // Same bytes and version; fetched "now" as far as freshness goes. An upstream that
            // says nothing on the 304 keeps its earlier facts.
            let freshness = if freshness == Freshness::default() { old.meta.freshness } else { freshness };
            let last_modified = last_modified.or(old.meta.last_modified);
            let meta = Meta { stored_at_ms: now, freshness, fetch_ms: fetch_ms(), last_modified, ..old.meta };
            let entry = Entry { meta, body: old.body };
            deliver(writer, ctx, entry).await;
            true
        }
        Plan::Whole { meta } => {
            st.health.upstream_ok(ctx.tile.api);
            let body = match read_small(&mut response, st.upstream.settings.body_timeout).await {
                Ok(b) => scrub(b, st.upstream.secrets()),
                Err(failure) => {
                    writer.finish(End::Failed(failure));
                    return true;
                }
            };
            let entry = Entry { meta: Meta { fetch_ms: fetch_ms(), ..meta }, body };
            deliver(writer, ctx, entry).await;
            true
        }
        Plan::Stream { meta, content_length, storable } => {
            st.health.upstream_ok(ctx.tile.api);
            if revalidating && status == 200 {
                m.count_revalidation(index, Revalidation::Modified);
            }
            if status == 200 && content_length.is_none() {
                m.count_not_stored(index, NotStored::NoLength);
            }
            writer.head(FlightHead { meta: meta.clone(), content_length, x_cache: "MISS", source: None });
            match relay(&writer, ctx, &mut response, content_length, storable).await {
                Ok(Some(body)) => {
                    store(&writer, ctx, Entry { meta: Meta { fetch_ms: fetch_ms(), ..meta }, body }).await;
                    writer.finish(End::Complete);
                    true
                }
                Ok(None) => {
                    writer.finish(End::Complete);
                    true
                }
                Err(failure) => {
                    let abandoned = failure == UpstreamFailure::Aborted;
                    if !abandoned {
                        m.count_not_stored(index, NotStored::Truncated);
                        let protocol = upstream::protocol_label(response.version());
                        let labels = [index, failure.label(), protocol, ctx.tile.api.as_str()];
                        m.upstream_requests.with_label_values(&labels).inc();
                        st.health.upstream_failed(ctx.tile.api, failure.label());
                        tracing::warn!(index, failure = failure.label(), "upstream body failed; nothing stored");
                    }
                    writer.finish(End::Failed(failure));
                    abandoned
                }
            }
        }
    }
}

/// Relays the body chunk by chunk, keeping a copy while it may still be stored. `Ok(Some)`:
/// a complete body to store; `Ok(None)`: relayed, not to be stored; `Err(Aborted)`: nobody
/// reads any more and nothing would be stored, so the upstream read was stopped.
async fn relay(
    writer: &FlightWriter,
    ctx: &FetchCtx,
    response: &mut awc::ClientResponse,
    content_length: Option<u64>,
    storable: bool,
) -> Result<Option<Bytes>, UpstreamFailure> {
    let st = &ctx.core;
    let max_entry = st.settings.max_entry_size;
    let body_timeout = st.upstream.settings.body_timeout;
    // `body_timeout` bounds the time spent waiting for the upstream, not the time spent waiting
    // for slow readers (backpressure): a big body to a slow client may take longer than it.
    let mut upstream_wait = Duration::ZERO;
    let mut copy =
        storable.then(|| BytesMut::with_capacity(content_length.unwrap_or(0).min(max_entry as u64) as usize));
    let mut received: u64 = 0;
    loop {
        if copy.is_none() && !writer.has_readers() {
            return Err(UpstreamFailure::Aborted);
        }
        let started = tokio::time::Instant::now();
        let next = tokio::time::timeout(body_timeout.saturating_sub(upstream_wait), response.next()).await;
        upstream_wait += started.elapsed();
        match next {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                if let Some(buf) = copy.as_mut() {
                    if buf.len() + chunk.len() <= max_entry {
                        buf.extend_from_slice(&chunk);
                    } else {
                        copy = None;
                        st.metrics.count_not_stored(&ctx.index, NotStored::TooLarge);
                    }
                }
                // A reader that takes nothing for a whole `body_timeout` is given up on.
                if tokio::time::timeout(body_timeout, writer.chunk(chunk)).await.is_err() {
                    return Err(UpstreamFailure::Timeout);
                }
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(UpstreamFailure::Body),
            Err(_) => return Err(UpstreamFailure::Timeout),
        }
    }
    match content_length {
        Some(len) if len != received => Err(UpstreamFailure::Body),
        _ => Ok(copy.map(BytesMut::freeze)),
    }
}

/// Reads a whole small body (404, 400), bounded in size and time.
async fn read_small(response: &mut awc::ClientResponse, timeout: Duration) -> Result<Bytes, UpstreamFailure> {
    match tokio::time::timeout(timeout, response.body().limit(MAX_SMALL_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(UpstreamFailure::Body),
        Err(_) => Err(UpstreamFailure::Timeout),
    }
}

/// Stores a whole answer, then hands it to every reader of the flight.
async fn deliver(writer: FlightWriter, ctx: &FetchCtx, entry: Entry) {
    store(&writer, ctx, entry.clone()).await;
    let head =
        FlightHead { meta: entry.meta, content_length: Some(entry.body.len() as u64), x_cache: "MISS", source: None };
    writer.complete_with(head, entry.body);
}

/// Stores an answer for as long as any index can use it (`freshness::retention`); an answer no
/// index can reuse (a 400, `no-store` with no index TTL, negative caching off) is not stored.
async fn store(writer: &FlightWriter, ctx: &FetchCtx, entry: Entry) {
    let st = &ctx.core;
    let Some(keep) = st.settings.retention(&entry.meta, ctx.tile.api.is_traffic()) else {
        if entry.meta.status == 200 {
            st.metrics.count_not_stored(&ctx.index, NotStored::NoStore);
        }
        return;
    };
    let expires = entry.meta.stored_at_ms.saturating_add(keep.as_millis() as u64);
    st.cache.insert(writer.key(), entry, expires).await;
    st.metrics.inserts.with_label_values(&[&ctx.index]).inc();
}

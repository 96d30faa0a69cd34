//! One upstream fetch for a flight: ask (with retries), [`plan`] what the answer means, relay it
//! to the flight's readers, and store it.
//!
//! [`plan`] is pure and table-tested: from the upstream status and headers it decides what a
//! client may see. Only 200, 204, 304 (to our own revalidation), 404 and HERE's JSON 400 pass
//! through; every other status becomes our JSON error, with no upstream body and no `Location`
//! (a redirect or an error page can echo the request URL, which holds the server's key). The
//! small bodies that do pass whole (404, 400) are read completely and scrubbed of the key.
//!
//! [`run`] executes a plan: it streams a 200's body chunk by chunk to every reader (within the
//! flight's byte budget), keeps a copy only while it may still be stored, and stores it after a
//! clean end whose length matches `Content-Length` (awc reports a connection cut mid-body as a
//! clean end, so bodies without a length are relayed but not stored).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::domain::breaker::BreakerState;
use crate::domain::entry::{Entry, Freshness, Meta};
use crate::domain::failure::UpstreamFailure;
use crate::domain::freshness;
use crate::domain::routes::TileRequest;
use crate::service::core::Core;
use crate::store::flight::{End, FlightHead, FlightWriter};
use crate::upstream;

/// Largest 404/400 body relayed (HERE's are a few hundred bytes of JSON).
pub const MAX_SMALL_BODY: usize = 64 << 10;

/// The upstream headers a plan looks at.
#[derive(Debug, Default, Clone)]
pub struct UpstreamHead {
    pub content_type: Option<HeaderValue>,
    pub content_encoding: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
    pub content_length: Option<u64>,
    pub cache_control: Option<String>,
    pub expires: Option<String>,
    pub date: Option<String>,
    pub age: Option<String>,
    pub retry_after: Option<String>,
}

impl UpstreamHead {
    pub fn from_headers(h: &HeaderMap) -> UpstreamHead {
        let v = |n: header::HeaderName| h.get(n).cloned();
        let s = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        UpstreamHead {
            content_type: v(header::CONTENT_TYPE),
            content_encoding: v(header::CONTENT_ENCODING).filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity")),
            etag: v(header::ETAG).filter(|e| !e.is_empty()),
            content_length: s(header::CONTENT_LENGTH).and_then(|l| l.trim().parse().ok()),
            cache_control: s(header::CACHE_CONTROL),
            expires: s(header::EXPIRES),
            date: s(header::DATE),
            age: s(header::AGE),
            retry_after: s(header::RETRY_AFTER),
        }
    }
}

/// What an upstream answer means for clients and the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Relay the body as it streams (a 200, or a 204 with none). `storable`: its length is
    /// known and within `max_entry_size`.
    Stream { meta: Meta, content_length: Option<u64>, storable: bool },
    /// Read the whole small body (at most [`MAX_SMALL_BODY`]), scrub it, then relay it: a 404
    /// (remembered like a tile) or HERE's JSON 400 (never stored: no index reuses a 400).
    Whole { meta: Meta },
    /// Our `If-None-Match` came back 304: the old copy is good, with these new facts.
    NotModified { freshness: Freshness },
    /// Answer with our JSON error. `upstream_ok`: the upstream itself works (for the breaker).
    Fail { failure: UpstreamFailure, upstream_ok: bool },
}

/// Decides what an upstream answer means. Pure.
pub fn plan(
    status: u16,
    h: &UpstreamHead,
    tile: &TileRequest,
    revalidating: bool,
    max_entry: usize,
    now_ms: u64,
) -> Plan {
    let facts = freshness::upstream_freshness(
        h.cache_control.as_deref(),
        h.expires.as_deref(),
        h.date.as_deref(),
        h.age.as_deref(),
        now_ms,
    );
    let meta = || Meta {
        status,
        content_type: match status {
            204 => None,
            _ => Some(h.content_type.clone().unwrap_or_else(|| HeaderValue::from_static(tile.content_type()))),
        },
        content_encoding: if status == 204 { None } else { h.content_encoding.clone() },
        etag: h.etag.clone(),
        stored_at_ms: now_ms,
        version_ms: now_ms,
        freshness: facts,
        // Known once the body is in (`run`).
        fetch_ms: 0,
    };
    let fail = |failure, upstream_ok| Plan::Fail { failure, upstream_ok };
    match status {
        200 => Plan::Stream {
            meta: meta(),
            content_length: h.content_length,
            storable: h.content_length.is_some_and(|l| l <= max_entry as u64),
        },
        204 => Plan::Stream { meta: meta(), content_length: None, storable: true },
        304 if revalidating => Plan::NotModified { freshness: facts },
        404 => Plan::Whole { meta: meta() },
        400 if h.content_type.as_ref().is_some_and(|c| c.to_str().unwrap_or("").contains("json")) => {
            Plan::Whole { meta: meta() }
        }
        401 | 403 => fail(UpstreamFailure::Auth, true),
        429 => fail(
            UpstreamFailure::RateLimited {
                retry_after_secs: h.retry_after.as_deref().and_then(upstream::parse_retry_after).map(|d| d.as_secs()),
            },
            false,
        ),
        s if s >= 500 => fail(UpstreamFailure::Status(s), false),
        // 1xx, 3xx (a redirect would leak the URL it echoes), unexpected 2xx/4xx, an unasked 304.
        s => fail(UpstreamFailure::Status(s), true),
    }
}

/// Replaces every occurrence of a secret in `body` with `<redacted>`.
pub fn scrub(body: Bytes, secrets: &[String]) -> Bytes {
    let mut out: Option<Vec<u8>> = None;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let cur = out.as_deref().unwrap_or(&body);
        if !cur.windows(secret.len()).any(|w| w == secret.as_bytes()) {
            continue;
        }
        let mut next = Vec::with_capacity(cur.len());
        let mut i = 0;
        while i < cur.len() {
            if cur[i..].starts_with(secret.as_bytes()) {
                next.extend_from_slice(b"<redacted>");
                i += secret.len();
            } else {
                next.push(cur[i]);
                i += 1;
            }
        }
        out = Some(next);
    }
    out.map(Bytes::from).unwrap_or(body)
}

/// Everything a fetch task needs, owned (the task outlives the request).
pub struct FetchCtx {
    pub core: Arc<Core>,
    pub client: awc::Client,
    pub tile: TileRequest,
    /// The old copy being refreshed: its ETag is sent as `If-None-Match`.
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
    let budget = st.settings.policy(&ctx.tile.index).budget;
    if let Err(spent) = st.protect.budgets.charge(&ctx.index, budget).await {
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
pub fn note_breaker(st: &Core, api: crate::domain::routes::Api, new_state: Option<BreakerState>) {
    let Some(new_state) = new_state else { return };
    let open = matches!(new_state, BreakerState::Open);
    st.metrics.breaker_open.with_label_values(&[api.as_str()]).set(i64::from(open));
    if open {
        tracing::error!(upstream = api.as_str(), "circuit breaker opened: upstream calls paused");
    } else {
        tracing::warn!(upstream = api.as_str(), state = new_state.as_str(), "circuit breaker changed");
    }
}

/// Asks the upstream, plans, relays, stores. Returns whether the upstream behaved.
async fn fetch(writer: FlightWriter, ctx: &FetchCtx) -> bool {
    let st = &ctx.core;
    let m = &st.metrics;
    let index = ctx.index.as_str();
    let etag = ctx.stale.as_ref().and_then(|e| e.meta.etag.as_ref());
    let mut attempts = 0u32;
    // The last attempt's time to its head; plus the body's time below: the entry's `fetch_ms`.
    let mut head_time = Duration::ZERO;
    let result = {
        let url = st.upstream.url(&ctx.tile);
        let gate = || st.protect.cap.admit(ctx.tile.api);
        upstream::fetch_head(&ctx.client, &st.upstream, &url, etag, gate, |log| {
            attempts += 1;
            head_time = log.elapsed;
            m.upstream_requests.with_label_values(&[index, &log.status_label]).inc();
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
                st.protect.budgets.refund(&ctx.index, st.settings.policy(&ctx.tile.index).budget).await;
            }
            tracing::warn!(index, attempts, "upstream rate cap queue full; fetch refused");
            writer.finish(End::Failed(failure));
            return true;
        }
        Err(failure) => {
            st.health.upstream_failed(ctx.tile.api, failure.label());
            tracing::warn!(index, failure = failure.label(), attempts, "upstream fetch failed");
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
            match &failure {
                UpstreamFailure::Auth => {
                    m.auth_failures.with_label_values(&[&status.to_string()]).inc();
                    st.health.auth_failed(status);
                    tracing::error!(status, "the upstream rejected the HERE API key: check HERE_API_KEY");
                }
                f if !upstream_ok => st.health.upstream_failed(ctx.tile.api, f.label()),
                f => {
                    st.health.upstream_ok(ctx.tile.api);
                    tracing::warn!(index, status, failure = f.label(), "unexpected upstream status; not relayed");
                }
            }
            writer.finish(End::Failed(failure));
            upstream_ok
        }
        Plan::NotModified { freshness } => {
            st.health.upstream_ok(ctx.tile.api);
            let Some(old) = ctx.stale.clone() else {
                writer.finish(End::Failed(UpstreamFailure::Status(304)));
                return true;
            };
            m.revalidations.with_label_values(&[index, "not_modified"]).inc();
            // Same bytes and version; fetched "now" as far as freshness goes. An upstream that
            // says nothing on the 304 keeps its earlier facts.
            let freshness = if freshness == Freshness::default() { old.meta.freshness } else { freshness };
            let entry =
                Entry { meta: Meta { stored_at_ms: now, freshness, fetch_ms: fetch_ms(), ..old.meta }, body: old.body };
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
                m.revalidations.with_label_values(&[index, "modified"]).inc();
            }
            if status == 200 && content_length.is_none() {
                m.not_stored.with_label_values(&[index, "no_length"]).inc();
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
                        m.not_stored.with_label_values(&[index, "truncated"]).inc();
                        m.upstream_requests.with_label_values(&[index, failure.label()]).inc();
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
                        st.metrics.not_stored.with_label_values(&[&ctx.index, "too_large"]).inc();
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
    let Some(keep) = st.settings.retention(&entry.meta) else {
        if entry.meta.status == 200 {
            st.metrics.not_stored.with_label_values(&[&ctx.index, "no_store"]).inc();
        }
        return;
    };
    let expires = entry.meta.stored_at_ms.saturating_add(keep.as_millis() as u64);
    st.cache.insert(writer.key(), entry, expires).await;
    st.metrics.inserts.with_label_values(&[&ctx.index]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::routes::{parse, ParseOptions};

    fn tile() -> TileRequest {
        parse("/here-proxy/1/0/0/png", "", ParseOptions::default()).unwrap().unwrap()
    }

    fn head(ct: Option<&'static str>, len: Option<u64>, cc: Option<&str>) -> UpstreamHead {
        UpstreamHead {
            content_type: ct.map(HeaderValue::from_static),
            content_length: len,
            cache_control: cc.map(str::to_string),
            ..Default::default()
        }
    }

    fn kind(p: &Plan) -> String {
        match p {
            Plan::Stream { storable, .. } => format!("stream storable={storable}"),
            Plan::Whole { .. } => "whole".into(),
            Plan::NotModified { .. } => "not_modified".into(),
            Plan::Fail { failure, upstream_ok } => format!("fail {} ok={upstream_ok}", failure.label()),
        }
    }

    #[test]
    fn what_passes_and_what_becomes_our_error() {
        let json = Some("application/json");
        let cases: &[(u16, UpstreamHead, bool, &str)] = &[
            (200, head(Some("image/png"), Some(100), None), false, "stream storable=true"),
            (200, head(Some("image/png"), Some(5000), None), false, "stream storable=false"), // > max_entry
            (200, head(Some("image/png"), None, None), false, "stream storable=false"),       // no length
            (204, head(None, None, None), false, "stream storable=true"),
            (304, head(None, None, None), true, "not_modified"),
            (304, head(None, None, None), false, "fail upstream_error ok=true"),
            (404, head(json, Some(80), None), false, "whole"),
            (400, head(json, Some(80), None), false, "whole"),
            (400, head(Some("text/html"), Some(80), None), false, "fail upstream_error ok=true"),
            (401, head(json, None, None), false, "fail upstream_auth ok=true"),
            (403, head(json, None, None), false, "fail upstream_auth ok=true"),
            (429, head(None, None, None), false, "fail rate_limited ok=false"),
            (500, head(Some("text/html"), None, None), false, "fail upstream_error ok=false"),
            (503, head(None, None, None), false, "fail upstream_error ok=false"),
            (301, head(None, None, None), false, "fail upstream_error ok=true"),
            (302, head(Some("text/html"), Some(10), None), false, "fail upstream_error ok=true"),
            (307, head(None, None, None), false, "fail upstream_error ok=true"),
            (206, head(Some("image/png"), Some(10), None), false, "fail upstream_error ok=true"),
            (418, head(Some("text/html"), Some(10), None), false, "fail upstream_error ok=true"),
            (100, head(None, None, None), false, "fail upstream_error ok=true"),
        ];
        for (status, h, revalidating, want) in cases {
            assert_eq!(kind(&plan(*status, h, &tile(), *revalidating, 1000, 0)), *want, "{status}");
        }
    }

    #[test]
    fn metadata_is_what_the_upstream_said() {
        let mut h = head(None, Some(3), Some("max-age=60"));
        h.age = Some("10".into());
        h.etag = Some(HeaderValue::from_static("\"v1\""));
        h.content_encoding = Some(HeaderValue::from_static("gzip"));
        let Plan::Stream { meta, .. } = plan(200, &h, &tile(), false, 1000, 7) else { panic!() };
        assert_eq!(meta.content_type.unwrap(), "image/png", "the format's type when the upstream sends none");
        assert_eq!(meta.freshness.ttl_secs, Some(50));
        assert_eq!(meta.etag.unwrap(), "\"v1\"");
        assert_eq!(meta.content_encoding.unwrap(), "gzip");
        assert_eq!((meta.stored_at_ms, meta.version_ms), (7, 7));
        let Plan::Stream { meta, content_length, .. } = plan(204, &h, &tile(), false, 1000, 7) else { panic!() };
        assert_eq!((meta.content_type, meta.content_encoding, content_length), (None, None, None));
        let Plan::Fail { failure, .. } =
            plan(429, &UpstreamHead { retry_after: Some("7".into()), ..h }, &tile(), false, 1000, 0)
        else {
            panic!()
        };
        assert_eq!(failure, UpstreamFailure::RateLimited { retry_after_secs: Some(7) });
    }

    #[test]
    fn secrets_are_scrubbed() {
        let body = Bytes::from_static(b"{\"cause\":\"bad /v3/x?apiKey=SECRET1&y=SECRET1 K2\"}");
        let out = scrub(body, &["SECRET1".into(), "K2".into(), String::new()]);
        assert_eq!(&out[..], b"{\"cause\":\"bad /v3/x?apiKey=<redacted>&y=<redacted> <redacted>\"}");
        let clean = Bytes::from_static(b"nothing here");
        assert_eq!(scrub(clean.clone(), &["SECRET1".into()]), clean);
    }
}

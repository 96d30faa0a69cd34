//! HERE's metadata documents (`/v3/info`, copyright, languages, features, political views, and
//! the vector copyright and political views): which endpoints exist ([`ENDPOINTS`]), a cache of
//! their answers of their own ([`MetadataCache`]: bounded by bytes, one fetch per key at a time)
//! and the fetch through the breaker, the rate cap and the upstream client's retries ([`lookup`]).
//! `http::metadata` is their HTTP face (query, index check, response).

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use bytes::Bytes;
use moka::ops::compute::{CompResult, Op};

use crate::domain::failure::UpstreamFailure;
use crate::domain::plan::failure_of;
use crate::domain::routes::Api;
use crate::service::core::Core;
use crate::upstream;

/// The index label metadata fetches are counted under in the upstream metrics.
pub const METRICS_INDEX: &str = "_metadata";
/// Largest metadata body read from the upstream (HERE's are a few KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Bytes of metadata answers kept (least recently used dropped first).
pub const CACHE_BYTES: u64 = 16 << 20;

/// One of HERE's metadata endpoints.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The path, the same here and upstream.
    pub path: &'static str,
    pub api: Api,
    /// Copyright text: kept `copyright_ttl` (else `metadata_ttl`).
    pub copyright: bool,
    /// Metrics label.
    pub label: &'static str,
}

const fn ep(path: &'static str, api: Api, copyright: bool, label: &'static str) -> Endpoint {
    Endpoint { path, api, copyright, label }
}

/// Every metadata endpoint served.
pub const ENDPOINTS: &[Endpoint] = &[
    ep("/v3/info", Api::Raster, false, "info"),
    ep("/v3/copyright", Api::Raster, true, "copyright"),
    ep("/v3/languages", Api::Raster, false, "languages"),
    ep("/v3/features", Api::Raster, false, "features"),
    ep("/v3/politicalViews", Api::Raster, false, "political_views"),
    ep("/v2/vectortiles/copyright", Api::Vector, true, "vector_copyright"),
    ep("/v2/vectortiles/politicalViews", Api::Vector, false, "vector_political_views"),
];

/// The endpoint `path` names, if any.
pub fn endpoint(path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.path == path)
}

/// A stored metadata answer (already scrubbed).
#[derive(Debug, Clone)]
pub struct Document {
    pub body: Bytes,
    pub content_type: HeaderValue,
    /// Ours: a hash of the body we serve (HERE's would name the unscrubbed body).
    pub etag: HeaderValue,
    /// When it was fetched, on the injected clock (freshness).
    pub stored_at_ms: u64,
}

impl Document {
    pub fn new(body: Bytes, content_type: Option<HeaderValue>, stored_at_ms: u64) -> Document {
        let etag = format!("\"m-{}\"", crate::base::hashing::stable_hash(&body, 16));
        Document {
            etag: HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"m\"")),
            content_type: content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
            body,
            stored_at_ms,
        }
    }
}

/// What the cache holds per key: the last good copy, and the last failure (real time, only to
/// hand it to the requests that waited for that fetch).
#[derive(Debug)]
struct Slot {
    good: Option<Document>,
    failed: Option<(Instant, UpstreamFailure)>,
}

/// How a request was answered.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A fresh copy, no upstream call (also for requests that waited on another's fetch).
    Hit(Document),
    /// Fetched for this request.
    Miss(Document),
    /// The fetch failed; the last good copy stands in.
    Stale(Document, UpstreamFailure),
    /// The fetch failed and there is no copy.
    Failed(UpstreamFailure),
}

/// The metadata cache: bounded by bytes, one fetch per key at a time.
pub struct MetadataCache {
    slots: moka::future::Cache<String, Arc<Slot>>,
}

impl Default for MetadataCache {
    fn default() -> Self {
        Self::new(CACHE_BYTES)
    }
}

impl MetadataCache {
    pub fn new(max_bytes: u64) -> MetadataCache {
        let slots = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Slot>| {
                let body = v.good.as_ref().map_or(0, |d| d.body.len());
                u32::try_from(k.len() + body).unwrap_or(u32::MAX)
            })
            .build();
        MetadataCache { slots }
    }

    /// The answer for `key`: a copy younger than `ttl` (on `now_ms`), else `fetch`'s. Requests
    /// for one key are serialised (moka's per-key compute lock): while one fetches, the others
    /// wait, then take its result (a fresh copy, or its failure), so a key costs one upstream
    /// call however many ask at once.
    pub async fn get<F, Fut>(&self, key: String, ttl: Duration, now_ms: impl Fn() -> u64, fetch: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Document, UpstreamFailure>>,
    {
        let ttl_ms = ttl.as_millis() as u64;
        let fresh = |d: &Document| now_ms().saturating_sub(d.stored_at_ms) < ttl_ms;
        if let Some(d) = self.slots.get(&key).await.and_then(|s| s.good.clone()).filter(|d| fresh(d)) {
            return Outcome::Hit(d);
        }
        let arrived = Instant::now();
        let fetched = Cell::new(false);
        let fetched_ref = &fetched;
        let fresh_ref = &fresh;
        let result = self
            .slots
            .entry(key)
            .and_compute_with(move |current| async move {
                let slot = current.map(|e| e.into_value());
                if let Some(s) = &slot {
                    let good_now = s.good.as_ref().is_some_and(fresh_ref);
                    let failed_while_waiting = s.failed.as_ref().is_some_and(|(at, _)| *at >= arrived);
                    if good_now || failed_while_waiting {
                        return Op::Nop;
                    }
                }
                fetched_ref.set(true);
                let good = slot.and_then(|s| s.good.clone());
                match fetch().await {
                    Ok(d) => Op::Put(Arc::new(Slot { good: Some(d), failed: None })),
                    Err(f) => Op::Put(Arc::new(Slot { good, failed: Some((Instant::now(), f)) })),
                }
            })
            .await;
        let slot = match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => e.into_value(),
            CompResult::StillNone(_) | CompResult::Removed(_) => return Outcome::Failed(UpstreamFailure::Aborted),
        };
        match (&slot.failed, &slot.good) {
            (Some((at, f)), Some(d)) if *at >= arrived => Outcome::Stale(d.clone(), f.clone()),
            (Some((at, f)), None) if *at >= arrived => Outcome::Failed(f.clone()),
            (_, Some(d)) if fetched.get() => Outcome::Miss(d.clone()),
            (_, Some(d)) => Outcome::Hit(d.clone()),
            (_, None) => Outcome::Failed(UpstreamFailure::Aborted),
        }
    }
}

/// The answer for metadata endpoint `ep` of `index` with the validated `query`, and how long it
/// is kept: from `cache` while fresh, else fetched once for every request waiting on the key.
pub async fn lookup(
    core: &Core,
    cache: &MetadataCache,
    client: &awc::Client,
    ep: &'static Endpoint,
    index: &str,
    query: &str,
) -> (Outcome, Duration) {
    let origin = core.upstream.metadata_origin(ep.api, index);
    let key = format!("meta|{}|{}|{}|{query}", origin.upstream_id, origin.credential_id, ep.path);
    let ttl = if ep.copyright { core.settings.copyright_ttl } else { core.settings.metadata_ttl };
    let clock = core.clock.clone();
    let fetch = || fetch(core, client, ep, core.upstream.metadata_url(ep.api, index, ep.path, query));
    (cache.get(key, ttl, move || clock.now_ms(), fetch).await, ttl)
}

/// Asks the upstream once (with the tile fetches' retries), through the breaker and the rate
/// cap, and reads the body. `url` holds the key: never log it.
async fn fetch(st: &Core, client: &awc::Client, ep: &Endpoint, url: String) -> Result<Document, UpstreamFailure> {
    let permit = st
        .breakers
        .acquire(ep.api, st.clock.now_ms())
        .map_err(|wait| UpstreamFailure::BreakerOpen { retry_after_secs: wait.as_secs().max(1) })?;
    let (result, healthy) = fetch_document(st, client, ep, &url).await;
    crate::service::fetch::note_breaker(st, ep.api, permit.record(healthy, st.clock.now_ms()));
    if let Err(f) = &result {
        tracing::warn!(endpoint = ep.path, failure = f.label(), "metadata fetch failed");
    }
    result
}

/// The fetch itself, and whether the upstream behaved (for the breaker).
async fn fetch_document(
    st: &Core,
    client: &awc::Client,
    ep: &Endpoint,
    url: &str,
) -> (Result<Document, UpstreamFailure>, bool) {
    let m = &st.metrics;
    let gate = || st.protect.cap.admit(ep.api);
    let head = upstream::fetch_head(client, &st.upstream, url, None, gate, |log| {
        m.upstream_requests.with_label_values(&[METRICS_INDEX, &log.status_label, log.protocol, ep.api.as_str()]).inc();
        m.upstream_latency.with_label_values(&[METRICS_INDEX]).observe(log.elapsed.as_secs_f64());
    })
    .await;
    let mut response = match head {
        Ok(r) => r,
        // Refused by the rate cap: nothing was sent.
        Err(f @ UpstreamFailure::Busy { .. }) => return (Err(f), true),
        Err(f) => {
            st.health.upstream_failed(ep.api, f.label());
            return (Err(f), false);
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers();
    let text = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let encoded = text(header::CONTENT_ENCODING).is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    if let Err((failure, upstream_ok)) = classify(status, text(header::RETRY_AFTER), encoded) {
        crate::service::fetch::note_refused(st, ep.api, status, &failure, upstream_ok);
        return (Err(failure), upstream_ok);
    }
    let content_type = headers.get(header::CONTENT_TYPE).cloned();
    let body = tokio::time::timeout(st.upstream.settings.body_timeout, response.body().limit(MAX_BODY)).await;
    match body {
        Ok(Ok(body)) => {
            st.health.upstream_ok(ep.api);
            let body = crate::domain::scrub::scrub(body, st.upstream.secrets());
            (Ok(Document::new(body, content_type, st.clock.now_ms())), true)
        }
        Ok(Err(_)) => (Err(UpstreamFailure::Body), false),
        Err(_) => (Err(UpstreamFailure::Timeout), false),
    }
}

/// What an upstream status means for a metadata fetch: `Ok` to read the 200's body, else the
/// failure and whether the upstream itself is up (for the breaker). A compressed body is refused:
/// it could not be scrubbed of the key (we send no `Accept-Encoding`, so HERE should not send one).
pub fn classify(status: u16, retry_after: Option<&str>, encoded: bool) -> Result<(), (UpstreamFailure, bool)> {
    match status {
        200 if encoded => Err((UpstreamFailure::Status(200), true)),
        200 => Ok(()),
        // 404, 3xx (a redirect echoes the URL and its key), anything else: never relayed.
        s => Err(failure_of(s, retry_after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn doc(body: &str, at: u64) -> Document {
        Document::new(Bytes::from(body.to_string()), None, at)
    }

    #[test]
    fn endpoints_and_statuses() {
        assert_eq!(endpoint("/v3/copyright").map(|e| e.copyright), Some(true));
        assert_eq!(endpoint("/v2/vectortiles/politicalViews").map(|e| e.api), Some(Api::Vector));
        assert!(endpoint("/v3/health").is_none() && endpoint("/v3/info/").is_none());
        let cases: &[(u16, bool, Option<UpstreamFailure>, bool)] = &[
            (200, false, None, true),
            (200, true, Some(UpstreamFailure::Status(200)), true),
            (401, false, Some(UpstreamFailure::Auth), true),
            (404, false, Some(UpstreamFailure::Status(404)), true),
            (302, false, Some(UpstreamFailure::Status(302)), true),
            (429, false, Some(UpstreamFailure::RateLimited { retry_after_secs: Some(3) }), false),
            (503, false, Some(UpstreamFailure::Status(503)), false),
        ];
        for (status, encoded, failure, up) in cases {
            match classify(*status, Some("3"), *encoded) {
                Ok(()) => assert!(failure.is_none(), "{status}"),
                Err((f, ok)) => assert_eq!((Some(f), ok), (failure.clone(), *up), "{status}"),
            }
        }
    }

    #[actix_rt::test]
    async fn fresh_copies_hit_expired_ones_refetch_and_failures_fall_back() {
        let cache = MetadataCache::default();
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = || {
            let now = now.clone();
            move || now.load(Ordering::SeqCst)
        };
        let ttl = Duration::from_secs(60);
        let k = || "k".to_string();
        let at = now.load(Ordering::SeqCst);
        assert!(matches!(cache.get(k(), ttl, clock(), || async { Ok(doc("a", at)) }).await, Outcome::Miss(_)));
        let unused = || async { Err(UpstreamFailure::Connect) };
        assert!(matches!(cache.get(k(), ttl, clock(), unused).await, Outcome::Hit(d) if d.body == "a"));
        now.fetch_add(60_000, Ordering::SeqCst);
        let failing = || async { Err(UpstreamFailure::Timeout) };
        let stale = cache.get(k(), ttl, clock(), failing).await;
        assert!(matches!(&stale, Outcome::Stale(d, UpstreamFailure::Timeout) if d.body == "a"), "{stale:?}");
        let at = now.load(Ordering::SeqCst);
        assert!(
            matches!(cache.get(k(), ttl, clock(), || async { Ok(doc("b", at)) }).await, Outcome::Miss(d) if d.body == "b")
        );
        let none = cache.get("other".into(), ttl, clock(), || async { Err(UpstreamFailure::Connect) }).await;
        assert!(matches!(none, Outcome::Failed(UpstreamFailure::Connect)));
    }
}

//! The HTTP face of the tile service: parse the request, check the index, ask
//! the tile service (`AppState::tiles`), and turn its answer into a response.
//!
//! Every tile response head, hit or miss, is built by [`response_head`] from the answer's
//! metadata, the index's lifetime for it and the client's representation
//! ([`encoding::tile_representation`]): `Cache-Control: max-age=<lifetime>` with
//! `Age: <elapsed>` (RFC 9111: downstream caches subtract the age themselves), the same ETag
//! (per encoding), `Last-Modified` (the upstream's, else when the bytes were fetched),
//! `Content-Type` only when there is a body, `Content-Encoding` and `Vary`. A client's
//! `If-None-Match` or `If-Modified-Since` that matches gets 304 (If-None-Match first).

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use futures_util::StreamExt;

use crate::config::UnknownIndices;
use crate::domain::encoding::{self, Representation};
use crate::domain::freshness;
use crate::domain::routes::{self, ParseOptions};
use crate::http::access_log::{self, TileId};
use crate::http::conditional::not_modified_since;
use crate::http::error::ProxyError;
use crate::http::state::{AppState, State};
use crate::observe::metrics::IndexMetrics;
use crate::service::tiles::{Answer, Body};

/// Header names of every tile answer, made once.
const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
const X_CACHE_TIER: header::HeaderName = header::HeaderName::from_static("x-cache-tier");
const X_CACHE_REASON: header::HeaderName = header::HeaderName::from_static("x-cache-reason");

/// GET/HEAD on every tile route.
pub async fn tile(req: HttpRequest, state: State, client: web::Data<awc::Client>) -> HttpResponse {
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
        Ok(None) => {
            // Not a tile: the map page, TileJSON, HERE's metadata (cold path), else 404.
            return match crate::http::site::route(&req, &state, &client).await {
                Some(res) => res,
                None => ProxyError::NotFound.response(),
            };
        }
        Err(e) => {
            access_log::note(&req, |a| a.cache = "invalid");
            state.metrics.requests.with_label_values(&["_invalid", "invalid"]).inc();
            return ProxyError::BadRequest(e).response();
        }
    };
    if state.settings.unknown_indices == UnknownIndices::Reject && !state.settings.policies.contains_key(&t.index) {
        access_log::note(&req, |a| a.cache = "invalid");
        state.metrics.requests.with_label_values(&["_invalid", "unknown_index"]).inc();
        return ProxyError::UnknownIndex.response();
    }
    let index = state.metrics.index(&t.index);
    access_log::note(&req, |a| {
        a.index = Some(index.clone());
        a.tile = Some(TileId { api: t.api.as_str(), resource: t.resource, z: t.z, x: t.x, y: t.y });
    });
    let policy = state.settings.policy_for(&t.index, t.api.is_traffic());
    let mut limited = None;
    if let Some(rate) = policy.rate_limit {
        let trusted = &state.settings.trusted_proxies;
        // The built-in limit, behind a proxy we do not trust: one bucket would hold every user.
        let shared = rate.shipped.then(|| crate::http::client_ip::untrusted_forwarder(&req, trusted)).flatten();
        if let Some(peer) = shared {
            state.protect.clients.untrusted_forwarder(peer);
        } else if let Some(ip) = crate::http::client_ip::of_request(&req, trusted) {
            limited = state.protect.clients.check(ip, index.label(), rate).await;
            if let Some(v) = limited.filter(|v| !v.allowed) {
                access_log::note(&req, |a| a.cache = "rate_limited");
                index.count_request("rate_limited");
                let mut res = ProxyError::TooManyRequests { retry_after_secs: v.reset_secs }.response();
                v.headers(res.headers_mut());
                return res;
            }
        }
    }
    let mut res = answer(&req, &state, &client, &t, &index, policy).await;
    if let Some(v) = limited {
        v.headers(res.headers_mut());
    }
    res
}

/// Serves a validated, admitted tile request.
async fn answer(
    req: &HttpRequest,
    state: &AppState,
    client: &awc::Client,
    t: &routes::TileRequest,
    index: &IndexMetrics,
    policy: &crate::config::Policy,
) -> HttpResponse {
    match state.tiles.serve(client, t, index.label()).await {
        Ok(answer) => {
            access_log::note(req, |a| a.cache = answer.label);
            index.count_request(answer.label);
            if matches!(answer.label, "hit" | "stale") {
                state.bill.hit(index.label(), t.api);
            }
            if let Some(source) = answer.source {
                if answer.label != "stale" {
                    index.count_hit(source);
                }
            }
            let bytes = index.bytes(answer.label);
            let tags =
                state.settings.surrogate_keys.then(|| crate::domain::purge::surrogate_keys(&t.index, t.z, t.x, t.y));
            let rep =
                encoding::tile_representation(&state.settings, &answer.meta, answer.content_length, req.headers());
            let mut res = match rep {
                // Boxed: the hit path's future stays small.
                Representation::Encoded(encoding) => {
                    Box::pin(respond_encoded(req, state, t, answer, encoding, policy, bytes)).await
                }
                _ => respond(req, answer, rep, policy, state.clock.now_ms(), bytes),
            };
            if let Some(tags) = tags {
                // Fastly purges by Surrogate-Key (space separated), Cloudflare by Cache-Tag (comma).
                let h = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&tags.join(" ")) {
                    h.insert(header::HeaderName::from_static("surrogate-key"), v);
                }
                if let Ok(v) = HeaderValue::from_str(&tags.join(",")) {
                    h.insert(header::HeaderName::from_static("cache-tag"), v);
                }
            }
            res
        }
        Err(failure) => {
            access_log::note(req, |a| a.cache = "error");
            index.count_request("error");
            ProxyError::Upstream(failure).response()
        }
    }
}

/// The status of an answer without a body for this request: 304 to a matching
/// `If-None-Match` (on the ETag of the representation `rep`) or, without one, to an
/// `If-Modified-Since` no earlier than its `Last-Modified`; or 204.
fn bodiless(req: &HttpRequest, answer: &Answer, rep: Representation) -> Option<StatusCode> {
    match answer.meta.status {
        200 => {
            let etag = encoding::client_etag(answer.meta.client_etag(answer.content_length), rep);
            let modified = Some(answer.meta.client_last_modified());
            not_modified_since(req, etag.as_ref(), modified).then_some(StatusCode::NOT_MODIFIED)
        }
        204 => Some(StatusCode::NO_CONTENT),
        _ => None,
    }
}

/// The response for an answer as it is: head, then the body (whole or streamed).
fn respond(
    req: &HttpRequest,
    answer: Answer,
    rep: Representation,
    policy: &crate::config::Policy,
    now: u64,
    bytes: prometheus::IntCounter,
) -> HttpResponse {
    let mut b = response_head(&answer, rep, policy, now);
    if let Some(status) = bodiless(req, &answer, rep) {
        return b.status(status).finish();
    }
    match answer.body {
        Body::Full(body) => {
            bytes.inc_by(body.len() as u64);
            b.body(body)
        }
        Body::Flight(reader) => {
            if let Some(len) = answer.content_length {
                b.no_chunking(len);
            }
            b.streaming(reader.into_body().inspect(move |c| {
                if let Ok(c) = c {
                    bytes.inc_by(c.len() as u64);
                }
            }))
        }
    }
}

/// The response for an answer compressed with `encoding` for this client: the same head in that
/// representation, the body from [`crate::service::body::tile_body`] (a miss read whole first: a failure
/// before its end is our JSON error, never a short body).
async fn respond_encoded(
    req: &HttpRequest,
    state: &AppState,
    t: &routes::TileRequest,
    answer: Answer,
    encoding: encoding::Encoding,
    policy: &crate::config::Policy,
    bytes: prometheus::IntCounter,
) -> HttpResponse {
    let mut b = response_head(&answer, Representation::Encoded(encoding), policy, state.clock.now_ms());
    if let Some(status) = bodiless(req, &answer, Representation::Encoded(encoding)) {
        return b.status(status).finish();
    }
    let Answer { meta, content_length, body, .. } = answer;
    match crate::service::body::tile_body(&state.core, t, &meta, content_length, body, encoding).await {
        Ok(body) => {
            bytes.inc_by(body.len() as u64);
            b.body(body)
        }
        Err(failure) => ProxyError::Upstream(failure).response(),
    }
}

/// The one place a tile response head is built, for hits and misses alike, in the client's
/// representation `rep` (the answer's own, or compressed: ETag per encoding, `Vary`).
pub fn response_head(
    answer: &Answer,
    rep: Representation,
    policy: &crate::config::Policy,
    now: u64,
) -> HttpResponseBuilder {
    let meta = &answer.meta;
    let mut b = HttpResponse::build(StatusCode::from_u16(meta.status).unwrap_or(StatusCode::BAD_GATEWAY));
    b.insert_header((X_CACHE, HeaderValue::from_static(answer.x_cache)));
    if let (Some(source), "HIT" | "STALE") = (answer.source, answer.x_cache) {
        b.insert_header((X_CACHE_TIER, HeaderValue::from_static(source.as_str())));
    }
    b.insert_header((header::AGE, number_value(meta.age_secs(now))));
    b.insert_header((header::CACHE_CONTROL, cache_control_value(policy, answer.lifetime)));
    if let Some(etag) = encoding::client_etag(meta.client_etag(answer.content_length), rep) {
        b.insert_header((header::ETAG, etag));
    }
    b.insert_header((header::LAST_MODIFIED, http_date_value(meta.client_last_modified())));
    if let Some(ct) = &meta.content_type {
        b.insert_header((header::CONTENT_TYPE, ct.clone()));
    }
    if let Some(e) = rep.encoding() {
        b.insert_header((header::CONTENT_ENCODING, HeaderValue::from_static(e.as_str())));
    } else if let Some(ce) = &meta.content_encoding {
        b.insert_header((header::CONTENT_ENCODING, ce.clone()));
    }
    if rep.varies() || meta.content_encoding.is_some() {
        b.insert_header((header::VARY, HeaderValue::from_static("Accept-Encoding")));
    }
    if let Some(r) = answer.reason {
        b.insert_header((X_CACHE_REASON, HeaderValue::from_static(r)));
        let warning = if r == "revalidating" { "110 - \"Response is Stale\"" } else { "111 - \"Revalidation Failed\"" };
        b.insert_header((header::WARNING, HeaderValue::from_static(warning)));
    }
    b
}

/// A number as a header value, without `fmt` (which costs more than the rest of the value).
fn number_value(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// `secs` as an HTTP date header value: the last one made on this worker is reused (tiles
/// fetched in the same second share it), else it is made.
fn http_date_value(secs: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((s, v)) = last.as_ref() {
            if *s == secs {
                return v.clone();
            }
        }
        let value = HeaderValue::try_from(crate::domain::conditional::http_date(secs))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        *last = Some((secs, value.clone()));
        value
    })
}

/// The `Cache-Control` value for `lifetime` under `policy`: the last one made on this worker is
/// reused (an index's lifetime is the same for most of its tiles), else it is made.
fn cache_control_value(policy: &crate::config::Policy, lifetime: Option<Duration>) -> HeaderValue {
    type Made = (Option<String>, Option<u64>, HeaderValue);
    thread_local! {
        static LAST: std::cell::RefCell<Option<Made>> = const { std::cell::RefCell::new(None) };
    }
    let secs = lifetime.map(|l| l.as_secs());
    let template = policy.client_cache_control.as_deref();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((t, s, v)) = last.as_ref() {
            if *s == secs && t.as_deref() == template {
                return v.clone();
            }
        }
        let value = HeaderValue::try_from(freshness::client_cache_control(policy, lifetime))
            .unwrap_or_else(|_| HeaderValue::from_static("no-store"));
        *last = Some((template.map(str::to_string), secs, value.clone()));
        value
    })
}

//! HERE's metadata endpoints, proxied and cached: `/v3/info`, `/v3/copyright`, `/v3/languages`,
//! `/v3/features`, `/v3/politicalViews` (Raster Tile API v3) and `/v2/vectortiles/copyright`,
//! `/v2/vectortiles/politicalViews` (Vector Tile API v2).
//!
//! Same rules as tiles, in a smaller cache of their own ([`crate::service::metadata::MetadataCache`]):
//! - the query is validated ([`routes::parse_metadata_query`]): the client's `apiKey` dropped,
//!   `indice` read (its HERE key is used, as for its tiles), anything else unknown (HERE's
//!   OpenAPI declares no query parameter for these endpoints): 400 with `reject_unknown_params`;
//! - the upstream URL comes from the configured base, the fixed path and the key
//!   ([`crate::upstream::UpstreamConfig::metadata_url`]); the body is scrubbed of every key;
//! - one upstream fetch per key at a time, however many ask (waiters take its answer, success or
//!   failure); kept `metadata_ttl`, copyright `copyright_ttl` (at most 1 day: HERE's terms want
//!   copyright text refreshed daily), on our injected clock;
//! - the circuit breaker and the rate cap apply; budgets do not (they count tile fetches per
//!   index); attempts are counted in `tile_proxy_upstream_requests_total{index="_metadata"}`;
//! - a failing upstream gets the last good copy (`X-Cache: STALE`, any age: stale attribution
//!   beats none), else our JSON error.
//!
//! Answers are plain JSON responses (`Content-Type` as HERE sent it, our `ETag`,
//! `Cache-Control: public, max-age=<ttl>` with `Age`, `X-Cache: HIT|MISS|STALE`).

use std::time::Duration;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use crate::config::UnknownIndices;
use crate::domain::routes::{self, ParseOptions};
use crate::http::error::ProxyError;
use crate::http::state::AppState;
use crate::service::metadata::{endpoint, lookup, Document, Endpoint, Outcome};

/// A metadata answer, when `path` is a metadata endpoint.
pub async fn serve(req: &HttpRequest, state: &AppState, client: &awc::Client, path: &str) -> Option<HttpResponse> {
    let ep = endpoint(path)?;
    Some(answer(req, state, client, ep).await)
}

async fn answer(req: &HttpRequest, st: &AppState, client: &awc::Client, ep: &'static Endpoint) -> HttpResponse {
    let count = |cache: &'static str| {
        crate::http::access_log::note(req, |a| a.cache = cache);
        st.metrics.metadata_requests.with_label_values(&[ep.label, cache]).inc();
    };
    let opts = ParseOptions { reject_unknown_params: st.settings.reject_unknown_params };
    let (index, params) = match routes::parse_metadata_query(req.query_string(), opts) {
        Ok(q) => q,
        Err(e) => {
            count("invalid");
            return ProxyError::BadRequest(e).response();
        }
    };
    if st.settings.unknown_indices == UnknownIndices::Reject && !st.settings.policies.contains_key(&index) {
        count("invalid");
        return ProxyError::UnknownIndex.response();
    }
    let query = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let (outcome, ttl) = lookup(st, &st.metadata, client, ep, &index, &query).await;
    let now = st.clock.now_ms();
    match outcome {
        Outcome::Hit(d) => {
            count("hit");
            respond(req, &d, "HIT", None, ttl, now)
        }
        Outcome::Miss(d) => {
            count("miss");
            respond(req, &d, "MISS", None, ttl, now)
        }
        Outcome::Stale(d, f) => {
            count("stale");
            respond(req, &d, "STALE", Some(f.label()), ttl, now)
        }
        Outcome::Failed(f) => {
            count("error");
            ProxyError::Upstream(f).response()
        }
    }
}

/// The response for a document: our ETag (304 on a match), its content type, freshness.
fn respond(
    req: &HttpRequest,
    d: &Document,
    x_cache: &'static str,
    reason: Option<&'static str>,
    ttl: Duration,
    now: u64,
) -> HttpResponse {
    let mut b = HttpResponse::Ok();
    b.insert_header(("X-Cache", x_cache));
    b.insert_header((header::CACHE_CONTROL, format!("public, max-age={}", ttl.as_secs())));
    b.insert_header((header::AGE, now.saturating_sub(d.stored_at_ms) / 1000));
    b.insert_header((header::ETAG, d.etag.clone()));
    if let Some(r) = reason {
        b.insert_header(("X-Cache-Reason", r));
        b.insert_header((header::WARNING, "111 - \"Revalidation Failed\""));
    }
    if crate::http::conditional::not_modified(req, Some(&d.etag)) {
        return b.status(StatusCode::NOT_MODIFIED).finish();
    }
    b.insert_header((header::CONTENT_TYPE, d.content_type.clone()));
    b.body(d.body.clone())
}

//! What an upstream answer means ([`plan`]), decided from its status and headers alone. Pure
//! and table-tested.
//!
//! Only 200, 204, 304 (to our own revalidation), 404 and HERE's JSON 400 pass through; every
//! other status becomes our JSON error, with no upstream body and no `Location` (a redirect or an
//! error page can echo the request URL, which holds the server's key). The small bodies that do
//! pass whole (404, 400) are read completely and scrubbed of the key (`domain::scrub`).

use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderValue};

use crate::domain::conditional::http_date_secs;
use crate::domain::entry::{Freshness, Meta};
use crate::domain::failure::UpstreamFailure;
use crate::domain::freshness;
use crate::domain::routes::TileRequest;

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
    pub last_modified: Option<String>,
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
            last_modified: s(header::LAST_MODIFIED),
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
    /// Our `If-None-Match` or `If-Modified-Since` came back 304: the old copy is good, with
    /// these new facts (`last_modified`: a new `Last-Modified` on the 304, if any).
    NotModified { freshness: Freshness, last_modified: Option<u64> },
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
    let last_modified = h.last_modified.as_deref().and_then(http_date_secs);
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
        last_modified,
    };
    let fail = |failure, upstream_ok| Plan::Fail { failure, upstream_ok };
    match status {
        200 => Plan::Stream {
            meta: meta(),
            content_length: h.content_length,
            storable: h.content_length.is_some_and(|l| l <= max_entry as u64),
        },
        204 => Plan::Stream { meta: meta(), content_length: None, storable: true },
        304 if revalidating => Plan::NotModified { freshness: facts, last_modified },
        404 => Plan::Whole { meta: meta() },
        400 if h.content_type.as_ref().is_some_and(|c| c.to_str().unwrap_or("").contains("json")) => {
            Plan::Whole { meta: meta() }
        }
        // 1xx, 3xx (a redirect would leak the URL it echoes), unexpected 2xx/4xx, an unasked 304.
        s => {
            let (failure, upstream_ok) = failure_of(s, h.retry_after.as_deref());
            fail(failure, upstream_ok)
        }
    }
}

/// What a status that is not relayed means: the failure a client is told, and whether the
/// upstream itself works (for the breaker and `/health`). 401/403: our key was refused (the
/// upstream works); 429 (with its `Retry-After`) and 5xx: the upstream is struggling; anything
/// else (1xx, 3xx, an unexpected 2xx or 4xx): an answer we do not pass on.
pub fn failure_of(status: u16, retry_after: Option<&str>) -> (UpstreamFailure, bool) {
    match status {
        401 | 403 => (UpstreamFailure::Auth, true),
        429 => (
            UpstreamFailure::RateLimited {
                retry_after_secs: retry_after.and_then(parse_retry_after).map(|d| d.as_secs()),
            },
            false,
        ),
        s if s >= 500 => (UpstreamFailure::Status(s), false),
        s => (UpstreamFailure::Status(s), true),
    }
}

/// Parses `Retry-After` in seconds (HTTP dates are ignored: HERE sends seconds if anything).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(3600)))
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
        assert_eq!(meta.last_modified, None);
        h.last_modified = Some("Sat, 11 Dec 2021 19:43:31 GMT".into());
        let Plan::Stream { meta, .. } = plan(200, &h, &tile(), false, 1000, 7) else { panic!() };
        assert_eq!(meta.last_modified, Some(1_639_251_811), "the upstream's Last-Modified is kept");
        let Plan::NotModified { last_modified, .. } = plan(304, &h, &tile(), true, 1000, 7) else { panic!() };
        assert_eq!(last_modified, Some(1_639_251_811));
        h.last_modified = Some("yesterday".into());
        let Plan::Stream { meta, .. } = plan(200, &h, &tile(), false, 1000, 7) else { panic!() };
        assert_eq!(meta.last_modified, None, "an unparseable date is no date");
        h.last_modified = None;
        let Plan::Stream { meta, content_length, .. } = plan(204, &h, &tile(), false, 1000, 7) else { panic!() };
        assert_eq!((meta.content_type, meta.content_encoding, content_length), (None, None, None));
        let Plan::Fail { failure, .. } =
            plan(429, &UpstreamHead { retry_after: Some("7".into()), ..h }, &tile(), false, 1000, 0)
        else {
            panic!()
        };
        assert_eq!(failure, UpstreamFailure::RateLimited { retry_after_secs: Some(7) });
    }
}

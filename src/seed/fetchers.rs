//! The two ways a seed job asks for a tile ([`Fetcher`]): plain HTTP GETs to a running proxy
//! ([`ThroughProxy`], reading its `X-Cache` header and JSON errors), or straight through a
//! [`TileService`] into the cache ([`Direct`]: `seed --direct` and `POST /admin/seed`).

use std::time::Duration;

use futures_util::StreamExt;

use super::run::{Fetched, Fetcher};
use super::tiles::JobError;
use crate::config::{Settings, UnknownIndices};
use crate::domain::failure::UpstreamFailure;
use crate::domain::routes::{self, ParseOptions};
use crate::service::tiles::{Body, TileService};

/// Largest tile body read through a proxy.
const MAX_BODY: usize = 64 << 20;
/// How long one request through a proxy may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The wait when a busy or rate-limit answer names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// GETs tiles from a running proxy at `base` (e.g. `http://127.0.0.1:8080`).
pub struct ThroughProxy {
    client: awc::Client,
    base: String,
}

impl ThroughProxy {
    pub fn new(base: &str) -> ThroughProxy {
        let client = awc::Client::builder().timeout(REQUEST_TIMEOUT).disable_redirects().finish();
        ThroughProxy { client, base: base.trim_end_matches('/').to_string() }
    }
}

impl Fetcher for ThroughProxy {
    async fn fetch(&self, url: &str) -> Fetched {
        let mut res = match self.client.get(format!("{}{url}", self.base)).send().await {
            Ok(res) => res,
            Err(e) => return Fetched::Failed(format!("request to {} failed: {e}", self.base)),
        };
        let header = |name| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (x_cache, retry_after) = (header("x-cache"), header("retry-after"));
        let body = match res.body().limit(MAX_BODY).await {
            Ok(body) => body,
            Err(e) => return Fetched::Failed(format!("body: {e}")),
        };
        classify(res.status().as_u16(), x_cache.as_deref(), retry_after.as_deref(), &body)
    }
}

/// What a proxy's answer means for the seeder: its `X-Cache` when it served the tile (whatever
/// the status: a cached 404 is a tile too), else its JSON error.
pub fn classify(status: u16, x_cache: Option<&str>, retry_after: Option<&str>, body: &[u8]) -> Fetched {
    match x_cache.map(str::to_ascii_uppercase).as_deref() {
        Some("HIT" | "STALE") => return Fetched::Cached,
        Some("MISS") => return Fetched::Fetched,
        _ => {}
    }
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = json["error"].as_str().unwrap_or("");
    let wait = retry_after.and_then(|s| s.trim().parse().ok()).map_or(DEFAULT_WAIT, Duration::from_secs);
    match (status, error) {
        (429, "budget_exhausted") => Fetched::BudgetExhausted {
            window: json["window"].as_str().unwrap_or("window").to_string(),
            retry_after_secs: json["retry_after_seconds"].as_u64().unwrap_or(wait.as_secs()),
        },
        (429, _) | (503, "upstream_busy") => Fetched::Wait(wait),
        (400..=499, _) => Fetched::Refused(describe(status, error, &json)),
        _ => Fetched::Failed(describe(status, error, &json)),
    }
}

fn describe(status: u16, error: &str, json: &serde_json::Value) -> String {
    match json["message"].as_str() {
        Some(m) => format!("status {status} {error}: {m}"),
        None => format!("status {status} {error}"),
    }
}

/// Fetches through this process's own [`TileService`] (its cache tiers, flights, budget), with
/// `client` (awc is not `Send`: one per thread).
pub struct Direct {
    pub service: TileService,
    pub client: awc::Client,
}

impl Fetcher for Direct {
    async fn fetch(&self, url: &str) -> Fetched {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let tile = match routes::parse(path, query, ParseOptions { reject_unknown_params: true }) {
            Ok(Some(tile)) => tile,
            Ok(None) => return Fetched::Refused(format!("`{path}` is not a tile route")),
            Err(e) => return Fetched::Refused(e.to_string()),
        };
        let label = self.service.core().metrics.index_label(&tile.index);
        match self.service.serve(&self.client, &tile, label).await {
            Ok(answer) if matches!(answer.x_cache, "HIT" | "STALE") => Fetched::Cached,
            Ok(answer) => drain(answer.body).await,
            Err(UpstreamFailure::BudgetExhausted { window, retry_after_secs }) => {
                Fetched::BudgetExhausted { window: window.to_string(), retry_after_secs }
            }
            Err(UpstreamFailure::Busy { retry_after_secs }) => Fetched::Wait(Duration::from_secs(retry_after_secs)),
            Err(failure) => Fetched::Failed(failure.to_string()),
        }
    }
}

/// Reads a miss's flight to its end, so the fetch completes and is stored.
async fn drain(body: Body) -> Fetched {
    let Body::Flight(reader) = body else {
        return Fetched::Fetched;
    };
    let mut chunks = std::pin::pin!(reader.into_body());
    while let Some(chunk) = chunks.next().await {
        if let Err(e) = chunk {
            return Fetched::Failed(format!("body: {e}"));
        }
    }
    Fetched::Fetched
}

/// In direct mode the proxy's own rule on unconfigured indices applies before anything starts.
pub fn check_index(settings: &Settings, index: &str) -> Result<(), JobError> {
    if settings.unknown_indices == UnknownIndices::Reject && !settings.policies.contains_key(index) {
        return Err(JobError {
            field: "index",
            message: format!("index `{index}` is not configured and unknown_indices = \"reject\""),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_answers_are_classified() {
        assert_eq!(classify(200, Some("HIT"), None, b""), Fetched::Cached);
        assert_eq!(classify(200, Some("stale"), None, b""), Fetched::Cached);
        assert_eq!(classify(200, Some("MISS"), None, b""), Fetched::Fetched);
        assert_eq!(classify(404, Some("MISS"), None, b""), Fetched::Fetched);
        let budget = br#"{"error":"budget_exhausted","window":"hour","retry_after_seconds":1200}"#;
        assert_eq!(
            classify(429, Some("ERROR"), Some("1200"), budget),
            Fetched::BudgetExhausted { window: "hour".into(), retry_after_secs: 1200 }
        );
        let busy = br#"{"error":"upstream_busy","message":"queue full"}"#;
        assert_eq!(classify(503, Some("ERROR"), Some("3"), busy), Fetched::Wait(Duration::from_secs(3)));
        let limited = br#"{"error":"too_many_requests"}"#;
        assert_eq!(classify(429, None, Some("2"), limited), Fetched::Wait(Duration::from_secs(2)));
        assert_eq!(classify(429, None, None, b""), Fetched::Wait(DEFAULT_WAIT));
        assert!(matches!(classify(400, Some("ERROR"), None, br#"{"error":"invalid_request"}"#), Fetched::Refused(_)));
        assert!(matches!(classify(502, Some("ERROR"), None, br#"{"error":"upstream_error"}"#), Fetched::Failed(_)));
        assert!(matches!(classify(503, Some("ERROR"), None, br#"{"error":"breaker_open"}"#), Fetched::Failed(_)));
    }
}

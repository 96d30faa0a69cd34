//! Calls to HERE: the upstream URL (built from configured bases and validated parts only), the
//! per-worker awc client, and the retry loop.
//!
//! Transient failures before any byte reaches a client (connect errors, timeouts, 429, 502, 503,
//! 504) are retried with exponential backoff and jitter (`backon`), bounded by attempts and total
//! delay, honouring `Retry-After`. What comes back is the response head; its body is streamed by
//! the caller and is never retried once relayed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::error::{ConnectError, SendRequestError};
use backon::{ExponentialBuilder, Retryable};

use crate::base::tls::ca_certificates;
use crate::config::{Settings, UpstreamSettings};
use actix_web::http::header::{self, HeaderName, HeaderValue};

use crate::domain::entry::Meta;
use crate::domain::failure::UpstreamFailure;
use crate::domain::key::{index_key, CacheKey, Origin, SERVER_KEY};
use crate::domain::plan::parse_retry_after;
use crate::domain::routes::{Api, TileRequest};

/// One credential: the key sent upstream and the origins (cache-key identities) it gives, one
/// per API ([`Api::index`] order). The origins name the key's holder (`holder`: the server, an
/// index), not the key: a rotated key keeps the cache.
struct Credential {
    key: Option<String>,
    origins: [Origin; 4],
}

impl Credential {
    fn new(bases: &[String; 4], key: Option<String>, holder: &str) -> Credential {
        let holder = key.as_ref().map(|_| holder);
        Credential { origins: bases.each_ref().map(|b| Origin::new(b, holder)), key }
    }
}

/// Where and how to call the upstream, with which key for which index. Shared by all workers.
pub struct UpstreamConfig {
    /// Each API's base URL ([`Api::index`] order).
    bases: [String; 4],
    /// The server's key, used by every index without one of its own.
    default: Credential,
    /// Indices with their own HERE key (multi-tenant): their tiles are separate entries.
    by_index: HashMap<String, Credential>,
    /// Every key, to scrub from anything relayed.
    secrets: Vec<String>,
    pub settings: UpstreamSettings,
}

impl UpstreamConfig {
    pub fn from_settings(s: &Settings) -> Self {
        let bases = [
            s.raster_upstream.clone(),
            s.vector_upstream.clone(),
            s.traffic_raster_upstream.clone(),
            s.traffic_vector_upstream.clone(),
        ];
        let by_index: HashMap<String, Credential> = s
            .index_keys
            .iter()
            .map(|(i, k)| (i.clone(), Credential::new(&bases, Some(k.clone()), &index_key(i))))
            .collect();
        let secrets = s.api_key.iter().chain(s.index_keys.values()).cloned().collect();
        Self {
            default: Credential::new(&bases, s.api_key.clone(), SERVER_KEY),
            bases,
            by_index,
            secrets,
            settings: s.upstream.clone(),
        }
    }

    /// Base URL for an API (for `/health`).
    pub fn base(&self, api: Api) -> &str {
        &self.bases[api.index()]
    }

    fn credential(&self, index: &str) -> &Credential {
        self.by_index.get(index).unwrap_or(&self.default)
    }

    /// Who answers this request: the identity its cache key is built from.
    pub fn origin(&self, t: &TileRequest) -> &Origin {
        &self.credential(&t.index).origins[t.api.index()]
    }

    /// The cache key of a request.
    pub fn cache_key(&self, t: &TileRequest) -> CacheKey {
        CacheKey::of(t, self.origin(t))
    }

    /// Every configured key (to scrub from relayed bodies).
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// The upstream URL of a tile: configured base + HERE path + normalised query + the index's
    /// key (or the server's). Never log it: it holds the key.
    pub fn url(&self, t: &TileRequest) -> String {
        self.url_of(t.api, &t.index, &t.upstream_path(), &t.query_string())
    }

    /// Who answers a metadata request of `index` on `api` (its cache identity).
    pub fn metadata_origin(&self, api: Api, index: &str) -> &Origin {
        &self.credential(index).origins[api.index()]
    }

    /// The upstream URL of a metadata request: configured base + one of the fixed metadata paths
    /// + its validated query + the index's key (or the server's). Never log it.
    pub fn metadata_url(&self, api: Api, index: &str, path: &'static str, query: &str) -> String {
        self.url_of(api, index, path, query)
    }

    fn url_of(&self, api: Api, index: &str, path: &str, query: &str) -> String {
        let mut url = format!("{}{}", self.base(api), path);
        let mut sep = '?';
        if !query.is_empty() {
            url.push(sep);
            url.push_str(query);
            sep = '&';
        }
        if let Some(key) = &self.credential(index).key {
            url.push(sep);
            url.push_str(api.key_param());
            url.push('=');
            url.push_str(key);
        }
        url
    }
}

/// Builds a worker's awc client: no decompression (bodies are relayed as they come), bounded
/// connection pool, connect and response-head timeouts, no redirects.
///
/// TLS trusts the public web roots plus `s.ca_pem`'s CAs, and offers `h2` and `http/1.1` by
/// ALPN (`http/1.1` alone when `s.http2` is false): the upstream picks. On `h2` one pooled
/// connection carries many requests at once; `http://` upstreams always get HTTP/1.1.
pub fn build_client(s: &UpstreamSettings) -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(Arc::new(tls_config(s)))
        .timeout(s.connect_timeout)
        .limit(s.max_connections)
        .conn_keep_alive(Duration::from_secs(30));
    awc::Client::builder()
        .connector(connector)
        .timeout(s.head_timeout)
        .disable_redirects()
        .no_default_headers()
        .add_default_header(("User-Agent", concat!("tile-proxy/", env!("CARGO_PKG_VERSION"))))
        .finish()
}

/// How a stored copy is revalidated: HERE answers 304 to either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validator {
    /// `If-None-Match` with the upstream's ETag.
    Etag(HeaderValue),
    /// `If-Modified-Since` with the upstream's `Last-Modified` (Unix seconds).
    ModifiedSince(u64),
}

impl Validator {
    /// The validator of a stored answer: its ETag, else its `Last-Modified` (only what the
    /// upstream itself sent: our derived ETag or stored time mean nothing to it). `None`: it
    /// cannot be revalidated (only a 200 is).
    pub fn of(meta: &Meta) -> Option<Validator> {
        if meta.status != 200 {
            return None;
        }
        match (&meta.etag, meta.last_modified) {
            (Some(etag), _) => Some(Validator::Etag(etag.clone())),
            (None, Some(at)) => Some(Validator::ModifiedSince(at)),
            (None, None) => None,
        }
    }

    /// The request header it is sent as.
    pub fn header(&self) -> (HeaderName, HeaderValue) {
        match self {
            Validator::Etag(etag) => (header::IF_NONE_MATCH, etag.clone()),
            Validator::ModifiedSince(at) => {
                let date = crate::domain::conditional::http_date(*at);
                (header::IF_MODIFIED_SINCE, HeaderValue::from_str(&date).unwrap_or(HeaderValue::from_static("")))
            }
        }
    }
}

/// The ALPN protocols offered, most preferred first.
fn alpn_protocols(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

/// The client's TLS configuration: the web roots awc would use, the operator's CAs (checked when
/// the settings were loaded, so none is refused here), the ALPN offer.
fn tls_config(s: &UpstreamSettings) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    match s.ca_pem.as_deref().map(ca_certificates) {
        Some(Ok(certs)) => {
            roots.add_parsable_certificates(certs);
        }
        Some(Err(e)) => tracing::error!(error = %e, "upstream.ca_file is not used"),
        None => {}
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn_protocols(s.http2);
    config
}

/// The `protocol` label of `tile_proxy_upstream_requests_total` for an answer that came over
/// `version`: `http/1.1`, `h2` (ALPN's names), `http/1.0`.
pub fn protocol_label(version: actix_web::http::Version) -> &'static str {
    use actix_web::http::Version;
    match version {
        Version::HTTP_11 => "http/1.1",
        Version::HTTP_2 => "h2",
        Version::HTTP_10 => "http/1.0",
        Version::HTTP_09 => "http/0.9",
        Version::HTTP_3 => "h3",
        _ => "other",
    }
}

/// The `protocol` label of an attempt that failed before any answer.
pub const NO_PROTOCOL: &str = "none";

/// One attempt's result, as the retry loop sees it.
pub enum Attempt {
    /// Transport failure, and what the transport said (the OS error, scrubbed of every key).
    Failed(UpstreamFailure, Option<String>),
    /// The upstream answered with a retryable status; the response is kept for the last attempt.
    Retryable { response: awc::ClientResponse, retry_after: Option<Duration> },
}

/// What a finished fetch of the head reports, for metrics.
pub struct AttemptLog {
    pub status_label: String,
    /// [`protocol_label`] of the answer, or [`NO_PROTOCOL`].
    pub protocol: &'static str,
    pub elapsed: Duration,
    /// Why a transport failure failed (`Connection refused (os error 111)`, a DNS error, ...),
    /// scrubbed of every key; `None` for an answer.
    pub error: Option<String>,
}

/// True for statuses worth another try.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

fn classify(e: &SendRequestError) -> UpstreamFailure {
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => UpstreamFailure::Timeout,
        _ => UpstreamFailure::Connect,
    }
}

/// Sends the request (with retries) and returns the final response head, or the failure.
///
/// Every attempt first passes `gate` (the rate cap: it may wait for the attempt's turn, or
/// refuse it with `Busy`, which ends the fetch without retrying). A final retryable status
/// (e.g. the third 503) is returned as `Ok(response)`: the caller decides what a client sees.
/// `on_attempt` is called once per attempt sent, for metrics.
pub async fn fetch_head<G: std::future::Future<Output = Result<(), UpstreamFailure>>>(
    client: &awc::Client,
    cfg: &Arc<UpstreamConfig>,
    url: &str,
    validator: Option<&Validator>,
    gate: impl Fn() -> G,
    mut on_attempt: impl FnMut(AttemptLog),
) -> Result<awc::ClientResponse, UpstreamFailure> {
    let s = &cfg.settings;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(s.retry_min_delay)
        .with_max_delay(s.retry_max_delay)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(s.retry_attempts.saturating_sub(1))
        .with_total_delay(Some(s.retry_total));
    let max_delay = s.retry_max_delay.max(s.retry_min_delay);
    let attempt = || {
        let turn = gate();
        async move {
            if let Err(f) = turn.await {
                return Err((Attempt::Failed(f, None), Duration::ZERO));
            }
            // Built after the wait: awc's timeout starts when the request is built.
            let mut req = client.get(url).no_decompress();
            if let Some(v) = validator {
                req = req.insert_header(v.header());
            }
            let started = Instant::now();
            let result = req.send().await;
            let elapsed = started.elapsed();
            match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if is_retryable_status(status) {
                        let retry_after = response
                            .headers()
                            .get(actix_web::http::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_retry_after);
                        Err((Attempt::Retryable { response, retry_after }, elapsed))
                    } else {
                        Ok((response, elapsed))
                    }
                }
                Err(e) => {
                    let said = crate::domain::scrub::scrub(bytes::Bytes::from(e.to_string()), cfg.secrets());
                    let said = String::from_utf8_lossy(&said).into_owned();
                    Err((Attempt::Failed(classify(&e), Some(said)), elapsed))
                }
            }
        }
    };
    let result = attempt
        .retry(backoff)
        .when(|(a, _): &(Attempt, Duration)| !matches!(a, Attempt::Failed(UpstreamFailure::Busy { .. }, _)))
        .notify(|(a, elapsed): &(Attempt, Duration), _| on_attempt_log(&mut on_attempt, a, *elapsed))
        .adjust(|(a, _): &(Attempt, Duration), planned| match a {
            // Honour Retry-After, but never wait longer than the configured bound.
            Attempt::Retryable { retry_after: Some(ra), .. } => planned.map(|_| (*ra).min(max_delay)),
            _ => planned,
        })
        .await;
    match result {
        Ok((response, elapsed)) => {
            on_attempt(AttemptLog {
                status_label: response.status().as_u16().to_string(),
                protocol: protocol_label(response.version()),
                elapsed,
                error: None,
            });
            Ok(response)
        }
        Err((a, elapsed)) => {
            on_attempt_log(&mut on_attempt, &a, elapsed);
            match a {
                Attempt::Retryable { response, .. } => Ok(response),
                Attempt::Failed(f, _) => Err(f),
            }
        }
    }
}

fn on_attempt_log(on_attempt: &mut impl FnMut(AttemptLog), a: &Attempt, elapsed: Duration) {
    let (status_label, protocol, error) = match a {
        // Refused by the rate cap: nothing was sent.
        Attempt::Failed(UpstreamFailure::Busy { .. }, _) => return,
        Attempt::Failed(f, said) => (f.label().to_string(), NO_PROTOCOL, said.clone()),
        Attempt::Retryable { response, .. } => {
            (response.status().as_u16().to_string(), protocol_label(response.version()), None)
        }
    };
    on_attempt(AttemptLog { status_label, protocol, elapsed, error });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Settings};
    use crate::domain::routes::{parse, ParseOptions};

    fn cfg(key: Option<&str>) -> UpstreamConfig {
        let s = Settings::from_file_config(FileConfig {
            here_api_key: key.map(String::from),
            upstream_requires_key: key.is_some(),
            raster_upstream: "https://maps.example.com/".into(),
            vector_upstream: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .unwrap();
        UpstreamConfig::from_settings(&s)
    }

    #[test]
    fn urls_come_from_config_and_validated_parts() {
        let c = cfg(Some("SERVERKEY"));
        let cases = [
            (
                "/here-proxy/mc/5/15/13/png",
                "indice=1&apiKey=CLIENT&size=512&style=explore.day",
                "https://maps.example.com/v3/base/mc/5/15/13/png?size=512&apiKey=SERVERKEY",
            ),
            ("/v3/label/mc/1/0/1/jpeg", "", "https://maps.example.com/v3/label/mc/1/0/1/jpeg?apiKey=SERVERKEY"),
            (
                "/v2/vectortiles/core/mc/2/1/1/omv",
                "apikey=CLIENT&content=transit",
                "http://127.0.0.1:9/v2/vectortiles/core/mc/2/1/1/omv?content=transit&apikey=SERVERKEY",
            ),
        ];
        for (path, q, want) in cases {
            let t = parse(path, q, ParseOptions::default()).unwrap().unwrap();
            assert_eq!(c.url(&t), want);
        }
        // Traffic tiles go to their own hosts (HERE's defaults here), with their own origins.
        let traffic = [
            (
                "/v3/flow/mc/12/2200/1343/png",
                "size=512&minTrafficCongestion=heavy",
                "https://traffic.maps.hereapi.com/v3/flow/mc/12/2200/1343/png?minTrafficCongestion=heavy&apiKey=SERVERKEY",
            ),
            (
                "/v2/traffictiles/flow/mc/11/1100/671/omv",
                "apikey=CLIENT",
                "https://traffic.vector.hereapi.com/v2/traffictiles/flow/mc/11/1100/671/omv?apikey=SERVERKEY",
            ),
        ];
        for (path, q, want) in traffic {
            let t = parse(path, q, ParseOptions::default()).unwrap().unwrap();
            assert_eq!(c.url(&t), want);
            assert_ne!(c.origin(&t), c.metadata_origin(Api::Raster, "default"));
        }
        let t = parse("/here-proxy/1/0/0/png", "", ParseOptions::default()).unwrap().unwrap();
        assert_eq!(cfg(None).url(&t), "https://maps.example.com/v3/base/mc/1/0/0/png");
    }

    #[test]
    fn validators_prefer_the_etag_and_use_only_the_upstreams_own() {
        let meta = |status: u16, etag: Option<&'static str>, lm: Option<u64>| Meta {
            status,
            content_type: None,
            content_encoding: None,
            etag: etag.map(HeaderValue::from_static),
            stored_at_ms: 5_000_000,
            version_ms: 5_000_000,
            freshness: Default::default(),
            fetch_ms: 0,
            last_modified: lm,
        };
        let cases = [
            (meta(200, Some("\"v1\""), Some(1_639_251_811)), Some(("if-none-match", "\"v1\""))),
            (meta(200, None, Some(1_639_251_811)), Some(("if-modified-since", "Sat, 11 Dec 2021 19:43:31 GMT"))),
            (meta(200, None, None), None), // our stored time is not the upstream's date
            (meta(204, Some("\"v1\""), Some(1)), None),
            (meta(404, None, Some(1)), None),
        ];
        for (m, want) in cases {
            let got = Validator::of(&m).map(|v| v.header());
            let got = got.as_ref().map(|(n, v)| (n.as_str(), v.to_str().unwrap()));
            assert_eq!(got, want, "{m:?}");
        }
    }

    #[test]
    fn protocols_offered_and_labelled() {
        assert_eq!(alpn_protocols(true), [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(alpn_protocols(false), [b"http/1.1".to_vec()]);
        use actix_web::http::Version;
        assert_eq!(protocol_label(Version::HTTP_2), "h2");
        assert_eq!(protocol_label(Version::HTTP_11), "http/1.1");
        assert_eq!(protocol_label(Version::HTTP_10), "http/1.0");
    }

    #[test]
    fn retry_rules() {
        for (s, want) in [(429, true), (502, true), (503, true), (504, true), (500, false), (404, false), (200, false)]
        {
            assert_eq!(is_retryable_status(s), want, "{s}");
        }
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}

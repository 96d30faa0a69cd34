//! The server: shared state, routing that imitates HERE, fault injection and the
//! per-connection HTTP/1.1 loop. The `/__*` control endpoints live in [`crate::control`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::body::{self, BodyKind, Tile};
use crate::http::{self, Framing, Request, Response};
use crate::{control, image, mvt, Fault, Options, Recorded};

/// At most this many requests are kept for [`crate::Upstream::requests`] (oldest dropped);
/// counters are unaffected. Bounds memory in long benchmark runs.
pub(crate) const MAX_RECORDED: usize = 100_000;
/// Generated-body cache limits; the cache is simply cleared when either is exceeded.
const CACHE_MAX_ENTRIES: usize = 16_384;
const CACHE_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Piece size for [`Fault::BigBody`] bodies.
const BIG_BODY_PIECE: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Stats {
    total: u64,
    paths: HashMap<String, u64>,
    recorded: VecDeque<Recorded>,
}

struct Rule {
    needle: String,
    fault: Fault,
    /// `None` = until cleared.
    remaining: Option<usize>,
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Arc<Tile>>,
    bytes: usize,
}

/// State shared by the control handle and every connection task.
pub(crate) struct State {
    pub(crate) opts: Options,
    version: AtomicU64,
    /// The clock traffic tiles follow, Unix ms; 0: the wall clock.
    clock_ms: AtomicU64,
    /// Extra latency before counted responses, in nanoseconds (starts at `opts.latency`).
    latency_ns: AtomicU64,
    seq: AtomicU64,
    /// Counted requests so far: the index of the next [`jitter`] draw.
    jitter_seq: AtomicU64,
    stats: Mutex<Stats>,
    faults: Mutex<Vec<Rule>>,
    cache: Mutex<Cache>,
}

impl State {
    pub(crate) fn new(opts: Options) -> State {
        let latency_ns = u64::try_from(opts.latency.as_nanos()).unwrap_or(u64::MAX);
        State {
            opts,
            version: AtomicU64::new(0),
            clock_ms: AtomicU64::new(0),
            latency_ns: AtomicU64::new(latency_ns),
            seq: AtomicU64::new(0),
            jitter_seq: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(Vec::new()),
            cache: Mutex::new(Cache::default()),
        }
    }

    // ---- control API -------------------------------------------------------------------

    pub(crate) fn total(&self) -> u64 {
        lock(&self.stats).total
    }

    pub(crate) fn count(&self, path: &str) -> u64 {
        lock(&self.stats).paths.get(path).copied().unwrap_or(0)
    }

    pub(crate) fn count_matching(&self, needle: &str) -> u64 {
        lock(&self.stats).paths.iter().filter(|(p, _)| p.contains(needle)).map(|(_, n)| *n).sum()
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        lock(&self.stats).recorded.iter().cloned().collect()
    }

    pub(crate) fn add_rule(&self, needle: &str, fault: Fault, remaining: Option<usize>) {
        if remaining == Some(0) {
            return;
        }
        lock(&self.faults).push(Rule { needle: needle.to_string(), fault, remaining });
    }

    pub(crate) fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub(crate) fn reset(&self) {
        *lock(&self.stats) = Stats::default();
        self.clear_faults();
    }

    pub(crate) fn set_version(&self, v: u64) {
        self.version.store(v, Ordering::SeqCst);
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub(crate) fn set_clock_ms(&self, ms: u64) {
        self.clock_ms.store(ms, Ordering::SeqCst);
    }

    /// Now, Unix ms: the injected clock, else the wall clock.
    pub(crate) fn now_ms(&self) -> u64 {
        match self.clock_ms.load(Ordering::SeqCst) {
            0 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ms => ms,
        }
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.latency_ns.store(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The next draw of the per-request extra delay, uniform in `[0, opts.latency_jitter]`.
    pub(crate) fn jitter(&self) -> Duration {
        jitter(self.opts.latency_jitter, self.jitter_seq.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::SeqCst))
    }

    /// What `GET /__stats` answers.
    pub(crate) fn stats_json(&self) -> serde_json::Value {
        let stats = lock(&self.stats);
        let paths: serde_json::Map<String, serde_json::Value> =
            stats.paths.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let total = stats.total;
        drop(stats);
        json!({
            "total": total,
            "paths": paths,
            "version": self.version(),
            "latency_ms": self.latency().as_secs_f64() * 1000.0,
            "faults": self.rule_count(),
        })
    }

    /// The active fault rules in JSON, in matching order.
    pub(crate) fn rules_json(&self) -> Vec<serde_json::Value> {
        lock(&self.faults).iter().map(|r| control::rule_json(&r.needle, r.remaining, &r.fault)).collect()
    }

    pub(crate) fn rule_count(&self) -> usize {
        lock(&self.faults).len()
    }

    /// The body a 200 for `path_and_query` would carry.
    pub(crate) fn tile_bytes(&self, path_and_query: &str) -> Bytes {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        match classify(path) {
            Route::Tile { api: Api::TrafficRaster | Api::TrafficVector, .. } => {
                self.traffic_tile(path, query, self.now_ms() / 60_000).map(|t| t.body.clone()).unwrap_or_default()
            }
            Route::Tile { kind, .. } => self.tile(path, query, kind).body.clone(),
            Route::Meta(meta) => meta_body(meta),
            _ => self.tile(path, query, BodyKind::Omv).body.clone(),
        }
    }

    // ---- internals ---------------------------------------------------------------------

    pub(crate) fn correlation_id(&self) -> String {
        body::correlation_id(self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, req: &Request) {
        let mut stats = lock(&self.stats);
        stats.total += 1;
        *stats.paths.entry(req.path.clone()).or_insert(0) += 1;
        if stats.recorded.len() >= MAX_RECORDED {
            stats.recorded.pop_front();
        }
        stats.recorded.push_back(Recorded {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            at: std::time::Instant::now(),
        });
    }

    /// Finds the first rule (insertion order) whose needle is in `path` and consumes one use.
    fn take_fault(&self, path: &str) -> Option<Fault> {
        let mut rules = lock(&self.faults);
        let idx = rules.iter().position(|r| path.contains(r.needle.as_str()))?;
        let fault = rules[idx].fault.clone();
        if let Some(n) = rules[idx].remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(idx);
            }
        }
        Some(fault)
    }

    fn tile(&self, path: &str, query: &str, kind: BodyKind) -> Arc<Tile> {
        let version = self.version();
        let canonical = body::canonical_query(query);
        let key = format!("{version}\u{0}{path}\u{0}{canonical}");
        self.cached(key, || self.generate(version, path, query, &canonical, kind))
    }

    /// The generated-body cache: the tile under `key`, else `make`'s, kept.
    fn cached(&self, key: String, make: impl FnOnce() -> Tile) -> Arc<Tile> {
        if let Some(t) = lock(&self.cache).map.get(&key) {
            return t.clone();
        }
        let tile = Arc::new(make());
        let mut cache = lock(&self.cache);
        if cache.map.len() >= CACHE_MAX_ENTRIES || cache.bytes >= CACHE_MAX_BYTES {
            cache.map.clear();
            cache.bytes = 0;
        }
        cache.bytes += tile.body.len();
        cache.map.insert(key, tile.clone());
        tile
    }

    /// A traffic tile in `minute` (`None`: a vector tile without traffic, a 204).
    fn traffic_tile(&self, path: &str, query: &str, minute: u64) -> Option<Arc<Tile>> {
        let segs: Vec<&str> = path.split('/').collect();
        let (vector, layer, x, y, format) = match segs.as_slice() {
            ["", "v3", _, "mc", _, x, y, format] => (false, "flow", *x, *y, *format),
            ["", "v2", "traffictiles", layer, "mc", _, x, y, _] => (true, *layer, *x, *y, "omv"),
            _ => return None,
        };
        let (x, y) = (x.parse::<u64>().ok()?, y.parse::<u64>().ok()?);
        let empty = !crate::traffic::has_traffic(0, x, y);
        if vector && empty {
            return None;
        }
        let canonical = body::canonical_query(query);
        let key = format!("traffic\u{0}{minute}\u{0}{path}\u{0}{canonical}");
        Some(self.cached(key, || {
            let seed = crate::traffic::seed(path, &canonical);
            Tile::from_body(if vector {
                crate::traffic::vector_tile(layer, seed, minute)
            } else {
                let size = match body::parse_query(query).iter().find(|(k, _)| k == "size") {
                    Some((_, s)) if s == "256" => 256,
                    _ => 512,
                };
                crate::traffic::flow_image(size, seed, minute, empty, format == "jpeg")
            })
        }))
    }

    /// A fresh tile: an image under `opts.images` for raster paths, an MVT under
    /// `opts.mvt` or `opts.images` for vector paths, otherwise bytes.
    fn generate(&self, version: u64, path: &str, query: &str, canonical: &str, kind: BodyKind) -> Tile {
        if (self.opts.mvt || self.opts.images) && kind == BodyKind::Omv {
            let seed = body::tile_seed(version, path, canonical);
            if let Some(spec) = mvt::Spec::from_request(path, version, seed) {
                return Tile::from_body(mvt::render(&spec));
            }
        }
        if self.opts.images && kind != BodyKind::Omv {
            let seed = body::tile_seed(version, path, canonical);
            let spec = image::Spec::from_request(path, &body::parse_query(query), version, seed);
            // Encoders writing to memory do not fail; if one ever did, the byte body is served.
            if let Some(Ok(img)) = spec.map(|s| image::render(&s)) {
                return Tile::from_body(img);
            }
        }
        let (min, max) = match self.opts.sizes.for_path(path) {
            Some(size) => (size, size),
            None => (self.opts.min_size, self.opts.max_size),
        };
        body::generate(version, path, canonical, kind, min, max)
    }
}

// ---- routing -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Raster,
    Vector,
    TrafficRaster,
    TrafficVector,
}

/// `Last-Modified` of base tiles at content version 0 (2026-01-01T00:00:00Z); each version
/// adds a minute.
const BASE_LAST_MODIFIED: u64 = 1_767_225_600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meta {
    Health,
    Version,
    Info,
    Copyright,
    Languages,
    Features,
    PoliticalViews,
    /// Vector Tile API v2 `/v2/vectortiles/copyright`.
    VectorCopyright,
    /// Vector Tile API v2 `/v2/vectortiles/politicalViews`.
    VectorPoliticalViews,
}

impl Meta {
    fn needs_auth(self) -> bool {
        !matches!(self, Meta::Health | Meta::Version)
    }
}

#[derive(Debug)]
enum Route {
    Tile { api: Api, kind: BodyKind, content_type: &'static str },
    Invalid { parameter: &'static str, code: &'static str, message: String },
    Meta(Meta),
    NotFound,
}

fn invalid(parameter: &'static str, code: &'static str, message: String) -> Route {
    Route::Invalid { parameter, code, message }
}

/// Validates z/x/y; `None` when fine.
fn check_zxy(z: &str, x: &str, y: &str, max_zoom: u32) -> Option<Route> {
    let zoom: u32 = match z.parse() {
        Ok(v) if v <= max_zoom && !z.starts_with('+') => v,
        _ => {
            return Some(invalid(
                "zoom",
                "E622004",
                format!("Invalid value '{z}' for parameter 'zoom': must be an integer 0..{max_zoom}"),
            ))
        }
    };
    let limit = 1u64 << zoom;
    for (name, code, v) in [("column", "E622005", x), ("row", "E622006", y)] {
        match v.parse::<u64>() {
            Ok(n) if n < limit && !v.starts_with('+') => {}
            _ => {
                return Some(invalid(
                    name,
                    code,
                    format!(
                        "Invalid value '{v}' for parameter '{name}': must be an integer 0..{} at zoom {zoom}",
                        limit - 1
                    ),
                ))
            }
        }
    }
    None
}

fn classify(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        ["", "v3", "health"] => Route::Meta(Meta::Health),
        ["", "v3", "version"] => Route::Meta(Meta::Version),
        ["", "v3", "info"] => Route::Meta(Meta::Info),
        ["", "v3", "copyright"] => Route::Meta(Meta::Copyright),
        ["", "v3", "languages"] => Route::Meta(Meta::Languages),
        ["", "v3", "features"] => Route::Meta(Meta::Features),
        ["", "v3", "politicalViews"] => Route::Meta(Meta::PoliticalViews),
        ["", "v2", "vectortiles", "copyright"] => Route::Meta(Meta::VectorCopyright),
        ["", "v2", "vectortiles", "politicalViews"] => Route::Meta(Meta::VectorPoliticalViews),
        ["", "v3", resource, proj, z, x, y, format] => {
            if !matches!(*resource, "base" | "background" | "label" | "flow") {
                return invalid("resource", "E622003", format!("Invalid value '{resource}' for parameter 'resource'"));
            }
            if *proj != "mc" {
                return invalid("projection", "E622008", format!("Invalid value '{proj}' for parameter 'projection'"));
            }
            if let Some(err) = check_zxy(z, x, y, 20) {
                return err;
            }
            let (kind, content_type) = match *format {
                "png" | "png8" => (BodyKind::Png, "image/png"),
                "jpeg" => (BodyKind::Jpeg, "image/jpeg"),
                other => {
                    return invalid("format", "E622007", format!("Invalid value '{other}' for parameter 'format'"))
                }
            };
            // `flow`: the Traffic Raster Tile API v3 (its own host at HERE, its path shape).
            let api = if *resource == "flow" { Api::TrafficRaster } else { Api::Raster };
            Route::Tile { api, kind, content_type }
        }
        ["", "v2", family @ ("vectortiles" | "traffictiles"), layer, proj, z, x, y, format] => {
            // `traffictiles`: the Traffic Vector Tile API v2 (layers traffic, flow, incident; zoom 1-17).
            let traffic = *family == "traffictiles";
            let known = if traffic {
                matches!(*layer, "traffic" | "flow" | "incident")
            } else {
                matches!(*layer, "base" | "core")
            };
            if !known {
                return invalid("layer", "E622003", format!("Invalid value '{layer}' for parameter 'layer'"));
            }
            if *proj != "mc" {
                return invalid("projection", "E622008", format!("Invalid value '{proj}' for parameter 'projection'"));
            }
            if traffic && *z == "0" {
                return invalid("z", "E622004", "Invalid value '0' for parameter 'z': must be 1..17".into());
            }
            if let Some(err) = check_zxy(z, x, y, 17) {
                return err;
            }
            if *format != "omv" {
                return invalid("format", "E622007", format!("Invalid value '{format}' for parameter 'format'"));
            }
            let api = if traffic { Api::TrafficVector } else { Api::Vector };
            Route::Tile { api, kind: BodyKind::Omv, content_type: "application/x-protobuf" }
        }
        _ => Route::NotFound,
    }
}

fn meta_body(meta: Meta) -> Bytes {
    let v = match meta {
        Meta::Health => json!({"status": "ok"}),
        Meta::Version => json!({"apiVersion": "3.0.0", "serviceVersion": "test-upstream"}),
        Meta::Info => json!({
            "zoomLevels": {"min": 0, "max": 20},
            "resources": ["base", "background", "label"],
            "projections": ["mc"],
            "formats": ["png", "png8", "jpeg"],
            "styles": ["explore.day", "explore.night", "explore.satellite.day", "lite.day",
                       "lite.night", "lite.satellite.day", "logistics.day", "logistics.night",
                       "logistics.satellite.day", "satellite.day", "topo.day", "topo.night"],
            "sizes": [256, 512],
            "ppis": [100, 200, 400],
        }),
        Meta::Copyright => {
            json!({"copyrights": {"explore.day": [{"label": "HERE", "alt": "© HERE"}]}})
        }
        Meta::Languages => json!({"languages": ["en", "de", "fr"]}),
        Meta::Features => json!({"features": {"pois": ["all", "disabled"]}}),
        Meta::PoliticalViews => json!({"politicalViews": ["ARG", "IND", "MAR"]}),
        Meta::VectorCopyright => json!({"copyrights": {"base": [{"label": "HERE", "alt": "© HERE"}]}}),
        Meta::VectorPoliticalViews => json!({"politicalViews": ["ARG", "IND", "MAR"], "api": "vector"}),
    };
    Bytes::from(v.to_string())
}

/// A JSON response with an `X-Correlation-ID`.
pub(crate) fn json_response(status: u16, value: serde_json::Value, corr: String) -> Response {
    Response::new(status, Bytes::from(value.to_string()))
        .with("Content-Type", "application/json")
        .with("X-Correlation-ID", corr)
}

/// HERE's 400/404/500-style error body.
fn here_error(status: u16, code: &str, parameter: Option<&str>, cause: &str, corr: String) -> Response {
    let title = match status {
        400 => "Input data failed validation",
        _ => http::reason(status),
    };
    let action = match status {
        400 => "Correct the request and retry",
        404 => "Check the request path",
        s if s >= 500 => "Retry later",
        _ => "Check the request",
    };
    let mut v = json!({
        "title": title,
        "status": status,
        "code": code,
        "cause": cause,
        "action": action,
        "correlationId": corr,
        "details": [{"message": cause}],
    });
    if let (Some(p), Some(obj)) = (parameter, v.as_object_mut()) {
        obj.insert("parameter".into(), json!(p));
    }
    json_response(status, v, corr)
}

/// The response for a `Fault::Status { code, .. }` (or any error status).
fn status_response(state: &State, code: u16, retry_after: Option<u32>) -> Response {
    let code = code.clamp(100, 999);
    let corr = state.correlation_id();
    let mut resp = match code {
        401 => json_response(
            401,
            json!({"error": "Unauthorized", "error_description": "apiKey invalid. apiKey not found."}),
            corr,
        ),
        403 => json_response(
            403,
            json!({"error": "Forbidden", "error_description": "These credentials do not authorize access"}),
            corr,
        ),
        429 => json_response(
            429,
            json!({"error": "Too Many Requests", "error_description": "Rate limit for this service has been reached"}),
            corr,
        ),
        503 => json_response(
            503,
            json!({"error": "Service Unavailable", "error_description": "The service is temporarily unavailable, try again later"}),
            corr,
        ),
        c if c < 200 || c == 204 || c == 304 => Response::new(c, Bytes::new()).with("X-Correlation-ID", corr),
        404 => here_error(404, "E622000", None, "The requested resource was not found", corr),
        400 => here_error(400, "E622002", Some("path"), "Input data failed validation", corr),
        c if c >= 500 => {
            let code_str = format!("E6220{}", 50 + (c % 5));
            here_error(c, &code_str, None, "Internal error while processing the request", corr)
        }
        c => here_error(c, "E622002", None, http::reason(c), corr),
    };
    if let Some(secs) = retry_after {
        resp = resp.with("Retry-After", secs.to_string());
    }
    resp
}

fn etag_matches(req: &Request, etag: &str) -> bool {
    req.headers
        .iter()
        .filter(|(k, _)| k == "if-none-match")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// RFC 9110 §13.2.2: `If-None-Match` decides when sent (against `etag`, if the answer has
/// one); else an `If-Modified-Since` no earlier than `last_modified` means not modified.
fn not_modified(req: &Request, etag: Option<&str>, last_modified: u64) -> bool {
    if req.header("if-none-match").is_some() {
        return etag.is_some_and(|e| etag_matches(req, e));
    }
    req.header("if-modified-since").and_then(http::parse_date).is_some_and(|since| last_modified <= since)
}

/// 401/403 when the request's credentials are not acceptable.
fn check_auth(state: &State, req: &Request) -> Option<Response> {
    let mut keys: Vec<String> =
        body::parse_query(&req.query).into_iter().filter(|(k, _)| body::is_key_param(k)).map(|(_, v)| v).collect();
    if let Some(auth) = req.header("authorization") {
        if let Some(token) = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")) {
            keys.push(token.trim().to_string());
        }
    }
    if keys.iter().any(|k| state.opts.forbidden_keys.contains(k)) {
        return Some(status_response(state, 403, None));
    }
    match &state.opts.api_key {
        Some(expected) if !keys.iter().any(|k| k == expected) => Some(status_response(state, 401, None)),
        _ => None,
    }
}

/// The answer without faults. `strict` = apply method, auth and conditional checks (faults
/// that shape the body answer with `strict = false`: "a fault rule wins").
fn normal(state: &State, req: &Request, strict: bool) -> Response {
    let route = classify(&req.path);
    if strict {
        if req.method != "GET" && req.method != "HEAD" {
            let corr = state.correlation_id();
            return here_error(405, "E622001", None, "Only GET and HEAD are supported", corr)
                .with("Allow", "GET, HEAD");
        }
        let needs_auth = !matches!(route, Route::Meta(m) if !m.needs_auth());
        if needs_auth {
            if let Some(err) = check_auth(state, req) {
                return err;
            }
        }
    }
    match route {
        Route::Tile { api: api @ (Api::TrafficRaster | Api::TrafficVector), content_type, .. } => {
            let minute = state.now_ms() / 60_000;
            let last_modified = minute * 60;
            let tile = state.traffic_tile(&req.path, &req.query, minute);
            let etag = tile.as_ref().map(|t| t.etag.clone());
            let status = match &tile {
                _ if strict && not_modified(req, etag.as_deref(), last_modified) => 304,
                Some(_) => 200,
                None => 204,
            };
            let body = match (&tile, status) {
                (Some(t), 200) => t.body.clone(),
                _ => Bytes::new(),
            };
            let mut resp = Response::new(status, body);
            if status == 200 {
                resp = resp.with("Content-Type", content_type);
            }
            if let (Some(etag), true) = (etag, state.opts.etags) {
                resp = resp.with("ETag", etag);
            }
            let max_age = if api == Api::TrafficRaster { 60 } else { 30 };
            resp.with("Last-Modified", http::format_date(last_modified))
                .with("Cache-Control", format!("max-age={max_age}"))
                .with("X-Correlation-ID", state.correlation_id())
        }
        Route::Tile { api, kind, content_type } => {
            let tile = state.tile(&req.path, &req.query, kind);
            let max_age = match api {
                Api::Raster => state.opts.raster_max_age,
                _ => state.opts.vector_max_age,
            };
            let last_modified = BASE_LAST_MODIFIED + state.version() * 60;
            let etag = state.opts.etags.then_some(tile.etag.as_str());
            let status = if strict && not_modified(req, etag, last_modified) { 304 } else { 200 };
            let body = if status == 200 { tile.body.clone() } else { Bytes::new() };
            let mut resp = Response::new(status, body);
            if status == 200 {
                resp = resp.with("Content-Type", content_type);
            }
            if let Some(etag) = etag {
                resp = resp.with("ETag", etag.to_string());
            }
            resp = resp
                .with("Last-Modified", http::format_date(last_modified))
                .with("X-Correlation-ID", state.correlation_id());
            if let Some(age) = max_age {
                resp = resp.with("Cache-Control", format!("max-age={age}"));
            }
            resp
        }
        Route::Meta(meta) => {
            let resp = Response::new(200, meta_body(meta))
                .with("Content-Type", "application/json")
                .with("X-Correlation-ID", state.correlation_id());
            if meta == Meta::Info {
                resp.with("Cache-Control", "max-age=86400")
            } else {
                resp
            }
        }
        Route::Invalid { parameter, code, message } => {
            here_error(400, code, Some(parameter), &message, state.correlation_id())
        }
        Route::NotFound => {
            here_error(404, "E622000", None, &format!("No route for '{}'", req.path), state.correlation_id())
        }
    }
}

// ---- actions -----------------------------------------------------------------------------

/// How the body of a response is delivered. `Big` streams `size` bytes of
/// [`body::fill_stream`] (the response's own body is empty).
#[derive(Debug, Clone, Copy)]
enum Shape {
    Normal,
    Slow { chunk: usize, interval: Duration },
    Chunked { chunk: usize, interval: Duration },
    Truncate { after: usize },
    Big { size: u64, seed: u64, kind: BodyKind },
}

enum Action {
    Respond { resp: Response, delay: Duration, shape: Shape },
    Reset,
    Hang,
}

/// The request URL as received: `http://{Host, else local}{path}?{raw query}`.
fn request_url(req: &Request, local: Option<SocketAddr>) -> String {
    let host = match (req.header("host"), local) {
        (Some(h), _) if !h.is_empty() => h.to_string(),
        (_, Some(addr)) => addr.to_string(),
        _ => "localhost".to_string(),
    };
    let q = if req.query.is_empty() { "" } else { "?" };
    format!("http://{host}{}{q}{}", req.path, req.query)
}

/// `Fault::Redirect`: 302 to the request URL, echoed in a text body too.
fn redirect_response(state: &State, url: &str) -> Response {
    Response::new(302, Bytes::from(format!("Found. Redirecting to {url}\n")))
        .with("Content-Type", "text/plain; charset=utf-8")
        .with("Location", url)
        .with("X-Correlation-ID", state.correlation_id())
}

/// `Fault::Echo`: an HTML error page (and `Location`) echoing the request URL.
fn echo_response(state: &State, code: u16, url: &str) -> Response {
    let code = code.clamp(100, 999);
    let reason = http::reason(code);
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n\
         <body><h1>{code} {reason}</h1>\n<p>The request {url} could not be served.</p>\n\
         <p><a href=\"{url}\">{url}</a></p></body></html>\n"
    );
    Response::new(code, Bytes::from(page))
        .with("Content-Type", "text/html; charset=utf-8")
        .with("Location", url)
        .with("X-Correlation-ID", state.correlation_id())
}

/// `Fault::Headers`: `resp` with `headers` set, keeping the framing headers the server's.
fn with_headers(mut resp: Response, headers: &[(String, String)]) -> Response {
    for (name, value) in headers {
        let framing =
            ["content-length", "transfer-encoding", "connection"].iter().any(|f| name.eq_ignore_ascii_case(f));
        if !framing && http::valid_header(name, value) {
            resp = resp.set(name, value);
        }
    }
    resp
}

/// `Fault::BigBody`: the head of a `size`-byte 200 and how to stream its body.
fn big_body(state: &State, req: &Request, size: u64) -> (Response, Shape) {
    let (kind, content_type) = match classify(&req.path) {
        Route::Tile { kind, content_type, .. } => (kind, content_type),
        _ => (BodyKind::Omv, "application/octet-stream"),
    };
    let seed = body::tile_seed(state.version(), &req.path, &body::canonical_query(&req.query));
    let resp = Response::new(200, Bytes::new())
        .with("Content-Type", content_type)
        .with("X-Correlation-ID", state.correlation_id());
    (resp, Shape::Big { size, seed, kind })
}

/// Draw `n` of a delay uniform in `[0, max]`: splitmix64 of `n` scaled to `max` in µs.
fn jitter(max: Duration, n: u64) -> Duration {
    let max_us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if max_us == 0 {
        return Duration::ZERO;
    }
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_micros(z % (max_us.saturating_add(1)))
}

fn handle(state: &State, req: &Request, local: Option<SocketAddr>) -> Action {
    if req.path.starts_with("/__") {
        return Action::Respond { resp: control::handle(state, req), delay: Duration::ZERO, shape: Shape::Normal };
    }
    state.record(req);
    let mut delay = state.latency() + state.jitter();
    let (resp, shape) = match state.take_fault(&req.path) {
        None => (normal(state, req, true), Shape::Normal),
        Some(Fault::Reset) => return Action::Reset,
        Some(Fault::Hang) => return Action::Hang,
        Some(Fault::Status { code: 200, retry_after }) => {
            let mut resp = normal(state, req, false);
            if let Some(secs) = retry_after {
                resp = resp.with("Retry-After", secs.to_string());
            }
            (resp, Shape::Normal)
        }
        Some(Fault::Status { code, retry_after }) => (status_response(state, code, retry_after), Shape::Normal),
        Some(Fault::Delay(d)) => {
            delay += d;
            (normal(state, req, true), Shape::Normal)
        }
        Some(Fault::SlowBody { chunk, interval }) => (normal(state, req, false), Shape::Slow { chunk, interval }),
        Some(Fault::Chunked { chunk, interval }) => (normal(state, req, false), Shape::Chunked { chunk, interval }),
        Some(Fault::Truncate { after }) => (normal(state, req, false), Shape::Truncate { after }),
        Some(Fault::Redirect) => (redirect_response(state, &request_url(req, local)), Shape::Normal),
        Some(Fault::Echo { code }) => (echo_response(state, code, &request_url(req, local)), Shape::Normal),
        Some(Fault::Headers(headers)) => (with_headers(normal(state, req, false), &headers), Shape::Normal),
        Some(Fault::BigBody { size }) => big_body(state, req, size),
    };
    Action::Respond { resp, delay, shape }
}

// ---- connections -------------------------------------------------------------------------

/// Binds the listener (SO_REUSEADDR, backlog 1024).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until `stop` flips (or its sender is dropped).
pub(crate) async fn serve(state: Arc<State>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), stream));
                }
                // e.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
}

/// Sends FIN, then briefly drains unread input so the kernel does not turn the close into
/// a reset (which could discard the response before the client reads it).
async fn close_gracefully(mut stream: TcpStream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 1024 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

/// Serves one connection: pipelined / keep-alive requests, answered in order.
async fn connection(state: Arc<State>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Read one request head.
        let (req, used) = loop {
            match http::parse_head(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(e) => {
                    let resp = status_response(&state, e.status(), None);
                    let mut out = resp.head(resp.framing(), true);
                    out.extend_from_slice(&resp.body);
                    let _ = stream.write_all(&out).await;
                    close_gracefully(stream).await;
                    return;
                }
            }
            buf.reserve(8192);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        buf.advance(used);
        // Read the request body (only the control endpoints look at it).
        while buf.len() < req.body_len {
            buf.reserve(8192);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let mut req = req;
        req.body = buf.split_to(req.body_len).freeze();

        let head_only = req.method == "HEAD";
        let mut close = req.wants_close();
        match handle(&state, &req, local) {
            Action::Reset => {
                let _ = stream.set_zero_linger();
                drop(stream);
                return;
            }
            Action::Hang => {
                // Held until the runtime is dropped at shutdown (which closes the socket).
                std::future::pending::<()>().await;
                return;
            }
            Action::Respond { resp, delay, shape } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if matches!(shape, Shape::Truncate { .. }) {
                    close = true;
                }
                if write_response(&mut stream, &resp, shape, head_only, close).await.is_err() {
                    return;
                }
            }
        }
        if close {
            close_gracefully(stream).await;
            return;
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    shape: Shape,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let send_body = !head_only && !resp.bodiless();
    match shape {
        Shape::Normal => {
            let mut out = resp.head(resp.framing(), close);
            if send_body {
                out.extend_from_slice(&resp.body);
            }
            stream.write_all(&out).await
        }
        Shape::Slow { chunk, interval } => {
            stream.write_all(&resp.head(resp.framing(), close)).await?;
            stream.flush().await?;
            if send_body {
                for piece in resp.body.chunks(chunk.max(1)) {
                    tokio::time::sleep(interval).await;
                    stream.write_all(piece).await?;
                    stream.flush().await?;
                }
            }
            Ok(())
        }
        Shape::Chunked { chunk, interval } => {
            let framing = if resp.bodiless() { Framing::None } else { Framing::Chunked };
            stream.write_all(&resp.head(framing, close)).await?;
            stream.flush().await?;
            if send_body {
                for piece in resp.body.chunks(chunk.max(1)) {
                    tokio::time::sleep(interval).await;
                    let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                }
                stream.write_all(b"0\r\n\r\n").await?;
            }
            Ok(())
        }
        Shape::Truncate { after } => {
            let mut out = resp.head(resp.framing(), close);
            if send_body {
                out.extend_from_slice(&resp.body[..after.min(resp.body.len())]);
            }
            stream.write_all(&out).await
        }
        Shape::Big { size, seed, kind } => {
            stream.write_all(&resp.head(Framing::Length(size), close)).await?;
            if send_body {
                let mut piece = vec![0u8; BIG_BODY_PIECE];
                let mut sent = 0u64;
                while sent < size {
                    let n = usize::try_from(size - sent).map_or(BIG_BODY_PIECE, |left| left.min(BIG_BODY_PIECE));
                    body::fill_stream(seed, kind, sent, &mut piece[..n]);
                    stream.write_all(&piece[..n]).await?;
                    sent += n as u64;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_uniform_within_its_bound() {
        assert_eq!(jitter(Duration::ZERO, 7), Duration::ZERO);
        let max = Duration::from_millis(50);
        let draws: Vec<Duration> = (0..10_000).map(|n| jitter(max, n)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        // Every fifth of the range gets about a fifth of the draws (2,000 each, +-15 %).
        for fifth in 0..5u32 {
            let (lo, hi) = (max * fifth / 5, max * (fifth + 1) / 5);
            let count = draws.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((1700..=2300).contains(&count), "fifth {fifth}: {count} draws");
        }
        // Deterministic: the same index, the same delay.
        assert_eq!(jitter(max, 42), jitter(max, 42));
    }

    #[test]
    fn classify_routes() {
        assert!(matches!(classify("/v3/base/mc/0/0/0/png"), Route::Tile { api: Api::Raster, .. }));
        assert!(matches!(classify("/v3/base/mc/20/1048575/0/jpeg"), Route::Tile { kind: BodyKind::Jpeg, .. }));
        assert!(matches!(classify("/v3/base/mc/21/0/0/png"), Route::Invalid { parameter: "zoom", .. }));
        assert!(matches!(classify("/v3/base/mc/2/4/0/png"), Route::Invalid { parameter: "column", .. }));
        assert!(matches!(classify("/v3/base/mc/2/0/-1/png"), Route::Invalid { parameter: "row", .. }));
        assert!(matches!(classify("/v3/base/mc/2/+1/0/png"), Route::Invalid { parameter: "column", .. }));
        assert!(matches!(classify("/v3/sat/mc/2/0/0/png"), Route::Invalid { parameter: "resource", .. }));
        assert!(matches!(classify("/v3/base/mc/2/0/0/gif"), Route::Invalid { parameter: "format", .. }));
        assert!(matches!(classify("/v2/vectortiles/core/mc/17/0/0/omv"), Route::Tile { api: Api::Vector, .. }));
        assert!(matches!(classify("/v2/vectortiles/core/mc/18/0/0/omv"), Route::Invalid { parameter: "zoom", .. }));
        assert!(matches!(classify("/v3/base/mc/2/0/0/png/"), Route::NotFound));
        assert!(matches!(classify("/"), Route::NotFound));
        assert!(matches!(classify("/v3/info"), Route::Meta(Meta::Info)));
        assert!(matches!(classify("/v2/vectortiles/copyright"), Route::Meta(Meta::VectorCopyright)));
    }

    #[test]
    fn rules_consume_in_order() {
        let st = State::new(Options::default());
        st.add_rule("/a", Fault::Reset, Some(1));
        st.add_rule("/a", Fault::Hang, Some(2));
        st.add_rule("/b", Fault::Hang, Some(0));
        assert!(matches!(st.take_fault("/x/a"), Some(Fault::Reset)));
        assert!(matches!(st.take_fault("/x/a"), Some(Fault::Hang)));
        assert!(matches!(st.take_fault("/x/a"), Some(Fault::Hang)));
        assert!(st.take_fault("/x/a").is_none());
        assert!(st.take_fault("/b").is_none());
    }
}

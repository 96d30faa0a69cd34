//! A HERE-like test upstream for `tile-proxy`.
//!
//! [`Upstream::start`] binds a socket on its own OS thread (with its own tokio runtime) and
//! serves a small hand-written HTTP/1.1 imitation of HERE's Raster Tile API v3
//! (`/v3/{resource}/mc/{z}/{x}/{y}/{format}`) and Vector Tile API v2
//! (`/v2/vectortiles/{layer}/mc/{z}/{x}/{y}/omv`):
//!
//! * HERE's traffic APIs (see [`traffic`]): `/v3/flow/mc/{z}/{x}/{y}/{format}` (transparent
//!   PNG flow lines) and `/v2/traffictiles/{traffic|flow|incident}/mc/{z}/{x}/{y}/omv` (MVT,
//!   `204` where [`has_traffic`] is false), changing every minute of the server's clock
//!   ([`Upstream::set_clock_ms`]): `Last-Modified` is the minute's start, and both
//!   `If-None-Match` and `If-Modified-Since` give `304`;
//! * `Last-Modified` on base tiles too (a date that moves with the content version);
//!   `If-Modified-Since` gives `304` when no `If-None-Match` is sent; [`Options::etags`] off
//!   sends no ETag, so a client can only revalidate by date;
//! * deterministic tile bodies (a function of content version, path and the query without
//!   `apiKey`/`apikey`), with `ETag`, `X-Correlation-ID` and optional `Cache-Control`;
//!   `If-None-Match` gives `304`; with [`Options::images`] raster tiles are real PNG/JPEG
//!   images (a grid and the tile's `z/x/y`) and vector tiles real Mapbox Vector Tiles
//!   (layers `grid`, `label`, `water`; see [`Options::mvt`]), so a map client shows a map;
//! * HERE-shaped JSON errors: 400 (validation of resource/projection/zoom/column/row/format),
//!   401 (missing or wrong key), 403 (forbidden key), 404 (unknown path);
//! * metadata: `/v3/health`, `/v3/version` (no auth), `/v3/info`, `/v3/copyright`,
//!   `/v3/languages`, `/v3/features`, `/v3/politicalViews`, `/v2/vectortiles/copyright`,
//!   `/v2/vectortiles/politicalViews` (auth);
//! * request counting and recording ([`Upstream::count`], [`Upstream::requests`], ...);
//! * faults on demand ([`Upstream::fail`], [`Fault`]): error statuses, delays, slow or
//!   chunked bodies, truncated bodies, connection resets and hangs, redirects and error pages
//!   that echo the request URL (key included), extra response headers, huge bodies;
//! * control endpoints, so shell scripts and benchmarks get every misbehaviour without this
//!   library (see below).
//!
//! ```no_run
//! use test_upstream::{Fault, Options, Upstream};
//! let up = Upstream::start(Options::default()).unwrap();
//! up.fail("/v3/base", Fault::Status { code: 503, retry_after: Some(1) }, 1);
//! let _url = format!("{}/v3/base/mc/1/0/0/png?apiKey=test-key", up.base_url());
//! // ... point the proxy at up.base_url(), request tiles, then:
//! assert!(up.total() <= 2);
//! ```
//!
//! # Control endpoints
//!
//! Paths starting with `/__` are neither counted, recorded nor faulted. They answer JSON;
//! a bad request gets `400 {"error": "<what is wrong>"}`, a wrong method `405`.
//!
//! | endpoint | effect | library equivalent |
//! |---|---|---|
//! | `GET /__stats` | `{"total", "paths": {path: count}, "version", "latency_ms", "faults"}` | [`Upstream::total`], [`Upstream::count`] |
//! | `POST /__reset` | clears counters, recorded requests and fault rules | [`Upstream::reset`] |
//! | `POST /__version?v=N` | content version `N` (every tile's bytes and ETag change) | [`Upstream::set_version`] |
//! | `POST /__latency?ms=N` | extra delay before every counted response head | [`Upstream::set_latency`] |
//! | `POST /__clock?ms=N` | the server's clock (Unix ms) for traffic tiles; `0`: the wall clock | [`Upstream::set_clock_ms`] |
//! | `POST /__fault` (JSON body) | adds a fault rule | [`Upstream::fail`], [`Upstream::fail_always`] |
//! | `GET /__fault` | `{"rules": [{"match", "remaining", "fault"}]}`, the active rules | |
//! | `POST /__clear` | removes every fault rule (counters kept) | [`Upstream::clear_faults`] |
//!
//! `POST /__fault` takes `{"match": "/v3/base", "times": 3, "fault": {...}}`: `match` is a
//! substring of the request path (required; `"/"` matches every path), `times` how many
//! matching requests get the fault (absent or `null` = until `/__clear` or `/__reset`).
//! `fault` holds exactly one of these keys ([`Fault`] explains each):
//!
//! | `fault` | [`Fault`] |
//! |---|---|
//! | `{"status": 503, "retry_after": 2}` (`retry_after` optional, seconds) | [`Fault::Status`] |
//! | `{"delay_ms": 500}` | [`Fault::Delay`] |
//! | `{"slow_body": {"chunk": 100, "interval_ms": 50}}` | [`Fault::SlowBody`] |
//! | `{"chunked": {"chunk": 100, "interval_ms": 50}}` | [`Fault::Chunked`] |
//! | `{"truncate": 123}` (body bytes sent) | [`Fault::Truncate`] |
//! | `{"reset": true}` | [`Fault::Reset`] |
//! | `{"hang": true}` | [`Fault::Hang`] |
//! | `{"redirect": true}` | [`Fault::Redirect`] |
//! | `{"echo": 500}` (status code) | [`Fault::Echo`] |
//! | `{"headers": {"Cache-Control": "no-store"}}` or `{"headers": [["Age", "5"]]}` | [`Fault::Headers`] |
//! | `{"big_body": 67108864}` (bytes) | [`Fault::BigBody`] |
//!
//! The answer is `{"ok": true, "rule": {"match", "remaining", "fault"}, "rules": N}` with the
//! rule as understood (`remaining` = `times`) and the number of active rules.
//!
//! ```text
//! curl -X POST localhost:9090/__fault -d '{"match": "/v3/base", "times": 3, "fault": {"status": 503, "retry_after": 2}}'
//! curl -X POST localhost:9090/__clear
//! ```

mod body;
mod control;
mod http;
mod image;
mod mvt;
mod server;
pub mod traffic;

pub use traffic::has_traffic;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use server::State;

/// Configuration of a test upstream. Start from [`Options::default`] and override fields.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to bind; default `127.0.0.1:0` (an ephemeral port, see [`Upstream::addr`]).
    pub listen: SocketAddr,
    /// Required API key (`apiKey`/`apikey` query parameter or `Authorization: Bearer`);
    /// `None` disables the check. Default `Some("test-key")`.
    pub api_key: Option<String>,
    /// Keys answered with HERE's 403 body (checked before `api_key`). Default empty.
    pub forbidden_keys: Vec<String>,
    /// Smallest tile body in bytes. Default 2000.
    pub min_size: usize,
    /// Largest tile body in bytes (equal to `min_size` = fixed size). Default 2000.
    pub max_size: usize,
    /// Extra latency before every response head of counted requests. Default zero.
    pub latency: Duration,
    /// On top of [`Options::latency`], a further delay drawn per counted request, uniform in
    /// `[0, latency_jitter]` (a deterministic sequence, no seed to set). Default zero. With
    /// `latency` 30 ms and `latency_jitter` 50 ms every answer takes 30-80 ms (bench/fleet.sh).
    pub latency_jitter: Duration,
    /// `Cache-Control: max-age=N` on v3 raster tiles; default `None` (no header).
    pub raster_max_age: Option<u32>,
    /// `Cache-Control: max-age=N` on v2 vector tiles; default `Some(3600)` like HERE.
    pub vector_max_age: Option<u32>,
    /// Serve v3 raster tiles as real images: `png` an RGB PNG, `png8` a palette PNG, `jpeg` a
    /// JPEG, 512 px square for `size=512` and 256 px otherwise (`ppi`/`scale` ignored),
    /// showing a grid and the tile's `z/x/y` on a background that depends on `style` and the
    /// resource; the version tints it. Deterministic like the default bodies (same version,
    /// path and query, same bytes and ETag); `min_size`/`max_size` do not apply. Also turns
    /// on [`Options::mvt`] (real vector tiles). Default `false`: pseudo-random bytes that
    /// only start with the format's signature, sized by `min_size`/`max_size`.
    pub images: bool,
    /// Serve v2 vector tiles as valid Mapbox Vector Tiles (MVT 2.1 protobuf, extent 4096)
    /// with three layers:
    ///
    /// * `grid`: LineStrings, property `kind` (string) = `border` for the tile's border (a
    ///   closed square 16 units inside the extent) or `line` for the 6 quarter lines;
    /// * `label`: one Point at the centre (2048, 2048) with `z`, `x`, `y` (uint), `name`
    ///   (string `"z/x/y"`) and `version` (uint, the content version); its feature id is a
    ///   53-bit hash of version, path and query;
    /// * `water`: one Polygon (a diamond in the top-left quarter, exterior ring clockwise on
    ///   screen), property `kind` (string) = `water`.
    ///
    /// Deterministic like the other bodies (same version, path and query, same bytes and
    /// ETag); the body has its natural size (about 300 bytes), `min_size`/`max_size` do not
    /// apply. Vector tiles are MVT when this or [`Options::images`] is on. Default `false`:
    /// pseudo-random bytes sized by `min_size`/`max_size`. [`Fault::BigBody`] stays random.
    pub mvt: bool,
    /// Send an `ETag` with tiles (default `true`). Off, a client can revalidate only with
    /// `If-Modified-Since` against `Last-Modified`.
    pub etags: bool,
    /// Exact body sizes of given tiles (`--sizes FILE`, e.g. a `bench/trace.py` trace): a
    /// byte-body tile whose `z/x/y` is in the map gets exactly that many bytes, any other
    /// keeps `min_size`/`max_size`. Images and MVT bodies are not resized. Default empty.
    pub sizes: Arc<TileSizes>,
}

/// Body sizes by tile `z/x/y` (see [`Options::sizes`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TileSizes {
    map: HashMap<(u32, u32, u32), usize>,
}

impl std::fmt::Debug for TileSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TileSizes({} tiles)", self.map.len())
    }
}

impl TileSizes {
    /// Largest size accepted from a file (a typo must not make a multi-GB body).
    pub const MAX: usize = 64 << 20;

    /// Parses a sizes file: one tile a line, whitespace- or tab-separated, first column the
    /// tile (any path with `.../mc/{z}/{x}/{y}/...`, like tile-proxy's
    /// `/here-proxy/mc/12/2200/1343/png?...` or the upstream's `/v3/base/mc/12/2200/1343/png`,
    /// or a bare `z/x/y`), second column the body size in bytes; further columns (a trace's
    /// `scan`) are ignored, as are empty lines and lines starting with `#`. A tile may repeat
    /// (a trace repeats it at every request) but always with the same size.
    pub fn parse(text: &str) -> Result<TileSizes, String> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut cols = line.split_whitespace();
            let tile = cols.next().unwrap_or_default();
            let size = cols.next().ok_or_else(|| format!("line {n}: no size column"))?;
            let key = tile_key(tile).ok_or_else(|| format!("line {n}: no z/x/y in '{tile}'"))?;
            let size: usize = size.parse().map_err(|_| format!("line {n}: invalid size '{size}'"))?;
            if size > Self::MAX {
                return Err(format!("line {n}: size {size} is over {} bytes", Self::MAX));
            }
            if let Some(old) = map.insert(key, size) {
                if old != size {
                    let (z, x, y) = key;
                    return Err(format!("line {n}: tile {z}/{x}/{y} given two sizes ({old} and {size})"));
                }
            }
        }
        Ok(TileSizes { map })
    }

    /// [`TileSizes::parse`] of a file's contents; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<TileSizes, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Sets tile `z/x/y`'s size.
    pub fn insert(&mut self, z: u32, x: u32, y: u32, size: usize) {
        self.map.insert((z, x, y), size);
    }

    /// The size of tile `z/x/y`, if given.
    pub fn get(&self, z: u32, x: u32, y: u32) -> Option<usize> {
        self.map.get(&(z, x, y)).copied()
    }

    /// The size for a request path (`.../mc/{z}/{x}/{y}/...`), if its tile is given.
    pub fn for_path(&self, path: &str) -> Option<usize> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(&tile_key(path)?).copied()
    }

    /// Number of tiles with a size.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No tile has a size.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `(z, x, y)` of a path with `/mc/{z}/{x}/{y}` (query ignored), or of a bare `z/x/y`.
fn tile_key(path: &str) -> Option<(u32, u32, u32)> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let start = match segs.iter().position(|s| *s == "mc") {
        Some(i) => i + 1,
        None if segs.len() == 3 => 0,
        None => return None,
    };
    let num = |i: usize| segs.get(start + i).and_then(|s| s.parse::<u32>().ok());
    Some((num(0)?, num(1)?, num(2)?))
}

impl Default for Options {
    fn default() -> Options {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: Some("test-key".to_string()),
            forbidden_keys: Vec::new(),
            min_size: 2000,
            max_size: 2000,
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            raster_max_age: None,
            vector_max_age: Some(3600),
            images: false,
            mvt: false,
            etags: true,
            sizes: Arc::new(TileSizes::default()),
        }
    }
}

/// One request as received (control endpoints `/__*` are not recorded).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Path without the query, exactly as sent (not percent-decoded).
    pub path: String,
    /// Raw query string without the `?` (empty when absent).
    pub query: String,
    /// Headers in arrival order; names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// When the request head was read.
    pub at: std::time::Instant,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// First value of query parameter `name` (exact case), percent-decoded (`+` = space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        body::parse_query(&self.query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// A misbehaviour injected with [`Upstream::fail`] / [`Upstream::fail_always`].
///
/// A fault rule wins over everything else: faulted requests skip the method, auth and
/// `If-None-Match` checks. Body-shaping faults (`SlowBody`, `Chunked`, `Truncate`, `Headers`)
/// answer with the normal `200` content for the path (a 400/404 error for a path that has
/// none). Every fault can also be set over HTTP with `POST /__fault` (see the crate docs).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and HERE's JSON body for it (400/404/500-style with
    /// `code`/`title`/`correlationId`; 401/403 gateway shape; 429/503 with an
    /// `error_description` message; 204/304 without body), plus `Retry-After` when given.
    /// `200` answers the normal body (plus `Retry-After` if given).
    Status {
        /// HTTP status code.
        code: u16,
        /// `Retry-After` header value in seconds.
        retry_after: Option<u32>,
    },
    /// Wait this long before the response head (on top of [`Options::latency`]), then answer
    /// normally.
    Delay(Duration),
    /// Normal `200` with `Content-Length`; the body is written `chunk` bytes at a time with a
    /// pause of `interval` before each piece.
    SlowBody {
        /// Bytes per write (0 is treated as 1).
        chunk: usize,
        /// Pause before each write.
        interval: Duration,
    },
    /// `200` with `Transfer-Encoding: chunked` (no `Content-Length`), same pacing as
    /// `SlowBody`: one HTTP chunk of `chunk` bytes per `interval`.
    Chunked {
        /// Bytes per chunk (0 is treated as 1).
        chunk: usize,
        /// Pause before each chunk.
        interval: Duration,
    },
    /// `200` with the full `Content-Length` but only `after` body bytes; then the connection
    /// is closed (FIN).
    Truncate {
        /// Body bytes actually sent.
        after: usize,
    },
    /// Read the request, then reset the connection (`SO_LINGER` 0, close): no response bytes.
    Reset,
    /// Read the request and never answer; the connection is closed at shutdown.
    Hang,
    /// `302 Found` with `Location: http://{Host header, else the listen address}{path}?{query}`:
    /// the request URL exactly as received (raw query, `apiKey` included; no `?` when the
    /// query is empty), and a `text/plain` body that echoes the same URL. Proves a proxy never
    /// relays a redirect (or its body) that would leak its key.
    Redirect,
    /// Status `code` (clamped to 100..=999) with `Content-Type: text/html`, a `Location`
    /// header and an HTML body both echoing the full request URL as [`Fault::Redirect`] builds
    /// it (`apiKey` included). Proves upstream error bodies never reach clients. 1xx, 204 and
    /// 304 carry the header but no body.
    Echo {
        /// HTTP status code.
        code: u16,
    },
    /// The normal `200` for the path with these response headers added, each replacing any
    /// header of the same name (case-insensitive) the server would send: e.g.
    /// `Content-Encoding`, `Expires`, `Age`, `Cache-Control`, `Date`, `ETag`. The body is not
    /// changed (`Content-Encoding: gzip` does not gzip it). Framing stays right: entries named
    /// `Content-Length`, `Transfer-Encoding` or `Connection` are ignored, and so are names
    /// that are not HTTP tokens and values with control characters.
    Headers(Vec<(String, String)>),
    /// `200` with `Content-Length: size` and `size` deterministic bytes (a function of
    /// version, path and query; raster paths start with the PNG/JPEG signature), with the
    /// route's `Content-Type` (`application/octet-stream` off the tile routes). The body is
    /// generated lazily and written 64 KiB at a time as fast as the client reads, so memory
    /// does not grow with `size` (64 MiB and more is fine).
    BigBody {
        /// Body length in bytes.
        size: u64,
    },
}

/// A running test upstream. Stops (thread joined, listener closed, open connections
/// dropped) on [`Upstream::shutdown`] or drop.
pub struct Upstream {
    state: Arc<State>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("addr", &self.addr).finish()
    }
}

impl Upstream {
    /// Binds `opts.listen` and starts serving on a dedicated OS thread with its own tokio
    /// runtime. Returns once the socket is bound (connections are accepted from then on).
    /// Callable from inside or outside any async runtime.
    pub fn start(opts: Options) -> io::Result<Upstream> {
        let listen = opts.listen;
        let state = Arc::new(State::new(opts));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new().name("test-upstream".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("test-upstream-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match server::bind(listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let addr = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(addr)).is_err() {
                    return;
                }
                server::serve(thread_state, listener, stop_rx).await;
            });
            // Dropping the runtime cancels every connection task (hung ones included).
            drop(rt);
        })?;
        let addr = match ready_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("test-upstream thread exited early"));
            }
        };
        Ok(Upstream { state, addr, stop: stop_tx, thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` of the bound address (IPv6 in brackets).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Number of tile, metadata and other non-control requests received (including ones
    /// answered with errors or faults; `/__*` excluded).
    pub fn total(&self) -> u64 {
        self.state.total()
    }

    /// Requests whose path (without query) equals `path` exactly.
    pub fn count(&self, path: &str) -> u64 {
        self.state.count(path)
    }

    /// Requests whose path contains `needle`.
    pub fn count_matching(&self, needle: &str) -> u64 {
        self.state.count_matching(needle)
    }

    /// Every recorded request in arrival order (the most recent 100 000 are kept).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests()
    }

    /// The next `times` requests whose path contains `needle` get `fault`. Rules are checked
    /// in insertion order; each request consumes at most one use of the first matching rule.
    pub fn fail(&self, needle: &str, fault: Fault, times: usize) {
        self.state.add_rule(needle, fault, Some(times));
    }

    /// Like [`Upstream::fail`] without a limit, until [`Upstream::clear_faults`].
    pub fn fail_always(&self, needle: &str, fault: Fault) {
        self.state.add_rule(needle, fault, None);
    }

    /// Removes every fault rule (same as `POST /__clear`).
    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// Clears counters, recorded requests and fault rules (same as `POST /__reset`); the
    /// content version and latency are kept.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Sets the extra delay before every counted response head (initially
    /// [`Options::latency`]; same as `POST /__latency?ms=N`).
    pub fn set_latency(&self, latency: Duration) {
        self.state.set_latency(latency);
    }

    /// Sets the content version (default 0); every tile's bytes and ETag change with it.
    pub fn set_version(&self, v: u64) {
        self.state.set_version(v);
    }

    /// Sets the server's clock, in Unix ms, that traffic tiles change with (every minute) and
    /// date (`Last-Modified`); `0` goes back to the wall clock (the default). Same as
    /// `POST /__clock?ms=N`. Tests move it with the proxy's injected clock.
    pub fn set_clock_ms(&self, ms: u64) {
        self.state.set_clock_ms(ms);
    }

    /// The exact body a `200` for `path_and_query` carries at the current version
    /// (`apiKey`/`apikey` and parameter order ignored). Metadata paths give their JSON.
    pub fn tile_bytes(&self, path_and_query: &str) -> Bytes {
        self.state.tile_bytes(path_and_query)
    }

    /// Stops the server: closes the listener and all connections, joins the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Upstream>();
        check::<Options>();
        check::<Fault>();
        check::<Recorded>();
    }

    #[test]
    fn recorded_helpers() {
        let r = Recorded {
            method: "GET".into(),
            path: "/x".into(),
            query: "apiKey=a%20b&lang=en&x".into(),
            headers: vec![("user-agent".into(), "t".into())],
            at: std::time::Instant::now(),
        };
        assert_eq!(r.header("User-Agent"), Some("t"));
        assert_eq!(r.query_param("apiKey").as_deref(), Some("a b"));
        assert_eq!(r.query_param("apikey"), None);
        assert_eq!(r.query_param("x").as_deref(), Some(""));
    }

    #[test]
    fn tile_sizes_parse_a_trace_and_reject_bad_lines() {
        let trace = "/here-proxy/mc/12/2200/1343/png?indice=bench&style=explore.day&size=512\t17000\n\
                     /here-proxy/mc/18/140000/90000/png?indice=bench\t5120\tscan\n\
                     \n# comment\n\
                     /here-proxy/mc/12/2200/1343/png?indice=bench&style=explore.day&size=512\t17000\n\
                     /v3/base/mc/3/1/2/png 999\n\
                     4/5/6\t7\n";
        let s = TileSizes::parse(trace).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s.get(12, 2200, 1343), Some(17000));
        assert_eq!(s.get(18, 140000, 90000), Some(5120));
        assert_eq!(s.for_path("/v3/base/mc/3/1/2/png"), Some(999));
        assert_eq!(s.for_path("/v2/vectortiles/base/mc/4/5/6/omv"), Some(7));
        assert_eq!(s.for_path("/v3/base/mc/4/5/7/png"), None);
        assert_eq!(format!("{s:?}"), "TileSizes(4 tiles)");
        assert!(TileSizes::parse("/here-proxy/mc/1/0/0/png\n").unwrap_err().contains("line 1: no size"));
        assert!(TileSizes::parse("/here-proxy/x/png 10\n").unwrap_err().contains("no z/x/y"));
        assert!(TileSizes::parse("1/0/0 ten\n").unwrap_err().contains("invalid size"));
        assert!(TileSizes::parse("1/0/0 10\n1/0/0 11\n").unwrap_err().contains("line 2: tile 1/0/0 given two sizes"));
        assert!(TileSizes::parse("1/0/0 999999999\n").is_err());
    }

    #[test]
    fn sized_tiles_get_exactly_their_size_over_http() {
        use std::io::{Read, Write};
        let mut sizes = TileSizes::default();
        sizes.insert(12, 2200, 1343, 17_321);
        sizes.insert(5, 1, 1, 0);
        let up = Upstream::start(Options {
            api_key: None,
            min_size: 100,
            max_size: 200,
            sizes: Arc::new(sizes),
            ..Options::default()
        })
        .unwrap();
        let get = |path: &str| -> (String, usize) {
            let mut c = std::net::TcpStream::connect(up.addr()).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut buf = Vec::new();
            c.read_to_end(&mut buf).unwrap();
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            (String::from_utf8_lossy(&buf[..end]).into_owned(), buf.len() - end - 4)
        };
        let (head, len) = get("/v3/base/mc/12/2200/1343/png?style=explore.day&size=512");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-length: 17321"), "{head}");
        assert_eq!(len, 17_321);
        assert_eq!(up.tile_bytes("/v3/base/mc/12/2200/1343/png?size=256").len(), 17_321);
        assert!(up.tile_bytes("/v3/base/mc/5/1/1/png").is_empty());
        // A vector tile of a sized z/x/y is sized too; a tile not in the map keeps min..max.
        assert_eq!(up.tile_bytes("/v2/vectortiles/base/mc/12/2200/1343/omv").len(), 17_321);
        let (_, len) = get("/v3/base/mc/12/2200/1344/png");
        assert!((100..=200).contains(&len), "{len}");
    }
}

//! Test harness: the real server (`tile_proxy::app::server::start`) on 127.0.0.1:0 with its cache in
//! a temporary folder, in front of the project's HERE-like test upstream; an awc client to talk
//! to it. Each test uses its own tile addresses so tests never share state.
#![allow(dead_code, unused_imports)]

pub mod nginx;
pub mod process;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod tls;

use std::time::Duration;

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use bytes::Bytes;
use std::sync::Arc;

use tile_proxy::app::server::{self, Running, StartOptions};
use tile_proxy::base::clock::ManualClock;
use tile_proxy::config::{ByteSize, FileConfig, Settings};
use tile_proxy::store::cache::Tier;

pub use test_upstream::{Fault, Options, Upstream};

/// The key the test upstream accepts.
pub const SERVER_KEY: &str = "SERVERKEY0123456789";

/// A test upstream that accepts [`SERVER_KEY`] and serves `size`-byte tiles.
pub fn upstream(size: usize) -> Upstream {
    Upstream::start(Options { api_key: Some(SERVER_KEY.into()), min_size: size, max_size: size, ..Options::default() })
        .expect("test upstream starts")
}

/// A duration as the config file spells it: `dur("300ms")`.
pub fn dur(s: &str) -> Duration {
    tile_proxy::config::units::parse_duration(s).expect("a duration")
}

/// A config pointing every API (traffic too) at `upstream`, small caches, fast retries.
pub fn config(upstream: &Upstream, dir: &std::path::Path) -> FileConfig {
    let mut f = FileConfig {
        listen: "127.0.0.1:0".into(),
        workers: Some(2),
        here_api_key: Some(SERVER_KEY.into()),
        raster_upstream: upstream.base_url(),
        vector_upstream: upstream.base_url(),
        traffic_raster_upstream: upstream.base_url(),
        traffic_vector_upstream: upstream.base_url(),
        cache_dir: dir.to_path_buf(),
        memory_cache: ByteSize::mib(32),
        disk_cache: ByteSize::mib(16),
        max_entry_size: ByteSize::kib(256),
        shutdown_timeout: dur("2s"),
        ..FileConfig::default()
    };
    // The shipped per-client limit off: tests fire thousands of requests from 127.0.0.1 (load
    // tests: hundreds of viewers, seeding through the proxy). Tests of limits set their own, and
    // tests/protect.rs turns the default back on (`None`) to test it.
    f.defaults.rate_limit = Some(0.0);
    f.upstream.retry_min_delay = dur("10ms");
    f.upstream.retry_max_delay = dur("50ms");
    f.upstream.head_timeout = dur("2s");
    f.upstream.body_timeout = dur("5s");
    f
}

/// A running proxy and what it needs.
pub struct Proxy {
    pub running: Option<Running>,
    /// The proxy's clock: tests move it instead of sleeping.
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: awc::Client,
}

impl Proxy {
    /// Starts a proxy in front of `upstream`; `tweak` adjusts the config first.
    pub async fn start(upstream: &Upstream, tweak: impl FnOnce(&mut FileConfig)) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(upstream, dir, tweak).await
    }

    /// Starts a proxy whose cache lives in `dir` (to restart on the same folder).
    pub async fn start_in(upstream: &Upstream, dir: tempfile::TempDir, tweak: impl FnOnce(&mut FileConfig)) -> Proxy {
        Self::start_with(upstream, dir, tweak, None).await
    }

    /// Starts a proxy with its own cache tiers instead of the built-in one.
    pub async fn start_with(
        upstream: &Upstream,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut FileConfig),
        tiers: Option<Vec<Box<dyn Tier>>>,
    ) -> Proxy {
        Self::start_opts(upstream, dir, tweak, StartOptions { tiers, ..Default::default() }).await
    }

    /// Starts a proxy whose XFetch draw is `draw` (`|| f64::MIN_POSITIVE`: every hit close
    /// enough to expiry refreshes early; `|| 1.0`: none does).
    pub async fn start_drawing(upstream: &Upstream, draw: fn() -> f64, tweak: impl FnOnce(&mut FileConfig)) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_opts(upstream, dir, tweak, StartOptions { early_refresh_draw: Some(draw), ..Default::default() })
            .await
    }

    /// Starts a proxy with these start options (the clock is always a [`ManualClock`]).
    pub async fn start_opts(
        upstream: &Upstream,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut FileConfig),
        opts: StartOptions,
    ) -> Proxy {
        Self::start_clocked(upstream, dir, tweak, opts, ManualClock::new()).await
    }

    /// [`Proxy::start_opts`] with this pod clock (one set apart from the others: a skewed pod).
    pub async fn start_clocked(
        upstream: &Upstream,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut FileConfig),
        opts: StartOptions,
        clock: Arc<ManualClock>,
    ) -> Proxy {
        let mut f = config(upstream, dir.path());
        tweak(&mut f);
        let settings = Settings::from_file_config(f).expect("valid test config");
        let running = server::start_with(settings, StartOptions { clock: Some(clock.clone()), ..opts })
            .await
            .expect("proxy starts");
        let base = format!("http://{}", running.addr());
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        Proxy { running: Some(running), clock, dir, base, client }
    }

    /// The running server's shared state.
    pub fn state(&self) -> &tile_proxy::http::state::AppState {
        self.running.as_ref().expect("running").state()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET with optional headers; the whole body.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.client.get(self.url(path));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = req.send().await.expect("request sent");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.body().limit(64 << 20).await;
        Resp { status, headers, body: body.map_err(|e| e.to_string()) }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.get_with(path, &[]).await
    }

    /// [`Proxy::get`] owning its path (for futures built in a loop).
    pub async fn get_owned(&self, path: String) -> Resp {
        self.get_with(&path, &[]).await
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        String::from_utf8(r.body.expect("metrics body").to_vec()).expect("utf8")
    }

    /// Stops gracefully (drain, close the cache) and gives back the cache folder.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.dir
    }
}

/// The bound of every wait for something that should happen (a signal, a condition, a process
/// to exit): generous, because the machine running the tests may be busy. Only a failing test
/// waits this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits for a push signal, `signal` (a future that completes when the event happened),
/// bounded by [`PATIENCE`]. Prefer this to [`eventually`] whenever the event has a signal.
pub async fn signalled<T>(what: &str, signal: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, signal).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for: {what}"),
    }
}

/// Polls `done` until it holds, bounded by [`PATIENCE`]: for a condition that has no push
/// signal, such as a background refresh having reached the upstream or a metric having moved.
/// Never for time to pass: tests move the injected clock for that.
pub async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A response as a test sees it.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `Err` when the transfer failed (e.g. the connection was cut mid-body).
    pub body: Result<Bytes, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("")
    }

    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("complete body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("JSON body")
    }
}

/// The value of a Prometheus sample line `name{labels} value`, labels matched as substrings.
/// POSTs the JSON `body` to `url` with `Authorization: Bearer <token>` when given (the admin
/// API's calls); the answer, whole (up to 64 MiB).
pub async fn post_json(client: &awc::Client, url: &str, token: Option<&str>, body: &str) -> Resp {
    let mut req = client.post(url).insert_header(("Content-Type", "application/json"));
    if let Some(t) = token {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut res = req.send_body(body.to_string()).await.expect("request sent");
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.body().limit(64 << 20).await.map_err(|e| e.to_string());
    Resp { status, headers, body }
}

/// The z/x/y of every base raster tile (`/v3/base/mc/z/x/y/png`) the upstream was asked for,
/// in the order asked.
pub fn fetched_raster(up: &Upstream) -> Vec<(u8, u32, u32)> {
    up.requests()
        .iter()
        .filter_map(|r| {
            let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
            match parts[..] {
                ["v3", "base", "mc", z, x, y, "png"] => Some((z.parse().ok()?, x.parse().ok()?, y.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A raw HTTP/1.1 GET with `Connection: close`: the response head as text and every body byte
/// read until the server closed the connection (to see truncation exactly as a browser would).
/// An empty head means the connection was closed before a whole head arrived.
pub async fn raw_get(p: &Proxy, path: &str) -> (String, Vec<u8>) {
    let addr = p.base.trim_start_matches("http://").to_string();
    let path = path.to_string();
    tokio::task::spawn_blocking(move || raw_get_at(&addr, &path)).await.expect("raw client")
}

/// [`raw_get`] to `addr` (`host:port`), blocking.
pub fn raw_get_at(addr: &str, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    match all.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (String::from_utf8_lossy(&all[..i + 4]).to_string(), all[i + 4..].to_vec()),
        None => (String::new(), all),
    }
}

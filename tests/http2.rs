//! HTTP/2 to the upstream, shown: the proxy in front of a real nginx on TLS (a private CA made
//! for the test, trusted through `upstream.ca_file`) that proxies to the test upstream over
//! plain HTTP. nginx's access log says which protocol and which connection carried each
//! request; the proxy's `tile_proxy_upstream_requests_total{protocol}` says the same.
//!
//! - `h2` is used when nginx offers it, and concurrent misses are multiplexed: more requests
//!   in flight at once than connections carry them (HTTP/1.1 needs a connection per request).
//! - nginx without HTTP/2: HTTP/1.1, tiles still served.
//! - `upstream.http2 = false`: HTTP/1.1 even when nginx offers `h2`.
//! - Without `upstream.ca_file` the private CA's certificate is refused.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::nginx::{Logged, Nginx};
use common::*;

/// Concurrent misses in a burst.
const BURST: u64 = 50;
/// The upstream's delay before each head during a burst, so that the burst's requests are in
/// flight together (see [`peak_in_flight`]).
const LATENCY: Duration = Duration::from_millis(300);

/// A proxy whose raster upstream is `nginx`, trusting its CA, with one worker: one awc client,
/// so the connection the first tile opens is the one the burst finds in the pool.
async fn proxy(up: &Upstream, nginx: &Nginx, http2: bool) -> Proxy {
    Proxy::start(up, |f| {
        f.workers = Some(1);
        f.raster_upstream = nginx.base_url();
        f.upstream.ca_file = Some(nginx.ca_file.clone());
        f.upstream.http2 = http2;
    })
    .await
}

/// `n` distinct tiles (never asked for before in this test's upstream) from column `first`.
fn tiles(first: u64, n: u64) -> Vec<String> {
    (first..first + n).map(|x| format!("/v3/base/mc/8/{x}/77/png")).collect()
}

/// Asks for every tile at once; each must be a MISS with the upstream's bytes.
async fn fetch_all(p: &Proxy, up: &Upstream, index: &str, paths: &[String]) {
    let answers =
        futures_util::future::join_all(paths.iter().map(|path| p.get_owned(format!("{path}?indice={index}")))).await;
    for (path, r) in paths.iter().zip(answers) {
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.x_cache(), "MISS", "{path}");
        assert_eq!(r.bytes(), &up.tile_bytes(path), "{path}");
    }
}

/// nginx's lines for `paths`, once it has logged all of them (each line is written when its
/// request ends, which may be a moment after the proxy relayed the last byte).
async fn logged(nginx: &Nginx, paths: &[String]) -> Vec<Logged> {
    let wanted: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    let mine = || nginx.log().into_iter().filter(|l| wanted.contains(l.path.as_str())).collect::<Vec<_>>();
    eventually("nginx logged every request", async || mine().len() >= paths.len()).await;
    let lines = mine();
    assert_eq!(lines.len(), paths.len(), "one upstream request per tile: {lines:#?}");
    assert!(lines.iter().all(|l| l.status == 200), "{lines:#?}");
    lines
}

/// `tile_proxy_upstream_requests_total{index, status="200", protocol}`.
async fn upstream_200s(p: &Proxy, index: &str, protocol: &str) -> f64 {
    let labels = [format!("index=\"{index}\""), "status=\"200\"".into(), format!("protocol=\"{protocol}\"")];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    metric(&p.metrics().await, "tile_proxy_upstream_requests_total", &labels)
}

/// The most requests for `paths` the upstream held at once: each one from its arrival until
/// its head left [`LATENCY`] later (the request is in flight on nginx's client connection all
/// that time).
fn peak_in_flight(up: &Upstream, paths: &[String]) -> usize {
    let arrivals: Vec<std::time::Instant> =
        up.requests().into_iter().filter(|r| paths.contains(&r.path)).map(|r| r.at).collect();
    assert_eq!(arrivals.len(), paths.len());
    arrivals.iter().map(|&t| arrivals.iter().filter(|&&a| a <= t && t < a + LATENCY).count()).max().unwrap_or(0)
}

fn connections(lines: &[Logged]) -> BTreeSet<u64> {
    lines.iter().map(|l| l.connection).collect()
}

#[actix_rt::test]
async fn tiles_come_over_h2_and_concurrent_misses_share_connections() {
    let up = upstream(2_000);
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path(), &up, true).await;
    let p = proxy(&up, &nginx, true).await;

    // One tile: over h2, by the metric and by nginx. It also leaves the worker an open h2
    // connection in its pool: awc's pool does not share a connection still being set up, so a
    // burst on a worker without one opens a connection per request until the first handshake
    // is done (seen: 50 for 50; actix/actix-web#2715).
    let first = tiles(0, 1);
    fetch_all(&p, &up, "h2", &first).await;
    assert_eq!(upstream_200s(&p, "h2", "h2").await, 1.0);
    assert_eq!(upstream_200s(&p, "h2", "http/1.1").await, 0.0);
    assert_eq!(logged(&nginx, &first).await[0].protocol, "HTTP/2.0");

    // A burst of distinct misses, all in flight at once.
    up.set_latency(LATENCY);
    let burst = tiles(1, BURST);
    fetch_all(&p, &up, "h2", &burst).await;
    let lines = logged(&nginx, &burst).await;
    assert!(lines.iter().all(|l| l.protocol == "HTTP/2.0"), "{lines:#?}");
    assert_eq!(upstream_200s(&p, "h2", "h2").await, (BURST + 1) as f64);
    let used = connections(&lines);
    let peak = peak_in_flight(&up, &burst);
    eprintln!("h2: {BURST} concurrent misses over {} connection(s) {used:?}, {peak} in flight at once", used.len());
    // One connection per request would be 50 (as over HTTP/1.1 below); seen: 1.
    assert!(used.len() <= 2, "{BURST} misses used {} connections: {used:?}", used.len());
    // More requests at once than connections: some connection carried several at a time.
    assert!(peak > used.len(), "{peak} in flight at once over {} connections", used.len());
    p.stop().await;
}

#[actix_rt::test]
async fn an_upstream_without_h2_is_spoken_to_in_http_1_1() {
    let up = upstream(2_000);
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path(), &up, false).await;
    let p = proxy(&up, &nginx, true).await;
    let paths = tiles(100, 5);
    fetch_all(&p, &up, "h1", &paths).await;
    let lines = logged(&nginx, &paths).await;
    assert!(lines.iter().all(|l| l.protocol == "HTTP/1.1"), "{lines:#?}");
    assert_eq!(upstream_200s(&p, "h1", "http/1.1").await, 5.0);
    assert_eq!(upstream_200s(&p, "h1", "h2").await, 0.0);
    p.stop().await;
}

#[actix_rt::test]
async fn http2_off_speaks_http_1_1_to_an_h2_upstream() {
    let up = upstream(2_000);
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path(), &up, true).await;
    let p = proxy(&up, &nginx, false).await;
    up.set_latency(LATENCY);
    let burst = tiles(200, BURST);
    fetch_all(&p, &up, "off", &burst).await;
    let lines = logged(&nginx, &burst).await;
    assert!(lines.iter().all(|l| l.protocol == "HTTP/1.1"), "{lines:#?}");
    assert_eq!(upstream_200s(&p, "off", "http/1.1").await, BURST as f64);
    assert_eq!(upstream_200s(&p, "off", "h2").await, 0.0);
    // The same burst without multiplexing: a connection per request in flight.
    let used = connections(&lines);
    let peak = peak_in_flight(&up, &burst);
    eprintln!("http/1.1: {BURST} concurrent misses over {} connections, {peak} in flight at once", used.len());
    assert!(used.len() >= peak, "{peak} in flight at once over {} connections", used.len());
    p.stop().await;
}

#[actix_rt::test]
async fn without_the_ca_file_the_certificate_is_refused() {
    let up = upstream(2_000);
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path(), &up, true).await;
    let p = Proxy::start(&up, |f| f.raster_upstream = nginx.base_url()).await;
    let r = p.get("/v3/base/mc/8/0/77/png?indice=untrusted").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "connect_error");
    assert!(nginx.log().is_empty(), "no request got through: {:?}", nginx.log());
    // Every attempt failed before an answer: no protocol.
    let m = p.metrics().await;
    let failed = ["index=\"untrusted\"", "status=\"connect_error\"", "protocol=\"none\""];
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &failed), 3.0);
    p.stop().await;
}

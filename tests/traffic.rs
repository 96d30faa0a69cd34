//! HERE traffic tiles through the proxy, against the test upstream's imitation of the Traffic
//! Raster Tile API v3 and the Traffic Vector Tile API v2 (flow that changes every minute of an
//! injected clock, `Last-Modified` at the minute's start, 304 to `If-None-Match` and
//! `If-Modified-Since`, 204 where there is no traffic); and HTTP's date validators on both
//! sides of the proxy. Time is the proxy's `ManualClock`, moved together with the upstream's.

mod common;

use common::*;
use futures_util::future::join_all;

/// A Unix time (ms) at the start of a minute, near now: both clocks start there.
fn minute_start(p: &Proxy) -> u64 {
    let now = p.clock.now_ms();
    (now / 60_000 + 1) * 60_000
}

/// Moves the proxy's clock to `at_ms` (never backwards) and the upstream's with it.
fn set_time(p: &Proxy, up: &Upstream, at_ms: u64) {
    let now = p.clock.now_ms();
    assert!(at_ms >= now, "time only moves forward");
    p.clock.advance_ms(at_ms - now);
    up.set_clock_ms(at_ms);
}

/// The requests the upstream received for `path`.
fn received(up: &Upstream, path: &str) -> Vec<test_upstream::Recorded> {
    up.requests().into_iter().filter(|r| r.path == path).collect()
}

use tile_proxy::base::clock::Clock;

#[actix_rt::test]
async fn traffic_raster_tiles_are_transparent_flow_cached_under_their_own_key_and_dated() {
    let up = upstream(2000);
    let p = Proxy::start(&up, |_| {}).await;
    let t0 = minute_start(&p);
    set_time(&p, &up, t0);
    let path = "/v3/flow/mc/12/2200/1343/png";
    let first = p.get(&format!("{path}?indice=web&apiKey=CLIENT")).await;
    assert_eq!(first.status, 200);
    assert_eq!((first.x_cache(), first.header("content-type")), ("MISS", Some("image/png")));
    let png = first.bytes();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(png[25], 6, "colour type 6: RGBA, a transparent overlay");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 512, "size defaults to 512 on traffic tiles");
    // The upstream's date, relayed; the index's traffic TTL (30s by default) to clients.
    let lm = tile_proxy::domain::conditional::http_date(t0 / 1000);
    assert_eq!(first.header("last-modified"), Some(lm.as_str()));
    assert_eq!(first.header("cache-control"), Some("public, max-age=30"));
    // Every spelling of the same tile is one entry, one upstream call: HERE's default size,
    // congestion and ppi dropped, and the seed-style URL.
    for (url, index) in [
        (format!("{path}?size=512&minTrafficCongestion=free&ppi=100"), "default"),
        ("/here-proxy/flow/mc/12/2200/1343/png?indice=web".to_string(), "web"),
        ("/here-proxy/flow/12/2200/1343/png".to_string(), "default"),
    ] {
        let r = p.get(&url).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"), "{url} ({index})");
        assert_eq!(r.bytes(), png);
    }
    let sent = received(&up, path);
    assert_eq!(sent.len(), 1, "one upstream call for every spelling");
    assert_eq!(sent[0].query, format!("apiKey={SERVER_KEY}"), "the server's key, none of the client's");
    // A different congestion floor is a different tile.
    let heavy = p.get(&format!("{path}?minTrafficCongestion=heavy")).await;
    assert_eq!(heavy.x_cache(), "MISS");
    assert_eq!(received(&up, path).last().unwrap().query, format!("minTrafficCongestion=heavy&apiKey={SERVER_KEY}"));
    // A base tile of the same address is another API: its own entry.
    assert_eq!(p.get("/v3/base/mc/12/2200/1343/png").await.x_cache(), "MISS");
    // The bill per HERE API: the traffic calls are counted apart from the base map's.
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "tile_proxy_upstream_requests_total", &["upstream=\"traffic_raster\"", "status=\"200\""]),
        2.0
    );
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &["upstream=\"raster\"", "status=\"200\""]), 1.0);
}

#[actix_rt::test]
async fn traffic_vector_tiles_and_their_204s_are_cached_for_the_traffic_ttl() {
    let up = upstream(2000);
    let p = Proxy::start(&up, |f| f.defaults.traffic_ttl = Some(dur("20s"))).await;
    let t0 = minute_start(&p);
    set_time(&p, &up, t0);
    let with = "/v2/traffictiles/flow/mc/11/1100/671/omv";
    assert!(test_upstream::has_traffic(11, 1100, 671));
    let r = p.get(with).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"));
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert!(!r.bytes().is_empty());
    assert_eq!(p.get(with).await.x_cache(), "HIT");
    // No traffic on this tile: HERE's 204, remembered like a tile.
    let empty = "/v2/traffictiles/incident/mc/3/2/3/omv";
    assert!(!test_upstream::has_traffic(3, 2, 3));
    let r = p.get(empty).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (204, "MISS"));
    assert!(r.bytes().is_empty());
    assert!(r.header("last-modified").is_some(), "a 204 is dated too");
    let again = p.get(empty).await;
    assert_eq!((again.status.as_u16(), again.x_cache()), (204, "HIT"));
    assert_eq!(again.header("cache-control"), Some("public, max-age=20"));
    assert_eq!((up.count(with), up.count(empty)), (1, 1));
    // After the traffic TTL both are asked again.
    set_time(&p, &up, t0 + 20_000);
    assert_eq!(p.get(empty).await.status, 204);
    assert_eq!(p.get(with).await.status, 200);
    assert_eq!((up.count(with), up.count(empty)), (2, 2));
}

/// 200 viewers watch the same two traffic tiles for 3 minutes with a 30 s traffic TTL, each
/// asking every 10 s: each tile costs its first download and one revalidation per TTL, about
/// 6 (304 while HERE's minute has not turned, 200 when it has), not 200 downloads.
#[actix_rt::test]
async fn two_hundred_viewers_over_three_minutes_cost_a_revalidation_per_ttl_per_tile() {
    let up = upstream(2000);
    // `|| 1.0`: no XFetch early refresh, so the count does not depend on fetch timing.
    let p = Proxy::start_drawing(&up, || 1.0, |f| f.defaults.traffic_ttl = Some(dur("30s"))).await;
    let tiles = ["/v3/flow/mc/13/4400/2686/png", "/v2/traffictiles/traffic/mc/13/4400/2686/omv"];
    let t0 = minute_start(&p);
    let (viewers, step_ms, steps) = (200, 10_000, 18);
    let mut answers = 0;
    for step in 0..=steps {
        set_time(&p, &up, t0 + step * step_ms);
        let all = join_all((0..viewers).flat_map(|_| tiles).map(|t| p.get_owned(t.to_string()))).await;
        for r in &all {
            assert_eq!(r.status, 200, "at step {step}");
            assert!(!r.bytes().is_empty());
        }
        answers += all.len();
    }
    assert_eq!(answers, 2 * 200 * 19);
    let m = p.metrics().await;
    let revalidated = |result: &str| metric(&m, "tile_proxy_revalidations_total", &[&format!("result=\"{result}\"")]);
    for t in tiles {
        let sent = received(&up, t);
        // t=0: the download; t=30, 60, ... 180 s: the revalidations.
        assert_eq!(sent.len(), 7, "{t}: {} upstream requests for {} answers", sent.len(), 200 * 19);
        assert!(sent[0].header("if-none-match").is_none());
        for r in &sent[1..] {
            assert!(r.header("if-none-match").is_some(), "{t}: revalidated with the ETag");
        }
    }
    // HERE's minute turned at 60, 120 and 180 s: those were downloads; 30, 90, 150 s were 304s.
    assert_eq!((revalidated("not_modified"), revalidated("modified")), (6.0, 6.0));
}

#[actix_rt::test]
async fn the_last_known_traffic_stands_in_briefly_when_here_fails() {
    let up = upstream(2000);
    let p = Proxy::start(&up, |f| {
        f.defaults.traffic_ttl = Some(dur("30s"));
        f.defaults.traffic_stale_if_error = Some(dur("2m"));
        f.upstream.breaker_failures = 0;
    })
    .await;
    let t0 = minute_start(&p);
    set_time(&p, &up, t0);
    let path = "/v3/flow/mc/10/550/335/png";
    let good = p.get(path).await;
    assert_eq!(good.status, 200);
    up.fail_always("/v3/flow", Fault::Status { code: 500, retry_after: None });
    set_time(&p, &up, t0 + 31_000);
    let stale = p.get(path).await;
    assert_eq!((stale.status.as_u16(), stale.x_cache()), (200, "STALE"));
    assert_eq!(stale.header("x-cache-reason"), Some("upstream_error"));
    assert_eq!(stale.bytes(), good.bytes());
    // Past the traffic TTL and its 2 minutes of grace: an error, never older traffic.
    set_time(&p, &up, t0 + 30_000 + 120_000 + 1_000);
    let late = p.get(path).await;
    assert_eq!(late.status, 502, "{:?}", late.body);
    // Base tiles keep the index's own, longer stale-if-error (1 day by default).
    up.clear_faults();
    assert_eq!(p.get("/v3/base/mc/10/550/335/png").await.status, 200);
}

#[actix_rt::test]
async fn traffic_has_its_own_budget_breaker_and_labels() {
    let up = upstream(2000);
    let p = Proxy::start(&up, |f| {
        f.index.insert(
            "web".into(),
            tile_proxy::config::PolicyFileConfig { traffic_budget_hour: Some(2), ..Default::default() },
        );
        f.upstream.breaker_failures = 2;
        f.upstream.retry_attempts = 1;
    })
    .await;
    for x in [1, 2] {
        assert_eq!(p.get(&format!("/v2/traffictiles/flow/mc/5/{x}/1/omv?indice=web")).await.status, 200);
    }
    let refused = p.get("/v2/traffictiles/flow/mc/5/3/1/omv?indice=web").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["window"], "traffic_hour");
    // The map tiles' budget (none) is apart: they are still fetched.
    assert_eq!(p.get("/v3/base/mc/5/3/1/png?indice=web").await.status, 200);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_budget_used", &["index=\"web\"", "window=\"traffic_hour\""]), 2.0);
    assert_eq!(metric(&m, "tile_proxy_budget_exhausted_total", &["index=\"web\"", "window=\"traffic_hour\""]), 1.0);
    // HERE's traffic raster API fails: its breaker opens, the base raster API's does not.
    up.fail_always("/v3/flow", Fault::Status { code: 500, retry_after: None });
    for y in [1, 2] {
        assert_eq!(p.get(&format!("/v3/flow/mc/5/1/{y}/png")).await.status, 502);
    }
    let open = p.get("/v3/flow/mc/5/1/4/png").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.json()["error"], "breaker_open");
    assert_eq!(p.get("/v3/base/mc/5/1/4/png").await.status, 200);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_breaker_open", &["upstream=\"traffic_raster\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_breaker_open", &["upstream=\"raster\""]), 0.0);
    let health = p.get("/health").await.json();
    assert_eq!(health["circuit_breakers"]["traffic_raster"]["state"], "open");
    assert_eq!(health["upstream"]["traffic_vector"]["reachable"], true);
    assert_eq!(health["upstream"]["traffic_raster"]["base_url"], up.base_url());
}

#[actix_rt::test]
async fn tilejson_documents_for_both_traffic_layers() {
    let up = upstream(2000);
    let p = Proxy::start(&up, |_| {}).await;
    let r = p.get("/v3/flow/tilejson.json?minTrafficCongestion=queuing&indice=web").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    let tiles = doc["tiles"][0].as_str().unwrap();
    assert_eq!(tiles, format!("{}/v3/flow/mc/{{z}}/{{x}}/{{y}}/png?minTrafficCongestion=queuing&indice=web", p.base));
    let v = p.get("/v2/traffictiles/flow/tilejson.json").await.json();
    assert_eq!(v["tiles"][0], format!("{}/v2/traffictiles/flow/mc/{{z}}/{{x}}/{{y}}/omv", p.base));
    assert_eq!(v["vector_layers"][0]["id"], "traffic_flow");
    assert_eq!(p.get("/v2/traffictiles/roads/tilejson.json").await.status, 400);
    // The template it gives is served.
    let tile = tiles.replace("{z}", "3").replace("{x}", "1").replace("{y}", "2").replace(&p.base, "");
    assert_eq!(p.get(&tile).await.status, 200);
    assert_eq!(up.total(), 1, "documents are generated, the tile fetched");
}

/// The upstream sends no ETag, only `Last-Modified`: an expired copy is revalidated with
/// `If-Modified-Since`, and the 304 renews it.
#[actix_rt::test]
async fn revalidation_by_date_when_the_upstream_has_no_etag() {
    let up = Upstream::start(Options {
        api_key: Some(SERVER_KEY.into()),
        etags: false,
        raster_max_age: Some(60),
        ..Options::default()
    })
    .unwrap();
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v3/base/mc/6/10/20/png";
    let first = p.get(path).await;
    assert_eq!(first.status, 200);
    assert!(first.header("etag").is_some(), "clients still get our derived ETag");
    let upstream_date = first.header("last-modified").expect("the upstream's date").to_string();
    p.clock.advance_ms(61_000);
    let renewed = p.get(path).await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.bytes(), first.bytes());
    let sent = received(&up, path);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].header("if-modified-since"), Some(upstream_date.as_str()));
    assert_eq!(sent[1].header("if-none-match"), None);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_revalidations_total", &["result=\"not_modified\""]), 1.0);
    assert_eq!(renewed.header("last-modified"), Some(upstream_date.as_str()), "a 304 keeps the date");
    assert_eq!(renewed.header("age"), Some("0"), "and renews the copy");
    // A new version upstream: the next revalidation downloads it, with its new date.
    up.set_version(1);
    p.clock.advance_ms(61_000);
    let changed = p.get(path).await;
    assert_ne!(changed.bytes(), first.bytes());
    assert_ne!(changed.header("last-modified"), Some(upstream_date.as_str()));
}

/// One `curl` request with these extra headers: (status, Last-Modified, ETag).
fn curl(url: &str, headers: &[String]) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("curl runs");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a status");
    (code, String::from_utf8_lossy(&out.stderr).to_string())
}

/// What a CDN does: revalidate its copy with both validators. If-None-Match decides when
/// present (RFC 9110 13.2.2); If-Modified-Since alone compares dates.
#[actix_rt::test]
async fn a_cdn_like_client_revalidates_with_both_headers() {
    let up = upstream(2000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v3/base/mc/7/30/40/png";
    let first = p.get(path).await;
    let (etag, lm) = (first.header("etag").unwrap().to_string(), first.header("last-modified").unwrap().to_string());
    let secs = tile_proxy::domain::conditional::http_date_secs(&lm).unwrap();
    let earlier = tile_proxy::domain::conditional::http_date(secs - 1);
    let later = tile_proxy::domain::conditional::http_date(secs + 3600);
    let url = p.url(path);
    let h = |name: &str, v: &str| format!("{name}: {v}");
    let cases = [
        (vec![h("If-None-Match", &etag), h("If-Modified-Since", &earlier)], 304, "INM matches: IMS ignored"),
        (vec![h("If-None-Match", "\"other\""), h("If-Modified-Since", &later)], 200, "INM differs: IMS ignored"),
        (vec![h("If-Modified-Since", &lm)], 304, "IMS at the date"),
        (vec![h("If-Modified-Since", &later)], 304, "IMS after the date"),
        (vec![h("If-Modified-Since", &earlier)], 200, "IMS before the date"),
        (vec![h("If-Modified-Since", "not a date")], 200, "an invalid IMS is ignored"),
        (vec![], 200, "unconditional"),
    ];
    for (headers, want, why) in cases {
        let url = url.clone();
        let (code, _) = tokio::task::spawn_blocking(move || curl(&url, &headers)).await.unwrap();
        assert_eq!(code, want, "{why}");
    }
    assert_eq!(up.count(path), 1, "all answered from the cache");
}

//! Freshness and failure end to end: stale-while-revalidate, stale-if-error, revalidation with
//! If-None-Match, negative caching, auth failures, the circuit breaker. Time is the proxy's
//! injected clock, moved by the tests: nothing sleeps to wait for freshness.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use tile_proxy::config::{FileConfig, PolicyFileConfig};

fn policy(ttl: &str, swr: &str, sie: &str) -> PolicyFileConfig {
    PolicyFileConfig {
        ttl: Some(dur(ttl)),
        stale_while_revalidate: Some(dur(swr)),
        stale_if_error: Some(dur(sie)),
        ..Default::default()
    }
}

fn with_index(name: &str, p: PolicyFileConfig) -> impl FnOnce(&mut FileConfig) {
    let name = name.to_string();
    move |f| {
        f.index.insert(name, p);
    }
}

#[actix_rt::test]
async fn stale_is_served_when_the_upstream_fails_with_503_or_times_out() {
    let up = upstream(6_000);
    let p = Proxy::start(&up, |f| {
        f.index.insert("sie".into(), policy("300ms", "0s", "1h"));
        f.upstream.head_timeout = dur("300ms");
        f.upstream.retry_attempts = 2;
        f.upstream.breaker_failures = 0;
    })
    .await;
    let (a, b) = ("/v3/base/mc/9/1/1/png", "/v3/base/mc/9/1/2/png");
    let fresh_a = p.get(&format!("{a}?indice=sie")).await;
    let fresh_b = p.get(&format!("{b}?indice=sie")).await;
    p.clock.advance_ms(400);

    up.fail_always(a, Fault::Status { code: 503, retry_after: None });
    let r = p.get(&format!("{a}?indice=sie")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.header("x-cache-reason"), Some("upstream_error"));
    assert!(r.header("warning").unwrap().starts_with("111"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=0"), "no freshness promised");
    assert_eq!(r.bytes(), fresh_a.bytes());
    assert_eq!(up.count(a), 1 + 2, "asked (with a retry) before falling back");

    up.fail_always(b, Fault::Delay(Duration::from_secs(3)));
    let r = p.get(&format!("{b}?indice=sie")).await;
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.header("x-cache-reason"), Some("timeout"));
    assert_eq!(r.bytes(), fresh_b.bytes());

    // Without a copy: JSON errors naming the failure, no upstream URL or key.
    let c = "/v3/base/mc/9/1/3/png";
    up.fail_always(c, Fault::Status { code: 503, retry_after: None });
    let r = p.get(&format!("{c}?indice=sie")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_error");
    let d = "/v3/base/mc/9/1/4/png";
    up.fail_always(d, Fault::Delay(Duration::from_secs(3)));
    let r = p.get(&format!("{d}?indice=sie")).await;
    assert_eq!(r.status, 504);
    let e = "/v3/base/mc/9/1/5/png";
    up.fail_always(e, Fault::Status { code: 429, retry_after: Some(7) });
    let r = p.get(&format!("{e}?indice=sie")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"], "rate_limited");
    let body = String::from_utf8_lossy(r.bytes());
    assert!(!body.contains(SERVER_KEY) && !body.contains("127.0.0.1"), "{body}");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"sie\"", "cache=\"stale\""]), 2.0);
    up.clear_faults();
    p.stop().await;
}

#[actix_rt::test]
async fn stale_while_revalidate_serves_at_once_with_exactly_one_background_refresh() {
    let up = upstream(7_000);
    let p = Proxy::start(&up, with_index("swr", policy("300ms", "1h", "1h"))).await;
    let path = "/v3/base/mc/9/2/2/png";
    let url = format!("{path}?indice=swr");
    let first = p.get(&url).await;
    p.clock.advance_ms(400);
    up.set_version(1);
    // The refresh is slow: every reader must still get the stale copy at once.
    up.fail(path, Fault::Delay(Duration::from_millis(1_800)), 1);
    let responses = join_all((0..50).map(|_| p.get(&url))).await;
    assert_eq!(p.state().flights.len(), 1, "all answered while the refresh is still running");
    for r in &responses {
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "STALE");
        assert_eq!(r.header("x-cache-reason"), Some("revalidating"));
        assert_eq!(r.bytes(), first.bytes());
    }
    eventually("the refresh stored", async || p.state().flights.is_empty() && up.count(path) == 2).await;
    assert_eq!(up.count(path), 2, "the first fetch and exactly one refresh");
    let refreshed = p.get(&url).await;
    assert_eq!(refreshed.x_cache(), "HIT");
    assert_ne!(refreshed.bytes(), first.bytes(), "the refresh stored the new version");
    assert_eq!(refreshed.bytes(), &up.tile_bytes(path));
    p.stop().await;
}

#[actix_rt::test]
async fn revalidation_sends_if_none_match_and_a_304_extends_the_entry() {
    let up = upstream(9_000);
    let p = Proxy::start(&up, with_index("reval", policy("300ms", "0s", "1h"))).await;
    let path = "/v3/base/mc/9/3/3/png";
    let url = format!("{path}?indice=reval");
    let first = p.get(&url).await;
    let etag = first.header("etag").unwrap().to_string();
    p.clock.advance_ms(400);

    let r = p.get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(), first.bytes(), "body from our copy");
    let seen = up.requests();
    let last = seen.iter().rev().find(|q| q.path == path).unwrap();
    assert_eq!(last.header("if-none-match"), Some(etag.as_str()), "the upstream saw If-None-Match");
    let again = p.get(&url).await;
    assert_eq!(again.x_cache(), "HIT", "the 304 extended the entry");
    assert_eq!(up.count(path), 2);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_revalidations_total", &["index=\"reval\"", "result=\"not_modified\""]), 1.0);

    // A changed tile comes back as a 200 and replaces the entry.
    up.set_version(5);
    p.clock.advance_ms(400);
    let changed = p.get(&url).await;
    assert_eq!(changed.bytes(), &up.tile_bytes(path));
    assert_ne!(changed.bytes(), first.bytes());
    assert_eq!(p.get(&url).await.bytes(), changed.bytes());
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_revalidations_total", &["index=\"reval\"", "result=\"modified\""]), 1.0);
    p.stop().await;
}

#[actix_rt::test]
async fn a_404_or_204_is_remembered_for_the_negative_ttl_then_asked_again() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.index.insert("neg".into(), PolicyFileConfig { negative_ttl: Some(dur("400ms")), ..Default::default() });
    })
    .await;
    let path = "/v3/base/mc/9/4/4/png";
    up.fail(path, Fault::Status { code: 404, retry_after: None }, 1);
    let url = format!("{path}?indice=neg");
    let r = p.get(&url).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.x_cache(), "MISS");
    let body = r.bytes().clone();
    let r = p.get(&url).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.bytes(), &body, "the same answer, remembered");
    assert_eq!(up.count(path), 1);
    p.clock.advance_ms(500);
    let r = p.get(&url).await;
    assert_eq!(r.status, 200, "asked again after the negative TTL");
    assert_eq!(up.count(path), 2);

    let vpath = "/v2/vectortiles/base/mc/9/4/4/omv";
    up.fail(vpath, Fault::Status { code: 204, retry_after: None }, 1);
    let vurl = format!("{vpath}?indice=neg");
    assert_eq!(p.get(&vurl).await.status, 204);
    let r = p.get(&vurl).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (204, "HIT"));
    assert_eq!(up.count(vpath), 1);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"neg\"", "cache=\"negative_hit\""]), 2.0);

    // 400 is never cached.
    let bad = "/v3/base/mc/9/4/5/png";
    up.fail(bad, Fault::Status { code: 400, retry_after: None }, 2);
    assert_eq!(p.get(&format!("{bad}?indice=neg")).await.status, 400);
    assert_eq!(p.get(&format!("{bad}?indice=neg")).await.status, 400);
    assert_eq!(up.count(bad), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn a_401_from_here_is_never_cached_and_reported_loudly() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| f.here_api_key = Some("EXPIREDKEY".into())).await;
    let url = "/here-proxy/mc/3/3/3/png?indice=auth";
    for _ in 0..2 {
        let r = p.get(url).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error"], "upstream_auth");
        assert!(!String::from_utf8_lossy(r.bytes()).contains("EXPIREDKEY"));
    }
    assert_eq!(up.count("/v3/base/mc/3/3/3/png"), 2, "never cached");
    let h = p.get("/health").await.json();
    assert_eq!(h["status"], "degraded");
    assert!(h["problems"][0].as_str().unwrap().contains("401"), "{h}");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_upstream_auth_failures_total", &["status=\"401\""]), 2.0);
    p.stop().await;
}

#[actix_rt::test]
async fn the_breaker_opens_after_n_failures_pauses_upstream_calls_and_closes_after_a_good_probe() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.upstream.retry_attempts = 1;
        f.upstream.breaker_failures = 3;
        f.upstream.breaker_cooldown = dur("500ms");
    })
    .await;
    up.fail_always("/v3/base/mc/11/", Fault::Status { code: 500, retry_after: None });
    for y in 0..3 {
        let r = p.get(&format!("/v3/base/mc/11/0/{y}/png?indice=brk")).await;
        assert_eq!(r.status, 502);
    }
    assert_eq!(up.count_matching("/v3/base/mc/11/"), 3);
    // Open: fail fast, no upstream call.
    for y in 3..8 {
        let r = p.get(&format!("/v3/base/mc/11/0/{y}/png?indice=brk")).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "breaker_open");
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(up.count_matching("/v3/base/mc/11/"), 3, "no calls while open");
    let h = p.get("/health").await.json();
    assert_eq!(h["circuit_breakers"]["raster"]["state"], "open");
    assert_eq!(h["status"], "degraded");
    assert_eq!(metric(&p.metrics().await, "tile_proxy_breaker_open", &["upstream=\"raster\""]), 1.0);
    // The vector API has its own breaker.
    assert_eq!(p.get("/v2/vectortiles/base/mc/11/0/0/omv?indice=brk").await.status, 200);

    up.clear_faults();
    p.clock.advance_ms(600);
    let r = p.get("/v3/base/mc/11/0/9/png?indice=brk").await;
    assert_eq!(r.status, 200, "the probe went through");
    assert_eq!(p.get("/v3/base/mc/11/0/10/png?indice=brk").await.status, 200);
    let h = p.get("/health").await.json();
    assert_eq!(h["circuit_breakers"]["raster"]["state"], "closed");
    assert_eq!(metric(&p.metrics().await, "tile_proxy_breaker_open", &["upstream=\"raster\""]), 0.0);
    p.stop().await;
}

#[actix_rt::test]
async fn the_breaker_serves_stale_while_open() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.upstream.retry_attempts = 1;
        f.upstream.breaker_failures = 1;
        f.upstream.breaker_cooldown = dur("10s");
        f.index.insert("bs".into(), policy("200ms", "0s", "1h"));
    })
    .await;
    let good = "/v3/base/mc/12/0/0/png?indice=bs";
    let first = p.get(good).await;
    p.clock.advance_ms(300);
    up.fail_always("/v3/base/mc/12/0/1/", Fault::Status { code: 500, retry_after: None });
    assert_eq!(p.get("/v3/base/mc/12/0/1/png?indice=bs").await.status, 502);
    let r = p.get(good).await;
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.header("x-cache-reason"), Some("breaker_open"));
    assert_eq!(r.bytes(), first.bytes());
    assert_eq!(up.count("/v3/base/mc/12/0/0/png"), 1);
    p.stop().await;
}

#[actix_rt::test]
async fn a_truncated_refresh_never_replaces_a_good_entry() {
    let up = upstream(30_000);
    let p = Proxy::start(&up, with_index("tr", policy("200ms", "1h", "1h"))).await;
    let path = "/v3/base/mc/9/6/6/png";
    let url = format!("{path}?indice=tr");
    let first = p.get(&url).await;
    p.clock.advance_ms(300);
    up.set_version(2);
    up.fail(path, Fault::Truncate { after: 10_000 }, 1);
    let r = p.get(&url).await;
    assert_eq!(r.x_cache(), "STALE");
    eventually("the truncated refresh ended", async || up.count(path) == 2 && p.state().flights.is_empty()).await;
    // The failed refresh stored nothing: the old complete copy is still served (and refreshed).
    let r = p.get(&url).await;
    assert_eq!(r.x_cache(), "STALE");
    assert_eq!(r.bytes(), first.bytes());
    assert_eq!(r.bytes().len(), 30_000);
    eventually("the second refresh ended", async || up.count(path) == 3 && p.state().flights.is_empty()).await;
    let r = p.get(&url).await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.bytes().len(), 30_000);
    assert_eq!(r.bytes(), &up.tile_bytes(path), "the next good refresh replaced it");
    p.stop().await;
}

#[actix_rt::test]
async fn age_and_client_cache_control_follow_the_index_policy() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| {
        f.index.insert(
            "cdn".into(),
            PolicyFileConfig {
                ttl: Some(dur("1h")),
                client_cache_control: Some("public, max-age={max_age}, s-maxage=60".into()),
                ..Default::default()
            },
        );
    })
    .await;
    let url = "/here-proxy/mc/4/4/4/png?indice=cdn";
    let miss = p.get(url).await;
    assert_eq!(miss.header("cache-control"), Some("public, max-age=3600, s-maxage=60"));
    assert_eq!(miss.header("age"), Some("0"));
    p.clock.advance_ms(1_100);
    let hit = p.get(url).await;
    assert_eq!(hit.header("age"), Some("1"));
    assert_eq!(hit.header("cache-control"), Some("public, max-age=3600, s-maxage=60"), "the lifetime, with Age");
    p.stop().await;
}

/// An index with a 60 s TTL, no stale windows to hide an expiry, and XFetch's `beta`.
fn xfetch(beta: f64) -> PolicyFileConfig {
    PolicyFileConfig { early_refresh_beta: Some(beta), ..policy("60s", "0s", "0s") }
}

/// A 1-in-1000 draw, made every time: a hit within `fetch time x beta x 6.9` (-ln 0.001) of
/// expiry refreshes early, one further away does not. With fetches of 150 ms: from about 1 s
/// before expiry; after a 1.65 s refresh, from about 11 s before the next expiry.
fn lucky() -> f64 {
    1e-3
}

#[actix_rt::test]
async fn early_refresh_renews_a_hot_tile_before_expiry_with_one_background_fetch_and_no_client_waiting() {
    let up = upstream(4_000);
    // Every upstream answer takes 150 ms: the entry's fetch time (XFetch's delta) is >= 150 ms.
    up.set_latency(Duration::from_millis(150));
    let p = Proxy::start_drawing(&up, lucky, with_index("xf", xfetch(1.0))).await;
    let path = "/v3/base/mc/9/7/7/png";
    let url = format!("{path}?indice=xf");
    let first = p.get(&url).await;
    assert_eq!(first.x_cache(), "MISS");

    // Half-way: far from expiry, no refresh.
    p.clock.advance_secs(30);
    for _ in 0..5 {
        assert_eq!(p.get(&url).await.x_cache(), "HIT");
    }
    assert_eq!(up.count(path), 1);
    assert_eq!(metric(&p.metrics().await, "tile_proxy_early_refresh_total", &["index=\"xf\""]), 0.0);

    // 100 ms before expiry, under traffic, with a slow refresh: every client gets the old copy
    // at once as a HIT; one background fetch runs.
    p.clock.advance_ms(29_900);
    up.fail(path, Fault::Delay(Duration::from_millis(1_500)), 1);
    let responses = join_all((0..30).map(|_| p.get(&url))).await;
    assert_eq!(p.state().flights.len(), 1, "every client was answered while the refresh still ran");
    for r in &responses {
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"));
        assert_eq!(r.header("age"), Some("59"));
        assert_eq!(r.bytes(), first.bytes());
    }
    eventually("the early refresh stored", async || p.state().flights.is_empty() && up.count(path) == 2).await;
    let seen = up.requests();
    let refresh = seen.iter().rev().find(|q| q.path == path).unwrap();
    assert_eq!(refresh.header("if-none-match"), first.header("etag"), "revalidated with the old ETag");

    // Renewed: stored now (Age 0), and still a HIT past the old expiry with no client fetching.
    let renewed = p.get(&url).await;
    assert_eq!((renewed.x_cache(), renewed.header("age")), ("HIT", Some("0")));
    p.clock.advance_ms(1_000);
    let after = p.get(&url).await;
    assert_eq!((after.x_cache(), after.header("age")), ("HIT", Some("1")), "the old expiry passed unnoticed");
    assert_eq!(after.bytes(), first.bytes());
    assert_eq!(up.count(path), 2, "the first fetch and exactly one early refresh");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_early_refresh_total", &["index=\"xf\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"xf\"", "cache=\"miss\""]), 1.0);
    p.stop().await;
}

#[actix_rt::test]
async fn without_early_refresh_the_same_traffic_sees_the_tile_expire_and_a_client_wait() {
    let up = upstream(4_000);
    up.set_latency(Duration::from_millis(150));
    let p = Proxy::start_drawing(&up, lucky, with_index("plain", xfetch(0.0))).await;
    let path = "/v3/base/mc/9/7/8/png";
    let url = format!("{path}?indice=plain");
    assert_eq!(p.get(&url).await.x_cache(), "MISS");
    p.clock.advance_ms(59_900);
    for r in join_all((0..30).map(|_| p.get(&url))).await {
        assert_eq!(r.x_cache(), "HIT");
    }
    assert!(p.state().flights.is_empty());
    assert_eq!(up.count(path), 1, "beta 0: no early refresh");
    p.clock.advance_ms(200);
    let started = std::time::Instant::now();
    let expired = p.get(&url).await;
    assert_eq!(expired.x_cache(), "MISS", "expired under traffic");
    assert!(started.elapsed() >= Duration::from_millis(150), "the client waited for the upstream");
    assert_eq!(up.count(path), 2);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_early_refresh_total", &["index=\"plain\""]), 0.0);
    p.stop().await;
}

#[actix_rt::test]
async fn an_early_refresh_with_the_budget_spent_is_skipped_and_hits_go_on() {
    let up = upstream(4_000);
    up.set_latency(Duration::from_millis(100));
    let p = Proxy::start_drawing(&up, lucky, |f| {
        f.index.insert("tight".into(), PolicyFileConfig { budget_hour: Some(1), ..xfetch(1.0) });
    })
    .await;
    let path = "/v3/base/mc/9/7/9/png";
    let url = format!("{path}?indice=tight");
    let first = p.get(&url).await;
    assert_eq!(first.x_cache(), "MISS");
    p.clock.advance_ms(59_950);
    for _ in 0..5 {
        let r = p.get(&url).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"));
        assert_eq!(r.bytes(), first.bytes());
    }
    // The refresh runs in the background: wait (bounded) until the budget has refused it.
    eventually("the early refresh was charged to the budget and refused", async || {
        metric(&p.metrics().await, "tile_proxy_budget_exhausted_total", &["index=\"tight\""]) >= 1.0
    })
    .await;
    eventually("the refused refresh ended", async || p.state().flights.is_empty()).await;
    assert_eq!(up.count(path), 1, "the spent budget stopped it before the upstream");
    let r = p.get(&url).await;
    assert_eq!((r.x_cache(), r.header("age")), ("HIT", Some("59")), "the old copy keeps serving");
    p.stop().await;
}

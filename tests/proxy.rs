//! The core proxy end to end: real server, real sockets, real cache files, the test upstream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use futures_util::StreamExt;

#[actix_rt::test]
async fn seed_and_drop_in_urls_return_the_upstream_bytes() {
    let up = upstream(20_000);
    let p = Proxy::start(&up, |_| {}).await;
    let cases = [
        (
            "/here-proxy/mc/5/15/13/png?indice=123&style=explore.day&size=512&lang=en",
            "/v3/base/mc/5/15/13/png?lang=en&size=512",
            "image/png",
        ),
        ("/here-proxy/5/15/14/png8?indice=123", "/v3/base/mc/5/15/14/png8", "image/png"),
        ("/v3/label/mc/6/1/2/jpeg?indice=abc&ppi=200", "/v3/label/mc/6/1/2/jpeg?ppi=200", "image/jpeg"),
        (
            "/v2/vectortiles/core/mc/12/2047/1362/omv?indice=v&content=default",
            "/v2/vectortiles/core/mc/12/2047/1362/omv",
            "application/x-protobuf",
        ),
    ];
    for (path, upstream_req, content_type) in cases {
        let r = p.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.x_cache(), "MISS", "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.bytes(), &up.tile_bytes(upstream_req), "{path}");
        assert_eq!(r.bytes().len(), 20_000);
        assert!(r.header("etag").is_some(), "{path}");
    }
    assert_eq!(up.total(), 4);
    p.stop().await;
}

#[actix_rt::test]
async fn second_request_is_a_hit_without_upstream_call() {
    let up = upstream(8_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/here-proxy/mc/7/10/11/png?indice=hits&size=512";
    let first = p.get(path).await;
    assert_eq!(first.x_cache(), "MISS");
    // Same tile, different spelling (defaults, key, parameter order): same entry.
    for variant in [path, "/here-proxy/7/10/11/png?size=512&style=explore.day&apiKey=x&indice=hits"] {
        let r = p.get(variant).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "HIT", "{variant}");
        assert_eq!(r.bytes(), first.bytes());
        assert_eq!(r.header("etag"), first.header("etag"));
        let cc = r.header("cache-control").unwrap();
        assert!(cc.starts_with("public, max-age="), "{cc}");
        assert!(r.header("age").is_some());
    }
    assert_eq!(up.count("/v3/base/mc/7/10/11/png"), 1);
    // Another index shares the one stored upstream tile.
    let other = p.get("/here-proxy/mc/7/10/11/png?indice=other&size=512").await;
    assert_eq!(other.x_cache(), "HIT");
    assert_eq!(other.bytes(), first.bytes());
    assert_eq!(up.count("/v3/base/mc/7/10/11/png"), 1);
    p.stop().await;
}

#[actix_rt::test]
async fn graceful_restart_on_the_same_folder_serves_hits_from_disk() {
    let up = upstream(30_000);
    let p = Proxy::start(&up, |_| {}).await;
    let paths: Vec<String> = (0..20).map(|i| format!("/here-proxy/mc/8/{i}/77/png?indice=disk")).collect();
    let mut bodies = Vec::new();
    for path in &paths {
        let r = p.get(path).await;
        assert_eq!(r.x_cache(), "MISS");
        bodies.push(r.bytes().clone());
    }
    let dir = p.stop().await;
    assert_eq!(up.total(), 20);

    let p = Proxy::start_in(&up, dir, |_| {}).await;
    for (path, body) in paths.iter().zip(&bodies) {
        let r = p.get(path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), "HIT", "{path}");
        assert_eq!(r.bytes(), body);
    }
    assert_eq!(up.total(), 20, "no upstream call after the restart");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_cache_hits_total", &["index=\"disk\"", "tier=\"disk\""]), 20.0);
    // A disk hit is promoted into the memory tier: the request right after it is served from
    // there. (Checked in pairs, not after all 20: this is about the promotion, not about how
    // long the test's memory tier keeps what it was given.)
    for (path, body) in paths.iter().zip(&bodies) {
        let first = p.get(path).await;
        let again = p.get(path).await;
        assert_eq!(first.x_cache(), "HIT", "{path}");
        assert_eq!((again.x_cache(), again.header("x-cache-tier")), ("HIT", Some("memory")), "{path}");
        assert_eq!(again.bytes(), body);
    }
    assert_eq!(up.total(), 20);
    p.stop().await;
}

#[actix_rt::test]
async fn client_key_is_dropped_and_the_server_key_added_and_never_shown() {
    let up = upstream(3_000);
    let p = Proxy::start(&up, |_| {}).await;
    let r = p
        .get_with(
            "/here-proxy/mc/3/1/1/png?indice=keys&apiKey=CLIENTKEY&APIKEY=CLIENTKEY2",
            &[("Authorization", "Bearer CLIENTTOKEN")],
        )
        .await;
    assert_eq!(r.status, 200);
    let v = p.get("/v2/vectortiles/base/mc/3/1/1/omv?apikey=CLIENTKEY").await;
    assert_eq!(v.status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].query_param("apiKey").as_deref(), Some(SERVER_KEY));
    assert_eq!(seen[0].query, format!("apiKey={SERVER_KEY}"), "only the server's key");
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[1].query_param("apikey").as_deref(), Some(SERVER_KEY));
    assert!(!seen[1].query.contains("CLIENTKEY"));

    // Nowhere to be seen: responses, errors, metrics, health.
    let bad = p.get("/here-proxy/mc/3/9/1/png?apiKey=CLIENTKEY").await;
    assert_eq!(bad.status, 400);
    for r in [&r, &v, &bad] {
        for (name, value) in r.headers.iter() {
            let value = value.to_str().unwrap_or("");
            assert!(!value.contains(SERVER_KEY), "{name}: {value}");
        }
    }
    assert!(!String::from_utf8_lossy(bad.bytes()).contains(SERVER_KEY));
    let metrics = p.metrics().await;
    assert!(metrics.contains("tile_proxy_requests_total"));
    assert!(!metrics.contains(SERVER_KEY) && !metrics.contains("CLIENTKEY"));
    let health = p.get("/health").await;
    assert!(!String::from_utf8_lossy(health.bytes()).contains(SERVER_KEY));
    // Nor in the cache files.
    let dir = p.stop().await;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let data = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!data.windows(SERVER_KEY.len()).any(|w| w == SERVER_KEY.as_bytes()));
    }
}

#[actix_rt::test]
async fn vector_content_goes_upstream_default_first_and_every_order_is_one_entry() {
    let up = upstream(4_000);
    let p = Proxy::start(&up, |_| {}).await;
    let tile = "/v2/vectortiles/base/mc/9/270/180/omv";
    let first = p.get(&format!("{tile}?indice=content&content=advanced_pois,default")).await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, tile);
    // HERE reads `content` in order, `default` first: the client's order is not what goes out.
    assert_eq!(seen[0].query, format!("content=default,advanced_pois&apikey={SERVER_KEY}"));
    assert_eq!(first.bytes(), &up.tile_bytes(&format!("{tile}?content=default,advanced_pois")));
    for again in ["content=default,advanced_pois", "content=advanced_pois,default,advanced_pois"] {
        let r = p.get(&format!("{tile}?indice=content&{again}")).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"), "{again}");
        assert_eq!(r.bytes(), first.bytes(), "{again}");
    }
    assert_eq!(up.count(tile), 1, "one upstream call for every order");
    p.stop().await;
}

#[actix_rt::test]
async fn invalid_requests_get_a_json_400_naming_the_field_and_cost_nothing() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    let cases = [
        ("/here-proxy/mc/21/0/0/png", "z"),
        ("/here-proxy/mc/2/4/0/png", "x"),
        ("/here-proxy/mc/2/0/4/png", "y"),
        ("/here-proxy/mc/2/0/0/gif", "format"),
        ("/v3/secret/mc/2/0/0/png", "resource"),
        ("/v2/vectortiles/base/mc/18/0/0/omv", "z"),
        ("/v2/vectortiles/base/mc/1/0/0/png", "format"),
        ("/here-proxy/mc/2/0/0/png?style=mystyle", "style"),
        ("/here-proxy/mc/2/0/0/png?cachebuster=1", "cachebuster"),
        ("/here-proxy/mc/2/0/0/png?indice=../../etc", "indice"),
        ("/here-proxy/mc/2/0/0/png?size=256&size=512", "size"),
    ];
    for (path, field) in cases {
        let r = p.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let j = r.json();
        assert_eq!(j["error"], "invalid_request", "{path}");
        assert_eq!(j["field"], field, "{path}");
    }
    let r = p.get("/not/a/tile").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    let post = p.client.post(p.url("/here-proxy/mc/1/0/0/png")).send().await.unwrap();
    assert_eq!(post.status(), 405, "tiles are read with GET and HEAD");
    assert_eq!(post.headers().get("allow").unwrap(), "GET, HEAD, OPTIONS");
    let post = p.client.post(p.url("/elsewhere")).send().await.unwrap();
    assert_eq!(post.status(), 404);
    assert_eq!(up.total(), 0, "nothing invalid reaches the upstream");
    p.stop().await;
}

#[actix_rt::test]
async fn a_hundred_concurrent_cold_requests_make_one_upstream_request() {
    let up = upstream(40_000);
    let path = "/v3/base/mc/9/100/200/png";
    up.fail(path, Fault::Delay(Duration::from_millis(300)), 1);
    let p = Proxy::start(&up, |_| {}).await;
    let url = format!("{path}?indice=crowd");
    let responses = join_all((0..100).map(|_| p.get(&url))).await;
    let expected = up.tile_bytes(path);
    for r in &responses {
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes(), &expected);
        assert_eq!(r.x_cache(), "MISS");
    }
    assert_eq!(up.count(path), 1);
    let m = p.metrics().await;
    let miss = metric(&m, "tile_proxy_requests_total", &["index=\"crowd\"", "cache=\"miss\""]);
    let coalesced = metric(&m, "tile_proxy_requests_total", &["index=\"crowd\"", "cache=\"coalesced\""]);
    assert_eq!((miss, miss + coalesced), (1.0, 100.0));
    p.stop().await;
}

#[actix_rt::test]
async fn a_truncated_upstream_body_fails_the_transfer_and_is_not_stored() {
    let up = upstream(50_000);
    let path = "/v3/base/mc/10/5/5/png";
    up.fail(path, Fault::Truncate { after: 20_000 }, 1);
    let p = Proxy::start(&up, |_| {}).await;
    // The head may or may not have left before the failure was known; either way the client must
    // never receive a complete 200: a head announces 50000 bytes and fewer arrive.
    let (head, body) = raw_get(&p, &format!("{path}?indice=trunc")).await;
    if !head.is_empty() {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-length: 50000"), "{head}");
    }
    assert!(body.len() < 50_000, "the connection must be cut short, got {} bytes", body.len());
    let again = p.get(&format!("{path}?indice=trunc")).await;
    assert_eq!(again.x_cache(), "MISS", "nothing was stored");
    assert_eq!(again.bytes(), &up.tile_bytes(path));
    assert_eq!(up.count(path), 2);
    let third = p.get(&format!("{path}?indice=trunc")).await;
    assert_eq!(third.x_cache(), "HIT");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_cache_not_stored_total", &["index=\"trunc\"", "reason=\"truncated\""]), 1.0);

    // A reset connection before any byte: retried, then the tile.
    let path2 = "/v3/base/mc/10/6/6/png";
    up.fail(path2, Fault::Reset, 1);
    let r = p.get(&format!("{path2}?indice=trunc")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(), &up.tile_bytes(path2));
    assert_eq!(up.count(path2), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn chunked_bodies_are_relayed_but_not_stored() {
    let up = upstream(3_000);
    let path = "/v3/base/mc/10/7/7/png";
    up.fail(path, Fault::Chunked { chunk: 1_000, interval: Duration::from_millis(1) }, 1);
    let p = Proxy::start(&up, |_| {}).await;
    let r = p.get(&format!("{path}?indice=chunked")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(), &up.tile_bytes(path));
    assert_eq!(p.get(&format!("{path}?indice=chunked")).await.x_cache(), "MISS", "completeness unprovable: not stored");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_cache_not_stored_total", &["index=\"chunked\"", "reason=\"no_length\""]), 1.0);
    p.stop().await;
}

#[actix_rt::test]
async fn transient_503s_are_retried_then_succeed() {
    let up = upstream(2_000);
    let path = "/v3/base/mc/4/3/3/png";
    up.fail(path, Fault::Status { code: 503, retry_after: Some(0) }, 2);
    let p = Proxy::start(&up, |_| {}).await;
    let r = p.get(&format!("{path}?indice=retry")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(up.count(path), 3);
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_upstream_retries_total", &["index=\"retry\""]), 2.0);
    // Plain http:// upstream: HTTP/1.1, said by the last label.
    let retried = ["index=\"retry\"", "status=\"503\"", "protocol=\"http/1.1\""];
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &retried), 2.0);
    let fetched = ["index=\"retry\"", "status=\"200\"", "protocol=\"http/1.1\""];
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &fetched), 1.0);

    // Attempts are bounded: a persistent 503 ends in our JSON error after 3 tries, not cached.
    let path2 = "/v3/base/mc/4/3/4/png";
    up.fail_always(path2, Fault::Status { code: 503, retry_after: None });
    let r = p.get(&format!("{path2}?indice=retry")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_error");
    assert_eq!(up.count(path2), 3);
    // A 404 is not retried.
    let path3 = "/v3/base/mc/4/3/5/png";
    up.fail(path3, Fault::Status { code: 404, retry_after: None }, 1);
    let r = p.get(&format!("{path3}?indice=retry")).await;
    assert_eq!(r.status, 404);
    assert_eq!(up.count(path3), 1);
    p.stop().await;
}

#[actix_rt::test]
async fn expired_entries_are_refetched_never_served_as_fresh() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.index.insert(
            "short".into(),
            tile_proxy::config::PolicyFileConfig { ttl: Some(dur("1s")), ..Default::default() },
        );
    })
    .await;
    let path = "/here-proxy/mc/6/6/6/png?indice=short";
    assert_eq!(p.get(path).await.x_cache(), "MISS");
    let hit = p.get(path).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("cache-control"), Some("public, max-age=1"), "the index's lifetime");
    assert_eq!(hit.header("age"), Some("0"));
    p.clock.advance_ms(1_100);
    let r = p.get(path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS", "expired: fetched again");
    assert_eq!(up.count("/v3/base/mc/6/6/6/png"), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn if_none_match_gets_304() {
    let up = upstream(5_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/here-proxy/mc/5/1/2/png?indice=etag";
    let first = p.get(path).await;
    let etag = first.header("etag").unwrap().to_string();
    // On a hit.
    let r = p.get_with(path, &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.bytes().is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.x_cache(), "HIT");
    let r = p.get_with(path, &[("If-None-Match", "\"other\", W/".to_string().as_str())]).await;
    assert_eq!(r.status, 200);
    let r = p.get_with(path, &[("If-None-Match", &format!("\"x\", W/{etag}"))]).await;
    assert_eq!(r.status, 304);
    // On a miss, against the upstream's ETag.
    let path2 = "/here-proxy/mc/5/1/3/png?indice=etag";
    let etag2 = format!("\"{}\"", "0".repeat(16));
    let miss = p.get_with(path2, &[("If-None-Match", &etag2)]).await;
    assert_eq!(miss.status, 200, "a different ETag gets the body");
    let etag2 = miss.header("etag").unwrap().to_string();
    let r = p.get_with("/here-proxy/mc/5/1/4/png?indice=etag", &[]).await;
    assert_eq!(r.status, 200);
    let r = p.get_with(path2, &[("If-None-Match", &etag2)]).await;
    assert_eq!(r.status, 304);
    p.stop().await;
}

#[actix_rt::test]
async fn per_index_metrics_move() {
    let up = upstream(4_000);
    let p = Proxy::start(&up, |_| {}).await;
    for _ in 0..3 {
        p.get("/here-proxy/mc/2/1/1/png?indice=alpha").await;
    }
    p.get("/here-proxy/mc/2/1/1/png?indice=beta").await;
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"alpha\"", "cache=\"miss\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"alpha\"", "cache=\"hit\""]), 2.0);
    // beta shares alpha's stored tile: its first request is a hit.
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"beta\"", "cache=\"hit\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_bytes_served_total", &["index=\"alpha\""]), 12_000.0);
    assert_eq!(metric(&m, "tile_proxy_bytes_served_total", &["index=\"beta\""]), 4_000.0);
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &["index=\"alpha\"", "status=\"200\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_upstream_duration_seconds_count", &["index=\"alpha\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_cache_inserts_total", &["index=\"alpha\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_cache_inserts_total", &["index=\"beta\""]), 0.0);
    assert!(m.contains("tile_proxy_http_requests_total"), "actix-web-prom HTTP metrics");
    assert!(m.contains("foyer_"), "foyer's own metrics");
    p.stop().await;
}

#[actix_rt::test]
async fn misses_stream_the_first_bytes_before_the_upstream_finishes() {
    let up = upstream(5_000);
    let path = "/v3/base/mc/3/2/2/png";
    up.fail(path, Fault::SlowBody { chunk: 1_000, interval: Duration::from_millis(250) }, 1);
    let p = Proxy::start(&up, |_| {}).await;
    let started = Instant::now();
    let mut res = p.client.get(p.url(&format!("{path}?indice=slow"))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let first = res.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut total = first.len();
    while let Some(chunk) = res.next().await {
        total += chunk.unwrap().len();
    }
    let done_at = started.elapsed();
    assert_eq!(total, 5_000);
    // The upstream takes five pauses of 250 ms; the first chunk must not wait for all of them.
    assert!(done_at >= Duration::from_millis(1_200), "{done_at:?}");
    assert!(done_at - first_at >= Duration::from_millis(700), "first byte at {first_at:?}, done at {done_at:?}");
    // And the whole tile was stored.
    assert_eq!(p.get(&format!("{path}?indice=slow")).await.x_cache(), "HIT");
    p.stop().await;
}

#[actix_rt::test]
async fn upstream_unreachable_gives_json_502_without_secrets() {
    let up = upstream(1_000);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let p = Proxy::start(&up, |f| {
        f.raster_upstream = format!("http://{dead}");
    })
    .await;
    let r = p.get("/here-proxy/mc/1/0/0/png?indice=down").await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert_eq!(j["error"], "connect_error");
    let text = String::from_utf8_lossy(r.bytes()).to_string();
    assert!(!text.contains(SERVER_KEY) && !text.contains(&dead.port().to_string()), "{text}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let health = p.get("/health").await.json();
    assert_eq!(health["upstream"]["raster"]["reachable"], false);
    assert_eq!(health["status"], "degraded");
    // No answer, so no protocol.
    let m = p.metrics().await;
    let failed = ["index=\"down\"", "status=\"connect_error\"", "protocol=\"none\""];
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &failed), 3.0, "every attempt");
    p.stop().await;
}

#[actix_rt::test]
async fn head_cors_and_admin_endpoints() {
    let up = upstream(3_333);
    let p = Proxy::start(&up, |_| {}).await;
    let res = p.client.head(p.url("/here-proxy/mc/1/1/1/png?indice=head")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("content-length").unwrap(), "3333");
    let r = p.get_with("/here-proxy/mc/1/1/1/png?indice=head", &[("Origin", "https://maps.example.org")]).await;
    assert_eq!(r.x_cache(), "HIT", "HEAD filled the cache");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(!r.header("vary").unwrap_or("").contains("Origin"), "one answer for every origin: {:?}", r.header("vary"));
    // Without an `Origin` (an SDK, a seed, curl) the answer is the same, so a cache in front that
    // keys on the URL alone (no `Vary: Origin` here) can give that copy to a browser.
    let plain = p.get("/here-proxy/mc/1/1/1/png?indice=head").await;
    assert_eq!(plain.header("access-control-allow-origin"), Some("*"), "no Origin: still allowed");
    assert_eq!(plain.header("access-control-expose-headers"), r.header("access-control-expose-headers"));
    assert_eq!(
        res.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("*"),
        "HEAD without an Origin"
    );
    let pre = p
        .client
        .request(actix_web::http::Method::OPTIONS, p.url("/here-proxy/mc/1/1/1/png"))
        .insert_header(("Origin", "https://maps.example.org"))
        .insert_header(("Access-Control-Request-Method", "GET"))
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(p.get("/live").await.status, 200);
    assert_eq!(p.get("/ready").await.json()["ready"], true);
    let h = p.get("/health").await.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["cache"][0]["disk"]["enabled"], true);
    assert!(h["uptime_seconds"].is_u64());
    // Tiles skip actix's router (http::bypass::TilesFirst); everything else answers as routed.
    for path in ["/nope", "/livex", "/live/", "/admin", "/admin/purges", "/v3/base/mc/1/1/1/gif"] {
        let r = p.get(path).await;
        let want = if path.ends_with(".gif") || path.ends_with("/gif") { 400 } else { 404 };
        assert_eq!(r.status, want, "{path}");
        assert!(r.json()["error"].is_string(), "{path}: JSON error");
    }
    let post = p.client.post(p.url("/live")).send().await.unwrap();
    assert!(post.status().is_client_error(), "{}", post.status());
    // The HTTP metrics (the HPA's requests per second) still count tiles.
    let m = p.metrics().await;
    let tiles = metric(&m, "tile_proxy_http_requests_total", &["endpoint=\"tiles_or_unknown\"", "status=\"200\""]);
    assert!(tiles >= 2.0, "tiles counted in the HTTP metrics: {tiles}");
    p.stop().await;
}

#[actix_rt::test]
async fn on_shutdown_ready_fails_while_tiles_are_still_served_then_the_port_closes() {
    let up = upstream(1_000);
    let mut p = Proxy::start(&up, |f| f.drain_delay = dur("600ms")).await;
    assert_eq!(p.get("/ready").await.status, 200);
    let running = p.running.take().unwrap();
    let health = running.state().health.clone();
    let stopping = actix_rt::spawn(running.shutdown());
    eventually("the shutdown began", async || !health.is_ready()).await;
    let r = p.get("/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["ready"], false);
    assert_eq!(p.get("/here-proxy/mc/1/0/1/png?indice=drain").await.status, 200, "still serving while draining");
    stopping.await.unwrap();
    let addr = p.base.trim_start_matches("http://").to_string();
    assert!(std::net::TcpStream::connect(addr).is_err(), "closed after the drain");
}

#[actix_rt::test]
async fn retry_after_is_honoured_between_attempts() {
    let up = upstream(1_000);
    let path = "/v3/base/mc/4/9/9/png";
    up.fail(path, Fault::Status { code: 429, retry_after: Some(1) }, 1);
    let p = Proxy::start(&up, |f| f.upstream.retry_max_delay = dur("3s")).await;
    let started = Instant::now();
    let r = p.get(&format!("{path}?indice=ra")).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}, not the 1 s asked", started.elapsed());
    assert_eq!(up.count(path), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn configured_origins_only() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| f.cors_origins = vec!["https://ok.example".into()]).await;
    let ok = p.get_with("/here-proxy/mc/1/1/0/png", &[("Origin", "https://ok.example")]).await;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://ok.example"));
    assert!(ok.header("vary").unwrap_or("").contains("Origin"), "the answer depends on the origin");
    let other = p.get_with("/here-proxy/mc/1/1/0/png", &[("Origin", "https://evil.example")]).await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    // Without an `Origin`: not allowed, and `Vary: Origin` keeps a cache in front from giving
    // this copy to a browser.
    let plain = p.get("/here-proxy/mc/1/1/0/png").await;
    assert_eq!(plain.header("access-control-allow-origin"), None);
    assert!(plain.header("vary").unwrap_or("").contains("Origin"), "{:?}", plain.header("vary"));
    p.stop().await;
}

#[actix_rt::test]
async fn an_unusable_disk_degrades_to_memory_only_instead_of_failing() {
    let up = upstream(2_000);
    let blocker = tempfile::NamedTempFile::new().unwrap();
    // The cache "folder" is a regular file: the disk tier cannot open.
    let cache_dir = blocker.path().join("sub");
    let p = Proxy::start(&up, |f| f.cache_dir = cache_dir).await;
    let url = "/here-proxy/mc/2/2/2/png?indice=nodisk";
    assert_eq!(p.get(url).await.x_cache(), "MISS");
    assert_eq!(p.get(url).await.x_cache(), "HIT", "the memory tier still works");
    let h = p.get("/health").await.json();
    assert_eq!(h["status"], "degraded");
    assert!(h["problems"][0].as_str().unwrap().contains("disk tier disabled"), "{h}");
    assert_eq!(h["cache"][0]["disk"]["enabled"], false);
    p.stop().await;
}

#[actix_rt::test]
async fn admin_listen_serves_metrics_health_and_the_admin_api_apart_from_the_tiles() {
    let up = upstream(1_000);
    let token = "ADMIN-TOKEN-0123456789abcdef";
    let p = Proxy::start(&up, |f| {
        f.admin_listen = Some("127.0.0.1:0".into());
        f.admin_token = Some(token.into());
    })
    .await;
    let admin = format!("http://{}", p.running.as_ref().unwrap().admin_addr().expect("an admin address"));
    assert_ne!(admin, p.base);
    let at = async |base: &str, method: &str, path: &str| {
        let req = match method {
            "POST" => p.client.post(format!("{base}{path}")),
            _ => p.client.get(format!("{base}{path}")),
        };
        let mut res = req.insert_header(("Authorization", format!("Bearer {token}"))).send().await.unwrap();
        let body = res.body().await.unwrap();
        (res.status().as_u16(), String::from_utf8_lossy(&body).into_owned())
    };
    // A tile on the tile port, counted in the admin port's metrics.
    assert_eq!(p.get("/here-proxy/mc/3/1/1/png").await.status, 200);
    for path in ["/metrics", "/health", "/admin/stats", "/admin/purges", "/admin/seed/1"] {
        let (status, body) = at(&p.base, "GET", path).await;
        assert_eq!(status, 404, "{path} on the tile port: {body}");
    }
    let (status, body) = at(&p.base, "POST", "/admin/purge").await;
    assert_eq!(status, 404, "POST /admin/purge on the tile port: {body}");
    for base in [&p.base, &admin] {
        assert_eq!(at(base, "GET", "/live").await.0, 200, "/live on {base}");
        assert_eq!(at(base, "GET", "/ready").await.0, 200, "/ready on {base}");
    }
    let (status, metrics) = at(&admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(metric(&metrics, "tile_proxy_requests_total", &[]) >= 1.0, "{metrics}");
    let (status, health) = at(&admin, "GET", "/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(at(&admin, "GET", "/admin/stats").await.0, 200);
    assert_eq!(at(&admin, "GET", "/admin/purges").await.0, 200);
    // The admin port serves no tiles.
    assert_eq!(at(&admin, "GET", "/here-proxy/mc/3/1/1/png").await.0, 404);
    p.stop().await;
}

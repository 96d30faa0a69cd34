//! Many pods as one cache: proxies sharing a real `redis-server` (started per test on a free
//! port, killed on drop). A tile fetched by one is a hit on the others; one cold tile costs one
//! upstream call across pods; Redis down, paused or restarted never fails a request; purges
//! reach every pod and every tier; the admin API wants its token; the HERE key is never in Redis.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use futures_util::future::join_all;
use futures_util::StreamExt;
use tile_proxy::base::clock::Clock;
use tile_proxy::config::FileConfig;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn shared(redis: &RedisServer) -> impl FnOnce(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        redis.share(f);
        f.admin_token = Some(ADMIN.into());
    }
}

/// Entries of the test Redis (the lease and marker keys excluded).
fn entries(redis: &RedisServer) -> usize {
    redis.dump().iter().filter(|(k, _)| k.ends_with(":e")).count()
}

async fn admin_post(p: &Proxy, path: &str, token: Option<&str>, body: &str) -> Resp {
    let mut req = p.client.post(p.url(path)).insert_header(("Content-Type", "application/json"));
    if let Some(t) = token {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut res = req.send_body(body.to_string()).await.expect("sent");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.body().await.map_err(|e| e.to_string());
    Resp { status, headers, body }
}

/// Another pod holds the fetch lease of `path` for `ms` (and will never release it).
fn hold_lease(p: &Proxy, redis: &RedisServer, path: &str, ms: u64) {
    let tile = tile_proxy::domain::routes::parse(path, "", Default::default()).unwrap().unwrap();
    let tag = p.state().redis.as_ref().unwrap().keys.tag(&p.state().upstream.cache_key(&tile));
    let _: () = redis.cmd(&["SET", &format!("tile-proxy:{{{tag}}}:l"), "another-pod", "PX", &ms.to_string()]);
}

async fn purge(p: &Proxy, body: &str) -> serde_json::Value {
    let r = admin_post(p, "/admin/purge", Some(ADMIN), body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

#[actix_rt::test]
async fn a_tile_fetched_through_one_pod_is_a_redis_hit_on_another() {
    let redis = RedisServer::start();
    let up = upstream(20_000);
    let a = Proxy::start(&up, shared(&redis)).await;
    let b = Proxy::start(&up, shared(&redis)).await;
    let path = "/here-proxy/mc/12/2048/1361/png?indice=123&style=explore.day&size=512";
    let first = a.get(path).await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    eventually("the entry reached redis", async || entries(&redis) == 1).await;
    let on_b = b.get(path).await;
    assert_eq!(on_b.x_cache(), "HIT");
    assert_eq!(on_b.header("x-cache-tier"), Some("redis"));
    assert_eq!(on_b.bytes(), first.bytes());
    assert_eq!(on_b.header("etag"), first.header("etag"), "the same ETag on every pod");
    // Promoted into B's own tiers.
    let again = b.get(path).await;
    assert_eq!((again.x_cache(), again.header("x-cache-tier")), ("HIT", Some("memory")));
    assert_eq!(up.total(), 1, "one upstream call for both pods");
    let m = b.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_cache_hits_total", &["tier=\"redis\""]), 1.0);
    assert!(metric(&m, "tile_proxy_redis_ops_total", &["op=\"get\"", "outcome=\"ok\""]) >= 1.0);
    let health = b.get("/health").await.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert!(health["cache"].as_array().unwrap().iter().any(|t| t["tier"] == "redis" && t["breaker"] == "closed"));
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn sixty_cold_requests_over_three_pods_cost_one_upstream_call() {
    let redis = RedisServer::start();
    let up = upstream(30_000);
    let path = "/v3/base/mc/9/260/170/png";
    // The waiting pods also poll, every 250 ms (a twentieth of lease_wait, at most 250 ms).
    // A fetch of 600 ms ends about halfway between their second and third poll, so the
    // holder's `filled` message reaches them before a poll could find its copy (with 400 ms a
    // busy machine often let the second poll win).
    up.fail_always(path, Fault::Delay(Duration::from_millis(600)));
    let pods = [
        Proxy::start(&up, shared(&redis)).await,
        Proxy::start(&up, shared(&redis)).await,
        Proxy::start(&up, shared(&redis)).await,
    ];
    // Every pod listens before the first request (a message sent before is not seen).
    eventually("every pod subscribed to tile-proxy:filled", async || {
        redis.cmd::<(String, u64)>(&["PUBSUB", "NUMSUB", "tile-proxy:filled"]).1 == 3
    })
    .await;
    let requests = (0..60).map(|i| pods[i % 3].get(path));
    let answers = join_all(requests).await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.bytes(), answers[0].bytes(), "request {i}");
    }
    assert_eq!(up.count(path), 1, "one upstream call across three pods");
    let mut leases = String::new();
    for p in &pods {
        leases.push_str(&p.metrics().await);
    }
    assert_eq!(metric(&leases, "tile_proxy_redis_lease_total", &["outcome=\"acquired\""]), 1.0, "one pod led");
    assert_eq!(
        metric(&leases, "tile_proxy_redis_lease_total", &["outcome=\"waited_filled\""]),
        2.0,
        "the two others waited for it and answered from redis"
    );
    assert!(
        metric(&leases, "tile_proxy_redis_lease_wakeups_total", &["by=\"notification\""]) >= 2.0,
        "the waiting pods were told by pub/sub, not only by polling: {}",
        leases.lines().filter(|l| l.contains("wakeups")).collect::<Vec<_>>().join("; ")
    );
    for p in pods {
        p.stop().await;
    }
}

#[actix_rt::test]
async fn a_pod_whose_lease_holder_fails_fetches_itself() {
    let redis = RedisServer::start();
    let up = upstream(5_000);
    let a = Proxy::start(&up, |f: &mut FileConfig| {
        shared(&redis)(f);
        f.redis.lease_wait = Some(dur("3s"));
    })
    .await;
    let path = "/v3/base/mc/9/261/170/png";
    // Another pod holds the lease and dies without releasing it: a short lease left behind.
    hold_lease(&a, &redis, path, 300);
    let started = Instant::now();
    let r = a.get(path).await;
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "waited for the other pod's lease: {waited:?}");
    assert!(waited < Duration::from_secs(2), "then fetched itself once the lease expired: {waited:?}");
    assert_eq!(up.count(path), 1);
    a.stop().await;
}

#[actix_rt::test]
async fn redis_killed_under_load_fails_no_request_and_sharing_comes_back_after_a_restart() {
    let mut redis = RedisServer::start();
    let up = upstream(8_000);
    let a = Proxy::start(&up, shared(&redis)).await;
    let b = Proxy::start(&up, shared(&redis)).await;
    let mut errors = 0;
    let mut served = 0;
    for round in 0..40u32 {
        if round == 15 {
            redis.kill();
        }
        let reqs = (0..10u32).map(|i| {
            let p = if i % 2 == 0 { &a } else { &b };
            p.get_owned(format!("/v3/base/mc/10/{}/{}/png", 100 + round, i % 5))
        });
        for r in join_all(reqs).await {
            served += 1;
            if r.status != 200 || r.body.is_err() {
                errors += 1;
            }
        }
    }
    assert_eq!((errors, served), (0, 400), "Redis going away fails no request");
    let health = a.get("/health").await.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["problems"].to_string().contains("redis"), "{health}");
    assert_eq!(a.get("/ready").await.status, 200, "not ready would take the pod out of service: it still serves");
    let m = a.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_redis_up", &[]), 0.0);
    assert!(metric(&m, "tile_proxy_redis_ops_total", &["outcome=\"rejected\""]) > 0.0, "the breaker spared Redis");

    redis.restart();
    // Recovery without restarting the pods: after each breaker cool-down one probe goes through.
    let mut shared_again = false;
    for attempt in 0..20u32 {
        a.clock.advance_secs(6);
        b.clock.advance_secs(6);
        let path = format!("/v3/base/mc/11/{}/7/png", 500 + attempt);
        assert_eq!(a.get(&path).await.status, 200);
        // A's fill stores into every tier before it ends: then its copy is in Redis or never.
        eventually("A's fill ended", async || a.state().flights.is_empty()).await;
        if entries(&redis) > 0 {
            let r = b.get(&path).await;
            assert_eq!(r.status, 200);
            if r.header("x-cache-tier") == Some("redis") {
                shared_again = true;
                break;
            }
        }
    }
    assert!(shared_again, "after Redis restarted a tile fetched on A is a redis hit on B");
    assert_eq!(a.get("/health").await.json()["status"], "ok");
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn after_a_redis_restart_one_breaker_cool_down_brings_every_connection_back() {
    let mut redis = RedisServer::start();
    let up = upstream(3_000);
    let p = Proxy::start(&up, |f: &mut FileConfig| {
        shared(&redis)(f);
        // Far more connections than the failures that open the breaker: when it opens, most of
        // the connections made before the restart have not been used since.
        f.redis.connections = 16;
    })
    .await;
    // Every connection made: each miss costs a GET, a lease, a SET and the lease's release.
    for x in 0..8 {
        assert_eq!(p.get(&format!("/v3/base/mc/12/{x}/9/png")).await.status, 200);
    }
    eventually("every fill ended and released its lease", async || {
        p.state().flights.is_empty() && !redis.dump().iter().any(|(k, _)| k.ends_with(":l"))
    })
    .await;
    redis.restart();
    // The connections made before the restart are dead: the first calls on them fail.
    assert_eq!(p.get("/v3/base/mc/12/0/10/png").await.status, 200);
    assert_eq!(metric(&p.metrics().await, "tile_proxy_redis_up", &[]), 0.0, "the breaker opened");
    // One cool-down: the probe, and every call after it, must not land on a dead connection.
    p.clock.advance_secs(6);
    assert_eq!(p.get("/v3/base/mc/12/1/10/png").await.status, 200);
    eventually("the fill ended", async || p.state().flights.is_empty()).await;
    assert_eq!(entries(&redis), 1, "one cool-down after the restart the tile is shared again");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_redis_up", &[]), 1.0, "the probe closed the breaker");
    p.stop().await;
}

#[actix_rt::test]
async fn a_paused_redis_costs_a_request_at_most_one_deadline_then_nothing() {
    let redis = RedisServer::start();
    let up = upstream(4_000);
    let p = Proxy::start(&up, |f: &mut FileConfig| {
        shared(&redis)(f);
        f.redis.timeout = dur("100ms");
        f.redis.write_timeout = dur("300ms");
    })
    .await;
    assert_eq!(p.get("/v3/base/mc/10/1/1/png").await.status, 200, "warm: connections made");
    // Warm up until a store has reached Redis. On a loaded machine the first calls can outlast
    // these short deadlines, and a timeout opens the Redis breaker: then its cool-down is
    // passed (the injected clock) and another miss is stored.
    let mut warm = 0;
    eventually("a warm-up tile stored in redis", async || {
        if entries(&redis) >= 1 {
            return true;
        }
        warm += 1;
        p.clock.advance_secs(6);
        assert_eq!(p.get(&format!("/v3/base/mc/10/0/{warm}/png")).await.status, 200);
        entries(&redis) >= 1
    })
    .await;
    // A fill stores into every tier before it ends: read the count once the warm-up's have ended
    // (a store still on its way would otherwise look like one made after the resume).
    eventually("the warm-up fills ended", async || p.state().flights.is_empty()).await;
    let stored = entries(&redis);
    let timeouts = |m: &str| metric(m, "tile_proxy_redis_ops_total", &["outcome=\"timeout\""]);
    let warm_timeouts = timeouts(&p.metrics().await);
    redis.pause();
    let started = Instant::now();
    let r = p.get("/v3/base/mc/10/1/2/png").await;
    let first = started.elapsed();
    assert_eq!((r.status.as_u16(), r.x_cache()), (200, "MISS"));
    assert!(first < Duration::from_millis(280), "one read deadline (100 ms) at most, not one per call: {first:?}");
    let m = p.metrics().await;
    assert_eq!(timeouts(&m) - warm_timeouts, 1.0, "one call waited");
    // Open: no request waits for Redis any more.
    for i in 0..10 {
        let started = Instant::now();
        let r = p.get(&format!("/v3/base/mc/10/2/{i}/png")).await;
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_millis(90), "request {i} waited for Redis: {:?}", started.elapsed());
    }
    let m = p.metrics().await;
    assert_eq!(timeouts(&m) - warm_timeouts, 1.0);
    assert!(metric(&m, "tile_proxy_redis_ops_total", &["outcome=\"rejected\""]) >= 10.0);
    redis.resume();
    p.clock.advance_secs(6);
    let r = p.get("/v3/base/mc/10/1/1/png").await;
    assert_eq!(r.x_cache(), "HIT");
    // After the cool-down a probe closes the breaker and misses are stored again (a probe that
    // outlasts its deadline on a loaded machine opens it again: then the next cool-down).
    let mut after = 0;
    eventually("the probe closed the breaker and stores resumed", async || {
        if entries(&redis) > stored {
            return true;
        }
        after += 1;
        assert_eq!(p.get(&format!("/v3/base/mc/10/3/{after}/png")).await.status, 200);
        if entries(&redis) > stored {
            return true;
        }
        p.clock.advance_secs(6);
        false
    })
    .await;
    assert_eq!(metric(&p.metrics().await, "tile_proxy_redis_up", &[]), 1.0);
    p.stop().await;
}

#[actix_rt::test]
async fn purges_by_index_tile_and_bbox_reach_every_pod_and_every_tier() {
    let redis = RedisServer::start();
    let up = upstream(6_000);
    let a = Proxy::start(&up, shared(&redis)).await;
    let b = Proxy::start(&up, shared(&redis)).await;
    let tick = |secs| {
        a.clock.advance_secs(secs);
        b.clock.advance_secs(secs);
    };
    // Berlin at z12 is 2200/1343; Paris is 2074/1409.
    let berlin = "/here-proxy/mc/12/2200/1343/png?style=explore.day";
    let paris = "/here-proxy/mc/12/2074/1409/png?style=explore.day";
    let by_index = "/here-proxy/mc/12/2300/1300/png";
    for path in [
        format!("{berlin}&indice=ia"),
        format!("{paris}&indice=ia"),
        format!("{by_index}?indice=ib"),
        format!("{by_index}?indice=ic"),
    ] {
        assert_eq!(a.get(&path).await.status, 200);
        // A's fill stores into every tier before it ends.
        eventually("stored in redis", async || a.state().flights.is_empty() && entries(&redis) >= 1).await;
        assert_eq!(b.get(&path).await.x_cache(), "HIT", "{path}: shared");
    }
    let calls = up.total();
    assert_eq!(calls, 3);
    tick(1);

    // By index: only index ib's view is purged; ic still has the tile.
    let rule = purge(&a, r#"{"index": "ib"}"#).await;
    assert_eq!(rule["rule"]["index"], "ib");
    assert_eq!(rule["shared"]["redis"], true);
    eventually("the rule reached B", async || b.state().purges.len() == 1).await;
    tick(1);
    assert_eq!(b.get(&format!("{by_index}?indice=ic")).await.x_cache(), "HIT", "another index is not purged");
    let r = b.get(&format!("{by_index}?indice=ib")).await;
    assert_eq!(r.x_cache(), "MISS", "purged on B (memory tier)");
    assert_eq!(up.total(), calls + 1);
    eventually("the new copy reached redis", async || b.state().flights.is_empty()).await;
    let r = a.get(&format!("{by_index}?indice=ib")).await;
    assert_eq!(
        (r.x_cache(), r.header("x-cache-tier")),
        ("HIT", Some("redis")),
        "A skips its own purged memory and disk copies and takes B's fresh one from redis"
    );
    assert_eq!(up.total(), calls + 1);

    // By tile: the URL as clients send it.
    tick(1);
    let rule = purge(&a, &format!(r#"{{"url": "{berlin}&indice=ia"}}"#)).await;
    assert!(rule["rule"]["key"].as_str().unwrap().contains("12/2200/1343"));
    eventually("the rule reached B", async || b.state().purges.len() == 2).await;
    tick(1);
    assert_eq!(b.get(&format!("{berlin}&indice=ia")).await.x_cache(), "MISS");
    assert_eq!(b.get(&format!("{paris}&indice=ia")).await.x_cache(), "HIT", "only that tile");
    assert_eq!(up.total(), calls + 2);

    // By bbox and zoom: Berlin's area at z10-14, on every index.
    tick(1);
    purge(&a, r#"{"bbox": [13.0, 52.3, 13.8, 52.7], "zoom": [10, 14]}"#).await;
    eventually("the rule reached B", async || b.state().purges.len() == 3).await;
    tick(1);
    assert_eq!(b.get(&format!("{berlin}&indice=ia")).await.x_cache(), "MISS", "inside the bbox");
    assert_eq!(b.get(&format!("{paris}&indice=ia")).await.x_cache(), "HIT", "outside the bbox");
    assert_eq!(up.total(), calls + 3);

    // Disk: a restarted B has only its disk tier and Redis; the rules come from Redis and its
    // purged disk copy is not served.
    tick(1);
    purge(&a, &format!(r#"{{"url": "{paris}&indice=ia"}}"#)).await;
    eventually("the rule reached B", async || b.state().purges.len() == 4).await;
    let dir = b.stop().await;
    let b = Proxy::start_in(&up, dir, shared(&redis)).await;
    b.clock.advance_secs(10);
    assert_eq!(b.state().purges.len(), 4, "rules loaded before serving");
    let r = b.get(&format!("{paris}&indice=ia")).await;
    assert_eq!(r.x_cache(), "MISS", "the disk copy and the redis copy are both older than the rule");
    assert_eq!(up.total(), calls + 4);
    let r = b.get(&format!("{by_index}?indice=ic")).await;
    assert_eq!((r.x_cache(), r.header("x-cache-tier")), ("HIT", Some("disk")), "an unpurged tile from disk");

    let list = reqwest_like_get(&a, "/admin/purges", Some(ADMIN)).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["rules"].as_array().unwrap().len(), 4);
    assert_eq!(metric(&a.metrics().await, "tile_proxy_purge_rules", &[]), 4.0);
    a.stop().await;
    b.stop().await;
}

async fn reqwest_like_get(p: &Proxy, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    p.get_with(path, &headers).await
}

#[actix_rt::test]
async fn the_admin_api_wants_its_token_and_valid_rules() {
    let up = upstream(1_000);
    let closed = Proxy::start(&up, |_| {}).await;
    let r = admin_post(&closed, "/admin/purge", Some(ADMIN), r#"{"index": "a"}"#).await;
    assert_eq!(r.status, 404, "no token configured: no admin API");
    assert_eq!(reqwest_like_get(&closed, "/admin/purges", Some(ADMIN)).await.status, 404);
    closed.stop().await;

    let p = Proxy::start(&up, |f: &mut FileConfig| f.admin_token = Some(ADMIN.into())).await;
    let r = admin_post(&p, "/admin/purge", None, r#"{"index": "a"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = admin_post(&p, "/admin/purge", Some("admin-token-0123456789abcdeX"), r#"{"index": "a"}"#).await;
    assert_eq!(r.status, 401, "wrong token");
    assert_eq!(reqwest_like_get(&p, "/admin/purges", Some("nope")).await.status, 401);
    assert_eq!(p.state().purges.len(), 0, "nothing was purged");
    for (body, needle) in [
        ("{", "body"),
        (r#"{"index": "a", "colour": 1}"#, "colour"),
        ("{}", ""),
        (r#"{"bbox": [1, 2, 3]}"#, "bbox"),
        (r#"{"bbox": [0, 10, 1, 5], "zoom": [3, 4]}"#, ""),
        (r#"{"zoom": [9, 3]}"#, "zoom"),
        (r#"{"url": "/not/a/tile"}"#, "tile"),
        (r#"{"url": "/here-proxy/mc/3/99/0/png"}"#, "url"),
    ] {
        let r = admin_post(&p, "/admin/purge", Some(ADMIN), body).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        let j = r.json();
        assert_eq!(j["error"], "invalid_request", "{body}");
        assert!(j["message"].as_str().unwrap().contains(needle), "{body}: {j}");
    }
    assert_eq!(p.state().purges.len(), 0);
    p.stop().await;
}

#[actix_rt::test]
async fn without_redis_purges_are_local_and_survive_a_restart() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f: &mut FileConfig| f.admin_token = Some(ADMIN.into())).await;
    let path = "/v3/base/mc/6/10/10/png?indice=solo";
    assert_eq!(p.get(path).await.x_cache(), "MISS");
    assert_eq!(p.get(path).await.x_cache(), "HIT");
    p.clock.advance_secs(1);
    let r = purge(&p, r#"{"index": "solo", "zoom": [0, 8]}"#).await;
    assert_eq!(r["shared"]["redis"], false);
    p.clock.advance_secs(1);
    assert_eq!(p.get(path).await.x_cache(), "MISS", "purged");
    assert_eq!(p.get(path).await.x_cache(), "HIT", "the new copy is served");
    assert_eq!(up.total(), 2);
    p.clock.advance_secs(1);
    purge(&p, r#"{"index": "solo"}"#).await;
    let dir = p.stop().await;
    let p = Proxy::start_in(&up, dir, |f: &mut FileConfig| f.admin_token = Some(ADMIN.into())).await;
    p.clock.advance_secs(10);
    assert_eq!(p.state().purges.len(), 2, "rules kept in the cache folder");
    assert_eq!(p.get(path).await.x_cache(), "MISS", "the purged disk copy is not served after a restart");
    // Rules outlive no entry: past ttl_cap (7d) + the longest stale window (1d) they are gone.
    p.clock.advance_secs(8 * 86_400 + 60);
    let list = reqwest_like_get(&p, "/admin/purges", Some(ADMIN)).await.json();
    assert_eq!(list["rules"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(list["max_rule_age_seconds"], 8 * 86_400);
    p.stop().await;
}

#[actix_rt::test]
async fn the_here_key_is_nowhere_in_redis_and_a_password_protected_redis_works() {
    let redis = RedisServer::with_password("s3cret-redis-pass");
    let up = upstream(3_000);
    let a = Proxy::start(&up, shared(&redis)).await;
    let b = Proxy::start(&up, shared(&redis)).await;
    for i in 0..5 {
        let path = format!("/v3/base/mc/7/{i}/1/png?apiKey=CLIENTKEY123&indice=k");
        assert_eq!(a.get(&path).await.status, 200);
    }
    assert_eq!(a.get("/v2/vectortiles/base/mc/7/1/1/omv?apiKey=CLIENTKEY123").await.status, 200);
    purge(&a, r#"{"url": "/v3/base/mc/7/0/1/png?indice=k"}"#).await;
    eventually("stored", async || entries(&redis) == 6).await;
    let r = b.get("/v3/base/mc/7/3/1/png?indice=k").await;
    assert_eq!(r.header("x-cache-tier"), Some("redis"), "sharing works through a password");
    let dump = redis.dump();
    assert!(dump.len() >= 7, "entries and the purge rules: {}", dump.len());
    for (k, v) in &dump {
        for secret in [SERVER_KEY, "CLIENTKEY123", "s3cret-redis-pass"] {
            assert!(!k.contains(secret), "{secret} in key {k}");
            assert!(!v.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in the value of {k}");
        }
    }
    let health = a.get("/health").await;
    assert!(!String::from_utf8_lossy(health.bytes()).contains("s3cret-redis-pass"), "the password is not shown");
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn surrogate_keys_name_index_zoom_and_block() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f: &mut FileConfig| f.surrogate_keys = true).await;
    let r = p.get("/v3/base/mc/12/2200/1343/png?indice=cust.1").await;
    assert_eq!(r.header("surrogate-key"), Some("tp-i-cust.1 tp-z12 tp-b12-137-83"));
    assert_eq!(r.header("cache-tag"), Some("tp-i-cust.1,tp-z12,tp-b12-137-83"));
    p.stop().await;
    let p = Proxy::start(&up, |_| {}).await;
    assert_eq!(p.get("/v3/base/mc/12/2200/1343/png").await.header("surrogate-key"), None, "off by default");
    p.stop().await;
}

#[actix_rt::test]
async fn rediss_with_a_private_ca_shares_tiles() {
    let certs = tempfile::tempdir().unwrap();
    let redis = RedisServer::with_tls(certs.path());
    assert!(redis.url().starts_with("rediss://"));
    let up = upstream(2_000);
    let tls = |f: &mut FileConfig| {
        shared(&redis)(f);
        f.redis.ca_file = Some(certs.path().join("ca.pem"));
    };
    let a = Proxy::start(&up, tls).await;
    let b = Proxy::start(&up, tls).await;
    let path = "/v3/base/mc/5/3/3/png";
    assert_eq!(a.get(path).await.x_cache(), "MISS");
    eventually("stored over TLS", async || entries(&redis) == 1).await;
    assert_eq!(b.get(path).await.header("x-cache-tier"), Some("redis"));
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn tiles_above_redis_max_value_stay_local_and_skip_the_lease() {
    let redis = RedisServer::start();
    let up = upstream(40_000);
    let small = |f: &mut FileConfig| {
        shared(&redis)(f);
        f.redis_max_value = tile_proxy::config::ByteSize::kib(16);
    };
    let a = Proxy::start(&up, small).await;
    let b = Proxy::start(&up, small).await;
    let path = "/v3/base/mc/5/4/4/png";
    assert_eq!(a.get(path).await.x_cache(), "MISS");
    eventually("the too-large marker", async || redis.dump().iter().any(|(k, _)| k.ends_with(":x"))).await;
    assert_eq!(entries(&redis), 0, "a 40 KB tile is not shared above a 16 KiB redis_max_value");
    let started = Instant::now();
    assert_eq!(b.get(path).await.x_cache(), "MISS", "B fetches it itself");
    assert!(started.elapsed() < Duration::from_secs(1), "without waiting for a lease");
    assert_eq!(up.count(path), 2);
    let m = a.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_redis_ops_total", &["op=\"set\"", "outcome=\"too_large\""]), 1.0);
    assert_eq!(metric(&b.metrics().await, "tile_proxy_redis_lease_total", &["outcome=\"too_large\""]), 1.0);
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn a_stale_answer_never_waits_for_another_pods_refresh() {
    let redis = RedisServer::start();
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f: &mut FileConfig| {
        shared(&redis)(f);
        f.defaults.ttl = Some(dur("10s"));
        f.defaults.stale_while_revalidate = Some(dur("1h"));
    })
    .await;
    let path = "/v3/base/mc/6/20/20/png";
    assert_eq!(p.get(path).await.x_cache(), "MISS");
    p.clock.advance_secs(60);
    // Another pod is refreshing this tile: its lease is held for 3 s.
    hold_lease(&p, &redis, path, 3000);
    let started = Instant::now();
    let r = p.get(path).await;
    assert_eq!((r.x_cache(), r.header("x-cache-reason")), ("STALE", Some("revalidating")));
    assert!(started.elapsed() < Duration::from_millis(500), "answered at once: {:?}", started.elapsed());
    assert_eq!(up.count(path), 1, "the other pod's refresh is not duplicated while its lease holds");
    p.stop().await;
}

#[actix_rt::test]
async fn an_early_refresh_runs_once_for_the_fleet_and_the_other_pods_take_its_copy_from_redis() {
    let redis = RedisServer::start();
    let up = upstream(3_000);
    up.set_latency(Duration::from_millis(150));
    let pod = |f: &mut FileConfig| {
        shared(&redis)(f);
        f.defaults.ttl = Some(dur("60s"));
        f.defaults.stale_if_error = Some(dur("0s"));
    };
    // A 1-in-1000 draw every time: each hit in the last ~1 s before expiry refreshes early.
    let a = Proxy::start_drawing(&up, || 1e-3, pod).await;
    let b = Proxy::start_drawing(&up, || 1e-3, pod).await;
    let path = "/v3/base/mc/7/30/30/png";
    let stored = a.clock.now_ms();
    let mut filled = redis.subscribe("tile-proxy:filled").await;
    assert_eq!(a.get(path).await.x_cache(), "MISS");
    // Pod a's fill is over when it has released its lease (and told the fleet on `filled`).
    // Its answer may arrive before that: an early refresh started in between would find the
    // fill's lease and leave the refresh to "another pod".
    signalled("pod a's fill released its lease", filled.next()).await;
    assert_eq!(b.get(path).await.header("x-cache-tier"), Some("redis"));
    // Both pods' clocks to 100 ms before the entry expires.
    for p in [&a, &b] {
        p.clock.advance_ms(stored + 59_900 - p.clock.now_ms());
    }
    // Pod a refreshes early (slowly) and holds the refresh lease meanwhile.
    up.fail(path, Fault::Delay(Duration::from_millis(1_500)), 1);
    assert_eq!(a.get(path).await.x_cache(), "HIT");
    eventually("pod a holds the refresh lease", async || redis.dump().iter().any(|(k, _)| k.ends_with(":l"))).await;
    for r in join_all((0..10).map(|_| b.get(path))).await {
        assert_eq!((r.x_cache(), r.header("age")), ("HIT", Some("59")), "pod b serves its copy meanwhile");
    }
    eventually("pod a's refresh stored", async || a.state().flights.is_empty() && up.count(path) == 2).await;
    // Pod b still has the old copy in memory: its next early refresh finds a's in Redis.
    eventually("pod b took pod a's refreshed copy", async || {
        let r = b.get(path).await;
        assert_eq!(r.x_cache(), "HIT");
        r.header("age") == Some("0")
    })
    .await;
    eventually("pod b's refresh ended", async || b.state().flights.is_empty()).await;
    assert_eq!(up.count(path), 2, "one fetch and one early refresh for the whole fleet");
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(metric(&ma, "tile_proxy_early_refresh_total", &[]), 1.0);
    assert_eq!(metric(&mb, "tile_proxy_early_refresh_total", &[]), 0.0, "pod b never fetched");
    assert!(metric(&mb, "tile_proxy_redis_lease_total", &["outcome=\"refresh_elsewhere\""]) >= 1.0);
    a.stop().await;
    b.stop().await;
}

/// Traffic across the fleet: three pods sharing Redis, 60 viewers on each, asking for the same
/// two traffic tiles every 10 s for 3 minutes with a 30 s traffic TTL. The fleet pays HERE what
/// one pod would: each tile's first download and one revalidation per TTL (7 calls), however
/// many pods see it expire at once.
#[actix_rt::test]
async fn traffic_revalidates_once_per_ttl_across_three_pods() {
    let redis = RedisServer::start();
    let up = upstream(2000);
    let tweak = |f: &mut FileConfig| {
        redis.share(f);
        f.defaults.traffic_ttl = Some(dur("30s"));
    };
    let pods = [
        Proxy::start_drawing(&up, || 1.0, tweak).await,
        Proxy::start_drawing(&up, || 1.0, tweak).await,
        Proxy::start_drawing(&up, || 1.0, tweak).await,
    ];
    eventually("every pod subscribed to tile-proxy:filled", async || {
        redis.cmd::<(String, u64)>(&["PUBSUB", "NUMSUB", "tile-proxy:filled"]).1 == 3
    })
    .await;
    let tiles = ["/v3/flow/mc/13/4401/2686/png", "/v2/traffictiles/flow/mc/13/4401/2686/omv"];
    let t0 = (pods.iter().map(|p| p.clock.now_ms()).max().unwrap() / 60_000 + 1) * 60_000;
    for step in 0..=18u64 {
        let at = t0 + step * 10_000;
        for p in &pods {
            p.clock.advance_ms(at - p.clock.now_ms());
        }
        up.set_clock_ms(at);
        let asks = (0..60).flat_map(|_| tiles).enumerate().map(|(i, t)| pods[i % 3].get_owned(t.to_string()));
        for r in join_all(asks).await {
            assert_eq!(r.status, 200, "at step {step}");
        }
    }
    for t in tiles {
        assert_eq!(up.count(t), 7, "{t}: one download and 6 revalidations for the fleet");
    }
    for p in pods {
        p.stop().await;
    }
}

/// The shipped client limit (no `rate_limit` configured) stays on each pod: with Redis, a
/// request costs no Redis call for it (no bucket key appears), while a configured limit is
/// shared (its bucket key does).
#[actix_rt::test]
async fn the_shipped_client_limit_is_kept_per_pod_and_a_configured_one_is_shared() {
    let redis = RedisServer::start();
    let up = upstream(2000);
    let p = Proxy::start(&up, |f| {
        redis.share(f);
        f.defaults.rate_limit = None; // the shipped default (the test config turns it off)
        f.index.insert(
            "limited".into(),
            tile_proxy::config::PolicyFileConfig { rate_limit: Some(50.0), ..Default::default() },
        );
    })
    .await;
    let r = p.get("/v3/base/mc/4/1/1/png").await;
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit-limit").is_some(), "the shipped limit applies");
    let buckets = |redis: &RedisServer| redis.dump().into_iter().filter(|(k, _)| k.contains(":rl:")).count();
    assert_eq!(buckets(&redis), 0, "no Redis bucket for the shipped limit");
    assert_eq!(p.get("/v3/base/mc/4/1/1/png?indice=limited").await.status, 200);
    assert_eq!(buckets(&redis), 1, "a configured limit is shared through Redis");
    p.stop().await;
}

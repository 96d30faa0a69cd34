//! The fleet's fetch lease and its clock, with a real `redis-server` and pods whose clocks are
//! minutes apart: a lease is renewed while
//! its flight streams a body longer than the lease (a second pod waits for it instead of
//! fetching again) and stops being renewed when the flight ends, however it ends; purge rules
//! and stored entries are compared on Redis's `TIME`, so a pod whose clock lags by minutes
//! neither serves copies purged on another pod nor refetches copies stored after a purge.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use tile_proxy::base::clock::{Clock, ManualClock, SystemClock};
use tile_proxy::config::FileConfig;
use tile_proxy::store::redis::Redis;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn redis_of(p: &Proxy) -> &Arc<Redis> {
    p.state().redis.as_ref().expect("redis configured")
}

fn renewed(p: &Proxy) -> u64 {
    redis_of(p).metrics.lease.with_label_values(&["renewed"]).get()
}

fn lease_keys(redis: &RedisServer) -> usize {
    redis.dump().iter().filter(|(k, _)| k.ends_with(":l")).count()
}

/// Shared through `redis`, with a 2 s lease (renewed every 667 ms) that the pods wait for up to
/// 30 s. Shorter leases expired now and then on a loaded 2-core machine, where a thread may
/// stall for a second (a production lease is 36 s).
fn short_lease(redis: &RedisServer) -> impl Fn(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        redis.share(f);
        f.redis.lease = Some(dur("2s"));
        f.upstream.body_timeout = dur("30s");
        f.redis.lease_wait = Some(dur("30s"));
    }
}

#[actix_rt::test]
async fn a_lease_is_renewed_while_a_slow_body_streams_and_the_other_pod_waits_for_it() {
    let redis = RedisServer::start();
    let up = upstream(40_000);
    let path = "/v3/base/mc/9/300/170/png";
    // 40 KB in 4 KB pieces every 700 ms: about 7 s, 3.5 leases.
    up.fail_always(path, Fault::SlowBody { chunk: 4_000, interval: Duration::from_millis(700) });
    // Pod clocks play no part in a lease (Redis expires it): A's runs 10 minutes ahead, B's
    // 5 minutes behind.
    let a = Proxy::start(&up, short_lease(&redis)).await;
    a.clock.advance_secs(600);
    let b_clock = ManualClock::at(SystemClock.now_ms() - 300_000);
    let b =
        Proxy::start_clocked(&up, tempfile::tempdir().unwrap(), short_lease(&redis), Default::default(), b_clock).await;
    eventually("both pods subscribed to tile-proxy:filled", async || {
        redis.cmd::<(String, u64)>(&["PUBSUB", "NUMSUB", "tile-proxy:filled"]).1 == 2
    })
    .await;
    let on_b = async {
        eventually("A's fetch started", async || up.count(path) == 1).await;
        // Redis expires a lease on its own clock: real time has to pass, two leases of it.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        assert!(!a.state().flights.is_empty(), "A's flight still streams");
        let lost = redis_of(&a).metrics.lease.with_label_values(&["lost"]).get();
        assert_eq!(lease_keys(&redis), 1, "A's lease outlived two leases (renewed {}, lost {lost})", renewed(&a));
        assert!(renewed(&a) >= 2, "renewed every 667 ms: {}", renewed(&a));
        b.get(path).await
    };
    let (on_a, on_b) = futures_util::join!(a.get(path), on_b);
    assert_eq!((on_a.status.as_u16(), on_a.x_cache()), (200, "MISS"));
    assert_eq!(on_b.status, 200);
    assert_eq!(on_b.bytes(), on_a.bytes());
    assert_eq!(up.count(path), 1, "B waited for A's fetch instead of starting a second one");
    let b_leases = |outcome: &str| redis_of(&b).metrics.lease.with_label_values(&[outcome]).get();
    assert_eq!((b_leases("waited_filled"), b_leases("acquired")), (1, 0), "B waited and took A's copy from redis");
    assert!(renewed(&a) >= 4, "renewed all along the 7 s body: {}", renewed(&a));
    // Released when the flight ended, and no longer renewed.
    eventually("A's lease released", async || lease_keys(&redis) == 0).await;
    eventually("A's renewal stopped", async || redis_of(&a).metrics.leases_held.get() == 0).await;
    let m = a.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_redis_lease_total", &["outcome=\"lost\""]), 0.0);
    assert!(metric(&m, "tile_proxy_redis_ops_total", &["op=\"lease_renew\"", "outcome=\"ok\""]) >= 6.0);
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn a_lease_renewal_ends_with_its_flight_when_the_upstream_fails_or_the_client_goes() {
    let redis = RedisServer::start();
    // 300 KB: above max_entry_size (256 KiB), so nothing is stored and the fetch stops as soon
    // as its last client goes.
    let up = upstream(300_000);
    let a = Proxy::start(&up, |f: &mut FileConfig| {
        short_lease(&redis)(f);
        f.upstream.head_timeout = dur("1s");
        f.upstream.retry_attempts = 2;
    })
    .await;
    a.clock.advance_secs(600);
    let held = || redis_of(&a).metrics.leases_held.get();

    // The upstream never answers: two attempts of 1 s, then a failure.
    let hang = "/v3/base/mc/9/301/170/png";
    up.fail_always(hang, Fault::Hang);
    let r = a.get(hang).await;
    assert!(r.status.is_server_error(), "{}", r.status);
    assert!(renewed(&a) >= 1, "renewed while waiting for the head");
    eventually("the renewal stopped with the failed flight", async || held() == 0).await;
    eventually("the lease released", async || lease_keys(&redis) == 0).await;

    // The client goes mid-body: 10 KB every 200 ms would take 6 s.
    let gone = "/v3/base/mc/9/302/170/png";
    up.fail_always(gone, Fault::SlowBody { chunk: 10_000, interval: Duration::from_millis(200) });
    let before = renewed(&a);
    let addr = a.base.trim_start_matches("http://").to_string();
    let (leave, told) = std::sync::mpsc::channel::<()>();
    let client = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        write!(s, "GET {gone} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("the head and some body");
        let _ = told.recv();
        n
        // Dropped here: the connection closes.
    });
    eventually("the lease renewed while the body streams", async || renewed(&a) > before).await;
    leave.send(()).unwrap();
    assert!(client.await.expect("client") > 0);
    eventually("the abandoned flight ended", async || a.state().flights.is_empty()).await;
    eventually("its renewal stopped with it", async || held() == 0).await;
    eventually("and its lease was released", async || lease_keys(&redis) == 0).await;
    assert!(up.count(gone) == 1);
    a.stop().await;
}

/// Shared through `redis` with the fleet clock on (the harness turns it off for tests that
/// move pod clocks).
fn fleet(redis: &RedisServer) -> impl Fn(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        redis.share(f);
        f.redis.fleet_clock = true;
        f.admin_token = Some(ADMIN.into());
    }
}

async fn purge(p: &Proxy, url: &str) -> u64 {
    let body = format!(r#"{{"url": "{url}"}}"#);
    let mut res = p
        .client
        .post(p.url("/admin/purge"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Authorization", format!("Bearer {ADMIN}")))
        .send_body(body)
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&res.body().await.expect("body")).expect("json");
    assert_eq!(json["shared"]["redis"], true, "{json}");
    json["rule"]["at_ms"].as_u64().expect("at_ms")
}

/// Redis's clock, as the test reads it.
fn redis_ms(redis: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) = redis.cmd(&["TIME"]);
    secs * 1000 + micros / 1000
}

/// Waits until each pod's fleet clock is past `t`. The pods' own clocks stand still (they are
/// ManualClocks); their fleet clocks follow Redis's TIME at each measurement (every 2 s).
async fn past(pods: [&Proxy; 2], t: u64) {
    for p in pods {
        eventually("the pod's fleet clock passed the mark", async || p.state().clock.now_ms() > t).await;
    }
}

#[actix_rt::test]
async fn purges_and_stored_entries_compare_on_redis_time_when_a_pod_clock_lags_by_minutes() {
    const LAG_MS: u64 = 5 * 60_000;
    let redis = RedisServer::start();
    let up = upstream(5_000);
    let a = Proxy::start(&up, fleet(&redis)).await;
    let b_clock = ManualClock::at(SystemClock.now_ms() - LAG_MS);
    let dir = tempfile::tempdir().expect("temp dir");
    let b = Proxy::start_clocked(&up, dir, fleet(&redis), Default::default(), b_clock).await;

    // Each pod measured its offset at start: B's is about 5 minutes more than A's.
    let offset = |p: &Proxy| redis_of(p).status()["clock_offset_ms"].as_i64().expect("measured at start");
    let gap = offset(&b) - offset(&a);
    assert!((LAG_MS as i64 - 30_000..LAG_MS as i64 + 30_000).contains(&gap), "B's offset minus A's: {gap}");
    let m = b.metrics().await;
    assert!(metric(&m, "tile_proxy_redis_clock_offset_ms", &[]) >= (LAG_MS - 30_000) as f64, "the offset is a metric");
    let health = b.get("/health").await.json();
    let tier = health["cache"].as_array().unwrap().iter().find(|t| t["tier"] == "redis").cloned().unwrap();
    assert_eq!(tier["fleet_clock"], true, "{tier}");
    assert!(tier["clock_offset_ms"].as_i64().unwrap() >= LAG_MS as i64 - 30_000, "{tier}");
    for p in [&a, &b] {
        let now = p.state().clock.now_ms();
        assert!(now.abs_diff(redis_ms(&redis)) < 30_000, "each pod reads Redis's time, not its own clock");
    }

    // x is cached by B (the lagging pod), y by A; both reach Redis.
    let x = "/v3/base/mc/9/303/170/png";
    let y = "/v3/base/mc/9/304/170/png";
    assert_eq!(b.get(x).await.x_cache(), "MISS");
    assert_eq!(a.get(y).await.x_cache(), "MISS");
    eventually("both stored in every tier", async || {
        a.state().flights.is_empty()
            && b.state().flights.is_empty()
            && redis.dump().iter().filter(|(k, _)| k.ends_with(":e")).count() == 2
    })
    .await;
    past([&a, &b], a.state().clock.now_ms().max(b.state().clock.now_ms())).await;

    // A (on time) purges x; B (5 minutes behind) purges y. Both rules carry Redis's time.
    let x_at = purge(&a, x).await;
    let y_at = purge(&b, y).await;
    assert!(y_at > b.clock.now_ms() + LAG_MS - 30_000, "B's rule is not on B's own clock");
    assert!(y_at.abs_diff(redis_ms(&redis)) < 30_000 && x_at.abs_diff(redis_ms(&redis)) < 30_000);
    for p in [&a, &b] {
        eventually("both rules reached both pods", async || p.state().purges.len() == 2).await;
    }
    past([&a, &b], x_at.max(y_at)).await;

    // B's older copy of x is purged (memory and redis): fetched again.
    assert_eq!(b.get(x).await.x_cache(), "MISS", "B's copy stored before A's purge");
    // A's older copy of y is purged by the rule the lagging pod made.
    assert_eq!(a.get(y).await.x_cache(), "MISS", "A's copy stored before B's purge");
    assert_eq!((up.count(x), up.count(y)), (2, 2));
    eventually("the new copies stored", async || a.state().flights.is_empty() && b.state().flights.is_empty()).await;

    // The copies stored after the purges are not purged, on either pod.
    assert_eq!(b.get(x).await.x_cache(), "HIT", "B's copy stored after the purge, on B");
    assert_eq!(a.get(y).await.x_cache(), "HIT", "A's copy stored after the purge, on A");
    let (ax, by) = (a.get(x).await, b.get(y).await);
    assert_eq!((ax.x_cache(), ax.header("x-cache-tier")), ("HIT", Some("redis")), "B's new copy, on A");
    assert_eq!((by.x_cache(), by.header("x-cache-tier")), ("HIT", Some("redis")), "A's new copy, on B");
    assert_eq!((up.count(x), up.count(y)), (2, 2), "no refetch of a copy newer than the purge");
    a.stop().await;
    b.stop().await;
}

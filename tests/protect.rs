//! Protecting the bill, end to end over real sockets: the rate cap to HERE (measured at the test
//! upstream by arrival times, per pod and shared by two pods on one real `redis-server`), the
//! budget per index (429 `budget_exhausted`, hits still served, shared through Redis and not
//! reset by a Redis outage), client rate limits (per client and index, `RateLimit-*`, exempt
//! networks, shared through Redis, local when Redis is down), and `/admin/stats`.

mod common;

use std::time::{Duration, Instant};

use std::process::Command;

use common::process::{run, BIN};
use common::redis_server::RedisServer;
use common::*;
use futures_util::future::join_all;
use tile_proxy::config::FileConfig;

const ADMIN: &str = "admin-token-0123456789abcdef";

/// The tests that time the upstream's arrivals run one at a time: on a 2-core machine two of
/// them at once delay each other's timers.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cold tile of its own for `index`: tile `n` of zoom 14.
fn tile(index: &str, n: u32) -> String {
    format!("/v3/base/mc/14/{}/{}/png?indice={index}", 8000 + n % 100, 5000 + n / 100)
}

fn policy(f: &mut FileConfig, index: &str, set: impl FnOnce(&mut tile_proxy::config::PolicyFileConfig)) {
    set(f.index.entry(index.to_string()).or_default());
}

/// Moves a proxy's clock to one minute past the next full hour (the budget windows are UTC
/// hours and days of the injected clock).
fn to_next_hour(p: &Proxy) {
    use tile_proxy::base::clock::Clock;
    let now = p.clock.now_ms();
    p.clock.advance_ms((now / 3_600_000 + 1) * 3_600_000 + 60_000 - now);
}

/// The upstream's arrival times, in order.
fn arrivals(up: &Upstream) -> Vec<Instant> {
    let mut at: Vec<Instant> = up.requests().iter().map(|r| r.at).collect();
    at.sort();
    at
}

/// No 1-second window holds more than `rps` arrivals: any `rps + 1` consecutive ones span at
/// least a second (less `jitter` of timer wake-ups on a busy machine), and the average rate over
/// the whole run is at most `rps`.
fn assert_at_most(at: &[Instant], rps: usize, jitter: Duration) {
    for w in at.windows(rps + 1) {
        let span = w[rps] - w[0];
        assert!(span >= Duration::from_secs(1) - jitter, "{} requests within {span:?}", rps + 1);
    }
    let span = (*at.last().unwrap() - at[0]).as_secs_f64();
    let rate = (at.len() - 1) as f64 / span;
    assert!(rate <= rps as f64 * 1.01, "average {rate:.2} req/s over {span:.2} s");
}

async fn admin_get(p: &Proxy, path: &str, token: Option<&str>) -> Resp {
    match token {
        Some(t) => p.get_with(path, &[("Authorization", &format!("Bearer {t}"))]).await,
        None => p.get(path).await,
    }
}

#[actix_rt::test]
async fn the_rate_cap_spaces_upstream_requests_and_loses_none() {
    let _timed = TIMED.lock().await;
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.upstream_rps = Some(20.0);
        f.upstream_queue_wait = dur("15s");
    })
    .await;
    let started = Instant::now();
    let answers = join_all((0..200).map(|n| p.get_owned(tile("cap", n)))).await;
    let took = started.elapsed();
    let ok = answers.iter().filter(|r| r.status == 200 && r.x_cache() == "MISS").count();
    assert_eq!(
        ok,
        200,
        "every request answered, none lost: {:?}",
        answers.iter().find(|r| r.status != 200).map(|r| (r.status, r.body.clone()))
    );
    assert_eq!(up.total(), 200);
    assert_at_most(&arrivals(&up), 20, Duration::from_millis(60));
    assert!(took >= Duration::from_millis(9_900), "200 requests at 20/s take ~10 s, not {took:?}");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_upstream_cap_wait_seconds_count", &["upstream=\"raster\""]), 200.0);
    assert_eq!(metric(&m, "tile_proxy_upstream_busy_total", &[]), 0.0);
}

#[actix_rt::test]
async fn a_full_queue_answers_upstream_busy_and_hits_are_never_delayed() {
    let _timed = TIMED.lock().await;
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.upstream_rps = Some(2.0);
        f.upstream_queue_wait = dur("1s");
    })
    .await;
    let warm = tile("busy", 999);
    assert_eq!(p.get(&warm).await.status, 200);
    let cold = join_all((0..10).map(|n| p.get_owned(tile("busy", n))));
    let hit = async {
        // While the queue is full, a cached tile answers at once: once the cap has decided on
        // every cold request (a turn in the queue, or busy), the warm one's included.
        eventually("the cap decided on every cold request", async || {
            let m = p.metrics().await;
            metric(&m, "tile_proxy_upstream_cap_wait_seconds_count", &[])
                + metric(&m, "tile_proxy_upstream_busy_total", &[])
                >= 11.0
        })
        .await;
        let t = Instant::now();
        let r = p.get(&warm).await;
        (r, t.elapsed())
    };
    let (cold, (hit, hit_took)) = tokio::join!(cold, hit);
    assert_eq!((hit.status.as_u16(), hit.x_cache()), (200, "HIT"));
    assert!(hit_took < Duration::from_millis(300), "a hit waited {hit_took:?}");
    let fetched = cold.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Resp> = cold.iter().filter(|r| r.status == 503).collect();
    assert!((2..=3).contains(&fetched), "turns within 1 s at 2/s: {fetched}");
    assert_eq!(fetched + busy.len(), 10);
    for r in &busy {
        assert_eq!(r.json()["error"], "upstream_busy");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=5).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(up.total() as usize, 1 + fetched, "a refused miss never reaches the upstream");
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_upstream_busy_total", &["upstream=\"raster\""]), busy.len() as f64);
}

#[actix_rt::test]
async fn two_proxies_on_one_redis_share_the_cap() {
    let _timed = TIMED.lock().await;
    let redis = RedisServer::start();
    let up = upstream(2_000);
    let cfg = |f: &mut FileConfig| {
        redis.share(f);
        f.upstream_rps = Some(20.0);
        f.upstream_queue_wait = dur("15s");
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    let started = Instant::now();
    let (ra, rb) = tokio::join!(
        join_all((0..40).map(|n| a.get_owned(tile("shared", n)))),
        join_all((40..80).map(|n| b.get_owned(tile("shared", n)))),
    );
    assert!(ra.iter().chain(&rb).all(|r| r.status == 200), "none lost");
    assert_eq!(up.total(), 80);
    for p in [&a, &b] {
        let m = p.metrics().await;
        assert_eq!(
            metric(&m, "tile_proxy_protect_fallback_total", &["what=\"cap\""]),
            0.0,
            "{}",
            m.lines().filter(|l| l.contains("redis_ops")).collect::<Vec<_>>().join("\n")
        );
    }
    // One pod alone would allow 20/s each: 40/s together.
    assert_at_most(&arrivals(&up), 20, Duration::from_millis(60));
    assert!(started.elapsed() >= Duration::from_millis(3_900));
}

#[actix_rt::test]
async fn a_spent_budget_refuses_misses_until_the_hour_ends_and_hits_still_serve() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.admin_token = Some(ADMIN.into());
        policy(f, "b", |p| {
            p.budget_hour = Some(5);
            p.ttl = Some(dur("1m"));
            p.stale_if_error = Some(dur("1h"));
        });
    })
    .await;
    to_next_hour(&p);
    let mut answers = Vec::new();
    for n in 0..10 {
        answers.push(p.get(&tile("b", n)).await);
    }
    assert!(answers[..5].iter().all(|r| r.status == 200 && r.x_cache() == "MISS"));
    for r in &answers[5..] {
        assert_eq!(r.status, 429);
        let body = r.json();
        assert_eq!((body["error"].as_str(), body["window"].as_str()), (Some("budget_exhausted"), Some("hour")));
        assert_eq!(r.header("retry-after"), Some("3540"), "to the end of the hour");
        assert_eq!(body["retry_after_seconds"], 3540);
    }
    assert_eq!(up.total(), 5, "a spent budget costs nothing upstream");
    for n in 0..5 {
        let r = p.get(&tile("b", n)).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"), "hits still serve");
    }
    assert_eq!(p.get(&tile("other", 77)).await.status, 200, "another index has its own budget");

    // Expired copies stand in (stale-if-error) while the budget is spent.
    p.clock.advance_secs(120);
    let stale = p.get(&tile("b", 0)).await;
    assert_eq!((stale.status.as_u16(), stale.x_cache()), (200, "STALE"));
    assert_eq!(stale.header("x-cache-reason"), Some("budget_exhausted"));
    assert_eq!(up.total(), 6);

    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_budget_used", &["index=\"b\"", "window=\"hour\""]), 5.0);
    assert_eq!(metric(&m, "tile_proxy_budget_limit", &["index=\"b\"", "window=\"hour\""]), 5.0);
    assert_eq!(metric(&m, "tile_proxy_budget_remaining", &["index=\"b\"", "window=\"hour\""]), 0.0);
    assert_eq!(metric(&m, "tile_proxy_budget_exhausted_total", &["index=\"b\""]), 6.0);
    let stats = admin_get(&p, "/admin/stats", Some(ADMIN)).await.json();
    let b = &stats["indices"]["b"];
    assert_eq!(b["budget"]["hour"]["used"], 5);
    assert_eq!(b["budget"]["hour"]["left"], 0);
    assert_eq!((b["misses"].as_u64(), b["hits"].as_u64(), b["stale"].as_u64()), (Some(5), Some(5), Some(1)));
    assert_eq!(b["upstream_calls"], 5);
    assert_eq!(stats["scope"], "pod");

    // A new hour, a new budget.
    to_next_hour(&p);
    assert_eq!(p.get(&tile("b", 50)).await.status, 200);
    assert_eq!(up.total(), 7);
}

#[actix_rt::test]
async fn pods_share_one_budget_through_redis_and_an_outage_does_not_refill_it() {
    let mut redis = RedisServer::start();
    let up = upstream(2_000);
    let cfg = |f: &mut FileConfig| {
        redis.share(f);
        policy(f, "b", |p| p.budget_hour = Some(5));
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    to_next_hour(&a);
    to_next_hour(&b);
    let mut statuses = Vec::new();
    for n in 0..3 {
        statuses.push(a.get(&tile("b", n)).await.status.as_u16());
    }
    for n in 3..6 {
        statuses.push(b.get(&tile("b", n)).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "one budget for the fleet");
    assert_eq!(up.total(), 5);
    assert!(redis.dump().iter().any(|(k, v)| k.contains(":budget:{b}:h:") && v == b"5"));

    redis.kill();
    // B counted 5 when Redis last answered: it goes on from there, not from 0.
    let r = b.get(&tile("b", 10)).await;
    assert_eq!(r.status, 429);
    assert_eq!(up.total(), 5);
    assert!(metric(&b.metrics().await, "tile_proxy_protect_fallback_total", &["what=\"budget\""]) >= 1.0);
}

#[actix_rt::test]
async fn one_client_over_its_burst_gets_429_and_others_are_unaffected() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| {
        f.trusted_proxies = vec!["127.0.0.1".into()];
        f.rate_limit_exempt = vec!["10.0.0.0/8".into()];
        policy(f, "lim", |p| {
            p.rate_limit = Some(0.01);
            p.rate_burst = Some(5);
        });
    })
    .await;
    let path = tile("lim", 1);
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = p.get_with(&path, &from("192.0.2.1")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("5"));
        remaining.push(r.header("ratelimit-remaining").unwrap().to_string());
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let refused = p.get_with(&path, &from("192.0.2.1")).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "too_many_requests");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((99..=100).contains(&retry), "one token per 100 s: Retry-After {retry}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("ratelimit-policy"), Some("5;w=500"), "5 requests per 500 s window");
    assert_eq!(p.get_with(&path, &from("192.0.2.2")).await.status, 200, "another client");
    assert_eq!(p.get_with(&tile("free", 1), &from("192.0.2.1")).await.status, 200, "an index without limits");
    for _ in 0..10 {
        let r = p.get_with(&path, &from("10.1.2.3")).await;
        assert_eq!(r.status, 200, "exempt");
        assert_eq!(r.header("ratelimit-limit"), None);
    }
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_rate_limited_total", &["index=\"lim\""]), 1.0);
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"lim\"", "cache=\"rate_limited\""]), 1.0);
}

#[actix_rt::test]
async fn two_proxies_share_client_limits_through_redis_and_fall_back_to_local_ones() {
    let mut redis = RedisServer::start();
    let up = upstream(2_000);
    let cfg = |f: &mut FileConfig| {
        redis.share(f);
        f.trusted_proxies = vec!["127.0.0.1".into()];
        policy(f, "lim", |p| {
            p.rate_limit = Some(0.01);
            p.rate_burst = Some(5);
        });
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    let path = tile("lim", 1);
    let me = [("X-Forwarded-For", "198.51.100.7")];
    let mut statuses = Vec::new();
    for p in [&a, &b, &a, &b, &a, &b] {
        statuses.push(p.get_with(&path, &me).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "one bucket across pods");

    redis.kill();
    // Local buckets now: a new client gets its burst on each pod, then 429; never a 5xx.
    let other = [("X-Forwarded-For", "198.51.100.8")];
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(a.get_with(&path, &other).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    assert!(metric(&a.metrics().await, "tile_proxy_protect_fallback_total", &["what=\"client\""]) >= 1.0);
}

#[actix_rt::test]
async fn admin_stats_wants_the_token_and_adds_up_the_fleet() {
    let up = upstream(2_000);
    let alone = Proxy::start(&up, |_| {}).await;
    assert_eq!(alone.get("/admin/stats").await.status, 404, "no token configured: no admin API");

    let redis = RedisServer::start();
    let cfg = |f: &mut FileConfig| {
        redis.share(f);
        f.admin_token = Some(ADMIN.into());
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    assert_eq!(admin_get(&a, "/admin/stats", None).await.status, 401);
    assert_eq!(admin_get(&a, "/admin/stats", Some("wrong-token-0123456789")).await.status, 401);
    for n in 0..3 {
        assert_eq!(a.get(&tile("s", n)).await.status, 200);
    }
    for n in 0..3 {
        // Redis hits on B (A stored them), then memory hits.
        assert_eq!(b.get(&tile("s", n)).await.x_cache(), "HIT");
        assert_eq!(b.get(&tile("s", n)).await.x_cache(), "HIT");
    }
    // Each pod publishes its counts every couple of seconds.
    let mut doc = serde_json::Value::Null;
    eventually("the fleet's stats add up B's hits", async || {
        doc = admin_get(&a, "/admin/stats", Some(ADMIN)).await.json();
        doc["indices"]["s"]["hits"] == 6
    })
    .await;
    assert_eq!(doc["scope"], "fleet");
    assert_eq!(doc["pods"], 2);
    let s = &doc["indices"]["s"];
    assert_eq!((s["hits"].as_u64(), s["misses"].as_u64(), s["upstream_calls"].as_u64()), (Some(6), Some(3), Some(3)));
    assert_eq!(s["hit_ratio"], 0.6667);
    assert_eq!(s["bytes"], 9 * 2_000);

    // The CLI prints the same as a table.
    let mut stats = Command::new(BIN);
    stats.args(["stats", "--url", &a.base]).env("TILE_PROXY_ADMIN_TOKEN", ADMIN);
    let out = run(stats).await;
    let table = &out.stdout;
    assert!(out.status.success(), "{table} {}", out.stderr);
    assert!(table.starts_with("scope: fleet (2 pods)"), "{table}");
    let row: Vec<&str> =
        table.lines().find(|l| l.starts_with("s ")).expect("a row for index s").split_whitespace().collect();
    assert_eq!(&row[..6], ["s", "6", "0", "3", "66.7", "3"], "{table}");
    let mut stats = Command::new(BIN);
    stats.args(["stats", "--url", &a.base]).env_remove("TILE_PROXY_ADMIN_TOKEN");
    let refused = run(stats).await;
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("401"));
}

#[actix_rt::test]
async fn the_default_client_limit_lets_a_screen_of_tiles_through_and_stops_a_scraper() {
    // Thousands of requests as fast as they go: not beside the tests that time arrivals.
    let _timed = TIMED.lock().await;
    let up = upstream(200);
    // The shipped default (tests' config turns it off).
    let p = Proxy::start(&up, |f| f.defaults.rate_limit = None).await;
    let path = "/v3/base/mc/3/1/1/png?indice=dflt";
    let first = p.get(path).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-limit"), Some("1000"));
    // Five full 4K screens of 256 px tiles with an overlay, at once: never refused (the bucket
    // holds 1000 and only fills up while they are sent).
    let page = join_all((0..999).map(|_| p.get(path))).await;
    assert!(page.iter().all(|r| r.status == 200), "a map page was refused");
    // A scraper asking as fast as the proxy answers: refused once it outruns 100 a second.
    let mut asked = 0;
    let refused = loop {
        let batch = join_all((0..100).map(|_| p.get(path))).await;
        asked += batch.len();
        if let Some(r) = batch.into_iter().find(|r| r.status == 429) {
            break r;
        }
        assert!(asked < 50_000, "{asked} requests and no 429");
    };
    assert_eq!(refused.json()["error"], "too_many_requests");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.header("ratelimit-policy"), Some("1000;w=10"));
}

#[actix_rt::test]
async fn behind_an_untrusted_proxy_the_default_limit_is_not_applied_but_a_configured_one_is() {
    // Thousands of requests as fast as they go: not beside the tests that time arrivals.
    let _timed = TIMED.lock().await;
    let up = upstream(200);
    let xff = [("X-Forwarded-For", "198.51.100.7")];
    let path = "/v3/base/mc/3/1/2/png?indice=fwd";
    // Forwarded by a peer not in trusted_proxies: the shipped limit is not consulted.
    let p = Proxy::start(&up, |f| f.defaults.rate_limit = None).await;
    let r = p.get_with(path, &xff).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-limit"), None, "the default limit is skipped");
    let many = join_all((0..1_100).map(|_| p.get_with(path, &xff))).await;
    assert!(many.iter().all(|r| r.status == 200 && r.header("ratelimit-limit").is_none()));
    // The same peer without the header is a client of its own, limited.
    assert_eq!(p.get(path).await.header("ratelimit-limit"), Some("1000"));
    p.stop().await;
    // Trusted: each forwarded client has its own default bucket.
    let p = Proxy::start(&up, |f| {
        f.defaults.rate_limit = None;
        f.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    assert_eq!(p.get_with(path, &xff).await.header("ratelimit-limit"), Some("1000"));
    p.stop().await;
    // An operator's limit applies whatever forwards the request.
    let p = Proxy::start(&up, |f| {
        f.defaults.rate_limit = Some(0.01);
        f.defaults.rate_burst = Some(2);
    })
    .await;
    let got: Vec<u16> =
        join_all((0..3).map(|_| p.get_with(path, &xff))).await.iter().map(|r| r.status.as_u16()).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 429], "{got:?}");
    p.stop().await;
}

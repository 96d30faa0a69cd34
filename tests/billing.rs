//! The HERE bill (`[billing]`, `/admin/stats` `bill`, `tile_proxy_bill_month_*`): billable
//! transactions and cache hits per index and API per UTC month survive a restart (the cache
//! folder's `bill.json`, or Redis), add up across pods sharing Redis, lose nothing while Redis
//! is away, roll over at midnight UTC on the injected clock, and bill a 304 or not as configured.

mod common;

use std::process::Command;

use common::process::{run, BIN};
use common::redis_server::RedisServer;
use common::*;
use tile_proxy::base::clock::Clock;
use tile_proxy::config::FileConfig;
use tile_proxy::domain::bill::Month;

const ADMIN: &str = "admin-token-0123456789abcdef";

/// Admin token, prices (raster 2.0, vector 4.0 per 1,000; 1 raster transaction free a month),
/// no early refresh (a test's hits stay hits).
fn billed(f: &mut FileConfig) {
    f.admin_token = Some(ADMIN.into());
    f.billing.raster.price_per_1000 = 2.0;
    f.billing.raster.free_per_month = 1;
    f.billing.vector.price_per_1000 = 4.0;
    f.defaults.early_refresh_beta = Some(0.0);
}

/// `/admin/stats`'s `bill` (`query`: e.g. `?month=2026-11`).
async fn bill(p: &Proxy, query: &str) -> serde_json::Value {
    let r = p.get_with(&format!("/admin/stats{query}"), &[("Authorization", &format!("Bearer {ADMIN}"))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["bill"].clone()
}

/// (transactions, hits) of one index and API in a bill.
fn usage(bill: &serde_json::Value, index: &str, api: &str) -> (u64, u64) {
    let line = &bill["indices"][index]["apis"][api];
    (line["transactions"].as_u64().unwrap_or(0), line["hits"].as_u64().unwrap_or(0))
}

#[actix_rt::test]
async fn the_bill_survives_a_restart_on_the_same_cache_folder() {
    let up = upstream(3_000);
    let p = Proxy::start(&up, billed).await;
    for x in 0..3 {
        let url = format!("/v3/base/mc/6/{x}/1/png?indice=restart");
        assert_eq!(p.get(&url).await.x_cache(), "MISS");
        assert_eq!(p.get(&url).await.x_cache(), "HIT");
    }
    assert_eq!(p.get("/v2/vectortiles/base/mc/6/1/1/omv?indice=restart").await.status, 200);
    // Errors are not billed: three attempts answered 503.
    up.fail_always("/v3/base/mc/6/9/9/png", Fault::Status { code: 503, retry_after: None });
    assert!(p.get("/v3/base/mc/6/9/9/png?indice=restart").await.status.is_server_error());
    assert_eq!(up.count("/v3/base/mc/6/9/9/png"), 3, "the upstream was asked three times");

    let b = bill(&p, "").await;
    assert_eq!(b["month"], Month::of_ms(p.clock.now_ms()).to_string());
    assert_eq!(b["store"], "file", "{b}");
    assert_eq!(usage(&b, "restart", "raster"), (3, 3), "{b}");
    assert_eq!(usage(&b, "restart", "vector"), (1, 0), "{b}");
    let idx = &b["indices"]["restart"];
    // 3 raster at 2.0 + 1 vector at 4.0 per 1,000; 3 raster hits saved 3 x 2.0 / 1,000.
    assert_eq!((idx["cost"].as_f64(), idx["saved"].as_f64()), (Some(0.01), Some(0.006)), "{b}");
    // The account: one raster transaction free.
    assert_eq!(b["apis"]["raster"]["cost"].as_f64(), Some(0.004), "{b}");
    assert_eq!(b["totals"]["cost"].as_f64(), Some(0.008), "{b}");

    let dir = p.stop().await;
    assert!(dir.path().join("bill.json").exists(), "the counts are in the cache folder");
    let p = Proxy::start_in(&up, dir, billed).await;
    let b = bill(&p, "").await;
    assert_eq!(usage(&b, "restart", "raster"), (3, 3), "kept across the restart: {b}");
    assert_eq!(usage(&b, "restart", "vector"), (1, 0), "{b}");
    assert_eq!(p.get("/v3/base/mc/6/7/1/png?indice=restart").await.x_cache(), "MISS");
    assert_eq!(usage(&bill(&p, "").await, "restart", "raster"), (4, 3), "and counted on from there");
    // The gauges follow within a tick.
    eventually("the gauges show the month", async || {
        let m = p.metrics().await;
        metric(&m, "tile_proxy_bill_month_transactions", &["index=\"restart\"", "api=\"raster\""]) == 4.0
            && metric(&m, "tile_proxy_bill_month_hits", &["index=\"restart\"", "api=\"raster\""]) == 3.0
    })
    .await;
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_bill_month_cost", &["index=\"restart\"", "api=\"raster\""]), 0.008);
    assert_eq!(metric(&m, "tile_proxy_bill_month_saved", &["index=\"restart\"", "api=\"raster\""]), 0.006);
    assert_eq!(metric(&m, "tile_proxy_bill_month_account_cost", &["api=\"raster\""]), 0.006, "one free");
    p.stop().await;
}

#[actix_rt::test]
async fn a_304_is_billed_unless_bill_not_modified_is_false() {
    let up = upstream(3_000);
    for (bill_304, billed_count) in [(true, 2), (false, 1)] {
        let p = Proxy::start(&up, |f| {
            billed(f);
            f.defaults.ttl = Some(dur("300ms"));
            f.billing.bill_not_modified = bill_304;
        })
        .await;
        let url = format!("/v3/base/mc/7/{}/2/png?indice=reval", u8::from(bill_304));
        assert_eq!(p.get(&url).await.x_cache(), "MISS");
        p.clock.advance_ms(400);
        assert_eq!(p.get(&url).await.status, 200);
        let m = p.metrics().await;
        let not_modified = ["index=\"reval\"", "result=\"not_modified\""];
        assert_eq!(metric(&m, "tile_proxy_revalidations_total", &not_modified), 1.0, "HERE answered 304");
        let b = bill(&p, "").await;
        assert_eq!(b["bill_not_modified"], bill_304);
        assert_eq!(usage(&b, "reval", "raster"), (billed_count, 0), "bill_not_modified = {bill_304}: {b}");
        p.stop().await;
    }
}

#[actix_rt::test]
async fn the_month_rolls_over_at_midnight_utc() {
    let up = upstream(3_000);
    let p = Proxy::start(&up, billed).await;
    let this = Month::of_ms(p.clock.now_ms());
    // A minute before the next month.
    p.clock.advance_ms(this.next().start_ms() - 60_000 - p.clock.now_ms());
    assert_eq!(p.get("/v3/base/mc/5/1/1/png?indice=roll").await.x_cache(), "MISS");
    p.clock.advance_ms(120_000);
    assert_eq!(p.get("/v3/base/mc/5/2/2/png?indice=roll").await.x_cache(), "MISS");
    assert_eq!(p.get("/v3/base/mc/5/3/3/png?indice=roll").await.x_cache(), "MISS");

    let now = bill(&p, "").await;
    assert_eq!(now["month"], this.next().to_string());
    assert_eq!(usage(&now, "roll", "raster"), (2, 0), "{now}");
    let before = bill(&p, &format!("?month={this}")).await;
    assert_eq!(before["month"], this.to_string());
    assert_eq!(usage(&before, "roll", "raster"), (1, 0), "{before}");
    // Each month has its free transaction.
    assert_eq!(before["apis"]["raster"]["cost"].as_f64(), Some(0.0), "{before}");
    assert_eq!(now["apis"]["raster"]["cost"].as_f64(), Some(0.002), "{now}");

    let bad = p.get_with("/admin/stats?month=2026-13", &[("Authorization", &format!("Bearer {ADMIN}"))]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["field"], "month", "{}", bad.json());
    p.stop().await;
}

fn shared(redis: &RedisServer) -> impl Fn(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        billed(f);
        redis.share(f);
    }
}

#[actix_rt::test]
async fn two_pods_sharing_redis_add_up_and_the_bill_outlives_them() {
    let redis = RedisServer::start();
    let up = upstream(3_000);
    let a = Proxy::start(&up, shared(&redis)).await;
    let b = Proxy::start(&up, shared(&redis)).await;
    let tile = "/v3/base/mc/8/1/1/png?indice=fleet";
    assert_eq!(a.get(tile).await.x_cache(), "MISS");
    eventually("A's fill ended", async || a.state().flights.is_empty()).await;
    assert_eq!(b.get(tile).await.x_cache(), "HIT", "B found A's copy in Redis");
    assert_eq!(b.get("/v3/base/mc/8/2/2/png?indice=fleet").await.x_cache(), "MISS");
    assert_eq!(b.get("/v2/vectortiles/base/mc/8/2/2/omv?indice=fleet").await.x_cache(), "MISS");
    assert_eq!(a.get(tile).await.x_cache(), "HIT");

    // Every pod's bill is the fleet's once each has flushed (a tick).
    for p in [&a, &b] {
        eventually("the fleet's counts", async || {
            let bill = bill(p, "").await;
            bill["store"] == "redis"
                && usage(&bill, "fleet", "raster") == (2, 2)
                && usage(&bill, "fleet", "vector") == (1, 0)
        })
        .await;
        eventually("the fleet's gauges", async || {
            let m = p.metrics().await;
            metric(&m, "tile_proxy_bill_month_transactions", &["index=\"fleet\"", "api=\"raster\""]) == 2.0
        })
        .await;
    }
    let month = Month::of_ms(a.clock.now_ms()).to_string();
    let key = format!("tile-proxy:{{bill}}:{month}");
    assert_eq!(redis.cmd::<u64>(&["HGET", &key, "fleet|raster|tx"]), 2);
    assert_eq!(redis.cmd::<u64>(&["HGET", &key, "fleet|raster|hits"]), 2);
    let ttl = redis.cmd::<i64>(&["TTL", &key]);
    assert!(ttl > 300 * 86_400, "the month is kept for months: {ttl}");
    let days: Vec<String> = redis.cmd(&["KEYS", &format!("tile-proxy:{{bill}}:{month}-*")]);
    assert_eq!(days.len(), 1, "and the day: {days:?}");

    // Both pods go; a new one finds the month's bill.
    a.stop().await;
    b.stop().await;
    let c = Proxy::start(&up, shared(&redis)).await;
    let bill = bill(&c, "").await;
    assert_eq!(usage(&bill, "fleet", "raster"), (2, 2), "{bill}");
    assert_eq!(bill["indices"]["fleet"]["cost"].as_f64(), Some(0.008), "2 x 2.0 + 1 x 4.0 per 1,000: {bill}");

    // `tile-proxy stats` prints the bill as a second table; --month picks another month.
    let stats = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["stats", "--url", &c.base]).args(extra).env("TILE_PROXY_ADMIN_TOKEN", ADMIN);
        cmd
    };
    let out = run(stats(&[])).await;
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    let table = &out.stdout;
    assert!(table.contains(&format!("bill {month} (UTC; counts from redis, the fleet's)")), "{table}");
    let bill_part = table.split_once("\nbill ").map_or("", |(_, b)| b);
    let row = |name: &str, api: &str| -> Vec<String> {
        let line =
            bill_part.lines().find(|l| l.starts_with(name) && l.contains(api)).unwrap_or_else(|| panic!("{table}"));
        line.split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("fleet ", "raster"), ["fleet", "raster", "2", "2", "0.00", "0.00"], "{table}");
    assert_eq!(row("fleet ", "vector"), ["fleet", "vector", "1", "0", "0.00", "0.00"], "{table}");
    assert!(table.lines().any(|l| l.starts_with("(total)")), "{table}");
    let before = Month::of_day(Month::of_ms(c.clock.now_ms()).first_day() - 1).to_string();
    let out = run(stats(&["--month", &before])).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains(&format!("bill {before} ")), "{}", out.stdout);
    let bill_part = out.stdout.split_once("\nbill ").map_or("", |(_, b)| b);
    assert!(bill_part.contains("(total)"), "{}", out.stdout);
    assert!(!bill_part.lines().any(|l| l.starts_with("fleet ")), "last month had none: {}", out.stdout);
    let out = run(stats(&["--month", "2026-13"])).await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("--month 2026-13"), "{}", out.stderr);
    c.stop().await;
}

#[actix_rt::test]
async fn counts_made_while_redis_is_away_reach_it_when_it_is_back() {
    let mut redis = RedisServer::start();
    let up = upstream(3_000);
    let p = Proxy::start(&up, shared(&redis)).await;
    redis.kill();
    for x in 0..3 {
        assert_eq!(p.get(&format!("/v3/base/mc/9/{x}/4/png?indice=away")).await.status, 200);
    }
    // Redis is away: the bill says so rather than showing a wrong count.
    let away = bill(&p, "").await;
    assert!(away["error"].is_string(), "{away}");

    redis.restart();
    let key = format!("tile-proxy:{{bill}}:{}", Month::of_ms(p.clock.now_ms()));
    let mut stored = 0;
    for _ in 0..20 {
        // A breaker cool-down on the proxy's clock, then a tick to flush.
        p.clock.advance_secs(6);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            stored = redis.cmd::<Option<u64>>(&["HGET", &key, "away|raster|tx"]).unwrap_or(0);
            if stored > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if stored > 0 {
            break;
        }
    }
    assert_eq!(stored, 3, "the counts kept while Redis was away, once");
    assert_eq!(usage(&bill(&p, "").await, "away", "raster"), (3, 0));
    p.stop().await;
}

/// Whether `text` has a sample of `name` with every one of `labels` (`index="a"`) at 0.
fn zero_sample(text: &str, name: &str, labels: &[&str]) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{'))
            && labels.iter().all(|lab| l.contains(lab))
            && l.ends_with(" 0")
    })
}

#[actix_rt::test]
async fn the_bill_gauges_exist_at_zero_for_the_default_and_configured_indices() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| {
        billed(f);
        f.index.insert("named".into(), Default::default());
    })
    .await;
    let apis = ["raster", "vector", "traffic_raster", "traffic_vector"];
    let names = ["transactions", "hits", "cost", "saved"].map(|n| format!("tile_proxy_bill_month_{n}"));
    eventually("the first tick set the gauges", async || {
        let m = p.metrics().await;
        ["default", "named"].iter().all(|index| {
            apis.iter().all(|api| {
                let labels = [format!("index=\"{index}\""), format!("api=\"{api}\"")];
                let labels = [labels[0].as_str(), labels[1].as_str()];
                names.iter().all(|name| zero_sample(&m, name, &labels))
            })
        })
    })
    .await;
    let m = p.metrics().await;
    for api in apis {
        let label = format!("api=\"{api}\"");
        assert!(zero_sample(&m, "tile_proxy_bill_month_account_cost", &[&label]), "{api}");
    }
    assert_eq!(up.total(), 0);
    p.stop().await;
}

//! Many pods as one cache over a real Redis Cluster (`redis_mode = "cluster"`): 3 primaries with
//! a replica each, started per test on free ports and killed on drop
//! (`common::redis_cluster`). What works on one node works the same here: a tile from one pod
//! is a Redis hit on another whichever slot it lands in; one cold tile costs one upstream call
//! across pods (the lease scripts' keys share a slot, the `filled` notifications reach every
//! pod); purges reach every pod; budgets, client buckets, the fleet's stats and the bill are
//! shared; and a primary killed under load fails no request, the replica takes over and
//! sharing resumes without restarting a pod.
//!
//! And over a primary, its replica and 3 Sentinels (`redis_mode = "sentinel"`,
//! `common::redis_sentinel`): the same sharing, and a primary SIGKILLed under load fails no
//! request; the pods follow the promoted replica, with no restart.

mod common;

use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use common::redis_sentinel::RedisSentinel;
use common::*;
use futures_util::future::join_all;
use tile_proxy::base::clock::Clock;
use tile_proxy::config::FileConfig;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn shared(cluster: &RedisCluster) -> impl Fn(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        cluster.share(f);
        f.admin_token = Some(ADMIN.into());
    }
}

/// [`shared`] with short deadlines, as in production: a call to a dead primary must not hold a
/// request.
fn short_deadlines(cluster: &RedisCluster) -> impl Fn(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        shared(cluster)(f);
        f.redis.timeout = dur("300ms");
        f.redis.write_timeout = dur("500ms");
        f.redis.connect_timeout = dur("300ms");
    }
}

/// The entry key of `path` in Redis, as pod `p` names it.
fn entry_key(p: &Proxy, path: &str) -> String {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let tile = tile_proxy::domain::routes::parse(route, query, Default::default()).unwrap().unwrap();
    let redis = p.state().redis.as_ref().expect("redis on");
    redis.keys.entry(&redis.keys.tag(&p.state().upstream.cache_key(&tile)))
}

#[actix_rt::test]
async fn cluster_a_tile_from_pod_a_is_a_redis_hit_on_pod_b_whichever_slot_it_lands_in() {
    let cluster = RedisCluster::start();
    let up = upstream(6_000);
    let a = Proxy::start(&up, shared(&cluster)).await;
    let b = Proxy::start(&up, shared(&cluster)).await;
    // One tile on each primary: the first candidates whose slots land on each.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let mut chosen: Vec<(u16, String)> = Vec::new();
    for x in 0..200 {
        let path = format!("/v3/base/mc/13/{x}/77/png");
        let owner = cluster.primary_of(&entry_key(&a, &path));
        if !chosen.iter().any(|(o, _)| *o == owner) {
            chosen.push((owner, path));
        }
    }
    assert_eq!(chosen.len(), 3, "a tile for each primary among 200 candidates");
    for (owner, path) in &chosen {
        let first = a.get(path).await;
        assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"), "{path}");
        eventually("A's fill ended", async || a.state().flights.is_empty()).await;
        let key = entry_key(&a, path);
        assert!(cluster.keys_on(*owner).contains(&key), "{path}: stored on the primary of its slot ({owner})");
        let on_b = b.get(path).await;
        assert_eq!((on_b.x_cache(), on_b.header("x-cache-tier")), ("HIT", Some("redis")), "{path}");
        assert_eq!(on_b.bytes(), first.bytes());
        assert_eq!(on_b.header("etag"), first.header("etag"));
    }
    assert_eq!(up.total(), 3, "one upstream call per tile for both pods");
    let m = b.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_cache_hits_total", &["tier=\"redis\""]), 3.0);
    let health = b.get("/health").await.json();
    assert_eq!(health["status"], "ok", "{health}");
    let tier = health["cache"].as_array().unwrap().iter().find(|t| t["tier"] == "redis").cloned().unwrap();
    assert_eq!((tier["mode"].as_str(), tier["breaker"].as_str()), (Some("cluster"), Some("closed")), "{tier}");
    assert_eq!(tier["nodes"].as_array().map(Vec::len), Some(6), "{tier}");
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn cluster_sixty_cold_requests_over_three_pods_cost_one_upstream_call() {
    let cluster = RedisCluster::start();
    let up = upstream(30_000);
    let path = "/v3/base/mc/9/260/171/png";
    // As in tests/redis.rs: a fetch of 600 ms ends between the waiting pods' polls, so the
    // holder's `filled` message (a PUBLISH on the primary of the tile's slot, broadcast to every
    // node) reaches them first.
    up.fail_always(path, Fault::Delay(Duration::from_millis(600)));
    let pods = [
        Proxy::start(&up, shared(&cluster)).await,
        Proxy::start(&up, shared(&cluster)).await,
        Proxy::start(&up, shared(&cluster)).await,
    ];
    eventually("every pod subscribed to tile-proxy:filled", async || cluster.subscribers("tile-proxy:filled") == 3)
        .await;
    let answers = join_all((0..60).map(|i| pods[i % 3].get(path))).await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.bytes(), answers[0].bytes(), "request {i}");
    }
    assert_eq!(up.count(path), 1, "one upstream call across three pods");
    let mut m = String::new();
    for p in &pods {
        m.push_str(&p.metrics().await);
    }
    assert_eq!(metric(&m, "tile_proxy_redis_lease_total", &["outcome=\"acquired\""]), 1.0, "one pod led");
    assert_eq!(metric(&m, "tile_proxy_redis_lease_total", &["outcome=\"waited_filled\""]), 2.0);
    assert!(
        metric(&m, "tile_proxy_redis_lease_wakeups_total", &["by=\"notification\""]) >= 2.0,
        "the waiting pods were told by pub/sub: {}",
        m.lines().filter(|l| l.contains("wakeups")).collect::<Vec<_>>().join("; ")
    );
    for p in pods {
        p.stop().await;
    }
}

#[actix_rt::test]
async fn cluster_a_purge_on_one_pod_reaches_every_pod() {
    let cluster = RedisCluster::start();
    let up = upstream(3_000);
    let a = Proxy::start(&up, shared(&cluster)).await;
    let b = Proxy::start(&up, shared(&cluster)).await;
    eventually("both pods subscribed to tile-proxy:purge", async || cluster.subscribers("tile-proxy:purge") == 2).await;
    let (one, other) = ("/v3/base/mc/12/2200/1343/png", "/v3/base/mc/12/2201/1343/png");
    for path in [one, other] {
        assert_eq!(a.get(path).await.x_cache(), "MISS");
        eventually("A's fill ended", async || a.state().flights.is_empty()).await;
        assert_eq!(b.get(path).await.x_cache(), "HIT", "{path}: shared");
    }
    a.clock.advance_secs(1);
    b.clock.advance_secs(1);
    let r = a
        .client
        .post(a.url("/admin/purge"))
        .insert_header(("Authorization", format!("Bearer {ADMIN}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(format!(r#"{{"url": "{one}"}}"#))
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    eventually("the rule reached B", async || b.state().purges.len() == 1).await;
    let rules: std::collections::HashMap<String, String> =
        cluster.cmd_on(cluster.primary_of("tile-proxy:purges"), &["HGETALL", "tile-proxy:purges"]).unwrap();
    assert_eq!(rules.len(), 1, "the rule is kept in the cluster");
    b.clock.advance_secs(1);
    assert_eq!(b.get(one).await.x_cache(), "MISS", "purged on B");
    assert_eq!(b.get(other).await.x_cache(), "HIT", "only that tile");
    // A pod started now reads the rule from the cluster before serving.
    let c = Proxy::start(&up, shared(&cluster)).await;
    assert_eq!(c.state().purges.len(), 1, "rules loaded at start");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

async fn admin(p: &Proxy) -> serde_json::Value {
    p.get_with("/admin/stats", &[("Authorization", &format!("Bearer {ADMIN}"))]).await.json()
}

#[actix_rt::test]
async fn cluster_budgets_client_buckets_stats_and_the_bill_are_shared() {
    let cluster = RedisCluster::start();
    let up = upstream(2_000);
    let cfg = |f: &mut FileConfig| {
        shared(&cluster)(f);
        f.trusted_proxies = vec!["127.0.0.1".into()];
        let b = f.index.entry("b".into()).or_default();
        b.budget_hour = Some(5);
        let lim = f.index.entry("lim".into()).or_default();
        lim.rate_limit = Some(0.01);
        lim.rate_burst = Some(5);
        f.upstream_rps = Some(50.0);
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    for p in [&a, &b] {
        let now = p.clock.now_ms();
        p.clock.advance_ms((now / 3_600_000 + 1) * 3_600_000 + 60_000 - now);
    }
    let tile = |index: &str, n: u32| format!("/v3/base/mc/14/{}/5000/png?indice={index}", 8000 + n);
    // One budget for the fleet: 5 an hour.
    let mut statuses = Vec::new();
    for n in 0..6 {
        let p = if n < 3 { &a } else { &b };
        statuses.push(p.get(&tile("b", n)).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "one budget for the fleet");
    // One client bucket across pods: a burst of 5.
    let me = [("X-Forwarded-For", "198.51.100.7")];
    let mut statuses = Vec::new();
    for p in [&a, &b, &a, &b, &a, &b] {
        statuses.push(p.get_with(&tile("lim", 1), &me).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "one bucket across pods");
    for p in [&a, &b] {
        let m = p.metrics().await;
        for what in ["budget", "client", "cap"] {
            assert_eq!(
                metric(&m, "tile_proxy_protect_fallback_total", &[&format!("what=\"{what}\"")]),
                0.0,
                "{what} answered by the cluster"
            );
        }
    }
    // The fleet's stats and bill.
    eventually("the fleet's stats add up both pods", async || {
        let doc = admin(&a).await;
        doc["scope"] == "fleet" && doc["pods"] == 2 && doc["indices"]["b"]["upstream_calls"] == 5
    })
    .await;
    eventually("the fleet's bill in the cluster", async || {
        let bill = admin(&b).await["bill"].clone();
        bill["store"] == "redis" && bill["indices"]["b"]["apis"]["raster"]["transactions"] == 5
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn cluster_primary_killed_under_load_fails_no_request_and_sharing_resumes_after_the_replica_takes_over() {
    let mut cluster = RedisCluster::start();
    let up = upstream(8_000);
    let cfg = |f: &mut FileConfig| short_deadlines(&cluster)(f);
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    // The primary that holds the first tile's slot dies mid-run; the recovery tiles are tiles
    // of its slots.
    let victim = cluster.primary_of(&entry_key(&a, "/v3/base/mc/10/100/0/png"));
    let victims_tiles: Vec<String> = (0..600)
        .map(|x| format!("/v3/base/mc/11/{x}/7/png"))
        .filter(|p| cluster.primary_of(&entry_key(&a, p)) == victim)
        .collect();
    assert!(victims_tiles.len() > 100, "{}", victims_tiles.len());
    let (mut errors, mut served) = (0, 0);
    let mut killed_at = None;
    for round in 0..40u32 {
        if round == 15 {
            cluster.kill(victim);
            killed_at = Some(Instant::now());
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
    assert_eq!((errors, served), (0, 400), "a primary going away fails no request");
    let killed_at = killed_at.unwrap();

    // Recovery with no pod restarted: the replica is promoted (after `cluster-node-timeout`),
    // the connections follow the new slot map, the breaker's probe closes it (each cool-down
    // passed on the injected clocks). No signal tells a test the cluster failed over: poll.
    let mut shared_again = None;
    for path in &victims_tiles {
        a.clock.advance_secs(6);
        b.clock.advance_secs(6);
        assert_eq!(a.get(path).await.status, 200);
        eventually("A's fill ended", async || a.state().flights.is_empty()).await;
        let r = b.get(path).await;
        assert_eq!(r.status, 200);
        if r.header("x-cache-tier") == Some("redis") {
            shared_again = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = cluster.primary_of(&entry_key(&a, &victims_tiles[0]));
    assert_ne!(owner, victim, "the replica serves the dead primary's slots");
    let gap = shared_again.expect("after the failover a tile of the dead primary's slots is shared again");
    println!("cluster: seconds without sharing on the dead primary's slots: {:.1}", gap.as_secs_f64());
    // While the cluster failed over it answered CLUSTERDOWN for every slot: slot groups of the
    // live primaries opened too. Each closes at its next call (its probe): traffic over many
    // slots brings /health back to ok.
    let mut health = a.get("/health").await.json();
    for x in 0..400 {
        if health["status"] == "ok" {
            break;
        }
        assert_eq!(a.get(&format!("/v3/base/mc/14/{x}/3/png")).await.status, 200);
        health = a.get("/health").await.json();
    }
    assert_eq!(health["status"], "ok", "{health}");
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn cluster_a_dead_primary_opens_the_breakers_of_its_slots_only_and_the_other_slots_stay_shared() {
    let mut cluster = RedisCluster::start();
    cluster.hold_failover();
    let up = upstream(8_000);
    let cfg = |f: &mut FileConfig| {
        short_deadlines(&cluster)(f);
        f.redis.breaker_failures = 2;
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    let victim = cluster.primary_of(&entry_key(&a, "/v3/base/mc/10/100/0/png"));
    // The slot groups (of tile_proxy::store::redis::SLOT_GROUPS) the victim's slots fall in: a
    // tile of a live primary in one of them (at a boundary of the victim's ranges) shares its
    // breaker, and is left out.
    let per_group = 16_384 / tile_proxy::store::redis::SLOT_GROUPS as u16;
    let victim_ranges = cluster.topology().into_iter().find(|n| n.port == victim).expect("the victim").slots;
    let dead_groups: Vec<u16> = victim_ranges.iter().flat_map(|(lo, hi)| lo / per_group..=hi / per_group).collect();
    // Tiles of every primary, interleaved: each dead-slot tile's calls fail (and open its slot
    // group's breaker, which stays open: the injected clocks do not move), the others must not.
    #[derive(PartialEq)]
    enum Owner {
        Victim,
        Boundary,
        Live,
    }
    let paths: Vec<(String, Owner)> = (0..60)
        .map(|x| format!("/v3/base/mc/12/{x}/9/png"))
        .map(|p| {
            let key = entry_key(&a, &p);
            let owner = if cluster.primary_of(&key) == victim {
                Owner::Victim
            } else if dead_groups.contains(&(cluster.keyslot(&key) / per_group)) {
                Owner::Boundary
            } else {
                Owner::Live
            };
            (p, owner)
        })
        .collect();
    cluster.kill(victim);
    let count = |o: Owner| paths.iter().filter(|(_, p)| *p == o).count();
    let (dead, live) = (count(Owner::Victim), count(Owner::Live));
    assert!((5..=40).contains(&dead) && live >= 15, "tiles of the dead primary among 60: {dead}, live {live}");
    let mut shared_tiles = 0;
    for (path, owner) in &paths {
        assert_eq!(a.get(path).await.status, 200);
        eventually("A's fill ended", async || a.state().flights.is_empty()).await;
        let r = b.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let tier = r.header("x-cache-tier").map(str::to_string);
        match owner {
            Owner::Victim => assert_ne!(tier.as_deref(), Some("redis"), "{path}: its slot's primary is dead"),
            Owner::Boundary => {}
            Owner::Live => {
                let why = || {
                    format!(
                        "{path}: a live primary's tile is shared\nA: {}\nB: {}",
                        a.state().cache.status(),
                        b.state().cache.status()
                    )
                };
                assert_eq!(tier.as_deref(), Some("redis"), "{}", why());
                shared_tiles += 1;
            }
        }
    }
    assert_eq!(shared_tiles, live);
    let health = b.get("/health").await.json();
    let groups = &health["cache"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tier"] == "redis").cloned())
        .expect("the redis tier in /health");
    let open = groups["breakers_not_closed"].as_u64().unwrap();
    assert_eq!(groups["breakers"], 1 + tile_proxy::store::redis::SLOT_GROUPS as u64);
    // The dead primary's calls fail by refused connections (its groups open) or by MOVED from
    // a live node pointing at it (no deadline spent: not counted); never every group.
    assert!(open <= 12, "at most the dead primary's third of 32 slot groups open: {open}\n{health}");
    a.stop().await;
    b.stop().await;
}

fn sentinel_shared(s: &RedisSentinel) -> impl Fn(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        s.share(f);
        f.admin_token = Some(ADMIN.into());
    }
}

#[actix_rt::test]
async fn sentinel_pods_share_tiles_and_one_cold_tile_costs_one_upstream_call() {
    let sentinel = RedisSentinel::start();
    let up = upstream(20_000);
    let path = "/v3/base/mc/9/262/171/png";
    up.fail_always(path, Fault::Delay(Duration::from_millis(600)));
    let pods = [
        Proxy::start(&up, sentinel_shared(&sentinel)).await,
        Proxy::start(&up, sentinel_shared(&sentinel)).await,
        Proxy::start(&up, sentinel_shared(&sentinel)).await,
    ];
    let primary = sentinel.primary();
    eventually("every pod subscribed on the primary", async || {
        sentinel.cmd_on::<(String, u64)>(primary, &["PUBSUB", "NUMSUB", "tile-proxy:filled"]).is_ok_and(|(_, n)| n == 3)
    })
    .await;
    let answers = join_all((0..60).map(|i| pods[i % 3].get(path))).await;
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.bytes(), answers[0].bytes(), "request {i}");
    }
    assert_eq!(up.count(path), 1, "one upstream call across three pods");
    let mut m = String::new();
    for p in &pods {
        m.push_str(&p.metrics().await);
    }
    assert_eq!(metric(&m, "tile_proxy_redis_lease_total", &["outcome=\"acquired\""]), 1.0, "one pod led");
    assert!(metric(&m, "tile_proxy_redis_lease_wakeups_total", &["by=\"notification\""]) >= 2.0);
    // A tile from one pod is a Redis hit on another.
    let other = "/v3/base/mc/9/263/171/png";
    assert_eq!(pods[0].get(other).await.x_cache(), "MISS");
    eventually("the fill ended", async || pods[0].state().flights.is_empty()).await;
    let r = pods[1].get(other).await;
    assert_eq!((r.x_cache(), r.header("x-cache-tier")), ("HIT", Some("redis")));
    assert!(sentinel.keys_on(primary).contains(&entry_key(&pods[0], other)), "stored on the primary");
    let health = pods[1].get("/health").await.json();
    let tier = health["cache"].as_array().unwrap().iter().find(|t| t["tier"] == "redis").cloned().unwrap();
    assert_eq!(tier["mode"], "sentinel", "{tier}");
    assert_eq!(tier["primary"], format!("127.0.0.1:{primary}"), "{tier}");
    for p in pods {
        p.stop().await;
    }
}

#[actix_rt::test]
async fn sentinel_primary_killed_under_load_fails_no_request_and_sharing_resumes_after_the_failover_with_no_pod_restart(
) {
    let mut sentinel = RedisSentinel::start();
    let up = upstream(8_000);
    let cfg = |f: &mut FileConfig| {
        sentinel_shared(&sentinel)(f);
        f.redis.timeout = dur("300ms");
        f.redis.write_timeout = dur("500ms");
        f.redis.connect_timeout = dur("300ms");
    };
    let a = Proxy::start(&up, cfg).await;
    let b = Proxy::start(&up, cfg).await;
    let warm = "/v3/base/mc/10/300/1/png";
    assert_eq!(a.get(warm).await.status, 200);
    eventually("A's fill ended", async || a.state().flights.is_empty()).await;
    assert_eq!(b.get(warm).await.header("x-cache-tier"), Some("redis"), "shared before the failover");
    let (mut errors, mut served) = (0, 0);
    let mut killed = None;
    for round in 0..40u32 {
        if round == 15 {
            killed = Some((sentinel.kill_primary(), Instant::now()));
        }
        let reqs = (0..10u32).map(|i| {
            let p = if i % 2 == 0 { &a } else { &b };
            p.get_owned(format!("/v3/base/mc/10/{}/{}/png", 300 + round, 2 + i % 5))
        });
        for r in join_all(reqs).await {
            served += 1;
            if r.status != 200 || r.body.is_err() {
                errors += 1;
            }
        }
    }
    assert_eq!((errors, served), (0, 400), "the primary going away fails no request");
    let (old, killed_at) = killed.unwrap();

    // The Sentinels promote the replica (after down-after-milliseconds); the pods, not
    // restarted, ask them again when the old primary does not answer, and the breaker's probe
    // (each cool-down passed on the injected clocks) finds the new one. No signal tells a test
    // the Sentinels failed over: poll.
    let mut shared_again = None;
    for n in 0..600u32 {
        a.clock.advance_secs(6);
        b.clock.advance_secs(6);
        let path = format!("/v3/base/mc/11/{n}/300/png");
        assert_eq!(a.get(&path).await.status, 200);
        eventually("A's fill ended", async || a.state().flights.is_empty()).await;
        let r = b.get(&path).await;
        assert_eq!(r.status, 200);
        if r.header("x-cache-tier") == Some("redis") {
            shared_again = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gap = shared_again.expect("after the failover a tile fetched on A is a redis hit on B");
    println!("sentinel: seconds without sharing after the primary was killed: {:.1}", gap.as_secs_f64());
    let new = sentinel.primary();
    assert_ne!(new, old, "the replica was promoted");
    // The subscribers followed too: purge rules and lease notifications reach every pod.
    eventually("both pods subscribed on the new primary", async || {
        sentinel.cmd_on::<(String, u64)>(new, &["PUBSUB", "NUMSUB", "tile-proxy:purge"]).is_ok_and(|(_, n)| n == 2)
    })
    .await;
    let health = a.get("/health").await.json();
    assert_eq!(health["status"], "ok", "{health}");
    a.stop().await;
    b.stop().await;
}

//! Core hardening end to end: one entry per upstream tile whatever the index, airtight
//! coalescing (with a deterministic test of the leader's second look), RFC 9111 headers,
//! corrupt disk entries, the cache folder lock, a full disk.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use tile_proxy::config::PolicyFileConfig;
use tile_proxy::domain::entry::Entry;
use tile_proxy::domain::entry::HitSource;
use tile_proxy::domain::key::CacheKey;
use tile_proxy::store::cache::{BoxFuture, Tier, TierError};

#[actix_rt::test]
async fn twenty_indices_asking_one_tile_cost_one_upstream_call_and_keep_their_own_metrics() {
    let up = upstream(3_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v3/base/mc/8/100/100/png";
    let mut bodies = Vec::new();
    for i in 0..20 {
        let r = p.get(&format!("{path}?indice=customer{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache(), if i == 0 { "MISS" } else { "HIT" }, "index {i}");
        bodies.push(r.bytes().clone());
    }
    assert_eq!(up.count(path), 1, "one HERE request for 20 indices");
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_requests_total", &["index=\"customer0\"", "cache=\"miss\""]), 1.0);
    for i in 1..20 {
        let idx = format!("index=\"customer{i}\"");
        assert_eq!(metric(&m, "tile_proxy_requests_total", &[&idx, "cache=\"hit\""]), 1.0, "{idx}");
        assert_eq!(metric(&m, "tile_proxy_bytes_served_total", &[&idx]), 3_000.0, "{idx}");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn each_index_applies_its_own_ttl_to_the_shared_entry() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| {
        f.index.insert("short".into(), PolicyFileConfig { ttl: Some(dur("10s")), ..Default::default() });
        f.index.insert("long".into(), PolicyFileConfig { ttl: Some(dur("1h")), ..Default::default() });
    })
    .await;
    let path = "/v3/base/mc/8/7/7/png";
    assert_eq!(p.get(&format!("{path}?indice=long")).await.x_cache(), "MISS");
    assert_eq!(p.get(&format!("{path}?indice=short")).await.x_cache(), "HIT");
    p.clock.advance_secs(20);
    assert_eq!(p.get(&format!("{path}?indice=long")).await.x_cache(), "HIT", "still fresh for the 1h index");
    let short = p.get(&format!("{path}?indice=short")).await;
    assert_eq!(short.x_cache(), "MISS", "expired for the 10s index: fetched again");
    assert_eq!(short.header("cache-control"), Some("public, max-age=10"));
    assert_eq!(up.count(path), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn an_entry_is_never_served_for_a_different_upstream_base_or_key() {
    let demo = upstream(2_000);
    let real = upstream(2_000);
    real.set_version(7); // different bytes for the same tile
    let path = "/v3/base/mc/6/1/1/png";
    let p = Proxy::start(&demo, |_| {}).await;
    let from_demo = p.get(path).await;
    assert_eq!(from_demo.bytes(), &demo.tile_bytes(path));
    let dir = p.stop().await;
    // Same cache folder, another upstream: a miss, never the demo's bytes.
    let p = Proxy::start_in(&real, dir, |_| {}).await;
    let r = p.get(path).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.bytes(), &real.tile_bytes(path));
    assert_ne!(r.bytes(), from_demo.bytes());
    assert_eq!(real.count(path), 1);
    p.stop().await;
}

#[actix_rt::test]
async fn an_index_with_its_own_key_gets_its_own_entries_and_sends_its_key() {
    // An upstream that accepts any key, and records what it got.
    let up = Upstream::start(Options { api_key: None, min_size: 1_000, max_size: 1_000, ..Options::default() })
        .expect("test upstream");
    std::env::set_var("TP_TEST_TENANT_KEY", "TENANTKEY42");
    let p = Proxy::start(&up, |f| {
        f.index.insert(
            "tenant".into(),
            PolicyFileConfig { api_key_env: Some("TP_TEST_TENANT_KEY".into()), ..Default::default() },
        );
    })
    .await;
    let path = "/v3/base/mc/6/2/2/png";
    assert_eq!(p.get(&format!("{path}?indice=shared")).await.x_cache(), "MISS");
    let t = p.get(&format!("{path}?indice=tenant")).await;
    assert_eq!(t.x_cache(), "MISS", "another credential is another entry");
    assert_eq!(p.get(&format!("{path}?indice=tenant")).await.x_cache(), "HIT");
    assert_eq!(p.get(&format!("{path}?indice=other")).await.x_cache(), "HIT", "the server key's entry");
    let keys: Vec<String> = up.requests().iter().filter_map(|r| r.query_param("apiKey")).collect();
    assert_eq!(keys, vec![SERVER_KEY.to_string(), "TENANTKEY42".to_string()]);
    assert!(!String::from_utf8_lossy(t.bytes()).contains("TENANTKEY42"));
    p.stop().await;
}

#[actix_rt::test]
async fn unknown_indices_can_be_rejected() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| {
        f.unknown_indices = tile_proxy::config::UnknownIndices::Reject;
        f.index.insert("known".into(), PolicyFileConfig::default());
    })
    .await;
    assert_eq!(p.get("/here-proxy/1/0/0/png?indice=known").await.status, 200);
    for q in ["indice=random123", ""] {
        let r = p.get(&format!("/here-proxy/1/0/0/png?{q}")).await;
        assert_eq!(r.status, 403, "{q}");
        assert_eq!(r.json()["error"], "unknown_index");
        assert_eq!(r.json()["field"], "indice");
    }
    assert_eq!(up.total(), 1, "rejected requests cost nothing");
    p.stop().await;
}

/// A tier whose `get`, once armed, takes its snapshot and then waits for the test's signal
/// before answering: a lookup that started before a flight stored its entry and finishes after
/// the flight is over.
#[derive(Default)]
struct GateTier {
    map: Mutex<HashMap<String, Entry>>,
    armed: AtomicBool,
    waiting: AtomicUsize,
    release: tokio::sync::Notify,
}

struct Gate(Arc<GateTier>);

impl Tier for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<(Entry, HitSource)>, TierError>> {
        let g = &self.0;
        Box::pin(async move {
            let snapshot = g.map.lock().unwrap().get(key.as_str()).cloned();
            if g.armed.swap(false, Ordering::SeqCst) {
                g.waiting.fetch_add(1, Ordering::SeqCst);
                g.release.notified().await;
            }
            Ok(snapshot.map(|e| (e, HitSource::Memory)))
        })
    }
    fn insert<'a>(&'a self, key: &'a CacheKey, entry: Entry, _exp: u64) -> BoxFuture<'a, Result<(), TierError>> {
        self.0.map.lock().unwrap().insert(key.as_str().to_string(), entry);
        Box::pin(std::future::ready(Ok(())))
    }
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), TierError>> {
        self.0.map.lock().unwrap().remove(key.as_str());
        Box::pin(std::future::ready(Ok(())))
    }
    fn close(&self) -> BoxFuture<'_, Result<(), TierError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn status(&self) -> serde_json::Value {
        serde_json::json!({"tier": "gate"})
    }
}

#[actix_rt::test]
async fn a_new_leader_looks_in_the_cache_again_before_fetching() {
    let up = upstream(2_000);
    let path = "/v3/base/mc/9/9/9/png";
    up.fail(path, Fault::Delay(Duration::from_millis(300)), 1);
    let gate = Arc::new(GateTier::default());
    let tiers: Vec<Box<dyn Tier>> = vec![Box::new(Gate(gate.clone()))];
    let p = std::rc::Rc::new(Proxy::start_with(&up, tempfile::tempdir().unwrap(), |_| {}, Some(tiers)).await);
    // A leads and fetches (slowly).
    let pa = p.clone();
    let a = actix_rt::spawn(async move { pa.get(path).await });
    eventually("A's fetch reached the upstream", async || up.count(path) == 1).await;
    // B looks up while A's flight runs; its lookup answers only after the flight is over.
    gate.armed.store(true, Ordering::SeqCst);
    let pb = p.clone();
    let b = actix_rt::spawn(async move { pb.get(path).await });
    eventually("B's lookup is in the tier", async || gate.waiting.load(Ordering::SeqCst) == 1).await;
    let a = a.await.unwrap();
    assert_eq!(a.x_cache(), "MISS");
    eventually("A's flight is over", async || p.state().flights.is_empty()).await;
    gate.release.notify_one();
    // B missed, found no flight and became a leader: its second look finds A's entry.
    let b = b.await.unwrap();
    assert_eq!(b.status, 200);
    assert_eq!(b.x_cache(), "HIT", "the new leader found the entry instead of fetching again");
    assert_eq!(b.bytes(), a.bytes());
    assert_eq!(up.count(path), 1, "one upstream call");
}

#[actix_rt::test]
async fn ten_storms_of_a_thousand_concurrent_requests_cost_one_upstream_call_each() {
    let up = upstream(10_000);
    let p = Proxy::start(&up, |_| {}).await;
    for storm in 0..10 {
        let path = format!("/v3/base/mc/10/500/{storm}/png");
        // Half the storms against a slow upstream (all join the one flight), half against a fast
        // one (requests keep arriving after the flight ended: the leader's second look counts).
        if storm % 2 == 0 {
            up.fail(&path, Fault::Delay(Duration::from_millis(200)), 1);
        }
        let url = format!("{path}?indice=storm{}", storm % 3);
        let responses = join_all((0..1000).map(|_| p.get(&url))).await;
        for r in &responses {
            assert_eq!(r.status, 200);
            assert_eq!(r.bytes(), &up.tile_bytes(&path));
        }
        assert_eq!(up.count(&path), 1, "storm {storm}");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn staggered_bursts_cost_one_upstream_call_per_tile() {
    let up = upstream(30_000);
    let p = std::rc::Rc::new(Proxy::start(&up, |_| {}).await);
    for burst in 0..40u32 {
        let path = format!("/v3/base/mc/12/{burst}/77/png");
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let p = p.clone();
            let url = format!("{path}?indice=burst{}", i % 5);
            tasks.push(actix_rt::spawn(async move { p.get(&url).await }));
            if i % 8 == 0 {
                // Stagger arrivals across the fetch's life (an arrival schedule, not a wait).
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.bytes().len(), 30_000);
        }
        assert_eq!(up.count(&path), 1, "burst {burst}");
    }
}

#[actix_rt::test]
async fn downstream_caches_get_the_lifetime_with_age_on_misses_and_hits_alike() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| {
        f.index.insert(
            "ten".into(),
            PolicyFileConfig { ttl: Some(dur("10s")), negative_ttl: Some(dur("30s")), ..Default::default() },
        );
    })
    .await;
    let max_age = |r: &Resp| -> i64 {
        let cc = r.header("cache-control").unwrap();
        cc.split("max-age=").nth(1).unwrap().split(',').next().unwrap().parse().unwrap()
    };
    let age = |r: &Resp| -> i64 { r.header("age").unwrap().parse().unwrap() };
    let url = "/v3/base/mc/5/5/5/png?indice=ten";
    let miss = p.get(url).await;
    assert_eq!((max_age(&miss), age(&miss)), (10, 0));
    p.clock.advance_secs(6);
    let hit = p.get(url).await;
    assert_eq!(hit.x_cache(), "HIT");
    let left = max_age(&hit) - age(&hit);
    assert!((3..=5).contains(&left), "max-age − Age = {left}, want 4 ± 1");
    assert_eq!(hit.header("etag"), miss.header("etag"));
    assert_eq!(hit.header("content-type"), miss.header("content-type"));

    // An upstream without an ETag: the miss already carries the one the hits will carry.
    let no_etag = "/v3/base/mc/5/5/7/png";
    up.fail(no_etag, Fault::Headers(vec![("ETag".into(), String::new())]), 1);
    let miss = p.get(&format!("{no_etag}?indice=ten")).await;
    let hit = p.get(&format!("{no_etag}?indice=ten")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(miss.header("etag").is_some_and(|e| e.starts_with("\"tp-")), "{:?}", miss.header("etag"));
    assert_eq!(hit.header("etag"), miss.header("etag"));
    let revalidated =
        p.get_with(&format!("{no_etag}?indice=ten"), &[("If-None-Match", miss.header("etag").unwrap())]).await;
    assert_eq!(revalidated.status, 304);

    // A 404: the miss and its remembered hit carry the same caching headers.
    let nf = "/v3/base/mc/5/5/6/png";
    up.fail(nf, Fault::Status { code: 404, retry_after: None }, 1);
    let miss = p.get(&format!("{nf}?indice=ten")).await;
    let hit = p.get(&format!("{nf}?indice=ten")).await;
    assert_eq!((miss.status.as_u16(), hit.status.as_u16()), (404, 404));
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(miss.header("cache-control"), Some("public, max-age=30"));
    assert_eq!(hit.header("cache-control"), miss.header("cache-control"));
    assert_eq!(hit.header("content-type"), miss.header("content-type"));
    // A 204 has no body and so no Content-Type, on the miss as on the hit.
    let nc = "/v2/vectortiles/base/mc/5/5/5/omv";
    up.fail(nc, Fault::Status { code: 204, retry_after: None }, 1);
    for want in ["MISS", "HIT"] {
        let r = p.get(&format!("{nc}?indice=ten")).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (204, want));
        assert_eq!(r.header("content-type"), None, "{want}");
        assert_eq!(r.header("cache-control"), Some("public, max-age=30"), "{want}");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn a_corrupt_disk_entry_is_refetched_never_served() {
    let up = upstream(50_000);
    let path = "/v3/base/mc/7/3/3/png";
    let p = Proxy::start(&up, |f| f.memory_cache = tile_proxy::config::ByteSize::mib(1)).await;
    let good = p.get(path).await.bytes().clone();
    let dir = p.stop().await;
    // Flip bytes inside the stored body, wherever foyer put it.
    let needle = &good[20_000..20_064];
    let mut corrupted = 0;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        let mut data = std::fs::read(&f).unwrap();
        if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
            for b in &mut data[at..at + 16] {
                *b ^= 0xff;
            }
            std::fs::write(&f, &data).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 1, "the entry was on disk");
    let p = Proxy::start_in(&up, dir, |f| f.memory_cache = tile_proxy::config::ByteSize::mib(1)).await;
    let r = p.get(path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS", "the corrupt copy was not used");
    assert_eq!(r.bytes(), &good, "correct bytes");
    assert_eq!(up.count(path), 2);
    assert_eq!(p.get(path).await.x_cache(), "HIT");
    p.stop().await;
}

#[actix_rt::test]
async fn a_second_process_on_the_cache_folder_is_refused() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    let mut f = config(&up, p.dir.path());
    f.listen = "127.0.0.1:0".into();
    let settings = tile_proxy::config::Settings::from_file_config(f).unwrap();
    let err = tile_proxy::app::server::start(settings).await.err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("in use by another tile-proxy process"), "{msg}");
    assert!(msg.contains(&p.dir.path().display().to_string()), "{msg}");
    // The first one is unaffected.
    assert_eq!(p.get("/here-proxy/1/0/0/png").await.status, 200);
    p.stop().await;
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[actix_rt::test]
async fn a_disk_without_room_degrades_to_memory_and_says_so() {
    let up = upstream(20_000);
    let fs = Tmpfs::mount("6m");
    let dir = tempfile::tempdir_in(fs.0.path()).unwrap();
    let p = Proxy::start_in(&up, dir, |f| f.disk_cache = tile_proxy::config::ByteSize::mib(16)).await;
    let path = "/v3/base/mc/7/5/5/png";
    assert_eq!(p.get(path).await.x_cache(), "MISS");
    assert_eq!(p.get(path).await.x_cache(), "HIT", "the memory tier serves");
    let h = p.get("/health").await.json();
    assert_eq!(h["status"], "degraded");
    let problems = h["problems"].to_string();
    assert!(problems.contains("disk tier disabled") && problems.contains("bytes free"), "{problems}");
    assert_eq!(h["cache"][0]["disk"]["enabled"], false);
    let made: Vec<_> = std::fs::read_dir(p.dir.path()).unwrap().filter_map(Result::ok).map(|f| f.file_name()).collect();
    assert!(
        !made.iter().any(|f| f.to_string_lossy().starts_with("foyer-storage-")),
        "refused before creating block files: {made:?}"
    );
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_cache_errors_total", &["op=\"open_disk\""]), 1.0);
    p.stop().await; // no panic on shutdown
}

#[actix_rt::test]
async fn a_disk_that_fills_up_after_start_cannot_fail_cache_writes() {
    let up = upstream(100_000);
    let fs = Tmpfs::mount("12m");
    let dir = tempfile::Builder::new().tempdir_in(fs.0.path()).unwrap();
    let dir_path = dir.path().to_path_buf();
    let tweak = |f: &mut tile_proxy::config::FileConfig| {
        f.disk_cache = tile_proxy::config::ByteSize::mib(8);
        f.memory_cache = tile_proxy::config::ByteSize::mib(1);
    };
    let p = Proxy::start_in(&up, dir, tweak).await;
    assert_eq!(p.get("/health").await.json()["status"], "ok");
    // Someone else fills the filesystem to the last byte.
    let mut filler = std::fs::File::create(fs.0.path().join("filler")).unwrap();
    let block = vec![7u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    // 40 tiles of 100 KB go through the disk tier (the memory tier holds 1 MiB).
    for y in 0..40 {
        let r = p.get(&format!("/v3/base/mc/9/1/{y}/png")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(p.get("/health").await.json()["status"], "ok");
    let dir = p.stop().await; // flushes to disk; must not panic
    assert_eq!(dir.path(), dir_path);
    let p = Proxy::start_in(&up, dir, tweak).await;
    let r = p.get("/v3/base/mc/9/1/39/png").await;
    assert_eq!(r.x_cache(), "HIT", "written to the full disk's reserved space and read back");
    assert_eq!(r.bytes(), &up.tile_bytes("/v3/base/mc/9/1/39/png"));
    p.stop().await;
}

#[actix_rt::test]
async fn nothing_the_upstream_did_not_mean_for_a_client_is_relayed() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |f| f.upstream.retry_attempts = 1).await;
    let no_leak = |r: &Resp, what: &str| {
        let body = String::from_utf8_lossy(r.body.as_ref().unwrap()).to_string();
        assert!(!body.contains(SERVER_KEY), "{what}: key in body {body}");
        assert!(r.header("location").is_none(), "{what}: Location relayed");
        assert!(r.headers.iter().all(|(_, v)| !v.to_str().unwrap_or("").contains(SERVER_KEY)), "{what}");
    };
    // A redirect echoing the URL (with our key): our JSON error, nothing of the upstream's.
    let path = "/v3/base/mc/4/1/1/png";
    up.fail(path, Fault::Redirect, 1);
    let r = p.get(path).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_error");
    no_leak(&r, "302");
    // Error pages echoing the URL.
    for (i, code) in [500u16, 418, 301, 401].into_iter().enumerate() {
        let path = format!("/v3/base/mc/4/2/{i}/png");
        up.fail(&path, Fault::Echo { code }, 1);
        let r = p.get(&path).await;
        assert_eq!(r.status, 502, "{code}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{code}");
        no_leak(&r, &code.to_string());
    }
    // A 404 passes through, its body scrubbed of the key.
    let path = "/v3/base/mc/4/3/1/png";
    up.fail(path, Fault::Echo { code: 404 }, 1);
    let r = p.get(path).await;
    assert_eq!(r.status, 404);
    no_leak(&r, "404");
    assert!(String::from_utf8_lossy(r.bytes()).contains("apiKey=<redacted>"));
    // HERE's own JSON 400 passes through as it is.
    let path = "/v3/base/mc/4/3/2/png";
    up.fail(path, Fault::Status { code: 400, retry_after: None }, 1);
    let r = p.get(path).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], 400, "HERE's body");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    p.stop().await;
}

#[actix_rt::test]
async fn upstream_encoding_expires_and_age_are_handled_deliberately() {
    let up = upstream(2_000);
    let p = Proxy::start(&up, |_| {}).await;
    let hdrs = |v: &[(&str, &str)]| Fault::Headers(v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    // Content-Encoding is kept with the bytes and relayed on misses and hits.
    let path = "/v2/vectortiles/base/mc/3/1/1/omv";
    up.fail(path, hdrs(&[("Content-Encoding", "gzip")]), 1);
    for want in ["MISS", "HIT"] {
        let r = p.get(path).await;
        assert_eq!(r.x_cache(), want);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{want}");
        assert!(r.header("vary").unwrap_or("").contains("Accept-Encoding"), "{want}");
        assert_eq!(r.bytes(), &up.tile_bytes(path), "{want}: bytes as the upstream sent them");
    }
    // Expires relative to the upstream's Date gives the lifetime; Expires itself is not relayed.
    let path = "/v3/base/mc/3/1/2/png";
    up.fail(path, hdrs(&[("Date", "Wed, 21 Oct 2015 07:00:00 GMT"), ("Expires", "Wed, 21 Oct 2015 07:02:00 GMT")]), 1);
    let r = p.get(path).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=120"));
    assert_eq!(r.header("expires"), None);
    // The upstream's Age is subtracted from its max-age.
    let path = "/v3/base/mc/3/1/3/png";
    up.fail(path, hdrs(&[("Cache-Control", "public, max-age=300"), ("Age", "100")]), 1);
    let r = p.get(path).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=200"));
    assert_eq!(r.header("age"), Some("0"));
    p.clock.advance_secs(150);
    let r = p.get(path).await;
    assert_eq!((r.x_cache(), r.header("age")), ("HIT", Some("150")));
    p.clock.advance_secs(60);
    assert_eq!(p.get(path).await.x_cache(), "MISS", "expired after 200 s, not 300");
    p.stop().await;
}

/// Reads a tile through a raw connection at `bytes_per_sec`, pausing `stall` after the first
/// MiB; returns the body bytes received before the server ended the connection.
async fn slow_read(p: &Proxy, path: &str, bytes_per_sec: usize, stall: Duration) -> usize {
    use std::io::{Read, Write};
    let addr = p.base.trim_start_matches("http://").to_string();
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let (mut total, mut stalled) = (0usize, false);
        let started = std::time::Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            if total > 1 << 20 && !stalled {
                stalled = true;
                std::thread::sleep(stall);
            }
            let due = Duration::from_secs_f64(total as f64 / bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait); // the client's reading pace
            }
        }
        total
    })
    .await
    .unwrap()
}

#[actix_rt::test]
async fn body_timeout_bounds_waiting_for_the_upstream_not_a_slow_client_but_a_stalled_one_is_cut() {
    let up = upstream(1_000);
    let (a, b) = ("/v3/base/mc/5/9/1/png", "/v3/base/mc/5/9/2/png");
    up.fail_always(a, Fault::BigBody { size: 12 << 20 });
    up.fail_always(b, Fault::BigBody { size: 12 << 20 });
    let p = Proxy::start(&up, |f| {
        f.upstream.body_timeout = dur("2s");
        f.flight_buffer = tile_proxy::config::ByteSize::kib(256);
    })
    .await;
    // 12 MiB at 2.5 MiB/s: ~5 s, over twice body_timeout, always progressing: complete.
    let got = slow_read(&p, a, 5 << 19, Duration::ZERO).await;
    assert!(got >= 12 << 20, "slow but steady client got {got} bytes");
    // A client that stops reading for 5 s is given up on: the connection ends early.
    let got = slow_read(&p, b, 8 << 20, Duration::from_secs(5)).await;
    assert!(got < 12 << 20, "stalled client still got {got} bytes");
    p.stop().await;
}

//! Seed jobs that belong to the fleet: with Redis any pod answers for a job and lists them all,
//! and a job whose pod is killed (SIGKILL of the real binary) is finished by another pod from
//! its last checkpoint, no tile fetched twice. Without Redis, jobs stay on their pod.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::process::{Process, BIN};
use common::redis_server::RedisServer;
use common::{dur, eventually, upstream, Fault, Proxy, Resp, Upstream, SERVER_KEY};
use tile_proxy::config::FileConfig;

const TOKEN: &str = "fleet-seed-token";
/// The seed lease (`[redis] lease`): short, so a takeover comes soon after a kill.
const LEASE: &str = "3s";

fn pod(redis: &RedisServer) -> impl FnOnce(&mut FileConfig) + '_ {
    move |f: &mut FileConfig| {
        redis.share(f);
        f.redis.lease = Some(dur(LEASE));
        f.admin_token = Some(TOKEN.into());
    }
}

/// POST `body` to `base` + `/admin/seed` with the token.
async fn post_seed(client: &awc::Client, base: &str, body: &str) -> Resp {
    common::post_json(client, &format!("{base}/admin/seed"), Some(TOKEN), body).await
}

async fn admin_get(p: &Proxy, path: &str) -> Resp {
    p.get_with(path, &[("Authorization", &format!("Bearer {TOKEN}"))]).await
}

/// Polls a job on `p` until it is no longer running.
async fn job_when_over(p: &Proxy, status_url: &str) -> serde_json::Value {
    let mut job = serde_json::Value::Null;
    eventually("the job is over", async || {
        job = admin_get(p, status_url).await.json();
        job["state"] != "running"
    })
    .await;
    job
}

/// Upstream requests per raster tile path (`/v3/base/mc/z/x/y/png`).
fn per_tile(up: &Upstream) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in up.requests() {
        *counts.entry(r.path.clone()).or_insert(0) += 1;
    }
    counts
}

/// The job's tiles' upstream paths, in the job's order.
fn tile_paths(body: &str) -> Vec<String> {
    let (job, _) = tile_proxy::seed::spec::build(body.as_bytes()).expect("a valid job");
    job.tiles().map(|(z, x, y)| format!("/v3/base/mc/{z}/{x}/{y}/png")).collect()
}

#[actix_rt::test]
async fn a_job_started_on_one_pod_is_answered_and_listed_by_every_pod_and_without_redis_stays_local() {
    let redis = RedisServer::start();
    let up = upstream(400);
    let a = Proxy::start(&up, pod(&redis)).await;
    let b = Proxy::start(&up, pod(&redis)).await;
    let body = r#"{"index": "fleet1", "bbox": [5.8, 45.8, 6.3, 46.3], "zoom": [7, 10], "size": 512, "concurrency": 4}"#;
    let paths = tile_paths(body);
    let n = paths.len() as u64;

    let started = post_seed(&a.client, &a.base, body).await;
    assert_eq!(started.status.as_u16(), 202);
    let started = started.json();
    assert_eq!((started["scope"].as_str(), started["total"].as_u64()), (Some("fleet"), Some(n)), "{started}");
    let url = started["status_url"].as_str().unwrap().to_string();
    let id = started["id"].as_str().unwrap().to_string();

    // Pod b never saw the request: it answers from Redis.
    let job = job_when_over(&b, &url).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (&job["total"], &job["done"], &job["fetched"], &job["cached"], &job["failed"], &job["takeovers"]),
        (&n.into(), &n.into(), &n.into(), &0.into(), &0.into(), &0.into()),
        "{job}"
    );
    assert!(job["finished_at"].is_string(), "{job}");
    let wanted: BTreeMap<String, u64> = paths.iter().map(|p| (p.clone(), 1)).collect();
    assert_eq!(per_tile(&up), wanted, "each tile fetched once");

    let listed = admin_get(&b, "/admin/seed").await;
    assert_eq!(listed.status.as_u16(), 200);
    let listed = listed.json();
    assert_eq!(listed["scope"], "fleet");
    assert_eq!(listed["jobs"].as_array().map(|j| j.iter().filter(|j| j["id"] == id.as_str()).count()), Some(1));
    assert_eq!(admin_get(&b, "/admin/seed/nosuchjob").await.status.as_u16(), 404);
    assert_eq!(b.get("/admin/seed").await.status.as_u16(), 401, "the list needs the token");

    // Without Redis: the pod's own, listed by it only.
    let local = |f: &mut FileConfig| f.admin_token = Some(TOKEN.into());
    let c = Proxy::start(&up, local).await;
    let d = Proxy::start(&up, local).await;
    let started = post_seed(&c.client, &c.base, body).await.json();
    assert_eq!(started["scope"], "pod", "{started}");
    let url = started["status_url"].as_str().unwrap().to_string();
    let job = job_when_over(&c, &url).await;
    assert_eq!((&job["state"], &job["done"]), (&"done".into(), &n.into()), "{job}");
    let listed = admin_get(&c, "/admin/seed").await.json();
    assert_eq!((listed["scope"].as_str(), listed["jobs"][0]["id"].as_str()), (Some("pod"), started["id"].as_str()));
    assert_eq!(admin_get(&d, &url).await.status.as_u16(), 404, "another pod does not know it");
    assert_eq!(admin_get(&d, "/admin/seed").await.json()["jobs"], serde_json::json!([]));
}

/// A `tile-proxy` binary in the fleet: JSON logs, one worker, Redis shared, the seed lease
/// [`LEASE`], and an upstream head timeout long enough that a hung request stays in flight.
fn pod_binary(up: &Upstream, redis: &RedisServer, dir: &std::path::Path) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("HERE_API_KEY", SERVER_KEY)
        .env("TILE_PROXY_LISTEN", "127.0.0.1:0")
        .env("TILE_PROXY_RASTER_UPSTREAM", up.base_url())
        .env("TILE_PROXY_VECTOR_UPSTREAM", up.base_url())
        .env("TILE_PROXY_CACHE_DIR", dir)
        .env("TILE_PROXY_MEMORY_CACHE", "16MiB")
        .env("TILE_PROXY_DISK_CACHE", "16MiB")
        .env("TILE_PROXY_WORKERS", "1")
        .env("TILE_PROXY_ADMIN_TOKEN", TOKEN)
        .env("TILE_PROXY_REDIS_URL", redis.url())
        .env("TILE_PROXY_REDIS__TIMEOUT", "3s")
        .env("TILE_PROXY_REDIS__WRITE_TIMEOUT", "3s")
        .env("TILE_PROXY_REDIS__LEASE", LEASE)
        .env("TILE_PROXY_UPSTREAM__HEAD_TIMEOUT", "120s");
    Process::spawn(cmd)
}

#[actix_rt::test]
async fn a_job_whose_pod_is_killed_halfway_is_finished_by_another_pod_without_fetching_a_tile_twice() {
    let redis = RedisServer::start();
    let up = upstream(400);
    up.set_latency(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let mut a = pod_binary(&up, &redis, dir.path());
    let a_base = format!("http://{}", a.listening().await);
    let b = Proxy::start(&up, pod(&redis)).await;

    let body = r#"{"index": "fleet2", "bbox": [5.0, 45.0, 8.0, 47.0], "zoom": [6, 10], "size": 512, "concurrency": 1}"#;
    let paths = tile_paths(body);
    let n = paths.len() as u64;
    // The tile at position k, halfway, hangs at the upstream: pod a is killed while it waits
    // for it. The one 3 tiles before takes over a second, so pod a saves its done positions
    // (at most once a second, when a tile completes) as that tile completes: its checkpoint
    // then leaves out the 3 tiles fetched after it.
    let k = paths.len() / 2;
    assert!(k >= 20, "the job is long enough ({n} tiles)");
    let hung = paths[k].clone();
    up.fail(&hung, Fault::Hang, 1);
    up.fail(&paths[k - 4], Fault::Delay(Duration::from_millis(1200)), 1);

    let started = post_seed(&b.client, &a_base, body).await;
    assert_eq!(started.status.as_u16(), 202, "{:?}", started.body);
    let started = started.json();
    assert_eq!(started["scope"], "fleet", "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let url = started["status_url"].as_str().unwrap().to_string();
    let key = format!("tile-proxy:{{seed}}:job:{id}");
    let field = |name: &str| -> u64 {
        redis.cmd::<Option<String>>(&["HGET", &key, name]).and_then(|v| v.parse().ok()).unwrap_or(0)
    };

    // Pod a has fetched tiles 0..k, and waits for tile k; its checkpoint (with live counts)
    // shows all k fetched, so its done ranges, saved before, are final.
    eventually("pod a waits for the hung tile and its checkpoint is current", async || {
        up.count(&hung) == 1 && field("fetched") == k as u64
    })
    .await;
    let checkpoint = field("done");
    assert!(checkpoint > 0 && checkpoint < k as u64, "a checkpoint part way: {checkpoint} of {k}");
    let running = admin_get(&b, &url).await.json();
    assert_eq!((running["state"].as_str(), running["takeovers"].as_u64()), (Some("running"), Some(0)), "{running}");
    assert!(running["pod"].as_str().is_some_and(|p| !p.is_empty()), "{running}");

    eprintln!("n={n} k={k} checkpoint={checkpoint}");
    a.kill();

    let job = job_when_over(&b, &url).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!((job["done"].as_u64(), job["failed"].as_u64(), job["takeovers"].as_u64()), (Some(n), Some(0), Some(1)));
    // The tiles fetched after the checkpoint were Redis hits for pod b, not upstream calls.
    assert_eq!(job["cached"].as_u64(), Some(k as u64 - checkpoint), "{job}");
    assert_eq!(job["fetched"].as_u64(), Some(n), "{job}");

    // Every tile was asked for once, but the hung one: its first request never got an answer
    // (pod a died waiting), so the upstream answered exactly n tiles.
    let counts = per_tile(&up);
    let mut wanted: BTreeMap<String, u64> = paths.iter().map(|p| (p.clone(), 1)).collect();
    wanted.insert(hung.clone(), 2);
    assert_eq!(counts, wanted);
    assert_eq!(up.total(), n + 1, "n answered tiles and the one request pod a died waiting on");
}

#[actix_rt::test]
async fn a_pod_that_stalls_past_its_lease_loses_the_job_to_another_and_stops_at_its_next_checkpoint() {
    let redis = RedisServer::start();
    let up = upstream(400);
    up.set_latency(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let a = pod_binary(&up, &redis, dir.path());
    let a_base = format!("http://{}", a.listening().await);
    let b = Proxy::start(&up, pod(&redis)).await;

    let body = r#"{"index": "fleet3", "bbox": [5.0, 45.0, 8.0, 47.0], "zoom": [6, 10], "size": 512, "concurrency": 1}"#;
    let paths = tile_paths(body);
    let n = paths.len() as u64;
    let started = post_seed(&b.client, &a_base, body).await.json();
    let id = started["id"].as_str().unwrap().to_string();
    let url = started["status_url"].as_str().unwrap().to_string();
    let key = format!("tile-proxy:{{seed}}:job:{id}");
    let field = |name: &str| -> u64 {
        redis.cmd::<Option<String>>(&["HGET", &key, name]).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    eventually("pod a has fetched some tiles", async || up.total() >= 10).await;

    // Frozen past its lease: pod b takes the job over.
    a.signal(libc::SIGSTOP);
    eventually("pod b takes the job over", async || field("takeovers") == 1).await;
    a.signal(libc::SIGCONT);
    a.line("pod a learns it lost the job", |l| l.contains("seed job taken over by another pod")).await;

    let job = job_when_over(&b, &url).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!((job["done"].as_u64(), job["failed"].as_u64(), job["takeovers"].as_u64()), (Some(n), Some(0), Some(1)));
    // Every tile fetched; twice at most the one pod a had in flight when it froze (pod b's
    // request for it came after pod a's fetch lease had expired).
    let counts = per_tile(&up);
    assert!(paths.iter().all(|p| counts.contains_key(p)), "every tile fetched");
    assert!(up.total() <= n + 1, "{} upstream requests for {n} tiles", up.total());
}

//! Seeding: the real `tile-proxy seed` binary through an in-process proxy (exact tile set,
//! second run all cached, Ctrl-C and resume without paying twice), `--direct` into a config's
//! cache, and the admin API (`POST /admin/seed`, `GET /admin/seed/{id}`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{Process, BIN};
use common::{eventually, upstream, Fault, Proxy, Resp, Upstream, SERVER_KEY};
const TOKEN: &str = "seed-admin-token";

/// West edge of column `x` at scale `n` (the test's own formulas, not the crate's).
fn tile_lon(x: u32, n: u32) -> f64 {
    f64::from(x) / f64::from(n) * 360.0 - 180.0
}

/// North edge of row `y` at scale `n`.
fn tile_lat(y: u32, n: u32) -> f64 {
    (std::f64::consts::PI * (1.0 - 2.0 * f64::from(y) / f64::from(n))).sinh().atan().to_degrees()
}

/// Every tile of zooms `zooms` overlapping `[w, s, e, n]` (no antimeridian, within ±85°).
fn expected(bbox: [f64; 4], zooms: std::ops::RangeInclusive<u8>) -> BTreeSet<(u8, u32, u32)> {
    let [w, s, e, n] = bbox;
    let mut set = BTreeSet::new();
    for z in zooms {
        let size = 1u32 << z;
        // A tile overlaps when its column overlaps in longitude and its row in latitude: the
        // columns and the rows are found apart (2 x 8192 tests at zoom 13, not 8192 x 8192).
        let columns: Vec<u32> = (0..size).filter(|&x| tile_lon(x, size) < e && w < tile_lon(x + 1, size)).collect();
        let rows = (0..size).filter(|&y| tile_lat(y + 1, size) < n && s < tile_lat(y, size));
        for y in rows {
            set.extend(columns.iter().map(|&x| (z, x, y)));
        }
    }
    set
}

/// The z/x/y of every raster tile the upstream was asked for.
fn fetched(up: &Upstream) -> Vec<(u8, u32, u32)> {
    common::fetched_raster(up)
}

/// `tile-proxy seed ARGS` started in `cwd` (where its state file goes).
fn start_seed(cwd: &Path, args: &[&str]) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(cwd).arg("seed").args(args);
    Process::spawn(cmd)
}

/// Waits (without blocking the test's runtime: the proxy runs on it) for the seed to exit;
/// its exit code, stdout and stderr.
async fn finish(mut seed: Process) -> (Option<i32>, String, String) {
    let out = seed.exit().await;
    (out.code(), out.stdout, out.stderr)
}

async fn seed(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    finish(start_seed(cwd, args)).await
}

/// The numbers of the summary line `seed done: N tiles, fetched F, already cached C, failed X ...`.
fn summary(stdout: &str) -> (u64, u64, u64, u64) {
    let line = stdout.lines().find(|l| l.starts_with("seed ")).unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    let number_after = |word: &str| -> u64 {
        let rest = &line[line.find(word).unwrap_or_else(|| panic!("{word} in {line}")) + word.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let total = line.split(": ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    (total, number_after("fetched"), number_after("already cached"), number_after("failed"))
}

/// `total: N tiles` of a dry run.
fn dry_run_total(stdout: &str) -> u64 {
    let line = stdout.lines().find(|l| l.starts_with("total: ")).expect("total line");
    line["total: ".len()..].split(' ').next().unwrap().parse().unwrap()
}

#[actix_rt::test]
async fn through_a_proxy_the_exact_tiles_are_fetched_once_then_found_cached() {
    let up = upstream(500);
    let p = Proxy::start(&up, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let bbox = [13.1, 52.3, 13.7, 52.7];
    let want = expected(bbox, 6..=11);
    let args = ["--index", "seed1", "--bbox", "13.1,52.3,13.7,52.7", "--zoom", "6-11", "--through", &p.base];

    let (code, out, err) = seed(work.path(), &[&args[..], &["--dry-run"]].concat()).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(dry_run_total(&out), want.len() as u64, "{out}");
    assert!(out.contains("zoom 11: "), "{out}");
    assert_eq!(up.total(), 0, "a dry run makes no request");

    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let got = fetched(&up);
    assert_eq!(got.len(), want.len(), "each tile once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    let n = want.len() as u64;
    assert_eq!(summary(&out), (n, n, 0, 0), "{out}");
    assert!(std::fs::read_dir(work.path()).unwrap().next().is_none(), "the state file is removed when done");
    assert!(up.requests().iter().all(|r| r.query_param("apiKey").as_deref() == Some(SERVER_KEY)));

    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(summary(&out), (n, 0, n, 0), "{out}");
    assert_eq!(up.total(), n, "the second run costs no upstream call");
}

#[actix_rt::test]
async fn an_interrupted_seed_saves_its_state_and_resumes_without_paying_twice() {
    let up = upstream(500);
    up.set_latency(Duration::from_millis(150));
    let p = Proxy::start(&up, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let want = expected([2.2, 48.7, 2.5, 48.95], 8..=13);
    let n = want.len() as u64;
    assert!(n > 40, "enough tiles to interrupt: {n}");
    let args = ["--index", "seed2", "--bbox", "2.2,48.7,2.5,48.95", "--zoom", "8-13", "--concurrency", "2"];
    let args = [&args[..], &["--through", &p.base]].concat();

    let child = start_seed(work.path(), &args);
    eventually("the seed fetches", async || up.total() >= 6).await;
    child.signal(libc::SIGINT);
    let (code, out, err) = finish(child).await;
    assert_eq!(code, Some(130), "{out}{err}");
    assert!(err.contains("resume"), "{err}");
    let (_, fetched_first, _, _) = summary(&out);
    assert!(fetched_first < n, "stopped early: {out}");
    let state_files: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert_eq!(state_files.len(), 1, "one state file");

    up.set_latency(Duration::ZERO);
    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("done earlier {fetched_first}")), "{out}");
    let (total, fetched_second, _, failed) = summary(&out);
    assert_eq!((total, failed), (n, 0));
    assert_eq!(fetched_first + fetched_second, n, "{out}");
    assert_eq!(up.total(), n, "every tile paid for exactly once over both runs");
    assert_eq!(fetched(&up).into_iter().collect::<BTreeSet<_>>(), want);
}

#[actix_rt::test]
async fn a_failing_tile_is_retried_then_counted_and_the_next_run_fetches_only_it() {
    let up = upstream(300);
    let p = Proxy::start(&up, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let want = expected([9.0, 45.3, 9.4, 45.6], 8..=10);
    let n = want.len() as u64;
    let &(z, x, y) = want.iter().last().unwrap();
    let broken = format!("/v3/base/mc/{z}/{x}/{y}/png");
    up.fail_always(&broken, Fault::Status { code: 500, retry_after: None });
    let args = ["--index", "seed5", "--bbox", "9.0,45.3,9.4,45.6", "--zoom", "8-10", "--through", &p.base];

    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(summary(&out), (n, n - 1, 0, 1), "{out}");
    assert!(up.count(&broken) > 1, "the failing tile was retried");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 1, "the state is kept to retry it");

    up.clear_faults();
    let before = up.total();
    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(summary(&out), (n, 1, 0, 0), "{out}");
    assert_eq!(up.total(), before + 1, "only the failed tile is asked for again");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[actix_rt::test]
async fn direct_seeding_fills_the_cache_that_a_proxy_then_serves_as_hits() {
    let up = upstream(700);
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("tile-proxy.toml");
    std::fs::write(
        &config,
        format!(
            "here_api_key = \"{SERVER_KEY}\"\nraster_upstream = \"{u}\"\nvector_upstream = \"{u}\"\n\
             cache_dir = \"{dir}\"\nmemory_cache = \"32MiB\"\ndisk_cache = \"16MiB\"\nmax_entry_size = \"256KiB\"\n",
            u = up.base_url(),
            dir = cache.path().display()
        ),
    )
    .unwrap();
    let want = expected([-0.3, 51.4, 0.1, 51.6], 9..=12);
    let n = want.len() as u64;
    let args = ["--index", "seed3", "--bbox", "-0.3,51.4,0.1,51.6", "--zoom", "9-12", "--direct", "--config"];
    let (code, out, err) = seed(work.path(), &[&args[..], &[config.to_str().unwrap()]].concat()).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(summary(&out), (n, n, 0, 0), "{out}");
    assert_eq!(fetched(&up).into_iter().collect::<BTreeSet<_>>(), want);

    up.reset();
    let token = "bill-admin-token-0123456789";
    let p = Proxy::start_in(&up, cache, |f| f.admin_token = Some(token.into())).await;
    for (z, x, y) in &want {
        let r = p.get(&format!("/v3/base/mc/{z}/{x}/{y}/png?indice=seed3")).await;
        assert_eq!((r.status.as_u16(), r.x_cache()), (200, "HIT"), "{z}/{x}/{y}");
    }
    assert_eq!(up.total(), 0, "every seeded tile came from the cache");
    // The seed's upstream transactions are on the month's bill (bill.json), the hits after it too.
    let stats = p.get_with("/admin/stats", &[("Authorization", &format!("Bearer {token}"))]).await.json();
    let raster = &stats["bill"]["indices"]["seed3"]["apis"]["raster"];
    assert_eq!((raster["transactions"].as_u64(), raster["hits"].as_u64()), (Some(n), Some(n)), "{stats}");
}

#[actix_rt::test]
async fn bad_arguments_exit_2_with_a_clear_message() {
    let work = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--bbox", "10,50,11,49", "--zoom", "5"], "south"),
        (&["--bbox", "10,50,190,51", "--zoom", "5"], "longitude"),
        (&["--bbox", "10,50,11,51", "--zoom", "21"], "zoom"),
        (&["--bbox", "10,50,11,51", "--zoom", "18", "--layer", "base"], "(17)"),
        (&["--bbox", "10,50,11,51", "--zoom", "5", "--style", "neon"], "style"),
        (&["--bbox", "-180,-85,180,85", "--zoom", "0-13"], "--max-tiles"),
    ];
    for (args, says) in cases {
        let (code, _, err) = seed(work.path(), &[&["--index", "x"], *args].concat()).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// POST `body` to `path` with an optional bearer token.
async fn post(p: &Proxy, path: &str, token: Option<&str>, body: &str) -> Resp {
    common::post_json(&p.client, &p.url(path), token, body).await
}

/// Polls a job until it is no longer running.
async fn job_when_over(p: &Proxy, status_url: &str) -> serde_json::Value {
    let auth = format!("Bearer {TOKEN}");
    let mut job = serde_json::Value::Null;
    eventually("the job is over", async || {
        job = p.get_with(status_url, &[("Authorization", &auth)]).await.json();
        job["state"] != "running"
    })
    .await;
    job
}

#[actix_rt::test]
async fn the_admin_api_checks_the_token_and_the_body_and_runs_a_job_to_done() {
    let up = upstream(400);
    let body = r#"{"index": "seed4", "bbox": [5.8, 45.8, 6.3, 46.3], "zoom": [7, 10], "size": 512, "concurrency": 4}"#;

    let closed = Proxy::start(&up, |_| {}).await;
    assert_eq!(post(&closed, "/admin/seed", Some(TOKEN), body).await.status.as_u16(), 404, "no token configured");

    let p = Proxy::start(&up, |c| c.admin_token = Some(TOKEN.into())).await;
    assert_eq!(post(&p, "/admin/seed", None, body).await.status.as_u16(), 401);
    assert_eq!(post(&p, "/admin/seed", Some("wrong"), body).await.status.as_u16(), 401);
    let bad = post(&p, "/admin/seed", Some(TOKEN), r#"{"index": "seed4", "bbox": [5.8, 45.8, 6.3], "zoom": 7}"#).await;
    assert_eq!(bad.status.as_u16(), 400);
    assert_eq!(bad.json()["field"], "bbox", "{}", bad.json());
    let bad =
        post(&p, "/admin/seed", Some(TOKEN), r#"{"index": "seed4", "bbox": [5.8, 45.8, 6.3, 46.3], "zoom": [7, 25]}"#)
            .await;
    assert_eq!((bad.status.as_u16(), bad.json()["field"].as_str()), (400, Some("zoom")));
    assert_eq!(up.total(), 0);

    let want = expected([5.8, 45.8, 6.3, 46.3], 7..=10);
    let n = want.len() as u64;
    let started = post(&p, "/admin/seed", Some(TOKEN), body).await;
    assert_eq!(started.status.as_u16(), 202);
    let started = started.json();
    assert_eq!(started["total"], n);
    let url = started["status_url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("/admin/seed/{}", started["id"].as_str().unwrap()));
    let job = job_when_over(&p, &url).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (&job["total"], &job["done"], &job["fetched"], &job["cached"], &job["failed"]),
        (&n.into(), &n.into(), &n.into(), &0.into(), &0.into())
    );
    assert!(job["finished_at"].is_string(), "{job}");
    assert_eq!(fetched(&up).into_iter().collect::<BTreeSet<_>>(), want);
    assert!(up.requests().iter().all(|r| r.query_param("size").as_deref() == Some("512")));

    let again = post(&p, "/admin/seed", Some(TOKEN), body).await.json();
    let job = job_when_over(&p, again["status_url"].as_str().unwrap()).await;
    assert_eq!((&job["state"], &job["fetched"], &job["cached"]), (&"done".into(), &0.into(), &n.into()), "{job}");
    assert_eq!(up.total(), n, "the second job found every tile cached");

    let auth = format!("Bearer {TOKEN}");
    let unknown = p.get_with("/admin/seed/nosuchjob", &[("Authorization", &auth)]).await;
    assert_eq!(unknown.status.as_u16(), 404);
    assert_eq!(unknown.json()["error"], "not_found");
    assert_eq!(p.get(&url).await.status.as_u16(), 401, "status needs the token too");
}

#[actix_rt::test]
async fn a_seed_waits_out_the_rate_cap_and_stops_cleanly_when_the_budget_is_spent() {
    use tile_proxy::base::clock::Clock;
    let up = upstream(300);
    let p = Proxy::start(&up, |f| {
        // A queue shorter than the seed's concurrency needs: some tiles are refused as busy.
        f.upstream_rps = Some(10.0);
        f.upstream_queue_wait = common::dur("200ms");
        f.index.entry("seedb".into()).or_default().budget_hour = Some(15);
    })
    .await;
    let hour = 3_600_000;
    let now = p.clock.now_ms();
    p.clock.advance_ms((now / hour + 1) * hour + 60_000 - now);
    let work = tempfile::tempdir().unwrap();
    let want = expected([13.1, 52.3, 13.7, 52.7], 9..=11);
    let n = want.len() as u64;
    assert!(n > 15 && n <= 30, "{n} tiles: more than one budget, less than two");
    let args = ["--index", "seedb", "--bbox", "13.1,52.3,13.7,52.7", "--zoom", "9-11", "--concurrency", "6"];
    let args = [&args[..], &["--through", &p.base]].concat();

    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("budget") && err.contains("seedb") && err.contains("resume"), "{err}");
    assert_eq!(up.total(), 15, "exactly the budget");
    let (_, fetched_first, _, failed) = summary(&out);
    assert_eq!((fetched_first, failed), (15, 0), "busy answers were waited out, not failed: {out}");
    let busy = common::metric(&p.metrics().await, "tile_proxy_upstream_busy_total", &[]);
    assert!(busy > 0.0, "the cap refused some tiles, which the seed asked again");
    let mut at: Vec<Instant> = up.requests().iter().map(|r| r.at).collect();
    at.sort();
    for w in at.windows(11) {
        assert!(w[10] - w[0] >= Duration::from_millis(940), "11 upstream requests within {:?}", w[10] - w[0]);
    }

    // The next hour: the same command goes on with the rest, never paying twice.
    let now = p.clock.now_ms();
    p.clock.advance_ms((now / hour + 1) * hour + 60_000 - now);
    let (code, out, err) = seed(work.path(), &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(up.total(), n);
    assert_eq!(fetched(&up).into_iter().collect::<BTreeSet<_>>(), want, "every tile once");
}

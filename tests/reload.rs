//! Reload without restart, with the real binary: SIGHUP and a changed file (the TOML, a key
//! file, a Kubernetes Secret's symlink swap) load the configuration again; a valid one applies
//! to the next requests with the cache kept, an invalid one is refused (logged, counted) and
//! the old one stays, a restart-only setting is reported and left as it was. A rotated HERE key
//! keeps the cache. `/health` shows the loaded configuration's hash and load time.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{Process, BIN};
use common::{eventually, metric, raw_get_at};
use test_upstream::{Options, Upstream};

/// A test upstream that takes any key (the tests read the key it was sent).
fn any_key_upstream() -> Upstream {
    Upstream::start(Options { api_key: None, min_size: 3_000, max_size: 3_000, ..Options::default() }).unwrap()
}

/// A `tile-proxy` serving, and the address it listens on.
struct Proc {
    process: Process,
    addr: String,
    _cache: tempfile::TempDir,
}

/// Starts the binary in front of `up` with `env` (no key unless `env` gives one), memory only.
async fn spawn(up: &Upstream, env: &[(&str, &str)]) -> Proc {
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("TILE_PROXY_LISTEN", "127.0.0.1:0")
        .env("TILE_PROXY_RASTER_UPSTREAM", up.base_url())
        .env("TILE_PROXY_VECTOR_UPSTREAM", up.base_url())
        .env("TILE_PROXY_CACHE_DIR", cache.path())
        .env("TILE_PROXY_DISK_CACHE", "0")
        .env("TILE_PROXY_WORKERS", "1")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    let process = Process::spawn(cmd);
    let addr = process.listening().await;
    Proc { process, addr, _cache: cache }
}

impl Proc {
    /// Status, lowercased head, body.
    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let (head, body) = raw_get_at(&self.addr, path);
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), body)
    }

    /// `/health`'s `config` object.
    fn config(&self) -> serde_json::Value {
        let (status, _, body) = self.get("/health");
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["config"].clone()
    }

    fn reloads(&self, outcome: &str) -> f64 {
        let (_, _, body) = self.get("/metrics");
        metric(&String::from_utf8_lossy(&body), "tile_proxy_config_reloads_total", &[&format!("outcome=\"{outcome}\"")])
    }

    /// The line the reloader logs once a change is applied, for what asked.
    async fn reloaded(&self, why: &str) -> String {
        self.process
            .line(&format!("a reload by {why}"), |l| l.contains("configuration reloaded") && l.contains(why))
            .await
    }
}

/// The `max-age` a response gives its client.
fn max_age(head: &str) -> u64 {
    let at = head.find("max-age=").unwrap_or_else(|| panic!("no max-age in {head}")) + "max-age=".len();
    head[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The key the upstream received with its last request.
fn last_key(up: &Upstream) -> String {
    up.requests().last().expect("a request").query_param("apiKey").expect("a key")
}

const SIGHUP_WHY: &str = "SIGHUP";
const FILE_WHY: &str = "a configuration file changed";

#[actix_rt::test]
async fn sighup_reloads_a_changed_key_file_keeps_the_process_and_health_shows_the_new_hash() {
    let up = any_key_upstream();
    // The key file is a symlink into a folder the reloader does not watch: only SIGHUP can see
    // its change.
    let (links, real) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(real.path().join("key"), "KEYONE1234\n").unwrap();
    let key_file = links.path().join("here_key");
    std::os::unix::fs::symlink(real.path().join("key"), &key_file).unwrap();
    let p = spawn(&up, &[("HERE_API_KEY_FILE", key_file.to_str().unwrap())]).await;
    let (status, _, _) = p.get("/here-proxy/mc/5/1/1/png?indice=rl1");
    assert_eq!(status, 200);
    assert_eq!(last_key(&up), "KEYONE1234");
    let before = p.config();
    assert_eq!(before["hash"].as_str().unwrap().len(), 16, "{before}");
    assert!(before["loaded_unix_ms"].as_u64().unwrap() > 0 && before["loaded_at"].is_string(), "{before}");

    std::fs::write(real.path().join("key"), "KEYTWO5678\n").unwrap();
    p.process.signal(libc::SIGHUP);
    p.reloaded(SIGHUP_WHY).await;

    let (status, _, _) = p.get("/here-proxy/mc/5/1/2/png?indice=rl1");
    assert_eq!(status, 200, "alive, and serving misses with the new key");
    assert_eq!(last_key(&up), "KEYTWO5678");
    // A rotated key is the same credential: what the old key fetched is still served.
    let fetched = up.total();
    let (status, head, _) = p.get("/here-proxy/mc/5/1/1/png?indice=rl1");
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: hit"), "the old key's entry after the rotation: {head}");
    assert_eq!(up.total(), fetched, "no upstream call");
    let after = p.config();
    assert_ne!(after["hash"], before["hash"]);
    assert!(after["loaded_unix_ms"].as_u64() >= before["loaded_unix_ms"].as_u64(), "{before} {after}");
    assert_eq!(after["needs_restart"], serde_json::json!([]));
    assert_eq!(p.reloads("applied"), 1.0);
    assert_eq!(p.reloads("invalid"), 0.0);
    // A clean exit by SIGTERM later: SIGHUP did not end it.
    let logs = p.process.terminate().await.lines.join("\n");
    assert!(!logs.contains("KEYONE1234") && !logs.contains("KEYTWO5678"), "a key in the logs");
}

/// The TOML file in `dir`, (re)written whole as editors and `kubectl cp` do: a new file renamed
/// over the old one (the reloader never reads half a file).
fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("tile-proxy.toml");
    let new = dir.join(".tile-proxy.toml.new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, &path).unwrap();
    path.to_str().unwrap().to_string()
}

#[actix_rt::test]
async fn a_changed_config_file_applies_a_new_index_ttl_to_the_next_request_and_keeps_the_cache() {
    let up = any_key_upstream();
    let conf = tempfile::tempdir().unwrap();
    let path = write_config(conf.path(), "[index.rl2]\nttl = \"1h\"\n");
    let p = spawn(&up, &[("TILE_PROXY_CONFIG", &path), ("HERE_API_KEY", "KEYRL2")]).await;
    let tile = "/here-proxy/mc/5/2/1/png?indice=rl2";
    let (status, head, body) = p.get(tile);
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: miss"), "{head}");
    assert!(max_age(&head) <= 3600, "{head}");

    write_config(conf.path(), "[index.rl2]\nttl = \"2h\"\n");
    p.reloaded(FILE_WHY).await;

    let (status, head, again) = p.get(tile);
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: hit"), "the cache is kept: {head}");
    assert_eq!(again, body);
    assert!(max_age(&head) > 7000, "the new TTL applies: {head}");
    assert_eq!(up.total(), 1);
    assert_eq!(p.reloads("applied"), 1.0);
    p.process.terminate().await;
}

#[actix_rt::test]
async fn an_invalid_change_keeps_the_old_configuration_and_is_logged_as_check_config_prints_it_and_counted() {
    let up = any_key_upstream();
    let conf = tempfile::tempdir().unwrap();
    let path = write_config(conf.path(), "[index.rl3]\nttl = \"1h\"\n");
    let p = spawn(&up, &[("TILE_PROXY_CONFIG", &path), ("HERE_API_KEY", "KEYRL3")]).await;
    let tile = "/here-proxy/mc/5/3/1/png?indice=rl3";
    assert_eq!(p.get(tile).0, 200);
    let before = p.config();

    write_config(conf.path(), "[index.rl3]\nttl = \"400d\"\n[upstream]\nretry_attempts = 0\n");
    let refused = p
        .process
        .line("the refused reload", |l| l.contains("configuration reload refused, the loaded one stays"))
        .await;
    for needle in
        ["invalid configuration (2 problem(s))", "(index.rl3.ttl): 400d is too long", "upstream.retry_attempts"]
    {
        assert!(refused.contains(needle), "{needle} not in {refused}");
    }

    let (status, head, _) = p.get(tile);
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: hit") && max_age(&head) <= 3600, "the old TTL still applies: {head}");
    assert_eq!(p.config(), before, "the old configuration stays");
    assert_eq!(p.reloads("invalid"), 1.0);
    assert_eq!(p.reloads("applied"), 0.0);

    // Fixed: applied.
    write_config(conf.path(), "[index.rl3]\nttl = \"2h\"\n");
    p.reloaded(FILE_WHY).await;
    assert!(max_age(&p.get(tile).1) > 7000);
    p.process.terminate().await;
}

#[actix_rt::test]
async fn a_restart_only_change_is_reported_as_needs_restart_and_left_as_it_was() {
    let up = any_key_upstream();
    let conf = tempfile::tempdir().unwrap();
    let path = write_config(conf.path(), "memory_cache = \"16MiB\"\n[index.rl4]\nttl = \"1h\"\n");
    let p = spawn(&up, &[("TILE_PROXY_CONFIG", &path), ("HERE_API_KEY", "KEYRL4")]).await;
    let tile = "/here-proxy/mc/5/4/1/png?indice=rl4";
    assert_eq!(p.get(tile).0, 200);

    write_config(conf.path(), "memory_cache = \"32MiB\"\n[index.rl4]\nttl = \"2h\"\n");
    let warned = p.process.line("the needs-restart warning", |l| l.contains("need a restart")).await;
    assert!(warned.contains("memory_cache"), "{warned}");
    p.reloaded(FILE_WHY).await;

    let config = p.config();
    assert_eq!(config["needs_restart"], serde_json::json!(["memory_cache"]), "{config}");
    let (_, _, health) = p.get("/health");
    let health: serde_json::Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["cache"][0]["memory"]["capacity_bytes"], serde_json::json!(16 << 20), "left as it was: {health}");
    assert!(max_age(&p.get(tile).1) > 7000, "the rest applies");
    p.process.terminate().await;
}

#[actix_rt::test]
async fn a_kubernetes_secret_update_by_symlink_swap_is_picked_up() {
    let up = any_key_upstream();
    // A Secret volume as the kubelet writes it: HERE_API_KEY -> ..data/HERE_API_KEY,
    // ..data -> ..<timestamp>, swapped by renaming a new ..data_tmp link over ..data.
    let secret = tempfile::tempdir().unwrap();
    let s = secret.path();
    std::fs::create_dir(s.join("..2026_12_06_01_00_00.1")).unwrap();
    std::fs::write(s.join("..2026_12_06_01_00_00.1/HERE_API_KEY"), "K8SKEYONE").unwrap();
    std::os::unix::fs::symlink("..2026_12_06_01_00_00.1", s.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/HERE_API_KEY", s.join("HERE_API_KEY")).unwrap();
    let key_file = s.join("HERE_API_KEY");
    let p = spawn(&up, &[("HERE_API_KEY_FILE", key_file.to_str().unwrap())]).await;
    assert_eq!(p.get("/here-proxy/mc/5/5/1/png?indice=rl5").0, 200);
    assert_eq!(last_key(&up), "K8SKEYONE");

    std::fs::create_dir(s.join("..2026_12_06_02_00_00.2")).unwrap();
    std::fs::write(s.join("..2026_12_06_02_00_00.2/HERE_API_KEY"), "K8SKEYTWO").unwrap();
    std::os::unix::fs::symlink("..2026_12_06_02_00_00.2", s.join("..data_tmp")).unwrap();
    std::fs::rename(s.join("..data_tmp"), s.join("..data")).unwrap();
    std::fs::remove_dir_all(s.join("..2026_12_06_01_00_00.1")).unwrap();
    p.reloaded(FILE_WHY).await;

    assert_eq!(p.get("/here-proxy/mc/5/5/2/png?indice=rl5").0, 200);
    assert_eq!(last_key(&up), "K8SKEYTWO");
    assert_eq!(p.reloads("applied"), 1.0);
    p.process.terminate().await;
}

#[actix_rt::test]
async fn a_request_in_flight_finishes_with_the_configuration_it_started_with() {
    let up = any_key_upstream();
    let conf = tempfile::tempdir().unwrap();
    let path = write_config(conf.path(), "[index.rl6]\nttl = \"1h\"\n");
    let p = spawn(&up, &[("TILE_PROXY_CONFIG", &path), ("HERE_API_KEY", "KEYRL6")]).await;
    let tile = "/here-proxy/mc/5/6/1/png?indice=rl6";
    // A miss that waits on the upstream while the configuration changes under it.
    up.set_latency(Duration::from_secs(3));
    let addr = p.addr.clone();
    let slow = std::thread::spawn(move || raw_get_at(&addr, tile));
    eventually("the miss reached the upstream", async || up.total() == 1).await;
    write_config(conf.path(), "[index.rl6]\nttl = \"2h\"\n");
    p.reloaded(FILE_WHY).await;
    up.set_latency(Duration::ZERO);

    let (head, _) = slow.join().unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains("x-cache: miss"), "{head}");
    assert!(max_age(&head) <= 3600, "the TTL it started with: {head}");
    let (_, head, _) = p.get(tile);
    assert!(head.contains("x-cache: hit") && max_age(&head) > 7000, "the next one has the new TTL: {head}");
    p.process.terminate().await;
}

//! The real `tile-proxy` binary as operators run it: environment configuration, JSON logs,
//! SIGTERM drain and restart on the same cache folder, configuration errors.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{run, Process, BIN};
use common::{raw_get_at, signalled};
use test_upstream::{Options, Upstream};

const KEY: &str = "BINARYSERVERKEY42";

/// A test upstream that wants [`KEY`] and serves 12,000-byte tiles.
fn upstream_12k() -> Upstream {
    Upstream::start(Options { api_key: Some(KEY.into()), min_size: 12_000, max_size: 12_000, ..Options::default() })
        .unwrap()
}

/// A `tile-proxy` serving, and the address it listens on.
struct Proc {
    process: Process,
    addr: String,
}

async fn spawn(up: &Upstream, dir: &std::path::Path) -> Proc {
    spawn_with(up, dir, &[]).await
}

async fn spawn_with(up: &Upstream, dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = proxy_cmd(up, dir, &[]);
    cmd.env("TILE_PROXY_WORKERS", "2")
        // Even at debug level the key must not leak.
        .env("RUST_LOG", "debug")
        .envs(extra_env.iter().copied());
    let process = Process::spawn(cmd);
    let addr = process.listening().await;
    Proc { process, addr }
}

impl Proc {
    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let (head, body) = raw_get_at(&self.addr, path);
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), body)
    }

    /// SIGTERM, then a clean exit; every line it printed.
    async fn terminate(self) -> Vec<String> {
        self.process.terminate().await.lines
    }
}

#[actix_rt::test]
async fn sigterm_drains_closes_the_cache_and_a_restart_serves_from_disk_without_leaking_the_key() {
    let up = upstream_12k();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&up, dir.path()).await;
    let (status, head, body) =
        p.get("/here-proxy/mc/5/15/13/png?indice=123&style=explore.day&size=512&apiKey=CLIENTKEY9");
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: miss"), "{head}");
    assert_eq!(body, up.tile_bytes("/v3/base/mc/5/15/13/png?size=512"));
    let (status, _, _) = p.get("/here-proxy/mc/5/15/99/png?indice=123&apiKey=CLIENTKEY9");
    assert_eq!(status, 400);
    let (_, _, metrics) = p.get("/metrics");
    let mut logs = p.terminate().await;

    let p = spawn(&up, dir.path()).await;
    let (status, head, body2) = p.get("/here-proxy/mc/5/15/13/png?indice=123&size=512");
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: hit"), "served from disk after restart: {head}");
    assert_eq!(body2, body);
    assert_eq!(up.total(), 1);
    logs.extend(p.terminate().await);

    // One JSON line per request with the fields operators need.
    let request_lines = access_lines(&logs);
    let tile_line = request_lines
        .iter()
        .find(|v| v["path"] == "/here-proxy/mc/5/15/13/png" && v["cache"] == "miss")
        .unwrap_or_else(|| panic!("no request line in {logs:#?}"));
    for field in ["request_id", "method", "client", "index", "tile", "status", "latency_ms", "bytes"] {
        assert!(!tile_line[field].is_null(), "{field} missing in {tile_line}");
    }
    assert_eq!(tile_line["index"], "123");
    assert_eq!(tile_line["tile"], "raster/base/5/15/13");
    assert_eq!(tile_line["status"], 200);
    assert_eq!(tile_line["bytes"], 12_000);
    assert_eq!(tile_line["request_id"].as_str().unwrap().len(), 36, "a uuid");
    assert!(request_lines.iter().any(|v| v["cache"] == "hit"));
    assert!(request_lines.iter().any(|v| v["cache"] == "invalid" && v["status"] == 400));
    // One line per request: 3 tile requests + /metrics.
    assert_eq!(request_lines.len(), 4, "{request_lines:#?}");
    // The key, server's or client's, appears nowhere.
    let everything = logs.join("\n") + &String::from_utf8_lossy(&metrics);
    assert!(!everything.contains(KEY), "server key leaked");
    assert!(!everything.contains("CLIENTKEY9"), "client key leaked");
}

/// The access lines of a process's output so far.
fn access_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "tile_proxy::access" && v["message"] == "request")
        .collect()
}

#[actix_rt::test]
async fn access_lines_are_flushed_while_running_sampled_on_request_and_can_be_turned_off() {
    let up = upstream_12k();
    let tile = "/v3/base/mc/4/1/1/png";

    // Buffered, but a line waits at most access_log_flush: it shows up while the proxy runs.
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_with(&up, dir.path(), &[("TILE_PROXY_ACCESS_LOG_FLUSH", "100ms")]).await;
    assert_eq!(p.get(tile).0, 200);
    p.process
        .line("the access line, flushed while the proxy runs", |l| {
            access_lines(&[l.to_string()]).iter().any(|v| v["path"] == tile && v["cache"] == "miss")
        })
        .await;
    let (_, _, metrics) = p.get("/metrics");
    assert!(String::from_utf8_lossy(&metrics).contains("tile_proxy_access_log_dropped_total 0"));
    p.terminate().await;

    // One request in 4 (per worker: one worker here), and every answer of 400 or more.
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_with(&up, dir.path(), &[("TILE_PROXY_ACCESS_LOG_SAMPLE", "4"), ("TILE_PROXY_WORKERS", "1")]).await;
    for _ in 0..8 {
        assert_eq!(p.get(tile).0, 200);
    }
    for _ in 0..3 {
        assert_eq!(p.get("/v3/base/mc/4/1/99/png").0, 400);
    }
    let seen = access_lines(&p.terminate().await);
    let ok = seen.iter().filter(|v| v["path"] == tile && v["status"] == 200).count();
    let bad = seen.iter().filter(|v| v["status"] == 400).count();
    assert_eq!((ok, bad), (2, 3), "{seen:#?}");

    // Off: no access line, the other logs still there.
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_with(&up, dir.path(), &[("TILE_PROXY_ACCESS_LOG", "false")]).await;
    assert_eq!(p.get(tile).0, 200);
    let lines = p.terminate().await;
    assert_eq!(access_lines(&lines).len(), 0, "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("cache closed")));
}

#[actix_rt::test]
async fn sigterm_during_a_slow_streamed_miss_drains_it_whole_and_the_restart_serves_it_from_disk() {
    let up = upstream_12k();
    let path = "/v3/base/mc/6/33/22/png";
    // About 1.2 s of body: the miss is still streaming when SIGTERM arrives.
    up.fail_always(path, test_upstream::Fault::SlowBody { chunk: 1_000, interval: Duration::from_millis(100) });
    let dir = tempfile::tempdir().unwrap();
    let env = [("TILE_PROXY_DRAIN_DELAY", "1s"), ("TILE_PROXY_SHUTDOWN_TIMEOUT", "10s")];
    let p = spawn_with(&up, dir.path(), &env).await;
    let addr = p.addr.clone();
    let (streaming, body_started) = tokio::sync::oneshot::channel();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = Vec::new();
        let mut streaming = Some(streaming);
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let head = all.windows(4).position(|w| w == b"\r\n\r\n");
            if head.is_some_and(|h| all.len() > h + 4) {
                // The head and the first body bytes are through: the miss is streaming.
                streaming.take().map(|s| s.send(()));
            }
        }
        all
    });
    signalled("the first body bytes of the miss", body_started).await.expect("the client saw the body start");
    p.process.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // The signal is handled on the server's own task: wait for it to have turned /ready off
    // (the line comes right after), not for the first request to win the race against it.
    p.process.line("not ready after SIGTERM", |l| l.contains("not ready; serving on before draining")).await;
    let (status, _, _) = p.get("/ready");
    assert_eq!(status, 503, "/ready fails at once, while the drain delay keeps serving");
    assert!(signalled.elapsed() < Duration::from_millis(900), "{:?}", signalled.elapsed());
    let all = client.join().unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert!(all.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&all[..split]));
    assert_eq!(&all[split..], &up.tile_bytes(path)[..], "the client got the whole tile");
    let logs = p.terminate().await;
    assert!(logs.iter().any(|l| l.contains("cache closed")), "{logs:#?}");

    up.clear_faults();
    let p = spawn(&up, dir.path()).await;
    let (status, head, body) = p.get(path);
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: hit") && head.contains("x-cache-tier: disk"), "{head}");
    assert_eq!(body, &up.tile_bytes(path)[..]);
    assert_eq!(up.count(path), 1, "stored before the drain ended: no second upstream call");
    p.terminate().await;
}

#[actix_rt::test]
async fn healthcheck_probes_the_listen_port_from_the_environment_or_the_config_file() {
    let up = Upstream::start(Options { api_key: Some(KEY.into()), ..Options::default() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&up, dir.path()).await;
    let check = async |env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.env_clear().envs(env.iter().copied()).arg("healthcheck");
        let out = run(cmd).await;
        (out.code(), out.stdout + &out.stderr)
    };
    let (code, said) = check(&[("TILE_PROXY_LISTEN", &p.addr)]).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("200"), "{said}");
    let cfg = dir.path().join("tile-proxy.toml");
    std::fs::write(&cfg, format!("listen = \"{}\"\n", p.addr)).unwrap();
    let (code, said) = check(&[("TILE_PROXY_CONFIG", cfg.to_str().unwrap())]).await;
    assert_eq!(code, Some(0), "the port from the config file: {said}");
    let addr = p.addr.clone();
    p.terminate().await;
    let (code, said) = check(&[("TILE_PROXY_LISTEN", &addr)]).await;
    assert_eq!(code, Some(1), "a stopped proxy is unhealthy: {said}");
}

/// A key HERE would refuse, or an upstream that cannot be reached: the first tile's 502 is
/// explained in the log by the upstream's host and what the OS said, never by the key.
#[actix_rt::test]
async fn an_unreachable_upstream_is_named_with_the_os_error_in_the_log() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("HERE_API_KEY", KEY)
        .env("TILE_PROXY_LISTEN", "127.0.0.1:0")
        .env("TILE_PROXY_RASTER_UPSTREAM", &base)
        .env("TILE_PROXY_CACHE_DIR", dir.path())
        .env("TILE_PROXY_DISK_CACHE", "0")
        .env("TILE_PROXY_WORKERS", "1")
        .env("TILE_PROXY_UPSTREAM__RETRY_ATTEMPTS", "1")
        .env("RUST_LOG", "info");
    let process = Process::spawn(cmd);
    let addr = process.listening().await;
    let (head, _) = raw_get_at(&addr, "/v3/base/mc/1/0/0/png");
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let line = process.line("the failed fetch's log line", |l| l.contains("upstream fetch failed")).await;
    assert!(line.contains(&base), "names the upstream: {line}");
    assert!(line.contains("os error 111") || line.to_lowercase().contains("refused"), "says what the OS said: {line}");
    assert!(!line.contains(KEY), "never the key: {line}");
    drop(process);
}

#[actix_rt::test]
async fn configuration_errors_are_all_listed_and_exit_non_zero() {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("TILE_PROXY_LISTEN", "127.0.0.1:0");
    let out = run(cmd).await;
    assert_eq!(out.code(), Some(2));
    let err = &out.stderr;
    // The message the README shows, word for word at its start, and where to go without a key.
    assert!(
        err.starts_with("tile-proxy: invalid configuration (1 problem(s)):\n  - here_api_key: no HERE API key given."),
        "{err}"
    );
    assert!(err.contains("HERE_API_KEY") && err.contains("scripts/demo.sh"), "{err}");

    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("HERE_API_KEY", "k")
        .env("TILE_PROXY_MEMORY_CACHE", "lots")
        .env("TILE_PROXY_LISTEN", "nowhere")
        .env("TILE_PROXY_RASTER_UPSTREAM", "ftp://x");
    let out = run(cmd).await;
    assert_eq!(out.code(), Some(2));
    let err = &out.stderr;
    for needle in ["memory_cache", "listen", "raster_upstream", "3 problem"] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "upstream_requires_key = false\n[index.abc]\nttl = \"5m\"\nstale_if_error = \"1h\"\n")
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(["check-config", "--config"]).arg(&cfg);
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", out.stderr);
    let shown: toml::Value = toml::from_str(&out.stdout).expect("check-config prints TOML");
    assert_eq!(shown["index"]["abc"]["ttl"].as_str(), Some("5m"), "{shown}");
    assert_eq!(shown["index"]["abc"]["stale_if_error"].as_str(), Some("1h"), "{shown}");
}

/// `TILE_PROXY_<KEY>`, nested keys joined by `__`, the index name as written.
fn env_name(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let upper: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| if parts[0] == "index" && i == 1 { p.to_string() } else { p.to_ascii_uppercase() })
        .collect();
    format!("TILE_PROXY_{}", upper.join("__"))
}

#[actix_rt::test]
async fn every_setting_can_be_set_from_the_environment_and_check_config_shows_it() {
    use tile_proxy::config::{key_paths, FileConfig, PolicyFileConfig};
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("here.key");
    std::fs::write(&key_file, "FILEKEY1\n").unwrap();
    let idx_key_file = dir.path().join("idx.key");
    std::fs::write(&idx_key_file, "IDXFILEKEY\n").unwrap();
    let key_file = key_file.to_str().unwrap();
    let idx_key_file = idx_key_file.to_str().unwrap();
    // A real CA: both CA files are checked at load.
    common::tls::make_certs(dir.path());
    let ca_file = dir.path().join("ca.pem");
    let ca_file = ca_file.to_str().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "FILE-ADMIN-TOKEN-0123456789\n").unwrap();
    let token_file = token_file.to_str().unwrap();

    // Every leaf of the default config, plus every leaf of one index section (mixed case: index
    // names are kept as written). A new setting shows up here and fails the test until it has
    // a value below.
    let mut keys = Vec::new();
    key_paths("", &serde_json::to_value(FileConfig::default()).unwrap(), &mut keys);
    key_paths("index.Idx1.", &serde_json::to_value(PolicyFileConfig::default()).unwrap(), &mut keys);
    keys.retain(|k| k != "index" && k != "defaults.api_key_env" && k != "defaults.api_key_file");

    // key -> (environment value, what check-config must show), each valid and not the default.
    let s = |v: &str| toml::Value::String(v.into());
    let n = |v: i64| toml::Value::Integer(v);
    let same = |v: &str| (v.to_string(), s(v));
    let values: Vec<(&str, (String, toml::Value))> = vec![
        ("listen", same("127.0.0.1:9999")),
        ("workers", ("3".into(), n(3))),
        ("here_api_key", ("ENVKEY123".into(), s("(left out)"))),
        ("here_api_key_file", same(key_file)),
        ("upstream_requires_key", ("false".into(), toml::Value::Boolean(false))),
        ("raster_upstream", same("http://127.0.0.1:9")),
        ("vector_upstream", same("http://127.0.0.1:10")),
        ("traffic_raster_upstream", same("http://127.0.0.1:11")),
        ("traffic_vector_upstream", same("http://127.0.0.1:12")),
        ("cache_dir", same("/tmp/tile-proxy-env-test")),
        ("memory_cache", same("64MiB")),
        ("memory_eviction", same("sieve")),
        ("disk_cache", same("0")),
        ("max_entry_size", same("1MiB")),
        ("disk_write_buffer", same("4MiB")),
        ("flight_buffer", same("16MiB")),
        ("ttl_cap", same("2d")),
        ("default_ttl", same("3h")),
        ("reject_unknown_params", ("false".into(), toml::Value::Boolean(false))),
        ("unknown_indices", same("reject")),
        (
            "cors_origins",
            (
                "https://a.example,https://b.example:8443".into(),
                toml::Value::Array(vec![s("https://a.example"), s("https://b.example:8443")]),
            ),
        ),
        ("trusted_proxies", ("10.0.0.0/8, ::1/128".into(), toml::Value::Array(vec![s("10.0.0.0/8"), s("::1/128")]))),
        ("log_format", same("text")),
        ("access_log", ("false".into(), toml::Value::Boolean(false))),
        ("access_log_sample", ("10".into(), n(10))),
        ("access_log_buffer", same("128KiB")),
        ("access_log_flush", same("250ms")),
        ("metrics_max_indices", ("42".into(), n(42))),
        ("shutdown_timeout", same("3s")),
        ("drain_delay", same("1500ms")),
        ("upstream.connect_timeout", same("1s")),
        ("upstream.head_timeout", same("4s")),
        ("upstream.body_timeout", same("20s")),
        ("upstream.retry_attempts", ("2".into(), n(2))),
        ("upstream.retry_min_delay", same("50ms")),
        ("upstream.retry_max_delay", same("1s")),
        ("upstream.retry_total", same("3s")),
        ("upstream.max_connections", ("7".into(), n(7))),
        ("upstream.breaker_failures", ("9".into(), n(9))),
        ("upstream.breaker_cooldown", same("45s")),
        ("upstream.http2", ("false".into(), toml::Value::Boolean(false))),
        ("upstream.ca_file", same(ca_file)),
        ("redis_url", ("rediss://:REDISPASS99@cache:6380/2".into(), s("rediss://cache:6380/2"))),
        ("redis_mode", same("cluster")),
        (
            "redis_nodes",
            (
                "rediss://:REDISPASS99@cache:6380,rediss://cache2:6380".into(),
                toml::Value::Array(vec![s("rediss://cache:6380"), s("rediss://cache2:6380")]),
            ),
        ),
        ("redis_master_name", same("tile-cache")),
        ("redis_max_value", same("2MiB")),
        ("redis.timeout", same("40ms")),
        ("redis.write_timeout", same("400ms")),
        ("redis.connect_timeout", same("300ms")),
        ("redis.connections", ("3".into(), n(3))),
        ("redis.breaker_failures", ("4".into(), n(4))),
        ("redis.breaker_cooldown", same("7s")),
        ("redis.lease", same("20s")),
        ("redis.lease_wait", same("15s")),
        ("redis.fleet_clock", ("false".into(), toml::Value::Boolean(false))),
        ("redis.prefix", same("tp-test")),
        ("redis.ca_file", same(ca_file)),
        ("admin_token", ("ENV-ADMIN-TOKEN-0123456789".into(), s("(left out)"))),
        ("admin_token_file", same(token_file)),
        ("surrogate_keys", ("true".into(), toml::Value::Boolean(true))),
        ("disk_required", ("true".into(), toml::Value::Boolean(true))),
        ("admin_listen", same("127.0.0.1:9091")),
        ("map_page", ("false".into(), toml::Value::Boolean(false))),
        ("public_base_url", same("https://tiles.example.com")),
        ("compression", ("false".into(), toml::Value::Boolean(false))),
        ("compress_min_size", same("2KiB")),
        ("metadata_ttl", same("12h")),
        ("copyright_ttl", same("6h")),
        ("upstream_rps", ("12.5".into(), toml::Value::Float(12.5))),
        ("billing.bill_not_modified", ("false".into(), toml::Value::Boolean(false))),
        ("billing.raster.price_per_1000", ("0.83".into(), toml::Value::Float(0.83))),
        ("billing.raster.free_per_month", ("30000".into(), n(30000))),
        ("billing.vector.price_per_1000", ("1.5".into(), toml::Value::Float(1.5))),
        ("billing.vector.free_per_month", ("1000".into(), n(1000))),
        ("billing.traffic_raster.price_per_1000", ("2.25".into(), toml::Value::Float(2.25))),
        ("billing.traffic_raster.free_per_month", ("7".into(), n(7))),
        ("billing.traffic_vector.price_per_1000", ("3".into(), toml::Value::Float(3.0))),
        ("billing.traffic_vector.free_per_month", ("8".into(), n(8))),
        ("upstream_queue_wait", same("2s")),
        ("rate_limit_exempt", ("10.0.0.0/8".into(), toml::Value::Array(vec![s("10.0.0.0/8")]))),
        ("rate_limit_clients", ("5000".into(), n(5000))),
        ("rate_limit_shared", ("false".into(), toml::Value::Boolean(false))),
        ("cache_map_tiles", ("5000".into(), n(5000))),
        ("defaults.budget_hour", ("100".into(), n(100))),
        ("defaults.budget_day", ("1000".into(), n(1000))),
        ("defaults.traffic_budget_hour", ("200".into(), n(200))),
        ("defaults.traffic_budget_day", ("2000".into(), n(2000))),
        ("defaults.traffic_ttl", same("20s")),
        ("defaults.traffic_stale_if_error", same("10m")),
        ("defaults.rate_limit", ("2.5".into(), toml::Value::Float(2.5))),
        ("defaults.rate_burst", ("10".into(), n(10))),
        ("index.Idx1.budget_hour", ("7".into(), n(7))),
        ("index.Idx1.budget_day", ("70".into(), n(70))),
        ("index.Idx1.traffic_budget_hour", ("8".into(), n(8))),
        ("index.Idx1.traffic_budget_day", ("80".into(), n(80))),
        ("index.Idx1.traffic_ttl", same("45s")),
        ("index.Idx1.traffic_stale_if_error", same("2m")),
        ("index.Idx1.rate_limit", ("1.5".into(), toml::Value::Float(1.5))),
        ("index.Idx1.rate_burst", ("3".into(), n(3))),
        ("defaults.ttl", same("2h")),
        ("defaults.stale_while_revalidate", same("5m")),
        ("defaults.stale_if_error", same("12h")),
        ("defaults.negative_ttl", same("2m")),
        ("defaults.early_refresh_beta", ("0.5".into(), toml::Value::Float(0.5))),
        ("defaults.client_cache_control", same("public, max-age={max_age}, s-maxage=30")),
        ("index.Idx1.ttl", same("10m")),
        ("index.Idx1.stale_while_revalidate", same("1m")),
        ("index.Idx1.stale_if_error", same("6h")),
        ("index.Idx1.negative_ttl", same("30s")),
        ("index.Idx1.early_refresh_beta", ("2.5".into(), toml::Value::Float(2.5))),
        ("index.Idx1.client_cache_control", same("public, max-age={max_age}")),
        ("index.Idx1.api_key_env", same("IDX1_KEY")),
        ("index.Idx1.api_key_file", same(idx_key_file)),
    ];
    let mut cmd = Command::new(BIN);
    cmd.env_clear().arg("check-config").env("IDX1_KEY", "IDXENVKEY");
    for key in &keys {
        let (_, (value, _)) = values
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("setting {key} has no test value: add one to this test"));
        cmd.env(env_name(key), value);
    }
    let out = run(cmd).await;
    let stdout = &out.stdout;
    assert!(out.status.success(), "{}", out.stderr);
    for secret in ["ENVKEY123", "FILEKEY1", "IDXENVKEY", "IDXFILEKEY", "REDISPASS99", "ADMIN-TOKEN-0123456789"] {
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
    }
    let shown: toml::Value = toml::from_str(stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    for (key, (_, want)) in &values {
        let got = key.split('.').try_fold(&shown, |v, part| v.get(part));
        // Secrets are left out (a placeholder would not parse back), each named in a comment.
        let want = (want.as_str() != Some("(left out)")).then_some(want);
        assert_eq!(got, want, "{key} (set as {}) in\n{stdout}", env_name(key));
    }
    for note in ["# here_api_key (the HERE key) is set but not shown", "# admin_token is set but not shown"] {
        assert!(stdout.contains(note), "{note} in\n{stdout}");
    }
    assert_eq!(values.len(), keys.len(), "every test value is a setting");
}

#[actix_rt::test]
async fn bad_file_values_env_values_and_toml_syntax_errors_are_listed_with_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tile-proxy.toml");
    std::fs::write(&cfg, "here_api_key = \"k\"\n[upstream]\nhead_timeout = \"soon\"\n[index.a]\nttl = \"999d\"\n")
        .unwrap();
    let check = async |extra_env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.env_clear().args(["check-config", "--config"]).arg(&cfg);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = run(cmd).await;
        assert_eq!(out.code(), Some(2), "{}", out.stdout);
        out.stderr
    };
    let p = cfg.display();
    let env = [("TILE_PROXY_MEMORY_CACHE", "lots"), ("TILE_PROXY_LISTN", "127.0.0.1:1")];
    let err = check(&env).await;
    for needle in [
        format!("{p} line 3 (upstream.head_timeout): `soon` is not a duration"),
        format!("{p} line 5 (index.a.ttl): 999d is too long"),
        "env TILE_PROXY_MEMORY_CACHE (memory_cache): `lots` is not a size".into(),
        "env TILE_PROXY_LISTN (listn): `listn` is not a setting".into(),
        "4 problem(s)".into(),
    ] {
        assert!(err.contains(&needle), "{needle} not in {err}");
    }

    std::fs::write(&cfg, "here_api_key = \"k\"\nttl_cap = \"1d\"\nlisten = \"127.0.0.1:1\n").unwrap();
    let err = check(&env).await;
    for needle in [
        format!("{p} line 3: TOML syntax error"),
        "env TILE_PROXY_MEMORY_CACHE (memory_cache): `lots` is not a size".into(),
        "env TILE_PROXY_LISTN (listn): `listn` is not a setting".into(),
    ] {
        assert!(err.contains(&needle), "{needle} not in {err}");
    }
}

#[actix_rt::test]
async fn help_documents_every_setting_with_its_environment_name() {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--help"]);
    let help = run(cmd).await.stdout;
    for env in [
        "HERE_API_KEY",
        "HERE_API_KEY_FILE",
        "TILE_PROXY_LISTEN",
        "TILE_PROXY_RASTER_UPSTREAM",
        "TILE_PROXY_VECTOR_UPSTREAM",
        "TILE_PROXY_CACHE_DIR",
        "TILE_PROXY_MEMORY_CACHE",
        "TILE_PROXY_DISK_CACHE",
        "TILE_PROXY_WORKERS",
        "CACHE_TTL_CAP",
        "TILE_PROXY_UPSTREAM__HEAD_TIMEOUT",
        "0.0.0.0:8080",
        "./tile-cache",
    ] {
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[actix_rt::test]
async fn relaying_64_mib_to_a_slow_client_holds_a_flight_budget_not_the_body() {
    let up = Upstream::start(Options { api_key: Some(KEY.into()), ..Options::default() }).expect("upstream");
    let path = "/v3/base/mc/3/3/3/png";
    up.fail_always(path, test_upstream::Fault::BigBody { size: 64 << 20 });
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&up, dir.path()).await;
    let pid = p.process.pid();
    // Warm up the process (allocator arenas, first request) before the baseline.
    assert_eq!(p.get("/v3/base/mc/1/0/0/png").0, 200);
    let before = rss(pid);
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    // Read the whole body at 1 MiB/s (64 s, twice the default body_timeout, which bounds waiting
    // for the upstream, not for the client); the upstream would send it in well under a second.
    let mut buf = vec![0u8; 64 << 10];
    let mut head = Vec::new();
    let mut body = 0usize;
    let mut peak = before;
    let started = Instant::now();
    for second in 1..=65u32 {
        while body < (second as usize) << 20 {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                body += n;
            } else {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    body += head.len() - end - 4;
                    head.truncate(end + 4);
                }
            }
        }
        while started.elapsed() < Duration::from_secs(second.into()) {
            std::thread::sleep(Duration::from_millis(20)); // the slow client's pace
        }
        peak = peak.max(rss(pid));
    }
    let growth = peak.saturating_sub(before);
    println!(
        "RSS before {} MiB, peak {} MiB, growth {} MiB; client read {} bytes in {:?}",
        before >> 20,
        peak >> 20,
        growth >> 20,
        body,
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    assert_eq!(body, 64 << 20, "the whole body arrived");
    assert!(growth < 32 << 20, "RSS grew by {} MiB while relaying 64 MiB to a slow client", growth >> 20);
    drop(s);
    p.terminate().await;
}

#[actix_rt::test]
async fn the_client_address_comes_from_x_forwarded_for_only_through_trusted_proxies() {
    let up = Upstream::start(Options { api_key: Some(KEY.into()), ..Options::default() }).expect("upstream");
    let request = |p: &Proc| {
        let mut s = TcpStream::connect(&p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /live HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Request-Id: nginx-7f3a9c\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
    };
    let client_of = |lines: Vec<String>| -> Vec<(String, String)> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["path"] == "/live")
            .map(|v| {
                (v["client"].as_str().unwrap_or("").to_string(), v["request_id"].as_str().unwrap_or("").to_string())
            })
            .collect()
    };
    for (trusted, want) in [(None, "127.0.0.1"), (Some("127.0.0.0/8"), "203.0.113.7")] {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(&str, &str)> = trusted.map(|t| ("TILE_PROXY_TRUSTED_PROXIES", t)).into_iter().collect();
        let p = spawn_with(&up, dir.path(), &env).await;
        request(&p);
        let seen = client_of(p.terminate().await);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, want, "trusted_proxies {trusted:?}");
        // The proxy's request id is kept from a trusted proxy only (one id through every log).
        match trusted {
            Some(_) => assert_eq!(seen[0].1, "nginx-7f3a9c"),
            None => assert_eq!(seen[0].1.len(), 36, "our own uuid: {}", seen[0].1),
        }
    }
}

/// The proxy's command (one worker; `spawn_with` adds a second and debug logging).
fn proxy_cmd(up: &Upstream, cache_dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("HERE_API_KEY", KEY)
        .env("TILE_PROXY_LISTEN", "127.0.0.1:0")
        .env("TILE_PROXY_RASTER_UPSTREAM", up.base_url())
        .env("TILE_PROXY_VECTOR_UPSTREAM", up.base_url())
        .env("TILE_PROXY_CACHE_DIR", cache_dir)
        .env("TILE_PROXY_MEMORY_CACHE", "16MiB")
        .env("TILE_PROXY_DISK_CACHE", "16MiB")
        .env("TILE_PROXY_WORKERS", "1")
        .envs(extra_env.iter().copied());
    cmd
}

/// Every file under `dir` with its bytes, for before/after comparisons.
fn tree(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| {
            let f = f.unwrap();
            (f.file_name().to_string_lossy().into_owned(), std::fs::read(f.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[actix_rt::test]
async fn disk_required_makes_an_unusable_cache_folder_fatal_else_the_log_names_the_setting() {
    let up = upstream_12k();
    let blocker = tempfile::NamedTempFile::new().unwrap();
    // The cache "folder" is under a regular file: it cannot be created.
    let cache_dir = blocker.path().join("cache");
    let out = run(proxy_cmd(&up, &cache_dir, &[("TILE_PROXY_DISK_REQUIRED", "true")])).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let said = out.stdout + &out.stderr;
    assert!(said.contains(cache_dir.to_str().unwrap()) && said.contains("disk_required"), "{said}");
    assert!(!said.contains("tile-proxy listening"), "{said}");

    let p = spawn_with(&up, &cache_dir, &[]).await;
    let line = p.process.line("the memory-only line", |l| l.contains("continuing memory-only")).await;
    assert!(line.contains("disk_required") && line.contains(cache_dir.to_str().unwrap()), "{line}");
    let (status, head, _) = p.get("/v3/base/mc/3/1/1/png");
    assert_eq!(status, 200, "{head}");
    p.terminate().await;
}

#[actix_rt::test]
async fn a_start_that_cannot_listen_leaves_no_cache_folder_and_an_existing_one_untouched() {
    let up = upstream_12k();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let listen = [("TILE_PROXY_LISTEN", addr.as_str())];

    let new_dir = tmp.path().join("new").join("cache");
    let out = run(proxy_cmd(&up, &new_dir, &listen)).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cannot listen") && out.stderr.contains(&addr), "{}", out.stderr);
    assert!(!tmp.path().join("new").exists(), "no folder made by a failed start");

    // A folder an earlier run filled: a failed start changes nothing in it.
    let old_dir = tmp.path().join("old");
    drop(spawn(&up, &old_dir).await.terminate().await);
    let before = tree(&old_dir);
    assert!(before.iter().any(|(f, _)| f.starts_with("foyer-storage-")), "{:?}", before.iter().map(|f| &f.0));
    let out = run(proxy_cmd(&up, &old_dir, &listen)).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(tree(&old_dir) == before, "the existing folder is as it was");
}

#[actix_rt::test]
async fn a_start_refused_by_disk_required_removes_the_folders_it_created() {
    let up = upstream_12k();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(tmp.path())
        .output()
        .expect("mount runs");
    assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(tmp.path());
    // 16 MiB of disk tier on 6 MiB: the folder is created and locked, then found too small.
    let cache_dir = tmp.path().join("a").join("cache");
    let out = run(proxy_cmd(&up, &cache_dir, &[("TILE_PROXY_DISK_REQUIRED", "true")])).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("disk_required") && out.stderr.contains("bytes free"), "{}", out.stderr);
    assert!(!tmp.path().join("a").exists(), "the folders this start made are gone");
    assert!(tmp.path().exists());
}

#[actix_rt::test]
async fn an_unguarded_proxy_on_every_interface_warns_at_start_what_to_set() {
    let up = upstream_12k();
    let dir = tempfile::tempdir().unwrap();
    let exposed = |l: &str| l.contains("not loopback");
    let off = ("TILE_PROXY_DEFAULTS__RATE_LIMIT", "0");
    let p = spawn_with(&up, &dir.path().join("a"), &[("TILE_PROXY_LISTEN", "0.0.0.0:0"), off]).await;
    let line = p.process.line("the exposure warning", exposed).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    for needle in ["HERE quota", "budget_day", "rate_limit", "127.0.0.1"] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }
    p.terminate().await;
    // Guarded (a budget, the shipped client limit), or on loopback: no warning by the time it listens.
    let public = ("TILE_PROXY_LISTEN", "0.0.0.0:0");
    for env in [
        vec![public, off, ("TILE_PROXY_DEFAULTS__BUDGET_DAY", "1000")],
        vec![public],
        vec![("TILE_PROXY_LISTEN", "127.0.0.1:0"), off],
    ] {
        let p = spawn_with(&up, &dir.path().join("b"), &env).await;
        let lines = p.terminate().await;
        assert!(!lines.iter().any(|l| exposed(l)), "{env:?}: {lines:#?}");
    }
}

#[actix_rt::test]
async fn requests_forwarded_by_an_untrusted_proxy_are_warned_about_once() {
    let up = upstream_12k();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&up, dir.path()).await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(&p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET /v3/base/mc/3/2/2/png HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert!(all.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&all));
    }
    let lines = p.terminate().await;
    let warned: Vec<_> = lines.iter().filter(|l| l.contains("not in trusted_proxies")).collect();
    assert_eq!(warned.len(), 1, "{lines:#?}");
    let v: serde_json::Value = serde_json::from_str(warned[0]).unwrap();
    assert_eq!(v["level"], "WARN");
    for needle in ["X-Forwarded-For", "127.0.0.1", "TILE_PROXY_TRUSTED_PROXIES", "rate_limit"] {
        assert!(warned[0].contains(needle), "{needle} not in {}", warned[0]);
    }
}

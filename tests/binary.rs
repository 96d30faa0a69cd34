//! The real `tile-proxy` binary as operators run it: environment configuration, JSON logs,
//! SIGTERM drain and restart on the same cache folder, configuration errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_upstream::{Options, Upstream};

const KEY: &str = "BINARYSERVERKEY42";
const BIN: &str = env!("CARGO_BIN_EXE_tile-proxy");

struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: String,
}

fn spawn(up: &Upstream, dir: &std::path::Path) -> Proc {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HERE_API_KEY", KEY)
        .env("TILE_PROXY_LISTEN", "127.0.0.1:0")
        .env("TILE_PROXY_RASTER_UPSTREAM", up.base_url())
        .env("TILE_PROXY_VECTOR_UPSTREAM", up.base_url())
        .env("TILE_PROXY_CACHE_DIR", dir)
        .env("TILE_PROXY_MEMORY_CACHE", "16MiB")
        .env("TILE_PROXY_DISK_CACHE", "16MiB")
        .env("TILE_PROXY_WORKERS", "2")
        // Even at debug level the key must not leak.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tile-proxy starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    for pipe in [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "tile-proxy listening").then(|| v["addr"].as_str().unwrap().to_string())
        });
        if let Some(a) = found {
            break a;
        }
        assert!(Instant::now() < deadline, "no listening line: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    };
    Proc { child, lines, addr }
}

impl Drop for Proc {
    // A failing test must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&all[..split]).to_string();
        let status = head[9..12].parse().unwrap();
        (status, head.to_ascii_lowercase(), all[split..].to_vec())
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.lines.lock().unwrap().clone();
        lines
    }
}

#[test]
fn sigterm_drains_closes_the_cache_and_a_restart_serves_from_disk_without_leaking_the_key() {
    let up = Upstream::start(Options {
        api_key: Some(KEY.into()),
        min_size: 12_000,
        max_size: 12_000,
        ..Options::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&up, dir.path());
    let (status, head, body) =
        p.get("/here-proxy/mc/5/15/13/png?indice=123&style=explore.day&size=512&apiKey=CLIENTKEY9");
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: miss"), "{head}");
    assert_eq!(body, up.tile_bytes("/v3/base/mc/5/15/13/png?size=512"));
    let (status, _, _) = p.get("/here-proxy/mc/5/15/99/png?indice=123&apiKey=CLIENTKEY9");
    assert_eq!(status, 400);
    let (_, _, metrics) = p.get("/metrics");
    let mut logs = p.terminate();

    let p = spawn(&up, dir.path());
    let (status, head, body2) = p.get("/here-proxy/mc/5/15/13/png?indice=123&size=512");
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: hit"), "served from disk after restart: {head}");
    assert_eq!(body2, body);
    assert_eq!(up.total(), 1);
    logs.extend(p.terminate());

    // One JSON line per request with the fields operators need.
    let request_lines: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "tile_proxy::access" && v["message"] == "request")
        .collect();
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

#[test]
fn configuration_errors_are_all_listed_and_exit_non_zero() {
    let out = Command::new(BIN).env_clear().env("TILE_PROXY_LISTEN", "127.0.0.1:0").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HERE_API_KEY"), "{err}");

    let out = Command::new(BIN)
        .env_clear()
        .env("HERE_API_KEY", "k")
        .env("TILE_PROXY_MEMORY_CACHE", "lots")
        .env("TILE_PROXY_LISTEN", "nowhere")
        .env("TILE_PROXY_RASTER_UPSTREAM", "ftp://x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["memory_cache", "listen", "raster_upstream", "3 problem"] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "upstream_requires_key = false\n[index.abc]\nttl = \"5m\"\nstale_if_error = \"1h\"\n")
        .unwrap();
    let out = Command::new(BIN).env_clear().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"abc\"") && text.contains("300s"), "{text}");
}

#[test]
fn help_documents_every_setting_with_its_environment_name() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
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

#[test]
fn relaying_64_mib_to_a_slow_client_holds_a_flight_budget_not_the_body() {
    let up = Upstream::start(Options { api_key: Some(KEY.into()), ..Options::default() }).expect("upstream");
    let path = "/v3/base/mc/3/3/3/png";
    up.fail_always(path, test_upstream::Fault::BigBody { size: 64 << 20 });
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&up, dir.path());
    let pid = p.child.id();
    // Warm up the process (allocator arenas, first request) before the baseline.
    assert_eq!(p.get("/v3/base/mc/1/0/0/png").0, 200);
    let before = rss(pid);
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    // Read at 1 MiB/s for 8 s; the upstream would send all 64 MiB in well under a second.
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0usize;
    let mut peak = before;
    let started = Instant::now();
    for second in 1..=8u32 {
        while read < (second as usize) << 20 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "body ended early");
            read += n;
        }
        while started.elapsed() < Duration::from_secs(second.into()) {
            std::thread::sleep(Duration::from_millis(20)); // the slow client's pace
        }
        peak = peak.max(rss(pid));
    }
    let growth = peak.saturating_sub(before);
    println!(
        "RSS before {} MiB, peak {} MiB, growth {} MiB, client read {} MiB",
        before >> 20,
        peak >> 20,
        growth >> 20,
        read >> 20
    );
    assert!(growth < 32 << 20, "RSS grew by {} MiB while relaying 64 MiB to a slow client", growth >> 20);
    drop(s);
    p.terminate();
}

//! `bench-replay`: replays a `bench/trace.py` trace against an HTTP server (tile-proxy) **in
//! order and exactly once**, as fast as the server answers, over `--connections` HTTP/1.1
//! keep-alive connections (default 64), and reports what came back.
//!
//! ```text
//! bench-replay --url http://127.0.0.1:8080 --trace FILE [--connections 64] [--timeout-ms 30000]
//!              [--limit N] [--no-size-check]
//! ```
//!
//! Request `i` (the trace's line `i`) is sent only after requests `0..i` have been sent: every
//! connection takes the next line from one shared counter when its previous answer is complete,
//! so at most `connections` requests are in flight and the server sees the trace's order (up to
//! the reordering among those in flight). No request is retried: a failed one is counted as an
//! error (and its connection is reopened for the next line).
//!
//! Output: a human summary on stderr, and on stdout one line of `key=value` pairs for scripts:
//! `requests`, `seconds`, `rps`, `p50_ms`, `p99_ms`, `max_ms`, `errors`, `size_mismatch` (bodies
//! whose length differs from the trace's size column), `memory_hits` (X-Cache: HIT with
//! X-Cache-Tier: memory), `memory_hit_ratio` (memory_hits / requests), `hits` (any X-Cache: HIT),
//! `hot_requests`, `hot_memory_hits`, `hot_memory_hit_ratio` (the same over lines without the
//! `scan` column), `hot_hits`, `hot_hit_ratio` (any X-Cache: HIT among those lines), then `status_<code>`, `xcache_<value>` and `tier_<value>` counts (`-` when the
//! header was absent).
//!
//! One thread (a current-thread tokio runtime): pin it with taskset.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "usage: bench-replay --url http://HOST:PORT --trace FILE [--connections 64] \
[--timeout-ms 30000] [--limit N] [--no-size-check]";

struct Line {
    path: String,
    size: Option<usize>,
    scan: bool,
}

struct Args {
    host: String,
    port: u16,
    trace: String,
    connections: usize,
    timeout: Duration,
    limit: Option<usize>,
    size_check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut trace = None;
    let mut connections = 64usize;
    let mut timeout_ms = 30_000u64;
    let mut limit = None;
    let mut size_check = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut val = || inline.clone().or_else(|| it.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(val()?),
            "--trace" => trace = Some(val()?),
            "--connections" => connections = val()?.parse().map_err(|_| "--connections: not a number")?,
            "--timeout-ms" => timeout_ms = val()?.parse().map_err(|_| "--timeout-ms: not a number")?,
            "--limit" => limit = Some(val()?.parse().map_err(|_| "--limit: not a number")?),
            "--no-size-check" => size_check = false,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    let url = url.ok_or(format!("--url is required\n{USAGE}"))?;
    let trace = trace.ok_or(format!("--trace is required\n{USAGE}"))?;
    let hostport = url.strip_prefix("http://").ok_or("--url must start with http://")?.trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').ok_or("--url needs an explicit port")?;
    let port = port.parse().map_err(|_| format!("--url: bad port '{port}'"))?;
    if connections == 0 || connections > 4096 {
        return Err("--connections must be 1..4096".into());
    }
    Ok(Args {
        host: host.to_string(),
        port,
        trace,
        connections,
        timeout: Duration::from_millis(timeout_ms.max(1)),
        limit,
        size_check,
    })
}

fn read_trace(file: &str, limit: Option<usize>) -> Result<Vec<Line>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut lines = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if limit.is_some_and(|m| lines.len() >= m) {
            break;
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut cols = l.split('\t');
        let path = cols.next().unwrap_or_default();
        if !path.starts_with('/') {
            return Err(format!("{file}: line {}: the first column must be a path", n + 1));
        }
        let size = match cols.next() {
            Some(s) => Some(s.trim().parse().map_err(|_| format!("{file}: line {}: bad size '{s}'", n + 1))?),
            None => None,
        };
        let scan = cols.next().is_some_and(|c| c.trim() == "scan");
        lines.push(Line { path: path.to_string(), size, scan });
    }
    Ok(lines)
}

/// What one answer said.
struct Answer {
    status: u16,
    x_cache: String,
    tier: String,
    body_len: usize,
    close: bool,
}

/// Connection state: a buffer of bytes read but not consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(host: &str, port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(96 * 1024) })
    }

    /// Reads more bytes into the buffer (into its spare capacity: no zeroing).
    async fn fill(&mut self) -> std::io::Result<()> {
        self.buf.reserve(64 * 1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(())
    }

    async fn request(&mut self, req: &[u8]) -> std::io::Result<Answer> {
        self.stream.write_all(req).await?;
        // Head.
        let (status, x_cache, tier, length, chunked, close, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut x_cache = "-".to_string();
                    let mut tier = "-".to_string();
                    let mut length = None;
                    let mut chunked = false;
                    let mut close = resp.version == Some(0);
                    for h in resp.headers.iter() {
                        let v = String::from_utf8_lossy(h.value).trim().to_string();
                        if h.name.eq_ignore_ascii_case("x-cache") {
                            x_cache = v;
                        } else if h.name.eq_ignore_ascii_case("x-cache-tier") {
                            tier = v;
                        } else if h.name.eq_ignore_ascii_case("content-length") {
                            length = v.parse::<usize>().ok();
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = v.to_ascii_lowercase().contains("chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = v.eq_ignore_ascii_case("close");
                        }
                    }
                    break (resp.code.unwrap_or(0), x_cache, tier, length, chunked, close, n);
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
        };
        self.buf.drain(..head_len);
        let no_body = status == 204 || status == 304 || (100..200).contains(&status);
        let body_len = if no_body {
            0
        } else if chunked {
            self.read_chunked().await?
        } else if let Some(len) = length {
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len);
            len
        } else {
            // Body until close.
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            let n = self.buf.len();
            self.buf.clear();
            return Ok(Answer { status, x_cache, tier, body_len: n, close: true });
        };
        Ok(Answer { status, x_cache, tier, body_len, close })
    }

    /// Reads a chunked body; returns its decoded length.
    async fn read_chunked(&mut self) -> std::io::Result<usize> {
        let mut total = 0;
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill().await?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size '{line}'"))
            })?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let p = loop {
                        if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break p;
                        }
                        self.fill().await?;
                    };
                    self.buf.drain(..p + 2);
                    if p == 0 {
                        return Ok(total);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            self.buf.drain(..size + 2);
            total += size;
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_errors: Vec<String>,
    size_mismatch: u64,
    first_mismatches: Vec<String>,
    hits: u64,
    memory_hits: u64,
    hot_requests: u64,
    hot_memory_hits: u64,
    hot_hits: u64,
    status: BTreeMap<String, u64>,
    x_cache: BTreeMap<String, u64>,
    tier: BTreeMap<String, u64>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Header values as key suffixes: letters, digits and `_` only.
fn key(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

async fn worker(
    args: Rc<Args>,
    lines: Rc<Vec<Line>>,
    requests: Rc<Vec<Vec<u8>>>,
    next: Rc<Cell<usize>>,
    tally: Rc<RefCell<Tally>>,
) {
    let mut conn: Option<Conn> = None;
    loop {
        let i = next.get();
        if i >= lines.len() {
            return;
        }
        next.set(i + 1);
        let line = &lines[i];
        let t0 = Instant::now();
        let result = tokio::time::timeout(args.timeout, async {
            if conn.is_none() {
                conn = Some(Conn::open(&args.host, args.port).await?);
            }
            conn.as_mut().expect("opened").request(&requests[i]).await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")));
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut t = tally.borrow_mut();
        t.latencies_us.push(us);
        if !line.scan {
            t.hot_requests += 1;
        }
        match result {
            Ok(a) => {
                *t.status.entry(a.status.to_string()).or_default() += 1;
                *t.x_cache.entry(a.x_cache.clone()).or_default() += 1;
                *t.tier.entry(a.tier.clone()).or_default() += 1;
                if a.x_cache == "HIT" {
                    t.hits += 1;
                    if !line.scan {
                        t.hot_hits += 1;
                    }
                    if a.tier == "memory" {
                        t.memory_hits += 1;
                        if !line.scan {
                            t.hot_memory_hits += 1;
                        }
                    }
                }
                if args.size_check && a.status == 200 && line.size.is_some_and(|s| s != a.body_len) {
                    t.size_mismatch += 1;
                    if t.first_mismatches.len() < 3 {
                        let m = format!("{}: {} bytes, trace says {}", line.path, a.body_len, line.size.unwrap_or(0));
                        t.first_mismatches.push(m);
                    }
                }
                if a.close {
                    conn = None;
                }
            }
            Err(e) => {
                t.errors += 1;
                *t.status.entry("error".into()).or_default() += 1;
                if t.first_errors.len() < 3 {
                    t.first_errors.push(format!("{}: {e}", line.path));
                }
                conn = None;
            }
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-replay: {e}");
            std::process::exit(2);
        }
    };
    let lines = match read_trace(&args.trace, args.limit) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-replay: {e}");
            std::process::exit(2);
        }
    };
    if lines.is_empty() {
        eprintln!("bench-replay: {}: no requests", args.trace);
        std::process::exit(2);
    }
    let host_header = format!("{}:{}", args.host, args.port);
    let requests: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| {
            format!("GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bench-replay\r\n\r\n", l.path).into_bytes()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let args = Rc::new(args);
    let lines = Rc::new(lines);
    let requests = Rc::new(requests);
    let next = Rc::new(Cell::new(0usize));
    let tally = Rc::new(RefCell::new(Tally { latencies_us: Vec::with_capacity(lines.len()), ..Tally::default() }));
    let t0 = Instant::now();
    rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        for _ in 0..args.connections {
            local.spawn_local(worker(args.clone(), lines.clone(), requests.clone(), next.clone(), tally.clone()));
        }
        local.await;
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut t = tally.take();
    t.latencies_us.sort_unstable();
    let n = lines.len() as u64;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut out = format!(
        "requests={n} seconds={secs:.3} rps={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={} size_mismatch={} \
         hits={} memory_hits={} memory_hit_ratio={:.4} hot_requests={} hot_memory_hits={} hot_memory_hit_ratio={:.4} hot_hits={} hot_hit_ratio={:.4}",
        n as f64 / secs.max(1e-9),
        percentile(&t.latencies_us, 50.0),
        percentile(&t.latencies_us, 99.0),
        percentile(&t.latencies_us, 100.0),
        t.errors,
        t.size_mismatch,
        t.hits,
        t.memory_hits,
        ratio(t.memory_hits, n),
        t.hot_requests,
        t.hot_memory_hits,
        ratio(t.hot_memory_hits, t.hot_requests),
        t.hot_hits,
        ratio(t.hot_hits, t.hot_requests),
    );
    for (prefix, map) in [("status", &t.status), ("xcache", &t.x_cache), ("tier", &t.tier)] {
        for (k, v) in map {
            out.push_str(&format!(" {prefix}_{}={v}", key(k)));
        }
    }
    println!("{out}");
    eprintln!(
        "bench-replay: {n} requests in {secs:.2} s ({:.0} req/s) over {} connections; p50 {:.2} ms, p99 {:.2} ms; \
         memory hit ratio {:.4}; errors {}, size mismatches {}",
        n as f64 / secs.max(1e-9),
        args.connections,
        percentile(&t.latencies_us, 50.0),
        percentile(&t.latencies_us, 99.0),
        ratio(t.memory_hits, n),
        t.errors,
        t.size_mismatch
    );
    for e in t.first_errors.iter().chain(t.first_mismatches.iter()) {
        eprintln!("  {e}");
    }
}

//! `test-upstream` binary: runs the HERE-like test upstream until SIGINT/SIGTERM.
//!
//! ```text
//! test-upstream [--listen ADDR] [--key KEY | --no-auth] [--forbidden-key KEY]...
//!               [--min-size N] [--max-size N] [--latency-ms N] [--latency-jitter-ms N]
//!               [--raster-max-age N] [--vector-max-age N | --no-vector-max-age] [--images] [--mvt]
//!               [--sizes FILE]
//! ```
//! Prints `listening on http://ADDR` on stdout once bound. `--help` also lists the control
//! endpoints (`/__stats`, `/__fault`, ...; see the library docs).

use std::io::Write;
use std::time::Duration;

use std::sync::Arc;

use test_upstream::{Options, TileSizes, Upstream};

const HELP: &str = "\
test-upstream: HERE-like tile upstream for tile-proxy tests and benchmarks

USAGE: test-upstream [FLAGS]

  --listen ADDR            address to bind (default 127.0.0.1:0)
  --key KEY                required apiKey (default test-key)
  --no-auth                accept requests without any key
  --forbidden-key KEY      answer this key with 403 (repeatable)
  --min-size N             smallest tile body in bytes (default 2000)
  --max-size N             largest tile body in bytes (default: max(2000, min-size))
  --sizes FILE             exact body sizes of given tiles: one tile a line, \"PATH SIZE\" (tab
                           or spaces; PATH any .../mc/{z}/{x}/{y}/... path or z/x/y; further
                           columns ignored), so a bench/trace.py trace is accepted as is;
                           tiles not in the file keep --min-size/--max-size
  --latency-ms N           delay before every response head (default 0)
  --latency-jitter-ms N    plus a delay drawn per request, uniform in 0..=N ms (default 0;
                           --latency-ms 30 --latency-jitter-ms 50: 30-80 ms)
  --raster-max-age N       Cache-Control max-age on /v3 tiles (default none)
  --vector-max-age N       Cache-Control max-age on /v2 tiles (default 3600)
  --no-vector-max-age      no Cache-Control on /v2 tiles
  --images                 real tiles instead of random bytes: raster tiles are PNG/JPEG
                           images (grid + z/x/y; 512 px for size=512), vector tiles are
                           Mapbox Vector Tiles (implies --mvt); min/max-size then do not apply
  --mvt                    vector tiles are Mapbox Vector Tiles (MVT 2.1, extent 4096; layers
                           grid {kind: border|line}, label {z, x, y, name \"z/x/y\",
                           version}, water {kind: water}) at their natural size
  -h, --help               show this help

CONTROL ENDPOINTS (not counted, never faulted; JSON answers, 400 {\"error\": ...} on bad input)

  GET  /__stats            {\"total\", \"paths\": {path: count}, \"version\", \"latency_ms\", \"faults\"}
  POST /__reset            clear counters, recorded requests and fault rules
  POST /__version?v=N      content version N: every tile's bytes and ETag change
  POST /__latency?ms=N     delay every counted response head by N ms
  POST /__fault            add a fault rule (JSON body, below)
  GET  /__fault            list the active fault rules
  POST /__clear            remove every fault rule

  POST /__fault body: {\"match\": \"/v3/base\", \"times\": 3, \"fault\": {...}}
    match   substring of the request path (required; \"/\" = every path)
    times   how many matching requests misbehave (absent or null = until /__clear)
    fault   exactly one of:
      {\"status\": 503, \"retry_after\": 2}     HERE-shaped error (retry_after optional)
      {\"delay_ms\": 500}                     wait, then answer normally
      {\"slow_body\": {\"chunk\": 100, \"interval_ms\": 50}}   200, body trickles
      {\"chunked\": {\"chunk\": 100, \"interval_ms\": 50}}     200, chunked encoding
      {\"truncate\": 123}                     full Content-Length, 123 bytes, close
      {\"reset\": true}                       connection reset, no response
      {\"hang\": true}                        never answer
      {\"redirect\": true}                    302 to the request URL (apiKey included)
      {\"echo\": 500}                         HTML error page + Location echoing the URL
      {\"headers\": {\"Cache-Control\": \"no-store\"}}   normal 200 plus/overriding headers
                                           (or a list: [[\"Age\", \"5\"], ...])
      {\"big_body\": 67108864}                200 with that many bytes, streamed

  e.g. curl -X POST http://127.0.0.1:9090/__fault \\
         -d '{\"match\": \"/v3/base\", \"times\": 3, \"fault\": {\"status\": 503}}'
";

/// What the command line asked for.
#[derive(Debug)]
enum Command {
    Run(Options),
    Help,
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: invalid number '{v}'"))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut opts = Options::default();
    let mut max_size: Option<usize> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => {
                let v = value().ok_or("--listen needs a value")?;
                opts.listen = v.parse().map_err(|_| format!("--listen: invalid socket address '{v}'"))?;
            }
            "--key" => opts.api_key = Some(value().ok_or("--key needs a value")?),
            "--no-auth" => opts.api_key = None,
            "--forbidden-key" => opts.forbidden_keys.push(value().ok_or("--forbidden-key needs a value")?),
            "--min-size" => opts.min_size = parse_num(&flag, value())?,
            "--max-size" => max_size = Some(parse_num(&flag, value())?),
            "--latency-ms" => opts.latency = Duration::from_millis(parse_num(&flag, value())?),
            "--latency-jitter-ms" => opts.latency_jitter = Duration::from_millis(parse_num(&flag, value())?),
            "--raster-max-age" => opts.raster_max_age = Some(parse_num(&flag, value())?),
            "--vector-max-age" => opts.vector_max_age = Some(parse_num(&flag, value())?),
            "--no-vector-max-age" => opts.vector_max_age = None,
            "--images" => opts.images = true,
            "--mvt" => opts.mvt = true,
            "--sizes" => {
                let v = value().ok_or("--sizes needs a file")?;
                opts.sizes = Arc::new(TileSizes::load(std::path::Path::new(&v)).map_err(|e| format!("--sizes: {e}"))?);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    opts.max_size = max_size.unwrap_or(opts.max_size).max(opts.min_size);
    Ok(Command::Run(opts))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            print!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("test-upstream: {e}");
            std::process::exit(2);
        }
    };
    let upstream = match Upstream::start(opts) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("test-upstream: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {}", upstream.base_url());
    let _ = out.flush();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("test-upstream: cannot build signal runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(wait_for_signal());
    upstream.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse_args(args.iter().map(|s| s.to_string())) {
            Ok(Command::Run(o)) => o,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_flags() {
        let o = run(&[
            "--listen",
            "127.0.0.1:8099",
            "--no-auth",
            "--min-size=100",
            "--max-size",
            "200",
            "--latency-ms",
            "5",
            "--latency-jitter-ms=7",
            "--raster-max-age",
            "60",
            "--forbidden-key",
            "bad",
            "--no-vector-max-age",
            "--images",
            "--mvt",
        ]);
        assert_eq!(o.listen.port(), 8099);
        assert_eq!(o.api_key, None);
        assert_eq!((o.min_size, o.max_size), (100, 200));
        assert_eq!(o.latency, Duration::from_millis(5));
        assert_eq!(o.latency_jitter, Duration::from_millis(7));
        assert_eq!(o.raster_max_age, Some(60));
        assert_eq!(o.vector_max_age, None);
        assert_eq!(o.forbidden_keys, vec!["bad".to_string()]);
        assert!(o.images && o.mvt);
    }

    #[test]
    fn defaults_and_errors() {
        let o = run(&["--key", "k", "--min-size", "5000"]);
        assert_eq!(o.api_key.as_deref(), Some("k"));
        assert_eq!((o.min_size, o.max_size), (5000, 5000));
        assert!(!o.images && !o.mvt);
        assert!(matches!(parse_args(["--help".to_string()]), Ok(Command::Help)));
        assert!(parse_args(["--bogus".to_string()]).is_err());
        assert!(parse_args(["--min-size".to_string()]).is_err());
        assert!(parse_args(["--min-size".to_string(), "x".to_string()]).is_err());
        assert!(o.sizes.is_empty());
    }

    #[test]
    fn sizes_file() {
        let path = std::env::temp_dir().join(format!("test-upstream-sizes-{}.tsv", std::process::id()));
        std::fs::write(
            &path,
            "/here-proxy/mc/12/2200/1343/png?indice=bench\t17000\n/here-proxy/mc/18/1/2/png\t5120\tscan\n",
        )
        .unwrap();
        let o = run(&["--sizes", path.to_str().unwrap()]);
        assert_eq!((o.sizes.len(), o.sizes.get(12, 2200, 1343), o.sizes.get(18, 1, 2)), (2, Some(17000), Some(5120)));
        std::fs::write(&path, "1/0/0 oops\n").unwrap();
        let err = parse_args(["--sizes".to_string(), path.to_str().unwrap().to_string()]).unwrap_err();
        assert!(err.contains("line 1: invalid size"), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(parse_args(["--sizes=/nonexistent/sizes.tsv".to_string()]).is_err());
    }
}

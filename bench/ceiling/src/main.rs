//! `bench-ceiling`: the bare actix-web ceiling for `bench/run.sh`.
//!
//! Loads a tile list (one path a line, as `bench/lib.sh` writes it), takes each tile's body from
//! the `test-upstream` library (the same bytes the benchmark's upstream gives for that path with
//! the same `--min-size`/`--max-size`), keeps them in a `HashMap` and serves them from one actix
//! worker with `Content-Type` and `Content-Length` only: no cache lookup, no routing, no
//! middleware, no logging. Whatever tile-proxy does on a hit beyond this costs throughput, so
//! its hit rate over this server's is how close it comes to what actix itself allows.
//!
//! `--proxy-headers` adds, as fixed values made once at start, the headers tile-proxy sends
//! with a memory hit (`ETag`, `X-Cache`, `X-Cache-Tier`, `Age`, `Cache-Control`,
//! `Last-Modified`, `Access-Control-Allow-Origin`, `Access-Control-Expose-Headers`): the same
//! response (to a request without an `Origin`, with `cors_origins = ["*"]`), so the gap that is
//! left is tile-proxy's work, not the bytes and headers its answer must carry.
//!
//! ```text
//! bench-ceiling --tiles FILE [--listen ADDR] [--min-size N] [--max-size N] [--workers N] [--proxy-headers]
//! ```
//! Prints `listening on http://ADDR` once bound; `GET /ready` answers `200 ok`; a path not in
//! the list gets `404`. Stops on SIGINT/SIGTERM.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::header::{ContentType, HeaderName, HeaderValue};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use test_upstream::{Options, Upstream};

const HELP: &str = "\
bench-ceiling: bare actix-web server answering a fixed tile list from memory

USAGE: bench-ceiling --tiles FILE [--listen ADDR] [--min-size N] [--max-size N] [--workers N] [--proxy-headers]

  --tiles FILE     tile paths, one a line (e.g. /v3/base/mc/12/1/2/png)
  --listen ADDR    address to bind (default 127.0.0.1:0)
  --min-size N     smallest body, as given to test-upstream (default 2000)
  --max-size N     largest body, as given to test-upstream (default: max(2000, min-size))
  --workers N      actix workers (default 1)
  --proxy-headers  also send the headers tile-proxy sends with a memory hit (fixed values)
";

/// What the command line asked for.
#[derive(Debug)]
struct Args {
    tiles: String,
    listen: SocketAddr,
    min_size: usize,
    max_size: Option<usize>,
    workers: usize,
    proxy_headers: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut tiles = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut min_size = 2000;
    let mut max_size = None;
    let mut workers = 1;
    let mut proxy_headers = false;
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: invalid value '{v}'"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--tiles" => tiles = Some(it.next().ok_or("--tiles needs a value")?),
            "--listen" => listen = num("--listen", it.next())?,
            "--min-size" => min_size = num("--min-size", it.next())?,
            "--max-size" => max_size = Some(num("--max-size", it.next())?),
            "--workers" => workers = num("--workers", it.next())?,
            "--proxy-headers" => proxy_headers = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let tiles = tiles.ok_or("--tiles is required")?;
    if workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    Ok(Some(Args { tiles, listen, min_size, max_size, workers, proxy_headers }))
}

/// Path -> (content type, body), built once at start.
type Tiles = HashMap<String, (HeaderValue, Bytes)>;

fn content_type(path: &str) -> HeaderValue {
    let ext = path.rsplit('/').next().unwrap_or("");
    HeaderValue::from_static(match ext {
        "png" | "png8" => "image/png",
        "jpeg" | "jpg" => "image/jpeg",
        _ => "application/octet-stream",
    })
}

/// Reads the tile list and asks an in-process test upstream (never started on the network
/// by anyone else; it only generates bodies here) for each body.
fn load(args: &Args) -> Result<Tiles, String> {
    let list = std::fs::read_to_string(&args.tiles).map_err(|e| format!("{}: {e}", args.tiles))?;
    let opts = Options {
        min_size: args.min_size,
        max_size: args.max_size.unwrap_or(args.min_size.max(2000)),
        ..Options::default()
    };
    let upstream = Upstream::start(opts).map_err(|e| format!("test-upstream: {e}"))?;
    let tiles: Tiles = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|path| (path.to_string(), (content_type(path), upstream.tile_bytes(path))))
        .collect();
    upstream.shutdown();
    if tiles.is_empty() {
        return Err(format!("{}: no tile paths", args.tiles));
    }
    Ok(tiles)
}

/// The headers tile-proxy adds to a memory hit, beyond `Content-Type` (values as it sends them
/// for a tile of the default index; the `ETag` is the same length as its).
fn proxy_headers() -> Vec<(HeaderName, HeaderValue)> {
    use actix_web::http::header;
    let expose = "x-cache-reason, retry-after, ratelimit-reset, ratelimit-limit, cache-control, \
                  ratelimit-remaining, ratelimit-policy, x-cache-tier, etag, age, x-cache";
    vec![
        (header::ETAG, HeaderValue::from_static("\"ad8bc3266be59d5a\"")),
        (HeaderName::from_static("x-cache-tier"), HeaderValue::from_static("memory")),
        (header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(expose)),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
        (header::AGE, HeaderValue::from_static("0")),
        (HeaderName::from_static("x-cache"), HeaderValue::from_static("HIT")),
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400")),
        (header::LAST_MODIFIED, HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT")),
    ]
}

/// The extra headers of every tile answer with `--proxy-headers`.
struct Extra(Vec<(HeaderName, HeaderValue)>);

async fn serve(tiles: web::Data<Tiles>, req: HttpRequest) -> HttpResponse {
    let path = req.path();
    if let Some((ct, body)) = tiles.get(path) {
        return HttpResponse::Ok()
            .insert_header((actix_web::http::header::CONTENT_TYPE, ct.clone()))
            .body(body.clone());
    }
    not_a_tile(path)
}

/// `serve` with the headers tile-proxy adds (`--proxy-headers`); `serve` itself is left as it
/// was, so the plain ceiling does not pay for an extractor it does not use.
async fn serve_proxy_headers(tiles: web::Data<Tiles>, extra: web::Data<Extra>, req: HttpRequest) -> HttpResponse {
    let path = req.path();
    if let Some((ct, body)) = tiles.get(path) {
        let mut answer = HttpResponse::Ok();
        for (name, value) in &extra.0 {
            answer.insert_header((name.clone(), value.clone()));
        }
        return answer.insert_header((actix_web::http::header::CONTENT_TYPE, ct.clone())).body(body.clone());
    }
    not_a_tile(path)
}

fn not_a_tile(path: &str) -> HttpResponse {
    if path == "/ready" {
        return HttpResponse::Ok().insert_header(ContentType::plaintext()).body("ok\n");
    }
    HttpResponse::NotFound().finish()
}

fn main() -> std::process::ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-ceiling: {e}\n\n{HELP}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-ceiling: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let tiles = Arc::new(load(&args)?);
    let bytes: usize = tiles.values().map(|(_, b)| b.len()).sum();
    let count = tiles.len();
    actix_web::rt::System::new().block_on(async move {
        let tiles = web::Data::from(tiles);
        let extra = web::Data::new(Extra(proxy_headers()));
        let with_headers = args.proxy_headers;
        let server = HttpServer::new(move || {
            let app = App::new().app_data(tiles.clone()).app_data(extra.clone());
            if with_headers {
                app.default_service(web::to(serve_proxy_headers))
            } else {
                app.default_service(web::to(serve))
            }
        })
        .workers(args.workers)
        .bind(args.listen)
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
        let addr = server.addrs().first().copied().ok_or("no bound address")?;
        let mut out = std::io::stdout().lock();
        let _ =
            writeln!(out, "listening on http://{addr} ({count} tiles, {bytes} body bytes, {} worker(s))", args.workers);
        let _ = out.flush();
        drop(out);
        server.run().await.map_err(|e| format!("server: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Option<Args>, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let a = args(&["--tiles", "t.txt", "--min-size", "5000", "--max-size", "60000"]).unwrap().unwrap();
        assert_eq!((a.tiles.as_str(), a.min_size, a.max_size, a.workers), ("t.txt", 5000, Some(60000), 1));
        assert!(!a.proxy_headers);
        assert!(args(&["--tiles", "t", "--proxy-headers"]).unwrap().unwrap().proxy_headers);
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&[]).is_err());
        assert!(args(&["--tiles", "t", "--workers", "0"]).is_err());
        assert!(args(&["--tiles", "t", "--bogus"]).is_err());
    }

    #[test]
    fn bodies_match_the_upstream() {
        let dir = std::env::temp_dir().join(format!("bench-ceiling-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("tiles.txt");
        std::fs::write(&list, "/v3/base/mc/12/1/2/png\n\n/v3/base/mc/13/5/6/png\n").unwrap();
        let a = Args {
            tiles: list.to_string_lossy().into_owned(),
            listen: ([127, 0, 0, 1], 0).into(),
            min_size: 5000,
            max_size: Some(60000),
            workers: 1,
            proxy_headers: false,
        };
        let tiles = load(&a).unwrap();
        let up = Upstream::start(Options { min_size: 5000, max_size: 60000, ..Options::default() }).unwrap();
        assert_eq!(tiles.len(), 2);
        for (path, (ct, body)) in &tiles {
            assert_eq!(ct, "image/png");
            assert_eq!(body, &up.tile_bytes(path));
            assert!((5000..=60000).contains(&body.len()));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Black-box tests of the test upstream over real sockets with plain `std::net` clients.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use test_upstream::{Fault, Options, Upstream};

#[path = "support/mvt_decode.rs"]
mod mvt_decode;

const TILE: &str = "/v3/base/mc/5/15/13/png";
const VTILE: &str = "/v2/vectortiles/core/mc/12/2200/1343/omv";

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

fn connect(up: &Upstream) -> TcpStream {
    let s = TcpStream::connect(up.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads the status line and headers.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "no response"));
    }
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

/// Reads one full response (Content-Length or chunked framing, or until EOF).
fn read_response(r: &mut BufReader<TcpStream>, head_request: bool) -> std::io::Result<Resp> {
    let (status, headers) = read_head(r)?;
    let mut resp = Resp { status, headers, body: Vec::new() };
    if head_request || status == 204 || status == 304 {
        return Ok(resp);
    }
    if let Some(len) = resp.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp.header("transfer-encoding") == Some("chunked") {
        resp.body = read_chunked(r)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let n = usize::from_str_radix(line.trim_end(), 16).unwrap();
        if n == 0 {
            line.clear();
            r.read_line(&mut line)?;
            assert_eq!(line, "\r\n");
            return Ok(body);
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk)?;
        assert_eq!(&chunk[n..], b"\r\n");
        body.extend_from_slice(&chunk[..n]);
    }
}

fn request_with(up: &Upstream, method: &str, target: &str, extra: &str) -> Resp {
    let mut s = connect(up);
    write!(s, "{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").unwrap()
}

fn get(up: &Upstream, target: &str) -> Resp {
    request_with(up, "GET", target, "")
}

fn keyed(path: &str) -> String {
    format!("{path}?apiKey=test-key")
}

fn start() -> Upstream {
    Upstream::start(Options::default()).unwrap()
}

#[test]
fn ok_raster_tile_bytes_and_headers() {
    let up = start();
    assert!(up.base_url().starts_with("http://127.0.0.1:"));
    let target = format!("{TILE}?apiKey=test-key&size=512&style=explore.day");
    let r = get(&up, &target);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("content-length"), Some("2000"));
    assert_eq!(r.body.len(), 2000);
    assert_eq!(&r.body[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(r.body, up.tile_bytes(&target).to_vec());
    // apiKey and parameter order do not matter for the bytes.
    assert_eq!(r.body, up.tile_bytes(&format!("{TILE}?style=explore.day&size=512")).to_vec());
    assert_ne!(r.body, up.tile_bytes(TILE).to_vec());
    let etag = r.header("etag").unwrap();
    assert_eq!(etag.len(), 18);
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    assert!(etag[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r.header("x-correlation-id").map(str::len), Some(36));
    assert_eq!(r.header("cache-control"), None);
    assert_eq!(r.header("connection"), Some("close"));

    let j = get(&up, &keyed("/v3/label/mc/2/3/3/jpeg"));
    assert_eq!(j.status, 200);
    assert_eq!(j.header("content-type"), Some("image/jpeg"));
    assert_eq!(&j.body[..3], &[0xff, 0xd8, 0xff]);

    let p8 = get(&up, &keyed("/v3/background/mc/0/0/0/png8"));
    assert_eq!(p8.header("content-type"), Some("image/png"));
}

#[test]
fn ok_vector_tile_and_cache_control() {
    let up = Upstream::start(Options { raster_max_age: Some(60), ..Options::default() }).unwrap();
    let r = get(&up, &format!("{VTILE}?apikey=test-key&content=default"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    assert_eq!(r.body, up.tile_bytes(&format!("{VTILE}?content=default")).to_vec());
    let r = get(&up, &keyed(TILE));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
}

#[test]
fn deterministic_across_servers_and_sizes_in_range() {
    let opts = || Options { min_size: 100, max_size: 5000, ..Options::default() };
    let a = Upstream::start(opts()).unwrap();
    let b = Upstream::start(opts()).unwrap();
    let mut sizes = std::collections::HashSet::new();
    for x in 0..8 {
        let t = format!("/v3/base/mc/3/{x}/1/png?apiKey=test-key&lang=en");
        let ra = get(&a, &t);
        let rb = get(&b, &t);
        assert_eq!(ra.status, 200);
        assert_eq!(ra.body, rb.body);
        assert_eq!(ra.header("etag"), rb.header("etag"));
        assert!((100..=5000).contains(&ra.body.len()));
        sizes.insert(ra.body.len());
    }
    assert!(sizes.len() > 1, "sizes should vary: {sizes:?}");
}

#[test]
fn auth_401_403_and_no_auth() {
    let up = Upstream::start(Options { forbidden_keys: vec!["banned".into()], ..Options::default() }).unwrap();
    for target in [TILE.to_string(), format!("{TILE}?apiKey=wrong"), "/v3/info".to_string()] {
        let r = get(&up, &target);
        assert_eq!(r.status, 401, "{target}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("x-correlation-id").is_some());
        assert_eq!(
            r.json(),
            serde_json::json!({"error":"Unauthorized","error_description":"apiKey invalid. apiKey not found."})
        );
    }
    let r = get(&up, &format!("{TILE}?apiKey=banned"));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        serde_json::json!({"error":"Forbidden","error_description":"These credentials do not authorize access"})
    );
    // Bearer token is accepted too.
    let r = request_with(&up, "GET", TILE, "Authorization: Bearer test-key\r\n");
    assert_eq!(r.status, 200);

    let open = Upstream::start(Options { api_key: None, ..Options::default() }).unwrap();
    assert_eq!(get(&open, TILE).status, 200);
}

#[test]
fn validation_400_and_404_shapes() {
    let up = start();
    let cases = [
        ("/v3/base/mc/21/0/0/png", "zoom"),
        ("/v3/base/mc/x/0/0/png", "zoom"),
        ("/v3/base/mc/2/4/0/png", "column"),
        ("/v3/base/mc/2/0/4/png", "row"),
        ("/v3/base/mc/2/0/1.5/png", "row"),
        ("/v3/base/mc/2/0/0/gif", "format"),
        ("/v3/satellite/mc/2/0/0/png", "resource"),
        ("/v3/base/utm/2/0/0/png", "projection"),
        ("/v2/vectortiles/core/mc/18/0/0/omv", "zoom"),
        ("/v2/vectortiles/roads/mc/1/0/0/omv", "layer"),
        ("/v2/vectortiles/base/mc/1/0/0/mvt", "format"),
    ];
    for (path, param) in cases {
        let r = get(&up, &keyed(path));
        assert_eq!(r.status, 400, "{path}");
        let j = r.json();
        assert_eq!(j["status"], 400);
        assert_eq!(j["title"], "Input data failed validation");
        assert_eq!(j["parameter"], param, "{path}");
        assert!(j["code"].as_str().unwrap().starts_with("E6220"));
        assert_eq!(j["correlationId"].as_str(), r.header("x-correlation-id"), "{path}");
        assert!(j["cause"].is_string() && j["action"].is_string());
        assert!(j["details"][0]["message"].is_string());
    }
    for path in ["/v3/base/mc/1/0/0", "/nope", "/v3/base/mc/1/0/0/png/extra"] {
        let r = get(&up, &keyed(path));
        assert_eq!(r.status, 404, "{path}");
        let j = r.json();
        assert_eq!(j["code"], "E622000");
        assert_eq!(j["status"], 404);
        assert!(j.get("parameter").is_none());
    }
    // Everything above was counted.
    assert_eq!(up.total(), cases.len() as u64 + 3);
}

#[test]
fn metadata_endpoints() {
    let up = start();
    let h = get(&up, "/v3/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-type"), Some("application/json"));
    assert_eq!(get(&up, "/v3/version").status, 200);
    assert_eq!(get(&up, "/v3/info").status, 401);
    let i = get(&up, &keyed("/v3/info"));
    assert_eq!(i.status, 200);
    assert_eq!(i.json()["zoomLevels"], serde_json::json!({"min":0,"max":20}));
    assert_eq!(i.header("cache-control"), Some("max-age=86400"));
    assert_eq!(up.count("/v3/info"), 2);
    assert_eq!(up.total(), 4);
}

#[test]
fn conditional_304() {
    let up = start();
    let target = keyed(TILE);
    let etag = get(&up, &target).header("etag").unwrap().to_string();
    for inm in [etag.clone(), format!("W/{etag}"), format!("\"0000000000000000\", {etag}"), "*".to_string()] {
        let r = request_with(&up, "GET", &target, &format!("If-None-Match: {inm}\r\n"));
        assert_eq!(r.status, 304, "{inm}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert!(r.header("x-correlation-id").is_some());
        assert!(r.body.is_empty());
    }
    let r = request_with(&up, "GET", &target, "If-None-Match: \"0000000000000000\"\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(up.count(TILE), 6);
}

#[test]
fn set_version_changes_bytes_and_etag() {
    let up = start();
    let target = keyed(TILE);
    let before = get(&up, &target);
    up.set_version(7);
    let after = get(&up, &target);
    assert_ne!(before.header("etag"), after.header("etag"));
    assert_ne!(before.body, after.body);
    assert_eq!(after.body, up.tile_bytes(&target).to_vec());
    let r = request_with(&up, "GET", &target, &format!("If-None-Match: {}\r\n", before.header("etag").unwrap()));
    assert_eq!(r.status, 200);
    up.set_version(0);
    assert_eq!(get(&up, &target).body, before.body);
}

#[test]
fn counters_recording_and_control_endpoints() {
    let up = start();
    get(&up, &format!("{TILE}?apiKey=test-key&lang=en%2DUS&features=pois%3Aall"));
    get(&up, &keyed(TILE));
    get(&up, &keyed("/v3/base/mc/5/15/14/png"));
    request_with(&up, "HEAD", &keyed(VTILE), "User-Agent: probe\r\n");
    assert_eq!(up.total(), 4);
    assert_eq!(up.count(TILE), 2);
    assert_eq!(up.count("/v3/base/mc/5/15"), 0);
    assert_eq!(up.count_matching("/v3/base/mc/5/15/"), 3);
    assert_eq!(up.count_matching("vectortiles"), 1);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].path, TILE);
    assert_eq!(reqs[0].query_param("lang").as_deref(), Some("en-US"));
    assert_eq!(reqs[0].query_param("features").as_deref(), Some("pois:all"));
    assert_eq!(reqs[0].query_param("apiKey").as_deref(), Some("test-key"));
    assert_eq!(reqs[0].header("host"), Some("x"));
    assert_eq!(reqs[3].method, "HEAD");
    assert_eq!(reqs[3].header("User-Agent"), Some("probe"));

    let stats = get(&up, "/__stats");
    assert_eq!(stats.status, 200);
    let j = stats.json();
    assert_eq!(j["total"], 4);
    assert_eq!(j["paths"][TILE], 2);
    assert_eq!(j["paths"][VTILE], 1);
    assert_eq!(up.total(), 4, "/__stats is not counted");

    up.fail_always("/v3", Fault::Status { code: 500, retry_after: None });
    let reset = request_with(&up, "POST", "/__reset", "Content-Length: 0\r\n");
    assert_eq!(reset.status, 200);
    assert_eq!(up.total(), 0);
    assert!(up.requests().is_empty());
    assert_eq!(get(&up, &keyed(TILE)).status, 200, "faults cleared too");
    assert_eq!(get(&up, "/__stats").json()["total"], 1);
    assert_eq!(get(&up, "/__reset").status, 405);

    let v = request_with(&up, "POST", "/__version?v=3", "");
    assert_eq!(v.status, 200);
    let other = start();
    other.set_version(3);
    assert_eq!(get(&up, &keyed(TILE)).body, other.tile_bytes(TILE).to_vec());
}

#[test]
fn head_gets_headers_only() {
    let up = start();
    let mut s = connect(&up);
    write!(s, "HEAD {} HTTP/1.1\r\nHost: x\r\n\r\n", keyed(TILE)).unwrap();
    write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", keyed(TILE)).unwrap();
    let mut r = BufReader::new(s);
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("2000"));
    // The next bytes on the connection are the GET's response, proving no body was sent.
    let getr = read_response(&mut r, false).unwrap();
    assert_eq!(getr.status, 200);
    assert_eq!(getr.body.len(), 2000);
    assert_eq!(head.header("etag"), getr.header("etag"));
}

#[test]
fn keep_alive_sequential_and_pipelined() {
    let up = start();
    let mut s = connect(&up);
    let mut r = BufReader::new(s.try_clone().unwrap());
    write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", keyed(TILE)).unwrap();
    let a = read_response(&mut r, false).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), None);
    write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", keyed(VTILE)).unwrap();
    let b = read_response(&mut r, false).unwrap();
    assert_eq!(b.status, 200);
    assert_eq!(b.header("content-type"), Some("application/x-protobuf"));
    // Pipelined: three requests in one write, answered in order; the last closes.
    let pipelined = format!(
        "GET {} HTTP/1.1\r\n\r\nGET /v3/health HTTP/1.1\r\n\r\nGET {} HTTP/1.1\r\nConnection: close\r\n\r\n",
        keyed("/v3/base/mc/1/0/0/png"),
        keyed("/v3/base/mc/1/1/0/png")
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let c = read_response(&mut r, false).unwrap();
    let d = read_response(&mut r, false).unwrap();
    let e = read_response(&mut r, false).unwrap();
    assert_eq!(c.body, up.tile_bytes("/v3/base/mc/1/0/0/png").to_vec());
    assert_eq!(d.json()["status"], "ok");
    assert_eq!(e.body, up.tile_bytes("/v3/base/mc/1/1/0/png").to_vec());
    assert_eq!(e.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "closed after Connection: close");
    assert_eq!(up.total(), 5);
}

#[test]
fn bad_requests_get_400_or_431_and_close() {
    let up = start();
    for raw in [
        "NONSENSE\r\n\r\n".to_string(),
        "GET /x HTTP/9.9\r\n\r\n".to_string(),
        "GET /x HTTP/1.1\r\nbad header\r\n\r\n".to_string(),
        format!("GET /x HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000)),
    ] {
        let mut s = connect(&up);
        let _ = s.write_all(raw.as_bytes());
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).unwrap();
        let expected = if raw.len() > 16_000 { 431 } else { 400 };
        assert_eq!(resp.status, expected, "{raw:.40}");
        assert_eq!(resp.header("connection"), Some("close"));
        let mut rest = Vec::new();
        assert!(matches!(r.read_to_end(&mut rest), Ok(0) | Err(_)));
    }
    // Binary junk does not kill the server.
    let mut s = connect(&up);
    let _ = s.write_all(&[0xff, 0x00, 0xfe, b'\r', b'\n', b'\r', b'\n']);
    drop(s);
    assert_eq!(get(&up, "/v3/health").status, 200);
    assert_eq!(up.total(), 1);
}

#[test]
fn fault_status_shapes_retry_after_and_times() {
    let up = start();
    up.fail("/v3/base", Fault::Status { code: 503, retry_after: Some(7) }, 2);
    for _ in 0..2 {
        let r = get(&up, &keyed(TILE));
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert!(r.json()["error_description"].is_string());
    }
    assert_eq!(get(&up, &keyed(TILE)).status, 200, "rule used up");

    // A fault wins over auth; rules apply in insertion order.
    up.fail("/v3", Fault::Status { code: 500, retry_after: None }, 1);
    up.fail("/v3", Fault::Status { code: 429, retry_after: None }, 1);
    let r = get(&up, TILE);
    assert_eq!(r.status, 500);
    let j = r.json();
    assert_eq!(j["code"], "E622050");
    assert_eq!(j["status"], 500);
    assert!(j["correlationId"].is_string());
    let r = get(&up, TILE);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_none());
    assert_eq!(r.json()["error"], "Too Many Requests");
    assert_eq!(get(&up, TILE).status, 401);

    up.fail(VTILE, Fault::Status { code: 204, retry_after: None }, 1);
    let r = get(&up, &keyed(VTILE));
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), None);

    for code in [400, 401, 403, 404] {
        up.fail("/v3", Fault::Status { code, retry_after: None }, 1);
        let r = get(&up, &keyed(TILE));
        assert_eq!(r.status, code);
        let j = r.json();
        if code == 401 || code == 403 {
            assert!(j["error_description"].is_string());
        } else {
            assert_eq!(j["status"], code);
        }
    }
    // Counting includes faulted requests.
    assert_eq!(up.count(TILE), 10);
}

#[test]
fn fault_fail_always_until_clear() {
    let up = start();
    up.fail_always("/15/", Fault::Status { code: 502, retry_after: None });
    for _ in 0..3 {
        assert_eq!(get(&up, &keyed(TILE)).status, 502);
    }
    assert_eq!(get(&up, &keyed("/v3/base/mc/5/14/13/png")).status, 200);
    up.clear_faults();
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
}

#[test]
fn fault_delay_and_latency() {
    let up = Upstream::start(Options { latency: Duration::from_millis(50), ..Options::default() }).unwrap();
    let t = Instant::now();
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(50));
    up.fail(TILE, Fault::Delay(Duration::from_millis(300)), 1);
    let t = Instant::now();
    let r = get(&up, &keyed(TILE));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, up.tile_bytes(TILE).to_vec());
    assert!(t.elapsed() >= Duration::from_millis(350));
}

#[test]
fn fault_slow_body() {
    let up = start();
    up.fail(TILE, Fault::SlowBody { chunk: 500, interval: Duration::from_millis(60) }, 1);
    let t = Instant::now();
    // No key: the fault wins over auth, the normal 200 body is sent.
    let r = get(&up, TILE);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("2000"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body, up.tile_bytes(TILE).to_vec());
    assert!(t.elapsed() >= Duration::from_millis(4 * 60), "{:?}", t.elapsed());
}

#[test]
fn fault_slow_body_bytes_arrive_gradually() {
    let up = start();
    up.fail(TILE, Fault::SlowBody { chunk: 1000, interval: Duration::from_millis(400) }, 1);
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(TILE)).unwrap();
    let mut r = BufReader::new(s);
    let (status, _) = read_head(&mut r).unwrap();
    assert_eq!(status, 200);
    // The head arrives at once; the body does not (nothing buffered yet).
    assert!(r.buffer().is_empty());
    r.get_ref().set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    let mut byte = [0u8; 1];
    let err = r.read(&mut byte).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
}

#[test]
fn fault_chunked() {
    let up = start();
    up.fail(VTILE, Fault::Chunked { chunk: 700, interval: Duration::from_millis(20) }, 1);
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(VTILE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.body, up.tile_bytes(VTILE).to_vec());
    // Keep-alive still works after a chunked response.
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(VTILE)).unwrap();
    let again = read_response(&mut r, false).unwrap();
    assert_eq!(again.header("content-length"), Some("2000"));
}

#[test]
fn fault_truncate() {
    let up = start();
    up.fail(TILE, Fault::Truncate { after: 123 }, 1);
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(TILE)).unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r).unwrap();
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-length") && v == "2000"));
    let mut body = Vec::new();
    r.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), 123);
    assert_eq!(body, up.tile_bytes(TILE)[..123].to_vec());
}

#[test]
fn fault_reset() {
    let up = start();
    up.fail(TILE, Fault::Reset, 1);
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(TILE)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {n} bytes"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
    assert_eq!(up.count(TILE), 1);
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
}

#[test]
fn fault_hang_until_shutdown() {
    let up = start();
    up.fail(TILE, Fault::Hang, 1);
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(TILE)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    let err = s.read(&mut buf).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    // Other connections are unaffected.
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
    let addr = up.addr();
    up.shutdown();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert!(TcpStream::connect(addr).is_err(), "listener closed");
}

#[test]
fn start_and_drop_inside_tokio_runtimes() {
    for multi in [false, true] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        }
        .unwrap();
        rt.block_on(async {
            let up = start();
            let addr = up.addr();
            let total = tokio::task::spawn_blocking(move || {
                let s = TcpStream::connect(addr).unwrap();
                let mut s2 = s.try_clone().unwrap();
                write!(s2, "GET /v3/health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
                let mut r = BufReader::new(s);
                read_response(&mut r, false).unwrap().status
            })
            .await
            .unwrap();
            assert_eq!(total, 200);
            assert_eq!(up.total(), 1);
            drop(up);
        });
    }
}

#[test]
fn bind_error_is_reported() {
    let up = start();
    let err = Upstream::start(Options { listen: up.addr(), ..Options::default() });
    assert!(err.is_err());
}

// ---- redirect, echo, headers, big body ---------------------------------------------------------

#[test]
fn fault_redirect_echoes_the_request_url() {
    let up = start();
    up.fail(TILE, Fault::Redirect, 2);
    let target = format!("{TILE}?apiKey=secret-123&lang=en%2DUS");
    let r = get(&up, &target);
    assert_eq!(r.status, 302);
    let url = format!("http://x{target}");
    assert_eq!(r.header("location"), Some(url.as_str()));
    assert!(String::from_utf8_lossy(&r.body).contains(&url), "body echoes the URL");
    // Without a Host header the listen address is used; without a query there is no '?'.
    let mut s = connect(&up);
    write!(s, "GET {TILE} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(format!("{}{TILE}", up.base_url()).as_str()));
    assert_eq!(get(&up, &keyed(TILE)).status, 200, "used up");
    assert_eq!(up.count(TILE), 3);
}

#[test]
fn fault_echo_error_page_with_the_url() {
    let up = start();
    for code in [502, 404, 500] {
        up.fail(TILE, Fault::Echo { code }, 1);
        let target = format!("{TILE}?apiKey=secret-456&style=explore.day");
        let r = get(&up, &target);
        assert_eq!(r.status, code);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let url = format!("http://x{target}");
        assert_eq!(r.header("location"), Some(url.as_str()));
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains(&url) && body.contains("apiKey=secret-456"), "{body}");
        assert!(body.starts_with("<!DOCTYPE html>"));
    }
    up.fail(TILE, Fault::Echo { code: 204 }, 1);
    let r = get(&up, &format!("{TILE}?apiKey=k"));
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(r.header("location"), Some(format!("http://x{TILE}?apiKey=k").as_str()));
}

#[test]
fn fault_headers_add_and_override() {
    let up = Upstream::start(Options { raster_max_age: Some(60), ..Options::default() }).unwrap();
    let set = |k: &str, v: &str| (k.to_string(), v.to_string());
    up.fail(
        TILE,
        Fault::Headers(vec![
            set("cache-control", "no-store"),
            set("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            set("Age", "100"),
            set("Date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            set("Content-Encoding", "gzip"),
            set("ETag", "\"forced\""),
            set("Content-Length", "1"),
            set("Transfer-Encoding", "chunked"),
            set("Bad Name", "x"),
            set("X-Evil", "a\r\nInjected: 1"),
        ]),
        1,
    );
    let r = get(&up, &keyed(TILE));
    assert_eq!(r.status, 200);
    let all = |name: &str| r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count();
    assert_eq!(all("cache-control"), 1);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("expires"), Some("Thu, 01 Jan 1970 00:00:00 GMT"));
    assert_eq!(r.header("age"), Some("100"));
    assert_eq!(r.header("date"), Some("Wed, 21 Oct 2015 07:28:00 GMT"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!((all("etag"), r.header("etag")), (1, Some("\"forced\"")));
    assert_eq!((all("content-length"), r.header("content-length")), (1, Some("2000")));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!((all("bad name"), all("x-evil"), all("injected")), (0, 0, 0));
    assert_eq!(r.body, up.tile_bytes(TILE).to_vec(), "body unchanged");
    assert_eq!(get(&up, &keyed(TILE)).header("cache-control"), Some("max-age=60"), "used up");
}

/// Reads a `Content-Length` body without keeping it: (length, FNV hash, first 8 bytes).
fn drain_body(r: &mut BufReader<TcpStream>, len: u64) -> (u64, u64, Vec<u8>) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut first = Vec::new();
    let mut left = len;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "EOF with {left} bytes left");
        if first.len() < 8 {
            first.extend_from_slice(&buf[..n.min(8 - first.len())]);
        }
        for &b in &buf[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        left -= n as u64;
    }
    (len, h, first)
}

#[test]
fn fault_big_body_streams_64_mib() {
    let up = start();
    const SIZE: u64 = 64 * 1024 * 1024 + 7;
    up.fail(TILE, Fault::BigBody { size: SIZE }, 1);
    let t = Instant::now();
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", keyed(TILE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (status, headers) = read_head(&mut r).unwrap();
    assert_eq!(status, 200);
    let len = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).unwrap();
    assert_eq!(len.1, SIZE.to_string());
    assert!(headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "image/png"));
    let (_, _, first) = drain_body(&mut r, SIZE);
    assert_eq!(&first[..8], b"\x89PNG\r\n\x1a\n");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // The connection stays usable.
    write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", keyed(TILE)).unwrap();
    assert_eq!(read_response(&mut r, false).unwrap().body, up.tile_bytes(TILE).to_vec());

    // Deterministic: the same bytes twice; HEAD gets the length only.
    up.fail_always(VTILE, Fault::BigBody { size: 3 * 65536 + 5 });
    let a = get(&up, &keyed(VTILE));
    let b = get(&up, &keyed(VTILE));
    assert_eq!(a.body.len(), 3 * 65536 + 5);
    assert_eq!(a.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(a.body, b.body);
    let h = request_with(&up, "HEAD", &keyed(VTILE), "");
    assert_eq!(h.header("content-length"), Some("196613"));
    assert!(h.body.is_empty());
}

// ---- control endpoints over HTTP ---------------------------------------------------------------

fn post(up: &Upstream, target: &str, body: &str) -> Resp {
    let extra = format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    let mut s = connect(up);
    write!(s, "POST {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n{body}").unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, false).unwrap()
}

/// Reads whatever the server sends until EOF, a reset or `timeout` (the hang case).
fn raw_exchange(up: &Upstream, target: &str, timeout: Duration) -> Result<Vec<u8>, ErrorKind> {
    let mut s = connect(up);
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(e.kind()),
    }
}

#[test]
fn control_fault_endpoint_covers_every_kind() {
    let up = start();
    let tile = |i: u32| format!("/v3/base/mc/9/{i}/1/png");
    let add = |i: u32, fault: &str| {
        let r = post(&up, "/__fault", &format!(r#"{{"match": "{}", "times": 1, "fault": {fault}}}"#, tile(i)));
        assert_eq!(r.status, 200, "{fault}: {}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        assert_eq!(j["ok"], true);
        assert_eq!(j["rule"]["remaining"], 1);
        assert_eq!(j["rule"]["fault"], serde_json::from_str::<serde_json::Value>(fault).unwrap());
    };
    let url = |i: u32| format!("{}?apiKey=test-key", tile(i));

    add(0, r#"{"status": 503, "retry_after": 2}"#);
    let r = get(&up, &url(0));
    assert_eq!((r.status, r.header("retry-after")), (503, Some("2")));

    add(1, r#"{"delay_ms": 300}"#);
    let t = Instant::now();
    assert_eq!(get(&up, &url(1)).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    add(2, r#"{"slow_body": {"chunk": 500, "interval_ms": 50}}"#);
    let t = Instant::now();
    let r = get(&up, &url(2));
    assert_eq!((r.status, r.body.len()), (200, 2000));
    assert!(t.elapsed() >= Duration::from_millis(200));

    add(3, r#"{"chunked": {"chunk": 700, "interval_ms": 1}}"#);
    let r = get(&up, &url(3));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, up.tile_bytes(&tile(3)).to_vec());

    add(4, r#"{"truncate": 10}"#);
    let raw = raw_exchange(&up, &url(4), Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text.contains("Content-Length: 2000"));
    assert_eq!(raw.len() - body_at, 10);

    add(5, r#"{"reset": true}"#);
    let reset = raw_exchange(&up, &url(5), Duration::from_secs(5));
    assert!(matches!(reset, Ok(ref v) if v.is_empty()) || reset == Err(ErrorKind::ConnectionReset), "{reset:?}");

    add(6, r#"{"hang": true}"#);
    let hung = raw_exchange(&up, &url(6), Duration::from_millis(300));
    assert!(matches!(hung, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)), "{hung:?}");

    add(7, r#"{"redirect": true}"#);
    let r = get(&up, &url(7));
    assert_eq!((r.status, r.header("location")), (302, Some(format!("http://x{}", url(7)).as_str())));

    add(8, r#"{"echo": 500}"#);
    let r = get(&up, &url(8));
    assert_eq!(r.status, 500);
    assert!(String::from_utf8_lossy(&r.body).contains("apiKey=test-key"));

    add(9, r#"{"headers": [["Cache-Control", "max-age=5"], ["Age", "3"]]}"#);
    let r = get(&up, &url(9));
    assert_eq!((r.header("cache-control"), r.header("age")), (Some("max-age=5"), Some("3")));

    add(10, r#"{"big_body": 1000000}"#);
    let r = get(&up, &url(10));
    assert_eq!((r.status, r.body.len()), (200, 1_000_000));

    // Every rule was used once; the same tiles now answer normally.
    assert_eq!(get(&up, "/__fault").json()["rules"], serde_json::json!([]));
    for i in 0..=10 {
        assert_eq!(get(&up, &url(i)).body, up.tile_bytes(&tile(i)).to_vec(), "tile {i}");
    }
}

#[test]
fn control_fault_always_list_and_clear() {
    let up = start();
    let r = post(&up, "/__fault", r#"{"match": "/v3/base", "fault": {"status": 500}}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rule"], serde_json::json!({"match": "/v3/base", "remaining": null, "fault": {"status": 500}}));
    post(&up, "/__fault", r#"{"match": "/v2/", "times": 5, "fault": {"delay_ms": 10}}"#);
    for _ in 0..3 {
        assert_eq!(get(&up, &keyed(TILE)).status, 500);
    }
    let rules = get(&up, "/__fault").json()["rules"].clone();
    assert_eq!(rules.as_array().unwrap().len(), 2);
    assert_eq!(rules[1], serde_json::json!({"match": "/v2/", "remaining": 5, "fault": {"delay_ms": 10}}));
    assert_eq!(get(&up, "/__stats").json()["faults"], 2);

    let c = post(&up, "/__clear", "");
    assert_eq!((c.status, c.json()["ok"].as_bool()), (200, Some(true)));
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
    assert_eq!(get(&up, "/__stats").json()["faults"], 0);
    assert_eq!(up.total(), 4, "counters kept by /__clear");
    assert_eq!(get(&up, "/__clear").status, 405);
}

#[test]
fn control_fault_bad_input_is_a_400_naming_the_problem() {
    let up = start();
    for (body, needle) in [
        ("{not json", "invalid JSON"),
        ("", "empty body"),
        (r#"{"match": "/v3", "fault": {"status": 503, "retry": 1}}"#, "unknown key \"retry\""),
        (r#"{"match": "/v3", "fault": {"teapot": true}}"#, "needs one of"),
        (r#"{"fault": {"reset": true}}"#, "missing \"match\""),
    ] {
        let r = post(&up, "/__fault", body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(needle), "{body}: {err}");
    }
    assert_eq!(get(&up, "/__stats").json()["faults"], 0, "nothing added");
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
}

#[test]
fn control_latency() {
    let up = start();
    let r = post(&up, "/__latency?ms=250", "");
    assert_eq!((r.status, r.json()["latency_ms"].as_u64()), (200, Some(250)));
    assert_eq!(get(&up, "/__stats").json()["latency_ms"], 250.0);
    let t = Instant::now();
    assert_eq!(get(&up, &keyed(TILE)).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    let t = Instant::now();
    get(&up, "/__stats");
    assert!(t.elapsed() < Duration::from_millis(250), "control endpoints are not delayed");
    assert_eq!(post(&up, "/__latency?ms=x", "").status, 400);
    assert_eq!(post(&up, "/__latency?ms=0", "").status, 200);
    up.set_latency(Duration::from_millis(120));
    let t = Instant::now();
    get(&up, &keyed(TILE));
    assert!(t.elapsed() >= Duration::from_millis(120));
}

// ---- real images ---------------------------------------------------------------------------------

fn image_upstream() -> Upstream {
    Upstream::start(Options { images: true, ..Options::default() }).unwrap()
}

/// Decodes a PNG: (width, height, colour type, RGB(A)/index bytes).
fn decode_png(body: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(body)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

#[test]
fn images_png_decode_with_size_and_differ() {
    let up = image_upstream();
    let a = get(&up, &keyed(TILE));
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("image/png"));
    let (w, h, color, pixels) = decode_png(&a.body);
    assert_eq!((w, h, color), (256, 256, png::ColorType::Rgb));
    let colours: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
    assert!(colours.len() >= 4, "background, grid, border, label, text: {}", colours.len());

    let big = get(&up, &format!("{TILE}?apiKey=test-key&size=512&style=explore.night"));
    let (w, h, _, _) = decode_png(&big.body);
    assert_eq!((w, h), (512, 512));

    // Same tile twice: byte-identical with the same ETag (and what tile_bytes says).
    let again = get(&up, &format!("{TILE}?apikey=test-key"));
    assert_eq!(again.body, a.body);
    assert_eq!(again.header("etag"), a.header("etag"));
    assert_eq!(a.body, up.tile_bytes(TILE).to_vec());
    assert_eq!(a.body, image_upstream().tile_bytes(TILE).to_vec(), "same on another server");

    // Neighbours, other styles and other resources differ.
    let others = [
        "/v3/base/mc/5/15/14/png".to_string(),
        format!("{TILE}?style=explore.satellite.day"),
        "/v3/background/mc/5/15/13/png".to_string(),
    ];
    for other in others {
        assert_ne!(up.tile_bytes(&other), a.body, "{other}");
    }
    // png8 is a palette PNG.
    let p8 = get(&up, &keyed("/v3/label/mc/5/15/13/png8"));
    assert_eq!(p8.header("content-type"), Some("image/png"));
    let (w, h, color, _) = decode_png(&p8.body);
    assert_eq!((w, h, color), (256, 256, png::ColorType::Indexed));
}

#[test]
fn images_change_with_version() {
    let up = image_upstream();
    let before = get(&up, &keyed(TILE));
    up.set_version(3);
    let after = get(&up, &keyed(TILE));
    assert_ne!(before.body, after.body);
    assert_ne!(before.header("etag"), after.header("etag"));
    assert_eq!(decode_png(&after.body).0, 256);
    up.set_version(0);
    assert_eq!(get(&up, &keyed(TILE)).body, before.body);
}

#[test]
fn images_jpeg_decodes_with_size() {
    let up = image_upstream();
    for (query, side) in [("", 256u16), ("&size=512", 512)] {
        let r = get(&up, &format!("/v3/base/mc/7/100/50/jpeg?apiKey=test-key{query}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("image/jpeg"));
        assert_eq!(&r.body[..2], &[0xff, 0xd8], "SOI");
        assert_eq!(&r.body[r.body.len() - 2..], &[0xff, 0xd9], "EOI");
        let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(&r.body));
        let pixels = dec.decode().unwrap();
        let info = dec.info().unwrap();
        assert_eq!((info.width, info.height), (side, side));
        assert_eq!(pixels.len(), usize::from(side) * usize::from(side) * 3);
    }
}

// ---- real vector tiles ---------------------------------------------------------------------------

/// The label feature's `name` property (the tile's `z/x/y`) after a full decode.
fn mvt_label_name(body: &[u8]) -> String {
    let tile = mvt_decode::tile(body).unwrap();
    let label = tile.iter().find(|l| l.name == "label").expect("label layer");
    match &label.features[0].props["name"] {
        mvt_decode::Prop::Str(s) => s.clone(),
        other => panic!("name is {other:?}"),
    }
}

#[test]
fn images_serve_vector_tiles_that_decode() {
    let up = image_upstream();
    let r = get(&up, &keyed(VTILE));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    let tile = mvt_decode::tile(&r.body).unwrap();
    let layers: Vec<(&str, u32, u32, usize)> =
        tile.iter().map(|l| (l.name.as_str(), l.version, l.extent, l.features.len())).collect();
    assert_eq!(layers, [("grid", 2, 4096, 7), ("label", 2, 4096, 1), ("water", 2, 4096, 1)]);
    assert_eq!(mvt_label_name(&r.body), "12/2200/1343");
    let water = &tile[2].features[0];
    assert_eq!(water.props["kind"], mvt_decode::Prop::Str("water".into()));
    let mvt_decode::Geom::Polygons(rings) = &water.geometry else { panic!("water is {:?}", water.geometry) };
    assert!(mvt_decode::signed_area(&rings[0]) > 0.0, "exterior ring, clockwise on screen");
    // Natural size, not min_size/max_size; the same bytes from tile_bytes and another server.
    assert_ne!(r.body.len(), 2000);
    assert_eq!(r.body, up.tile_bytes(VTILE).to_vec());
    assert_eq!(r.body, image_upstream().tile_bytes(VTILE).to_vec(), "same on another server");
    // Other tiles, layers and queries differ.
    assert_eq!(mvt_label_name(&up.tile_bytes("/v2/vectortiles/base/mc/0/0/0/omv")), "0/0/0");
    assert_ne!(up.tile_bytes("/v2/vectortiles/base/mc/12/2200/1343/omv"), r.body);
    assert_ne!(up.tile_bytes(&format!("{VTILE}?lang=de")), r.body);
}

#[test]
fn mvt_etag_304_version_and_faults() {
    let up = Upstream::start(Options { mvt: true, ..Options::default() }).unwrap();
    let a = get(&up, &keyed(VTILE));
    assert_eq!(mvt_label_name(&a.body), "12/2200/1343");
    let etag = a.header("etag").unwrap().to_string();
    let r = request_with(&up, "GET", &keyed(VTILE), &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r.status, 304);
    up.set_version(4);
    let b = get(&up, &keyed(VTILE));
    assert_ne!(b.header("etag"), Some(etag.as_str()));
    assert_ne!(b.body, a.body);
    let tile = mvt_decode::tile(&b.body).unwrap();
    assert_eq!(tile[1].features[0].props["version"], mvt_decode::Prop::Uint(4));
    // Faults still apply: a truncated MVT does not decode.
    up.fail(VTILE, Fault::Truncate { after: 40 }, 1);
    let mut s = connect(&up);
    write!(s, "GET {} HTTP/1.1\r\n\r\n", keyed(VTILE)).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_head(&mut r).unwrap().0, 200);
    let mut cut = Vec::new();
    r.read_to_end(&mut cut).unwrap();
    assert_eq!(cut, b.body[..40].to_vec());
    assert!(mvt_decode::tile(&cut).is_err());
    // Raster tiles stay random bytes without `images`.
    assert_eq!(get(&up, &keyed(TILE)).body.len(), 2000);
}

#[test]
fn vector_tiles_are_random_bytes_by_default() {
    let body = start().tile_bytes(VTILE);
    assert_eq!(body.len(), 2000);
    assert!(mvt_decode::tile(&body).is_err());
}

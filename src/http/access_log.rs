//! The access log: one line per request (JSON by default), cheap enough to leave on.
//!
//! What a line costs a worker: the outermost middleware (`http_metrics::Observe`) keeps the
//! start `Instant` in its future (nothing in the request's extensions) and calls `log`; the
//! handler notes index, tile and cache result ([`note`]: one small value in the request's
//! extensions, which actix reuses between requests); and at the response head the line is
//! formatted by hand, with no allocation, into one buffer shared by the workers. A full buffer
//! (`access_log_buffer`, 64 KiB like nginx's `access_log ... buffer=64k`) is handed to the
//! `access-log` thread, which writes it to stdout in one `write`; that thread also writes
//! whatever is pending every `access_log_flush` (1 s), and everything on shutdown. So a worker never makes a syscall for its log lines and
//! never waits on stdout: if the writer falls behind by more than [`QUEUED_BUFFERS`] buffers
//! (stdout blocked), buffers are dropped and counted (`tile_proxy_access_log_dropped_total`)
//! instead of stalling the workers.
//!
//! `access_log_sample = N` logs one request in N, and every answer with a status of 400 or
//! more. Fields: `timestamp`, `level`, `target` (`tile_proxy::access`), `message` (`request`),
//! `request_id` (from a trusted proxy's `X-Request-Id`, else a random UUID v4), `method`, `path`
//! (never the query: it may hold a client's key), `client`, `index`, `tile`, `cache`, `status`,
//! `latency_ms` (to the response head) and `bytes`.
//!
//! Why not tracing-actix-web (the design card's crate): measured again after the crate was
//! layered (2026-12-05, `bench/instructions.sh`, one build with both behind a switch,
//! `bench/middleware-experiment.patch`), its root span carrying our request id plus one access
//! event at the span's end cost a memory hit 91,792 instructions with the access log on (ours:
//! 54,328, +69 %: the span's fields and the event go through `tracing`'s formatting and
//! allocation) and 51,447 with it off (ours 50,088, +2.7 %). The log is on by default, so the
//! crate would cost far more than the 3 % we allow: this module stays.

use std::cell::Cell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{Error, HttpMessage, HttpRequest};

use crate::config::AccessLogSettings;
use crate::observe::metrics::IndexMetrics;

/// Full buffers that may wait for the writer before new ones are dropped.
pub const QUEUED_BUFFERS: usize = 32;

/// What the handler learned about a request, for its line. Kept in the request's extensions.
#[derive(Clone, Default)]
pub struct AccessNote {
    pub index: Option<Arc<IndexMetrics>>,
    pub tile: Option<TileId>,
    pub cache: &'static str,
}

/// A tile, as the line names it: `raster/base/5/15/13`.
#[derive(Clone, Copy)]
pub struct TileId {
    pub api: &'static str,
    pub resource: &'static str,
    pub z: u8,
    pub x: u32,
    pub y: u32,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// True when access lines are written (the log was started with [`start`]).
#[inline]
pub fn enabled() -> bool {
    LOGGER.get().is_some()
}

/// Notes fields for the request's line. Does nothing when the access log is off.
pub fn note(req: &HttpRequest, f: impl FnOnce(&mut AccessNote)) {
    if !enabled() {
        return;
    }
    let mut ext = req.extensions_mut();
    match ext.get_mut::<AccessNote>() {
        Some(n) => f(n),
        None => {
            let mut n = AccessNote::default();
            f(&mut n);
            ext.insert(n);
        }
    }
}

struct Logger {
    config: AccessLogSettings,
    pending: Mutex<Pending>,
    tx: SyncSender<Msg>,
}

struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    stamp_secs: u64,
    stamp: [u8; 19],
}

enum Msg {
    Chunk(Vec<u8>),
    Stop,
}

/// Stops the writer when dropped, after writing every pending line. Keep it alive until exit.
pub struct Guard {
    tx: SyncSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the access log (once per process; `None` if it already runs or the thread cannot
/// start).
pub fn start(config: AccessLogSettings) -> Option<Guard> {
    let config = AccessLogSettings { sample: config.sample.max(1), buffer: config.buffer.max(1), ..config };
    let (tx, rx) = sync_channel(QUEUED_BUFFERS);
    let logger = Logger {
        config,
        pending: Mutex::new(Pending {
            bytes: Vec::with_capacity(config.buffer + 1024),
            lines: 0,
            stamp_secs: u64::MAX,
            stamp: [b'0'; 19],
        }),
        tx: tx.clone(),
    };
    LOGGER.set(logger).ok()?;
    let thread = std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx, config.flush)).ok()?;
    Some(Guard { tx, thread: Some(thread) })
}

fn writer(rx: Receiver<Msg>, flush: Duration) {
    let write = |bytes: &[u8]| {
        if bytes.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    };
    let take_pending = || {
        let logger = LOGGER.get()?;
        let mut p = logger.pending.lock().ok()?;
        p.lines = 0;
        Some(std::mem::replace(&mut p.bytes, Vec::with_capacity(logger.config.buffer + 1024)))
    };
    loop {
        match rx.recv_timeout(flush) {
            Ok(Msg::Chunk(bytes)) => write(&bytes),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(bytes) = take_pending() {
                    write(&bytes);
                }
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                while let Ok(Msg::Chunk(bytes)) = rx.try_recv() {
                    write(&bytes);
                }
                if let Some(bytes) = take_pending() {
                    write(&bytes);
                }
                return;
            }
        }
    }
}

/// One request's line, borrowed from the request and response.
struct Line<'a> {
    request_id: RequestId<'a>,
    method: &'a str,
    path: &'a str,
    client: Option<IpAddr>,
    note: Option<&'a AccessNote>,
    status: u16,
    latency: Duration,
    bytes: Option<u64>,
}

enum RequestId<'a> {
    Proxy(&'a str),
    Own(u128),
}

thread_local! {
    static SAMPLE_COUNT: Cell<u32> = const { Cell::new(0) };
    static RNG: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed from std's random hash keys (no syscall per request).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish() | 1
}

/// 64 random bits (wyrand).
fn next_random() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A random UUID v4's 128 bits.
fn new_uuid() -> u128 {
    let v = (u128::from(next_random()) << 64) | u128::from(next_random());
    (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// Writes the line of a finished request (its response head is ready), if it is sampled.
pub(crate) fn log<B: MessageBody>(outcome: &Result<ServiceResponse<B>, Error>, started: Instant) {
    let Some(logger) = LOGGER.get() else { return };
    let latency = started.elapsed();
    let res = match outcome {
        Ok(res) => res,
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            let line = Line {
                request_id: RequestId::Own(new_uuid()),
                method: "-",
                path: "-",
                client: None,
                note: None,
                status,
                latency,
                bytes: None,
            };
            logger.push(&line);
            return;
        }
    };
    let status = res.status().as_u16();
    if status < 400 && logger.config.sample > 1 {
        let n = SAMPLE_COUNT.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if !n.is_multiple_of(logger.config.sample) {
            return;
        }
    }
    let req = res.request();
    let state = crate::http::state::State::of(req);
    let trusted = state.as_ref().map_or(&[][..], |s| s.settings.trusted_proxies.as_slice());
    let from_proxy = req
        .peer_addr()
        .filter(|peer| trusted.iter().any(|n| n.contains(&peer.ip())))
        .and_then(|_| req.headers().get("x-request-id")?.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    let request_id = match from_proxy {
        Some(id) => RequestId::Proxy(id),
        None => RequestId::Own(new_uuid()),
    };
    let bytes = res.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).or(
        match res.response().body().size() {
            BodySize::Sized(n) => Some(n),
            _ => None,
        },
    );
    let ext = req.extensions();
    let line = Line {
        request_id,
        method: req.method().as_str(),
        path: req.path(),
        client: crate::http::client_ip::of_request(req, trusted),
        note: ext.get::<AccessNote>(),
        status,
        latency,
        bytes,
    };
    logger.push(&line);
}

impl Logger {
    fn push(&self, line: &Line<'_>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let full = {
            let Ok(mut p) = self.pending.lock() else { return };
            let p = &mut *p;
            let secs = now.as_secs();
            if secs != p.stamp_secs {
                p.stamp = format_stamp(secs);
                p.stamp_secs = secs;
            }
            let stamp = p.stamp;
            format_line(&mut p.bytes, &stamp, now.subsec_micros(), line, self.config.json);
            p.lines += 1;
            if p.bytes.len() < self.config.buffer {
                return;
            }
            let lines = std::mem::take(&mut p.lines);
            (std::mem::replace(&mut p.bytes, Vec::with_capacity(self.config.buffer + 1024)), lines)
        };
        let (bytes, lines) = full;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(Msg::Chunk(bytes)) {
            crate::observe::metrics::access_log_dropped().inc_by(lines);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time.
fn format_stamp(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = crate::base::clock::civil_from_days(days);
    let mut out = [0u8; 19];
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y.clamp(0, 9999) as u64, 4);
    put(5, m as u64, 2);
    put(8, d as u64, 2);
    put(11, rem / 3600, 2);
    put(14, rem / 60 % 60, 2);
    put(17, rem % 60, 2);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn put_uuid(out: &mut Vec<u8>, v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, shift) in (0..32).rev().map(|n| n * 4).enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push(b'-');
        }
        out.push(HEX[((v >> shift) & 0xf) as usize]);
    }
}

/// `s` as the inside of a JSON string.
fn put_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most values need no escaping: one tight scan, one copy.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// `s` for a text line: as it is when it has no space, quote or control byte, else quoted.
fn put_text_str(out: &mut Vec<u8>, s: &str) {
    if !s.is_empty() && s.bytes().all(|b| b > b' ' && b != b'"' && b != 0x7f) {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.push(b'"');
        put_json_str(out, s);
        out.push(b'"');
    }
}

/// Appends one line (with its newline) to `out`.
fn format_line(out: &mut Vec<u8>, stamp: &[u8; 19], micros: u32, line: &Line<'_>, json: bool) {
    let start = out.len();
    // One field: its name, then its value (`write` is told whether the line is JSON).
    let field = |out: &mut Vec<u8>, name: &str, write: &dyn Fn(&mut Vec<u8>, bool), quoted: bool| {
        if json {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            if quoted {
                out.push(b'"');
            }
            write(out, true);
            if quoted {
                out.push(b'"');
            }
        } else {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            write(out, false);
        }
    };
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
    }
    out.extend_from_slice(stamp);
    out.push(b'.');
    let mut frac = [b'0'; 6];
    let mut m = micros;
    for i in (0..6).rev() {
        frac[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&frac);
    out.push(b'Z');
    if json {
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"tile_proxy::access\",\"message\":\"request\"");
    } else {
        out.extend_from_slice(b"  INFO tile_proxy::access: request");
    }
    let text = |out: &mut Vec<u8>, s: &str, json: bool| if json { put_json_str(out, s) } else { put_text_str(out, s) };
    match line.request_id {
        RequestId::Proxy(id) => field(out, "request_id", &|o, j| text(o, id, j), true),
        RequestId::Own(v) => field(out, "request_id", &|o, _| put_uuid(o, v), true),
    }
    field(out, "method", &|o, j| text(o, line.method, j), true);
    field(out, "path", &|o, j| text(o, line.path, j), true);
    match line.client {
        Some(ip) => field(out, "client", &|o, _| write_ip(o, ip), true),
        None => field(out, "client", &|o, j| text(o, "-", j), true),
    }
    if let Some(note) = line.note {
        if let Some(index) = &note.index {
            field(out, "index", &|o, j| text(o, index.label(), j), true);
        }
        if let Some(t) = note.tile {
            field(
                out,
                "tile",
                &|o, _| {
                    o.extend_from_slice(t.api.as_bytes());
                    o.push(b'/');
                    o.extend_from_slice(t.resource.as_bytes());
                    o.push(b'/');
                    put_u64(o, u64::from(t.z));
                    o.push(b'/');
                    put_u64(o, u64::from(t.x));
                    o.push(b'/');
                    put_u64(o, u64::from(t.y));
                },
                true,
            );
        }
        if !note.cache.is_empty() {
            field(out, "cache", &|o, j| text(o, note.cache, j), true);
        }
    }
    field(out, "status", &|o, _| put_u64(o, u64::from(line.status)), false);
    let micros = line.latency.as_micros().min(u128::from(u64::MAX)) as u64;
    field(
        out,
        "latency_ms",
        &|o, _| {
            put_u64(o, micros / 1000);
            o.push(b'.');
            let frac = micros % 1000;
            o.extend_from_slice(&[b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8]);
        },
        false,
    );
    if let Some(b) = line.bytes {
        field(out, "bytes", &|o, _| put_u64(o, b), false);
    }
    if json {
        out.push(b'}');
    }
    out.push(b'\n');
    debug_assert!(out.len() > start);
}

fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(out, u64::from(*o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_dates() {
        assert_eq!(&format_stamp(0), b"1970-01-01T00:00:00");
        // 2024-02-29T23:59:59Z (a leap day) and 2026-11-22T10:55:07Z.
        assert_eq!(&format_stamp(1_709_251_199), b"2024-02-29T23:59:59");
        assert_eq!(&format_stamp(1_795_344_907), b"2026-11-22T10:55:07");
        assert_eq!(&format_stamp(4_102_444_800), b"2100-01-01T00:00:00");
    }

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (new_uuid(), new_uuid());
        assert_ne!(a, b);
        let mut s = Vec::new();
        put_uuid(&mut s, a);
        let s = String::from_utf8(s).unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4", "{s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_eq!(s.matches('-').count(), 4);
    }

    fn line<'a>(path: &'a str, note: Option<&'a AccessNote>) -> Line<'a> {
        Line {
            request_id: RequestId::Proxy("nginx-7f3a"),
            method: "GET",
            path,
            client: Some("203.0.113.7".parse().unwrap()),
            note,
            status: 200,
            latency: Duration::from_micros(1_234_567),
            bytes: Some(12_000),
        }
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let note = AccessNote {
            index: None,
            tile: Some(TileId { api: "raster", resource: "base", z: 5, x: 15, y: 13 }),
            cache: "hit",
        };
        let mut out = Vec::new();
        format_line(&mut out, &format_stamp(1_795_344_907), 42, &line("/a\"b\\c\u{1}d", Some(&note)), true);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-11-22T10:55:07.000042Z");
        assert_eq!(v["target"], "tile_proxy::access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["request_id"], "nginx-7f3a");
        assert_eq!(v["path"], "/a\"b\\c\u{1}d");
        assert_eq!(v["client"], "203.0.113.7");
        assert_eq!(v["tile"], "raster/base/5/15/13");
        assert_eq!(v["cache"], "hit");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_ms"], 1234.567);
        assert_eq!(v["bytes"], 12_000);
        assert!(v.get("index").is_none());
    }

    #[test]
    fn text_lines_quote_what_needs_it() {
        let mut out = Vec::new();
        format_line(&mut out, &format_stamp(0), 5, &line("/with space", None), false);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000005Z  INFO tile_proxy::access: request request_id=nginx-7f3a method=GET \
             path=\"/with space\" client=203.0.113.7 status=200 latency_ms=1234.567 bytes=12000\n"
        );
    }
}

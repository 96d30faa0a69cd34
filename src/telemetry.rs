//! Logs: one JSON line per request, the access line (target `tile_proxy::access`), with request
//! id, method, path (never the query: it may hold a client's key), client address, index, tile,
//! cache result, status, latency to the response head and body bytes.
//!
//! tracing-actix-web gives each request its id and a root span; the handler notes what it learned
//! with [`note`], and [`TileSpan::on_request_end`] emits the line as one event with every field.
//! (Span fields are not used for it: re-reading them at every line is costly at thousands of
//! requests per second.) With access logging off (`RUST_LOG=warn`), none of this work is done.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{Error, HttpMessage, HttpRequest};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (`RUST_LOG`, default `info`). Safe to call more than once.
///
/// Lines are written to stdout by a background thread (workers only queue them), so a log line
/// per request does not put a `write` syscall on every request's path. Keep the returned guard
/// alive until exit: dropping it flushes what is queued.
///
/// The HTTP client and server libraries are held at `warn` whatever `RUST_LOG` says: their debug
/// output can carry upstream URLs, and those hold the server's key.
pub fn init(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for quiet in ["awc=warn", "actix_http=warn", "h2=warn", "rustls=warn"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    // Not lossy: under overload a full queue slows workers down rather than dropping lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    // Colours only for a terminal, never into files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let _ = if json {
        builder.json().with_current_span(false).with_span_list(false).flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// True when access lines are logged (the `tile_proxy::access` target is enabled at info).
pub fn access_enabled() -> bool {
    tracing::enabled!(target: "tile_proxy::access", tracing::Level::INFO)
}

/// What the handler learned about a request, for its access line.
#[derive(Debug, Default)]
pub struct AccessFields {
    pub index: String,
    pub tile: String,
    pub cache: &'static str,
}

/// Notes fields for the access line. Does nothing when access logging is off.
pub fn note(req: &HttpRequest, f: impl FnOnce(&mut AccessFields)) {
    if !access_enabled() {
        return;
    }
    let mut ext = req.extensions_mut();
    match ext.get_mut::<AccessFields>() {
        Some(a) => f(a),
        None => {
            let mut a = AccessFields::default();
            f(&mut a);
            ext.insert(a);
        }
    }
}

/// Time the request started, kept in the request's extensions.
#[derive(Clone, Copy)]
struct Started(std::time::Instant);

/// The proxies whose forwarding headers are believed (`trusted_proxies`).
fn trusted_proxies(req: &actix_web::HttpRequest) -> &[ipnet::IpNet] {
    req.app_data::<actix_web::web::Data<crate::service::TileService>>()
        .map(|s| s.state().settings.trusted_proxies.as_slice())
        .unwrap_or(&[])
}

/// The request's id: the `X-Request-Id` a trusted proxy sent (NGINX's `$request_id`, a CDN's),
/// so one id follows the request through every log; else our own.
fn request_id(req: &actix_web::HttpRequest) -> String {
    let from_proxy =
        req.peer_addr().filter(|peer| trusted_proxies(req).iter().any(|n| n.contains(&peer.ip()))).and_then(|_| {
            let id = req.headers().get("x-request-id")?.to_str().ok()?;
            let ok = !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            ok.then(|| id.to_string())
        });
    from_proxy.unwrap_or_else(|| req.extensions().get::<RequestId>().map(|r| r.to_string()).unwrap_or_default())
}

/// Root span per request (carries the request id for anything logged inside it) and the access
/// line at its end.
pub struct TileSpan;

impl RootSpanBuilder for TileSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        if !access_enabled() {
            return Span::none();
        }
        request.extensions_mut().insert(Started(std::time::Instant::now()));
        let id = request_id(request.request());
        tracing::info_span!("request", request_id = %id)
    }

    fn on_request_end<B: MessageBody>(_span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        if !access_enabled() {
            return;
        }
        let res = match outcome {
            Ok(res) => res,
            Err(e) => {
                tracing::info!(target: "tile_proxy::access", status = e.as_response_error().status_code().as_u16(), "request");
                return;
            }
        };
        let req = res.request();
        // X-Forwarded-For counts only from configured proxies (`trusted_proxies`).
        let trusted = trusted_proxies(req);
        let client = crate::client_ip::of_request(req, trusted).map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let ext = req.extensions();
        let latency_ms = ext.get::<Started>().map(|s| s.0.elapsed().as_secs_f64() * 1000.0);
        drop(ext);
        let request_id = request_id(req);
        let ext = req.extensions();
        let fields = ext.get::<AccessFields>();
        let bytes =
            res.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).or(
                match res.response().body().size() {
                    actix_web::body::BodySize::Sized(n) => Some(n),
                    _ => None,
                },
            );
        tracing::info!(
            target: "tile_proxy::access",
            request_id = %request_id,
            method = %req.method(),
            path = %req.path(),
            client = %client,
            index = fields.map(|f| f.index.as_str()),
            tile = fields.map(|f| f.tile.as_str()),
            cache = fields.map(|f| f.cache),
            status = res.status().as_u16(),
            latency_ms,
            bytes,
            "request"
        );
    }
}

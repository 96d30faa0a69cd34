//! Logs: one JSON line per request (tracing-actix-web root span, printed when it closes) with
//! request id, method, path (never the query: it may hold a client's key), index, tile, cache
//! result, status, latency to the response head and body bytes.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};
use tracing_subscriber::fmt::format::FmtSpan;
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
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_span_events(FmtSpan::CLOSE).with_writer(writer);
    let _ =
        if json { builder.json().with_current_span(true).with_span_list(false).try_init() } else { builder.try_init() };
    guard
}

/// Time the request started, kept in the request's extensions.
#[derive(Clone, Copy)]
struct Started(std::time::Instant);

/// Our root span: only safe fields, filled in as the request goes.
pub struct TileSpan;

impl RootSpanBuilder for TileSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let span = tracing::info_span!(
            "request",
            request_id = tracing::field::Empty,
            method = %request.method(),
            path = %request.path(),
            client = tracing::field::Empty,
            index = tracing::field::Empty,
            tile = tracing::field::Empty,
            cache = tracing::field::Empty,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        // Nothing more to do when request logging is off (e.g. RUST_LOG=warn): keep hits cheap.
        if !span.is_disabled() {
            if let Some(id) = request.extensions().get::<RequestId>() {
                span.record("request_id", tracing::field::display(id));
            }
            span.record("client", request.connection_info().realip_remote_addr().unwrap_or("-"));
            request.extensions_mut().insert(Started(std::time::Instant::now()));
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        if span.is_disabled() {
            return;
        }
        match outcome {
            Ok(res) => {
                span.record("status", res.status().as_u16());
                if let Some(started) = res.request().extensions().get::<Started>() {
                    span.record("latency_ms", started.0.elapsed().as_secs_f64() * 1000.0);
                }
                let len = res.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if let Some(len) = len {
                    span.record("bytes", len);
                } else if let actix_web::body::BodySize::Sized(n) = res.response().body().size() {
                    span.record("bytes", n);
                }
            }
            Err(e) => {
                span.record("status", e.as_response_error().status_code().as_u16());
            }
        }
    }
}

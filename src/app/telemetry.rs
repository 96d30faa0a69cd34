//! Logs: `tracing` events (startup, warnings, errors) as JSON lines on stdout, and the access
//! log ([`crate::http::access_log`]: one line per request, target `tile_proxy::access`), which has a
//! writer of its own because it is on every request's path.

use tracing_subscriber::EnvFilter;

/// What [`init`] started; keep it alive until exit (dropping it writes what is still queued).
pub struct LogGuards {
    _access: Option<crate::http::access_log::Guard>,
    _events: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global subscriber (`RUST_LOG`, default `info`) and, unless `access` is `None` or
/// `RUST_LOG` turns the `tile_proxy::access` target off (`RUST_LOG=warn`), starts the access log.
/// Safe to call more than once.
///
/// Events are written to stdout by a background thread (workers only queue them). The HTTP
/// client and server libraries are held at `warn` whatever `RUST_LOG` says: their debug output
/// can carry upstream URLs, and those hold the server's key.
pub fn init(json: bool, access: Option<crate::config::AccessLogSettings>) -> LogGuards {
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
    let access = access
        .filter(|_| tracing::enabled!(target: "tile_proxy::access", tracing::Level::INFO))
        .and_then(crate::http::access_log::start);
    LogGuards { _access: access, _events: guard }
}

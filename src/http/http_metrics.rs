//! HTTP metrics, `/metrics`, and the one middleware every request passes first ([`Observe`]):
//! the access line (`http::access_log`) at the response head, the HTTP metrics when the body is done.
//!
//! `tile_proxy_http_requests_total{endpoint, method, status}` (the HorizontalPodAutoscaler's
//! requests per second) and `tile_proxy_http_requests_duration_seconds{...}` keep the names,
//! labels, help and buckets that actix-web-prom gave them, so dashboards, alerts and the HPA's
//! adapter rule read them as before. `endpoint` is the route pattern (`/live`,
//! `/admin/seed/{id}`, `/metrics`); tiles have none (`http::bypass::TilesFirst` skips the router) and are
//! counted as `tiles_or_unknown`, with every other unrouted path. The duration runs from the
//! request to the end of its body (a streamed miss: its last byte), as before.
//!
//! Why not actix-web-prom (the design card's crate): per request it looks the route up again,
//! makes two `String`s, runs an exclusion `RegexSet` and resolves both label sets (hashing them)
//! twice. Here a tile's handles are resolved once per (method, status) and kept. Measured again
//! after the crate was layered (2026-12-05, `bench/instructions.sh`, one build with both behind a
//! switch, `bench/middleware-experiment.patch`, our per-index handles kept in both): a memory hit
//! costs 52,769 instructions with actix-web-prom against 50,088 with this module (+5.4 %), and
//! 57,037 against 54,328 with the access log on (+5.0 %). The bar for going back to the crate was
//! at most +3 %: this module stays.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, Error, HttpResponse};
use bytes::Bytes;
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// The `endpoint` of a request no route matched: tiles, and unknown paths.
pub const UNROUTED: &str = "tiles_or_unknown";

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Statuses 100..=599, for the per-status handle cache.
const STATUSES: usize = 500;

/// A request's two series.
#[derive(Clone)]
struct Handles {
    total: IntCounter,
    duration: Histogram,
}

/// The registry `/metrics` shows (ours, foyer's, Redis's) and the two HTTP metrics.
pub struct HttpMetrics {
    registry: Registry,
    total: IntCounterVec,
    duration: HistogramVec,
    /// Unrouted GET and HEAD requests by status: resolved on first use.
    unrouted: [Box<[OnceLock<Handles>]>; 2],
}

impl HttpMetrics {
    /// A new registry holding the HTTP metrics.
    pub fn new() -> Result<Arc<HttpMetrics>, prometheus::Error> {
        let registry = Registry::new();
        let labels = ["endpoint", "method", "status"];
        let total = IntCounterVec::new(
            Opts::new("http_requests_total", "Total number of HTTP requests").namespace("tile_proxy"),
            &labels,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_requests_duration_seconds", "HTTP request duration in seconds for all requests")
                .namespace("tile_proxy")
                .buckets(prometheus::DEFAULT_BUCKETS.to_vec()),
            &labels,
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let cells = || (0..STATUSES).map(|_| OnceLock::new()).collect::<Box<[_]>>();
        Ok(Arc::new(HttpMetrics { registry, total, duration, unrouted: [cells(), cells()] }))
    }

    /// Where every other metric is registered.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn handles(&self, endpoint: &str, method: &Method, status: StatusCode) -> Handles {
        let resolve = || {
            let labels = [endpoint, method.as_str(), status.as_str()];
            Handles { total: self.total.with_label_values(&labels), duration: self.duration.with_label_values(&labels) }
        };
        let slot = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            _ => return resolve(),
        };
        match usize::from(status.as_u16()).checked_sub(100).filter(|i| *i < STATUSES) {
            Some(i) if endpoint == UNROUTED => self.unrouted[slot][i].get_or_init(resolve).clone(),
            _ => resolve(),
        }
    }

    /// Counts one request that took `started.elapsed()`.
    fn record(&self, endpoint: &str, method: &Method, status: StatusCode, started: Instant) {
        let h = self.handles(endpoint, method, status);
        h.duration.observe(started.elapsed().as_secs_f64());
        h.total.inc();
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 << 10);
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// `GET /metrics`.
pub async fn endpoint(metrics: web::Data<HttpMetrics>) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CONTENT_TYPE, TEXT_FORMAT)).body(metrics.render())
}

/// The outermost middleware: the access line (when logging) and the HTTP metrics.
pub struct Observe(pub Arc<HttpMetrics>);

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<ObservedBody<B>>;
    type Error = Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService { service, metrics: self.0.clone() }))
    }
}

pub struct ObserveService<S> {
    service: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<ObservedBody<B>>;
    type Error = Error;
    type Future = ObserveFuture<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let method = req.method().clone();
        ObserveFuture {
            fut: self.service.call(req),
            started: Instant::now(),
            for_metrics: Some((self.metrics.clone(), method)),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        fut: F,
        started: Instant,
        // Taken when the response is ready.
        for_metrics: Option<(Arc<HttpMetrics>, Method)>,
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<ObservedBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        let started = *this.started;
        crate::http::access_log::log(&out, started);
        let (metrics, method) = this.for_metrics.take().expect("ObserveFuture polled after completion");
        Poll::Ready(match out {
            Ok(res) => {
                // Tiles never reach the router: no pattern to look for.
                let endpoint = if crate::http::bypass::for_the_router(res.request().path()) {
                    res.request().match_pattern().map(Endpoint::Pattern).unwrap_or(Endpoint::Unrouted)
                } else {
                    Endpoint::Unrouted
                };
                let status = res.status();
                let done = Done { metrics, endpoint, method, status, started };
                Ok(res.map_body(move |_, body| ObservedBody { body, done: Some(done) }))
            }
            Err(e) => {
                // No response, hence no route to name: counted as unrouted, now.
                metrics.record(UNROUTED, &method, e.as_response_error().status_code(), started);
                Err(e)
            }
        })
    }
}

enum Endpoint {
    Unrouted,
    Pattern(String),
}

/// What the HTTP metrics record once the body is done.
struct Done {
    metrics: Arc<HttpMetrics>,
    endpoint: Endpoint,
    method: Method,
    status: StatusCode,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// The response body, recording the request in the HTTP metrics when it is dropped: after
    /// its last chunk was written, or when the client went away.
    pub struct ObservedBody<B> {
        #[pin]
        body: B,
        done: Option<Done>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(d) = this.project().done.take() {
                let endpoint = match &d.endpoint {
                    Endpoint::Unrouted => UNROUTED,
                    Endpoint::Pattern(p) => p.as_str(),
                };
                d.metrics.record(endpoint, &d.method, d.status, d.started);
            }
        }
    }
}

impl<B: MessageBody> MessageBody for ObservedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &HttpMetrics, labels: [&str; 3]) -> u64 {
        m.total.with_label_values(&labels).get()
    }

    #[test]
    fn unrouted_handles_are_cached_per_method_and_status_and_count_like_the_rest() {
        let m = HttpMetrics::new().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            m.record(UNROUTED, &Method::GET, StatusCode::OK, t);
        }
        m.record(UNROUTED, &Method::HEAD, StatusCode::OK, t);
        m.record(UNROUTED, &Method::GET, StatusCode::NOT_FOUND, t);
        m.record("/live", &Method::GET, StatusCode::OK, t);
        m.record(UNROUTED, &Method::POST, StatusCode::METHOD_NOT_ALLOWED, t);
        assert_eq!(count(&m, [UNROUTED, "GET", "200"]), 3);
        assert_eq!(count(&m, [UNROUTED, "HEAD", "200"]), 1);
        assert_eq!(count(&m, [UNROUTED, "GET", "404"]), 1);
        assert_eq!(count(&m, ["/live", "GET", "200"]), 1);
        assert_eq!(count(&m, [UNROUTED, "POST", "405"]), 1);
        assert!(m.unrouted[0][100].get().is_some(), "GET 200 resolved once and kept");
        assert!(m.unrouted[1][400].get().is_none(), "HEAD 500 never seen");
        let h = m.duration.with_label_values(&[UNROUTED, "GET", "200"]);
        assert_eq!(h.get_sample_count(), 3);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("# HELP tile_proxy_http_requests_total Total number of HTTP requests"), "{text}");
        assert!(
            text.contains(r#"tile_proxy_http_requests_duration_seconds_bucket{endpoint="tiles_or_unknown",method="GET",status="200",le="0.005"} 3"#),
            "{text}"
        );
    }
}

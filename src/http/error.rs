//! The one place where failures become HTTP answers: a JSON body naming what went wrong, with
//! the right status, and never a secret (no upstream URL, no key) in it.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;

use crate::domain::failure::UpstreamFailure;
use crate::domain::routes::RouteError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid request: {0}")]
    BadRequest(RouteError),
    #[error("not found")]
    NotFound,
    #[error("unknown index")]
    UnknownIndex,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Upstream(UpstreamFailure),
    /// A client rate limit refused the request.
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::UnknownIndex => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamFailure::BudgetExhausted { .. }) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Upstream(UpstreamFailure::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(UpstreamFailure::RateLimited { .. } | UpstreamFailure::BreakerOpen { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The JSON answer.
    pub fn response(&self) -> HttpResponse {
        let body = match self {
            ProxyError::BadRequest(e) => json!({"error": "invalid_request", "field": e.field, "message": e.message}),
            ProxyError::NotFound => {
                json!({"error": "not_found", "message": "not a tile route; see /here-proxy/{z}/{x}/{y}/{format}, /v3/{resource}/mc/... and /v2/vectortiles/{layer}/mc/..."})
            }
            ProxyError::UnknownIndex => json!({
                "error": "unknown_index",
                "field": "indice",
                "message": "this index is not configured (unknown_indices = \"reject\")"
            }),
            ProxyError::MethodNotAllowed => {
                json!({"error": "method_not_allowed", "message": "tiles are read with GET or HEAD"})
            }
            ProxyError::TooManyRequests { retry_after_secs } => json!({
                "error": "too_many_requests",
                "message": "this client has made too many requests for this index; see RateLimit-* and Retry-After",
                "retry_after_seconds": retry_after_secs,
            }),
            ProxyError::Upstream(f @ UpstreamFailure::BudgetExhausted { window, retry_after_secs }) => json!({
                "error": f.label(),
                "message": f.to_string(),
                "window": window,
                "retry_after_seconds": retry_after_secs,
            }),
            ProxyError::Upstream(f) => json!({"error": f.label(), "message": f.to_string()}),
        };
        let mut res = HttpResponse::build(self.status());
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        res.insert_header(("X-Cache", "ERROR"));
        let retry = match self {
            ProxyError::Upstream(UpstreamFailure::RateLimited { retry_after_secs }) => {
                Some(retry_after_secs.unwrap_or(1))
            }
            ProxyError::Upstream(
                UpstreamFailure::BreakerOpen { retry_after_secs }
                | UpstreamFailure::Busy { retry_after_secs }
                | UpstreamFailure::BudgetExhausted { retry_after_secs, .. },
            ) => Some(*retry_after_secs),
            ProxyError::TooManyRequests { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        if matches!(self, ProxyError::MethodNotAllowed) {
            res.insert_header((header::ALLOW, "GET, HEAD, OPTIONS"));
        }
        if let Some(secs) = retry {
            res.insert_header((header::RETRY_AFTER, secs.max(1).to_string()));
        }
        res.json(body)
    }
}

impl actix_web::ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

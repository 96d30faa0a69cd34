//! The one place where failures become HTTP answers, for tiles and the admin API alike: a JSON
//! body naming what went wrong (`{"error": code, "message": ...}`, `field` when one is to blame),
//! the right status, `Cache-Control: no-store`, and never a secret (no upstream URL, no key) in
//! it. Tile answers also say `X-Cache: ERROR`.

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
    /// `admin_token` is not set: the admin API does not exist here (404).
    #[error("no admin API on this server (admin_token is not set)")]
    NoAdminApi,
    /// A missing or wrong admin token (401, with `WWW-Authenticate`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// An admin request body over [`crate::http::admin::auth::MAX_BODY`] (413).
    #[error("the body is larger than 16 KiB")]
    BodyTooLarge,
    /// A bad admin request (400), naming the field to blame when one is.
    #[error("{message}")]
    Invalid { field: Option<&'static str>, message: String },
    /// What an admin request names does not exist (404).
    #[error("{0}")]
    Missing(String),
    /// Every kept seed job is still running (429).
    #[error("{0} seed jobs are running")]
    TooManyJobs(usize),
    /// A purge rule applies on this pod but Redis could not take it to the others (503).
    #[error("the rule applies on this pod but could not reach the others: {message}; retry")]
    PurgeNotShared { message: String, rule: serde_json::Value },
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
            ProxyError::NoAdminApi | ProxyError::Missing(_) => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ProxyError::TooManyJobs(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::PurgeNotShared { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// True for the admin API's errors (their answers carry no `X-Cache`).
    fn is_admin(&self) -> bool {
        matches!(
            self,
            ProxyError::NoAdminApi
                | ProxyError::Unauthorized(_)
                | ProxyError::BodyTooLarge
                | ProxyError::Invalid { .. }
                | ProxyError::Missing(_)
                | ProxyError::TooManyJobs(_)
                | ProxyError::PurgeNotShared { .. }
        )
    }

    /// The JSON answer.
    pub fn response(&self) -> HttpResponse {
        let body = match self {
            ProxyError::BadRequest(e) => json!({"error": "invalid_request", "field": e.field, "message": e.message}),
            ProxyError::NotFound => {
                json!({"error": "not_found", "message": "not a tile route; see /here-proxy/{z}/{x}/{y}/{format}, /v3/{resource}/mc/..., /v2/vectortiles/{layer}/mc/..., /v3/flow/mc/... and /v2/traffictiles/{layer}/mc/..."})
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
            ProxyError::NoAdminApi | ProxyError::Missing(_) => {
                json!({"error": "not_found", "message": self.to_string()})
            }
            ProxyError::Unauthorized(_) => json!({"error": "unauthorized", "message": self.to_string()}),
            ProxyError::BodyTooLarge | ProxyError::Invalid { field: None, .. } => {
                json!({"error": "invalid_request", "message": self.to_string()})
            }
            ProxyError::Invalid { field: Some(field), message } => {
                json!({"error": "invalid_request", "field": field, "message": message})
            }
            ProxyError::TooManyJobs(_) => json!({"error": "too_many_jobs", "message": self.to_string()}),
            ProxyError::PurgeNotShared { rule, .. } => {
                json!({"error": "redis_unavailable", "message": self.to_string(), "rule": rule})
            }
        };
        let mut res = HttpResponse::build(self.status());
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if !self.is_admin() {
            res.insert_header(("X-Cache", "ERROR"));
        }
        if matches!(self, ProxyError::Unauthorized(_)) {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"tile-proxy admin\""));
        }
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

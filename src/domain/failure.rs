//! Why an upstream fetch failed ([`UpstreamFailure`]): what the store, the upstream client, the
//! bill's guards and the service pass up, and what `http::error` turns into a JSON answer.

/// Why an upstream fetch failed before a response head could be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("upstream connection failed")]
    Connect,
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream response body failed")]
    Body,
    #[error("upstream rate limit reached")]
    RateLimited { retry_after_secs: Option<u64> },
    #[error("upstream circuit breaker is open")]
    BreakerOpen { retry_after_secs: u64 },
    #[error("upstream answered with status {0}")]
    Status(u16),
    #[error("the upstream rejected the proxy's credentials")]
    Auth,
    #[error("upstream fetch was abandoned")]
    Aborted,
    /// The index has spent its upstream budget for the hour or the day (`window`).
    #[error("this index has spent its upstream budget for the {window}")]
    BudgetExhausted { window: &'static str, retry_after_secs: u64 },
    /// The upstream rate cap (`upstream_rps`) queue is full: waiting would exceed `upstream_queue_wait`.
    #[error("the upstream rate cap is reached and its queue is full; retry later")]
    Busy { retry_after_secs: u64 },
}

impl UpstreamFailure {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect_error",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Body => "body_error",
            UpstreamFailure::RateLimited { .. } => "rate_limited",
            UpstreamFailure::BreakerOpen { .. } => "breaker_open",
            UpstreamFailure::Status(_) => "upstream_error",
            UpstreamFailure::Auth => "upstream_auth",
            UpstreamFailure::Aborted => "aborted",
            UpstreamFailure::BudgetExhausted { .. } => "budget_exhausted",
            UpstreamFailure::Busy { .. } => "upstream_busy",
        }
    }
}

//! The rate cap to HERE (`upstream_rps`): every upstream request (retries included) first
//! reserves a turn in its API's schedule, one every `1 / upstream_rps`, then waits for it. A
//! turn further away than `upstream_queue_wait` is not taken: the miss answers 503
//! `upstream_busy` with `Retry-After`. Only upstream requests wait; hits never reach here.
//!
//! With Redis the schedule is one key per API, reserved by the `GCRA` script on Redis's
//! clock: all pods share it. Without Redis, or while it is unavailable, each pod keeps its own
//! schedule at the same rate (`tile_proxy_protect_fallback_total{what="cap"}` counts those turns).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::failure::UpstreamFailure;
use crate::domain::routes::Api;
use crate::observe::metrics::Metrics;
use crate::store::redis::{Deadline, Redis};

use super::{mono_us, Decision, Gcra, GCRA};

/// The rate cap of every upstream API.
pub struct UpstreamCap {
    interval: Option<Duration>,
    max_wait: Duration,
    /// [`Api::index`] order.
    local: [Gcra; 4],
    redis: Option<Arc<Redis>>,
    metrics: Arc<Metrics>,
}

impl UpstreamCap {
    /// `interval`: time between two requests per API (`None`: no cap).
    pub fn new(
        interval: Option<Duration>,
        max_wait: Duration,
        redis: Option<Arc<Redis>>,
        metrics: Arc<Metrics>,
    ) -> UpstreamCap {
        UpstreamCap { interval, max_wait, local: Default::default(), redis, metrics }
    }

    /// Waits for this request's turn to call `api`, or refuses it (`Busy`) when the turn is
    /// further than `upstream_queue_wait` away.
    pub async fn admit(&self, api: Api) -> Result<(), UpstreamFailure> {
        let Some(interval) = self.interval else { return Ok(()) };
        let decision = self.reserve(api, interval).await;
        match decision {
            Ok(wait) => {
                self.metrics.cap_wait.with_label_values(&[api.as_str()]).observe(wait.as_secs_f64());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(())
            }
            Err(retry) => {
                self.metrics.cap_busy.with_label_values(&[api.as_str()]).inc();
                Err(UpstreamFailure::Busy { retry_after_secs: retry.as_secs_f64().ceil().max(1.0) as u64 })
            }
        }
    }

    async fn reserve(&self, api: Api, interval: Duration) -> Decision {
        if let Some(redis) = &self.redis {
            let key = redis.keys.cap(api.as_str());
            let args =
                [interval.as_micros().max(1).to_string(), "1".to_string(), self.max_wait.as_micros().to_string()];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match redis.eval::<(i64, i64, i64)>("rate_cap", Deadline::Write, &GCRA, &[&key], &args).await {
                Ok((1, wait, _)) => return Ok(Duration::from_micros(wait.max(0) as u64)),
                Ok((_, retry, _)) => return Err(Duration::from_micros(retry.max(0) as u64)),
                Err(_) => self.metrics.protect_fallback.with_label_values(&["cap"]).inc(),
            }
        }
        let local = &self.local[api.index()];
        local.reserve(mono_us(), interval, 1, self.max_wait)
    }
}

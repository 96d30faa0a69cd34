//! Client rate limits: a token bucket per client address and index (`rate_limit` requests per
//! second refilled, `rate_burst` at once), checked before the cache is looked at. Addresses in
//! `rate_limit_exempt` are never limited. The address is the peer's, or the one
//! `X-Forwarded-For` gives through `trusted_proxies` ([`crate::http::client_ip`]).
//!
//! Locally each bucket is a `governor` limiter kept in a `moka` cache bounded by
//! `rate_limit_clients`, whose entries expire once idle for as long as a bucket takes to refill
//! (an expired bucket and a new one are the same full bucket), so a million distinct clients
//! cannot grow memory without bound. With Redis (`rate_limit_shared`) the bucket is one key
//! per client and index, decided by the `GCRA` script, so a client gets one budget
//! across every pod; while Redis is unavailable the local bucket decides. The shipped default
//! limit (no `rate_limit` configured) is always kept per pod: it stops scrapers, and sharing it
//! would cost every request a Redis call.
//!
//! Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (draft-ietf-httpapi-ratelimit-headers); a refusal is 429 `too_many_requests` JSON with
//! `Retry-After` and `RateLimit-Policy`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::ClientRate;
use crate::observe::metrics::Metrics;
use crate::store::redis::{Deadline, Redis};

use super::GCRA;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One decision, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again (allowed) or has a token (refused).
    pub reset_secs: u64,
    /// The bucket's refill window: `limit` tokens per this many seconds.
    pub window_secs: u64,
}

impl Verdict {
    /// Adds `RateLimit-Limit`, `-Remaining` and `-Reset`; on a refusal also `RateLimit-Policy`
    /// and `Retry-After`. (Numbers go in without formatting or validation: this runs on every
    /// answer of a limited index.)
    pub fn headers(&self, h: &mut HeaderMap) {
        h.insert(HeaderName::from_static("ratelimit-limit"), number(u64::from(self.limit)));
        h.insert(HeaderName::from_static("ratelimit-remaining"), number(u64::from(self.remaining)));
        h.insert(HeaderName::from_static("ratelimit-reset"), number(self.reset_secs));
        if !self.allowed {
            if let Ok(policy) = HeaderValue::from_str(&format!("{};w={}", self.limit, self.window_secs)) {
                h.insert(HeaderName::from_static("ratelimit-policy"), policy);
            }
            h.insert(actix_web::http::header::RETRY_AFTER, HeaderValue::from(self.reset_secs));
        }
    }
}

/// Every client's buckets.
pub struct ClientLimits {
    /// Whether the untrusted-forwarder warning was given (once per process).
    forwarder_warned: std::sync::atomic::AtomicBool,
    exempt: Vec<IpNet>,
    local: moka::sync::Cache<(IpAddr, u64), Arc<Limiter>>,
    redis: Option<Arc<Redis>>,
    metrics: Arc<Metrics>,
}

impl ClientLimits {
    /// `idle`: how long an untouched bucket is kept (the longest refill of any index's bucket).
    pub fn new(
        exempt: Vec<IpNet>,
        capacity: u64,
        idle: Duration,
        redis: Option<Arc<Redis>>,
        metrics: Arc<Metrics>,
    ) -> ClientLimits {
        let local = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(idle.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600)))
            .build();
        ClientLimits { forwarder_warned: Default::default(), exempt, local, redis, metrics }
    }

    /// A request under the built-in default limit came with `X-Forwarded-For` from `peer`, a
    /// proxy not in `trusted_proxies`: every client behind it shares its address, and one bucket
    /// for them all would throttle every user at once. The caller skips the default limit; this
    /// says so, loudly, the first time.
    pub fn untrusted_forwarder(&self, peer: IpAddr) {
        use std::sync::atomic::Ordering;
        if !self.forwarder_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %peer,
                "requests arrive with X-Forwarded-For from {peer}, a proxy not in trusted_proxies: every client \
                 behind it shares its address, so the DEFAULT per-client rate limit is NOT applied to them (it would \
                 throttle all users at once). Add the proxy to trusted_proxies (TILE_PROXY_TRUSTED_PROXIES) so each \
                 client gets its own limit, or set [defaults] rate_limit yourself (0 = off). Warned once."
            );
        }
    }

    /// Takes a token from `ip`'s bucket for `index` (its metrics label). `None`: exempt.
    pub async fn check(&self, ip: IpAddr, index: &str, rate: ClientRate) -> Option<Verdict> {
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        let window_secs = (rate.interval * rate.burst).as_secs_f64().ceil().max(1.0) as u64;
        let verdict = match self.shared(ip, index, rate).await {
            Some((allowed, wait, remaining)) => {
                let reset = if allowed { rate.interval * (rate.burst - remaining.min(rate.burst)) } else { wait };
                Verdict { allowed, limit: rate.burst, remaining, reset_secs: secs(reset), window_secs }
            }
            None => self.local(ip, index, rate, window_secs),
        };
        if !verdict.allowed {
            self.metrics.rate_limited.with_label_values(&[index]).inc();
        }
        Some(verdict)
    }

    /// Buckets held on this pod now.
    pub fn tracked(&self) -> u64 {
        self.local.run_pending_tasks();
        self.local.entry_count()
    }

    async fn shared(&self, ip: IpAddr, index: &str, rate: ClientRate) -> Option<(bool, Duration, u32)> {
        // The shipped limit (no `rate_limit` configured) is a scraper brake, kept on each pod:
        // sharing it would cost every request, hits included, a Redis call nobody asked for.
        if rate.shipped {
            return None;
        }
        let redis = self.redis.as_ref()?;
        let key = redis.keys.client(&ip.to_string(), index);
        let args = [rate.interval.as_micros().max(1).to_string(), rate.burst.to_string(), "0".to_string()];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match redis.eval::<(i64, i64, i64)>("client_limit", Deadline::Read, &GCRA, &[&key], &args).await {
            Ok((ok, wait, remaining)) => Some((
                ok == 1,
                Duration::from_micros(wait.max(0) as u64),
                remaining.clamp(0, i64::from(u32::MAX)) as u32,
            )),
            Err(_) => {
                self.metrics.protect_fallback.with_label_values(&["client"]).inc();
                None
            }
        }
    }

    fn local(&self, ip: IpAddr, index: &str, rate: ClientRate, window_secs: u64) -> Verdict {
        let limiter = self.local.get_with((ip, fnv(index)), || {
            let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(rate.interval.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst);
            Arc::new(RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>())
        });
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = rate.interval * (rate.burst - remaining.min(rate.burst));
                Verdict { allowed: true, limit: rate.burst, remaining, reset_secs: secs(reset), window_secs }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict { allowed: false, limit: rate.burst, remaining: 0, reset_secs: secs(wait), window_secs }
            }
        }
    }
}

/// A number as a header value; the small ones (most limits, counts and resets) from a table
/// built once, so the usual answer allocates nothing for them.
fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..=1024u32).map(|i| HeaderValue::from_static(Box::leak(i.to_string().into_boxed_str()))).collect()
    });
    usize::try_from(n).ok().and_then(|i| SMALL.get(i)).cloned().unwrap_or_else(|| HeaderValue::from(n))
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil() as u64
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(exempt: &[&str]) -> ClientLimits {
        let metrics = Arc::new(Metrics::new(&prometheus::Registry::new(), 10, []).unwrap());
        let exempt = exempt.iter().map(|n| n.parse().unwrap()).collect();
        ClientLimits::new(exempt, 1000, Duration::from_secs(60), None, metrics)
    }

    #[actix_web::test]
    async fn a_flood_of_distinct_clients_keeps_at_most_the_configured_buckets() {
        let l = limits(&[]);
        let rate = ClientRate { interval: Duration::from_secs(1), burst: 2, shipped: false };
        for i in 0..20_000u32 {
            let ip = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
            assert!(l.check(ip, "i", rate).await.unwrap().allowed);
        }
        let kept = l.tracked();
        assert!(kept <= 1000, "{kept} buckets kept for a capacity of 1000");
        assert!(kept >= 500, "recent clients are kept: {kept}");
    }

    #[actix_web::test]
    async fn a_burst_then_refusals_per_client_and_index() {
        let l = limits(&["10.0.0.0/8"]);
        let rate = ClientRate { interval: Duration::from_secs(60), burst: 3, shipped: false };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let remaining: Vec<u32> = futures_util::future::join_all((0..3).map(|_| l.check(a, "i", rate)))
            .await
            .into_iter()
            .map(|v| v.unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = l.check(a, "i", rate).await.unwrap();
        assert!(!refused.allowed);
        assert!((59..=60).contains(&refused.reset_secs), "{refused:?}");
        assert_eq!(refused.window_secs, 180);
        assert!(l.check(b, "i", rate).await.unwrap().allowed, "another client has its own bucket");
        assert!(l.check(a, "j", rate).await.unwrap().allowed, "another index has its own bucket");
        assert_eq!(l.check("10.1.2.3".parse().unwrap(), "i", rate).await, None, "exempt");
        let mut h = HeaderMap::new();
        refused.headers(&mut h);
        assert_eq!(h.get("ratelimit-remaining").unwrap(), "0");
        assert_eq!(h.get("ratelimit-policy").unwrap(), "3;w=180");
        assert!(h.get("retry-after").is_some());
        assert_eq!(
            (number(0), number(1024), number(1025), number(86_400)),
            (
                HeaderValue::from_static("0"),
                HeaderValue::from_static("1024"),
                HeaderValue::from_static("1025"),
                HeaderValue::from_static("86400")
            )
        );
    }
}

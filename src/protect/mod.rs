//! Protecting the bill: what stops an upstream call before it is made.
//!
//! - [`cap`]: the rate cap to HERE (`upstream_rps`), per upstream API. With Redis every pod
//!   reserves its turn in one shared schedule, so the fleet never exceeds the cap; a miss waits
//!   for its turn (at most `upstream_queue_wait`), else answers 503 `upstream_busy`.
//! - [`budget`]: upstream fetches per index per UTC hour and day. Spent: misses answer 429
//!   `budget_exhausted` until the window ends; hits and stale copies still serve.
//! - [`clients`]: per client (IP) and index token buckets (`rate_limit`, `rate_burst`), checked
//!   before anything else, with `RateLimit-*` headers.
//!
//! The shared parts run one Lua script per decision on the Redis connection and breaker of
//! [`crate::store::redis`], with Redis's own clock (`TIME`), so pod clocks do not matter. When Redis
//! is unavailable each falls back to this pod's own state and never fails a request for it.

pub mod budget;
pub mod cap;
pub mod clients;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::base::clock::SharedClock;
use crate::config::Settings;
use crate::domain::routes::DEFAULT_INDEX;
use crate::observe::metrics::Metrics;
use crate::store::redis::{Lua, Redis};

/// The three guards, built once per pod.
pub struct Protect {
    pub cap: cap::UpstreamCap,
    pub budgets: budget::Budgets,
    pub clients: clients::ClientLimits,
}

impl Protect {
    pub fn new(settings: &Settings, redis: Option<Arc<Redis>>, clock: SharedClock, metrics: Arc<Metrics>) -> Protect {
        let policies = std::iter::once(&settings.default_policy).chain(settings.policies.values());
        // An idle bucket is dropped once it would be full again anyway.
        let idle =
            policies.filter_map(|p| p.rate_limit).map(|r| r.interval * r.burst).max().unwrap_or(Duration::from_secs(1));
        let shared_clients = if settings.rate_limit_shared { redis.clone() } else { None };
        let budgets = budget::Budgets::new(redis.clone(), clock, metrics.clone());
        // The budget gauges of the default index and every configured one exist from the start
        // (their counters do too: `Metrics::new`).
        for name in std::iter::once(DEFAULT_INDEX).chain(settings.policies.keys().map(String::as_str)) {
            let policy = settings.policy(name);
            budgets.register(name, budget::Account::Tiles, policy.budget);
            budgets.register(name, budget::Account::Traffic, policy.traffic.budget);
        }
        Protect {
            cap: cap::UpstreamCap::new(
                settings.upstream_interval,
                settings.upstream_queue_wait,
                redis,
                metrics.clone(),
            ),
            budgets,
            clients: clients::ClientLimits::new(
                settings.rate_limit_exempt.clone(),
                settings.rate_limit_clients,
                idle,
                shared_clients,
                metrics,
            ),
        }
    }
}

/// One GCRA (generic cell rate algorithm) decision, atomic in Redis. `KEYS[1]`: the bucket (its
/// value is the theoretical arrival time, µs). `ARGV`: interval µs, burst, longest wait µs.
/// Returns `{allowed, wait_us, remaining}`: allowed -> the caller may go after `wait_us` (the
/// turn is reserved); refused -> `wait_us` is how long until it would fit.
pub(crate) static GCRA: LazyLock<Lua> = LazyLock::new(|| Lua::new(GCRA_LUA));
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait < 0 then wait = 0 end
if wait > max_wait then
  return {0, wait - max_wait, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
local remaining = math.floor((now + burst * interval - new_tat) / interval)
if remaining < 0 then remaining = 0 end
return {1, wait, remaining}
";

/// The same decision for one pod: a reservation schedule in µs of a monotonic clock.
#[derive(Debug, Default)]
pub struct Gcra {
    tat_us: std::sync::Mutex<u64>,
}

/// A GCRA decision: `Ok(wait)` (the turn is reserved `wait` from now), `Err(retry_after)`.
pub type Decision = Result<std::time::Duration, std::time::Duration>;

impl Gcra {
    /// Reserves a turn at `now_us` for a bucket of `burst` cells refilled every `interval`,
    /// waiting at most `max_wait`.
    pub fn reserve(
        &self,
        now_us: u64,
        interval: std::time::Duration,
        burst: u32,
        max_wait: std::time::Duration,
    ) -> Decision {
        let interval = interval.as_micros() as u64;
        let mut tat = self.tat_us.lock().unwrap_or_else(|p| p.into_inner());
        let new_tat = (*tat).max(now_us) + interval;
        let wait = new_tat.saturating_sub(u64::from(burst) * interval).saturating_sub(now_us);
        let max = max_wait.as_micros() as u64;
        if wait > max {
            return Err(std::time::Duration::from_micros(wait - max));
        }
        *tat = new_tat;
        Ok(std::time::Duration::from_micros(wait))
    }
}

/// Microseconds on this process's monotonic clock.
pub fn mono_us() -> u64 {
    static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    START.elapsed().as_micros() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gcra_spaces_turns_and_bounds_the_queue() {
        let g = Gcra::default();
        let ms = Duration::from_millis;
        // 10 per second, no burst, wait at most 250 ms: turns at 0, 100, 200 ms; the 4th is refused.
        assert_eq!(g.reserve(1_000_000, ms(100), 1, ms(250)), Ok(ms(0)));
        assert_eq!(g.reserve(1_000_000, ms(100), 1, ms(250)), Ok(ms(100)));
        assert_eq!(g.reserve(1_000_000, ms(100), 1, ms(250)), Ok(ms(200)));
        assert_eq!(g.reserve(1_000_000, ms(100), 1, ms(250)), Err(ms(50)));
        // Later, the schedule has moved on.
        assert_eq!(g.reserve(1_300_000, ms(100), 1, ms(250)), Ok(ms(0)));
    }

    #[test]
    fn gcra_burst_then_refill() {
        let g = Gcra::default();
        let s = Duration::from_secs;
        for _ in 0..3 {
            assert_eq!(g.reserve(10_000_000, s(1), 3, Duration::ZERO), Ok(Duration::ZERO));
        }
        assert_eq!(g.reserve(10_000_000, s(1), 3, Duration::ZERO), Err(s(1)));
        assert_eq!(g.reserve(11_000_000, s(1), 3, Duration::ZERO), Ok(Duration::ZERO));
    }
}

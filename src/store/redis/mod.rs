//! The Redis shared tier: many pods as one cache.
//!
//! [`Redis`] is the one way any part of tile-proxy talks to Redis. Every call goes through
//! [`Redis::call`]: a hard deadline (`[redis] timeout` for reads and leases, `write_timeout` for
//! writes) and one circuit breaker shared by all calls, so a Redis that hangs (SIGSTOP, a paused
//! container) costs a request at most one deadline, and after `breaker_failures` failures none at
//! all until a probe succeeds. Redis never fails a request: every caller treats an error as "no
//! answer" and goes on with the local tiers and the upstream.
//!
//! The connections are a few lazily connecting `ConnectionManager`s used round-robin (a small GET
//! does not queue behind a 4 MB reply on the same multiplexed connection). They and the
//! subscriber ([`pubsub`]) live on a small runtime of their own, so reconnecting never runs on an
//! HTTP worker.
//!
//! Key layout (Cluster-ready: the keys of one tile share a hash tag, so the lease script can
//! touch them together):
//! * `<prefix>:{<h>}:e`: the entry ([`crate::domain::entry::Entry::encode`] bytes), `PX` its retention;
//! * `<prefix>:{<h>}:l`: the fetch lease (a random token, `PX` the lease);
//! * `<prefix>:{<h>}:x`: "too large to share" marker (skip the lease);
//! * `<prefix>:purges`: hash of purge rules (id -> JSON);
//! * `<prefix>:{seed}:jobs`, `:running`, `:job:<id>`, `:lease:<id>`: fleet seed jobs
//!   ([`crate::seed::fleet`]);
//! * `<prefix>:{bill}:<YYYY-MM>` and `<prefix>:{bill}:<YYYY-MM-DD>`: the bill's counts
//!   ([`crate::store::bill`]);
//! * channels `<prefix>:filled` (payload `<h>`) and `<prefix>:purge` (payload a rule's JSON).
//!
//! Time: with `fleet_clock` (the default) the pod's clock is corrected to Redis's `TIME`
//! ([`Redis::fleet_clock`], [`Redis::sync_clock`]): the offset is measured at start and on every
//! housekeeping tick, and the server reads that corrected clock everywhere, so an entry's stored
//! time (written on one pod, read on all) and a purge rule's `at_ms` (made on one pod, applied
//! on all) are on one clock whatever each pod's own clock says.
//!
//! `<h>` is a hash of the cache key, which itself holds only a hash of the credential: nothing in
//! Redis can reveal the HERE key.

pub mod lease;
pub mod pubsub;
pub mod tier;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue};

use crate::base::clock::{FleetClock, SharedClock};
use crate::base::hashing::stable_hash;
use crate::config::RedisSettings;
use crate::domain::breaker::{Breaker, BreakerState, Permit};
use crate::domain::key::CacheKey;

/// A new measurement of the fleet clock's offset within this many ms (plus half the call's round
/// trip) of the one in use leaves it in place.
const CLOCK_JITTER_MS: u64 = 2;

/// Why a Redis call gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis breaker open")]
    Open,
    #[error("redis call timed out")]
    Timeout,
    #[error("redis: {0}")]
    Failed(String),
}

impl RedisError {
    fn outcome(&self) -> &'static str {
        match self {
            RedisError::Open => "rejected",
            RedisError::Timeout => "timeout",
            RedisError::Failed(_) => "error",
        }
    }
}

/// Deadline class of a call.
#[derive(Debug, Clone, Copy)]
pub enum Deadline {
    Read,
    Write,
}

/// Redis key names for one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// The hash tag of a cache key (hex, 128 bits).
    pub fn tag(&self, key: &CacheKey) -> String {
        stable_hash(key.as_str().as_bytes(), 32)
    }

    pub fn entry(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:e", self.prefix)
    }

    pub fn lease(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:l", self.prefix)
    }

    pub fn large(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:x", self.prefix)
    }

    pub fn purges(&self) -> String {
        format!("{}:purges", self.prefix)
    }

    pub fn filled_channel(&self) -> String {
        format!("{}:filled", self.prefix)
    }

    pub fn purge_channel(&self) -> String {
        format!("{}:purge", self.prefix)
    }

    /// The rate cap's schedule for one upstream API.
    pub fn cap(&self, api: &str) -> String {
        format!("{}:cap:{api}", self.prefix)
    }

    /// An index's upstream fetches in one window (`h` or `d` and its number since the epoch).
    pub fn budget(&self, index: &str, window: &str, n: u64) -> String {
        format!("{}:budget:{{{index}}}:{window}:{n}", self.prefix)
    }

    /// A client's token bucket for one index.
    pub fn client(&self, ip: &str, index: &str) -> String {
        format!("{}:rl:{{{ip}}}:{index}", self.prefix)
    }

    /// The bill's counts of one UTC month (`2026-12`) or day (`2026-12-06`): a hash of
    /// `index|api|tx` and `index|api|hits` (`domain::bill::field`). One hash tag for all, so
    /// one script updates several.
    pub fn bill(&self, period: &str) -> String {
        format!("{}:{{bill}}:{period}", self.prefix)
    }

    /// The hash of per-pod statistics snapshots (field: pod id).
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    /// Fleet seed jobs ([`crate::seed::fleet`]), one hash tag for all so a script touches
    /// several: `jobs` (sorted set of ids by start time), `running` (set of ids), `job:<id>`
    /// (hash: spec and progress) and `lease:<id>` (the running pod's token).
    pub fn seed(&self, what: &str) -> String {
        format!("{}:{{seed}}:{what}", self.prefix)
    }
}

/// Redis metrics.
pub struct RedisMetrics {
    /// `tile_proxy_redis_ops_total{op,outcome}`.
    pub ops: IntCounterVec,
    /// `tile_proxy_redis_up`: 1 while the Redis breaker is closed and the subscriber connected.
    pub up: IntGauge,
    /// `tile_proxy_redis_lease_total{outcome}`.
    pub lease: IntCounterVec,
    /// `tile_proxy_redis_lease_wakeups_total{by}`: a waiting pod woken by the holder's
    /// `notification` or by its own `poll`.
    pub wakeups: IntCounterVec,
    /// `tile_proxy_redis_leases_held`: fetch leases this pod holds (and renews) now.
    pub leases_held: IntGauge,
    /// `tile_proxy_redis_clock_offset_ms`: Redis's `TIME` minus this pod's clock, last measured.
    pub clock_offset: IntGauge,
}

impl RedisMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<RedisMetrics> {
        let ops = IntCounterVec::new(
            Opts::new("tile_proxy_redis_ops_total", "Redis calls by operation and outcome"),
            &["op", "outcome"],
        )?;
        registry.register(Box::new(ops.clone()))?;
        let up = IntGauge::new("tile_proxy_redis_up", "1 while Redis answers (breaker closed)")?;
        registry.register(Box::new(up.clone()))?;
        let lease = IntCounterVec::new(
            Opts::new("tile_proxy_redis_lease_total", "Fleet-wide fetch leases by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(lease.clone()))?;
        let wakeups = IntCounterVec::new(
            Opts::new("tile_proxy_redis_lease_wakeups_total", "Pods waiting on a lease woken, by notification or poll"),
            &["by"],
        )?;
        registry.register(Box::new(wakeups.clone()))?;
        let leases_held =
            IntGauge::new("tile_proxy_redis_leases_held", "Fleet fetch leases this pod holds and renews now")?;
        registry.register(Box::new(leases_held.clone()))?;
        let clock_offset = IntGauge::new(
            "tile_proxy_redis_clock_offset_ms",
            "Redis TIME minus this pod's clock in ms, last measured (the correction the fleet clock applies)",
        )?;
        registry.register(Box::new(clock_offset.clone()))?;
        // Series dashboards and alerts read exist from the start, at 0.
        for outcome in ["ok", "error", "timeout", "rejected"] {
            ops.with_label_values(&["get", outcome]);
        }
        for outcome in [
            "acquired",
            "filled",
            "waited_filled",
            "too_large",
            "wait_expired",
            "unavailable",
            "refresh_elsewhere",
            "renewed",
            "lost",
        ] {
            lease.with_label_values(&[outcome]);
        }
        for by in ["notification", "poll"] {
            wakeups.with_label_values(&[by]);
        }
        Ok(RedisMetrics { ops, up, lease, wakeups, leases_held, clock_offset })
    }
}

/// Owns the Redis runtime; shuts it down without blocking (it may be dropped in async code).
struct RuntimeBox(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeBox {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The shared Redis client. See the module docs.
pub struct Redis {
    client: redis::Client,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    breaker: Breaker,
    pub settings: RedisSettings,
    pub keys: Keys,
    clock: SharedClock,
    /// The pod clock corrected to Redis's `TIME` (`fleet_clock`); `None` when off.
    fleet: Option<Arc<FleetClock>>,
    pub metrics: RedisMetrics,
    last_error: Mutex<Option<(u64, String)>>,
    runtime: RuntimeBox,
}

impl Redis {
    /// Builds the client; connects lazily (a Redis that is down at start is not an error).
    pub fn new(settings: &RedisSettings, clock: SharedClock, registry: &Registry) -> Result<Arc<Redis>, String> {
        let client = match &settings.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                settings.url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
            ),
            None => redis::Client::open(settings.url.as_str()),
        }
        .map_err(|e| format!("redis_url: {}", crate::config::redact_url(&e.to_string())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis runtime: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            // Our own deadlines bound every call; this only bounds what is left behind.
            .set_response_timeout(Some(settings.write_timeout.max(settings.timeout) * 4))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conns = {
            let _enter = runtime.enter();
            (0..settings.connections)
                .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("redis connection: {e}"))?
        };
        let metrics = RedisMetrics::new(registry).map_err(|e| e.to_string())?;
        metrics.up.set(1);
        Ok(Arc::new(Redis {
            client,
            conns,
            next: AtomicUsize::new(0),
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            keys: Keys::new(&settings.prefix),
            settings: settings.clone(),
            fleet: settings.fleet_clock.then(|| FleetClock::new(clock.clone())),
            clock,
            metrics,
            last_error: Mutex::new(None),
            runtime: RuntimeBox(Some(runtime)),
        }))
    }

    /// Runs `cmd` within its deadline, through the breaker. `op` names it in metrics.
    pub async fn call<T: FromRedisValue>(
        &self,
        op: &'static str,
        deadline: Deadline,
        cmd: &Cmd,
    ) -> Result<T, RedisError> {
        let now = self.clock.now_ms();
        let permit = match self.breaker.try_acquire(now) {
            Ok(p) => p,
            Err(_) => {
                self.metrics.ops.with_label_values(&[op, "rejected"]).inc();
                return Err(RedisError::Open);
            }
        };
        let guard = ProbeGuard { breaker: &self.breaker, permit: Some(permit) };
        let limit = match deadline {
            Deadline::Read => self.settings.timeout,
            Deadline::Write => self.settings.write_timeout,
        };
        let deadline = tokio::time::Instant::now() + limit;
        let conn = match permit {
            Permit::Probe => self.answering(deadline).await,
            Permit::Normal => Ok(self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()),
        };
        // An error Redis answered with (NOSCRIPT, WRONGTYPE) shows it is up: only failures to
        // reach it count against the breaker.
        let mut reachable = true;
        let result = match conn {
            Err(e) => {
                reachable = false;
                Err(e)
            }
            Ok(i) => {
                let mut conn = self.conns[i].clone();
                match tokio::time::timeout_at(deadline, cmd.query_async::<T>(&mut conn)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => {
                        reachable = !(e.is_io_error()
                            || e.is_connection_refusal()
                            || e.is_timeout()
                            || e.is_connection_dropped()
                            || e.is_unrecoverable_error());
                        Err(RedisError::Failed(e.to_string()))
                    }
                    Err(_) => {
                        reachable = false;
                        Err(RedisError::Timeout)
                    }
                }
            }
        };
        let ok = reachable;
        let mut changed = guard.record(ok, self.clock.now_ms());
        if matches!(result, Err(RedisError::Timeout)) {
            // A Redis that hangs: open at once, so no request pays a second deadline.
            changed = self.breaker.trip(self.clock.now_ms()).or(changed);
        }
        match &result {
            Ok(_) => self.metrics.ops.with_label_values(&[op, "ok"]).inc(),
            // A script Redis does not know yet is loaded at once (`eval`): not a failure.
            Err(RedisError::Failed(msg)) if reachable && msg.to_ascii_uppercase().contains("NOSCRIPT") => {
                self.metrics.ops.with_label_values(&[op, "noscript"]).inc();
            }
            Err(e) => {
                self.metrics.ops.with_label_values(&[op, e.outcome()]).inc();
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, e.to_string()));
            }
        }
        if let Some(state) = changed {
            self.metrics.up.set(i64::from(state == BreakerState::Closed));
            match state {
                BreakerState::Closed => tracing::info!("redis answers again; shared tier back"),
                _ => {
                    tracing::warn!(breaker = state.as_str(), "redis unavailable; serving from local tiers and upstream")
                }
            }
        }
        result
    }

    /// For a breaker probe: the first connection to answer a PING sent on every connection at
    /// once (by `deadline`). After Redis went away and came back, each connection made before
    /// still holds its dead socket and fails its next command, which makes it reconnect. A probe
    /// sent on one of those re-opened the breaker for another cool-down, and the calls after a
    /// good probe failed on the others (three failures re-open it): recovering took up to
    /// `connections` cool-downs. The PINGs, run to their end on the Redis runtime, make every
    /// dead connection reconnect now; the probe itself goes to one that answered.
    async fn answering(&self, deadline: tokio::time::Instant) -> Result<usize, RedisError> {
        let (tx, mut answers) = tokio::sync::mpsc::channel(self.conns.len());
        for (i, conn) in self.conns.iter().enumerate() {
            let (mut conn, tx) = (conn.clone(), tx.clone());
            self.spawn(async move {
                let ping = redis::cmd("PING").query_async::<redis::Value>(&mut conn).await;
                let _ = tx.send((i, ping.map(drop).map_err(|e| e.to_string()))).await;
            });
        }
        drop(tx);
        let mut last = String::from("no connection");
        loop {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Err(_) => return Err(RedisError::Timeout),
                Ok(None) => return Err(RedisError::Failed(last)),
                Ok(Some((i, Ok(())))) => return Ok(i),
                Ok(Some((_, Err(e)))) => last = e,
            }
        }
    }

    /// Runs a Lua script (`EVALSHA`, falling back to `EVAL` when Redis does not know it yet).
    pub async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        deadline: Deadline,
        lua: &Lua,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, RedisError> {
        match self.call(op, deadline, &lua.cmd(true, keys, args)).await {
            Err(RedisError::Failed(msg)) if msg.to_ascii_uppercase().contains("NOSCRIPT") => {
                self.call(op, deadline, &lua.cmd(false, keys, args)).await
            }
            r => r,
        }
    }

    /// The clock the server reads when `fleet_clock` is on: the pod clock plus the offset to
    /// Redis's `TIME` that [`Redis::sync_clock`] keeps current. `None` when off.
    pub fn fleet_clock(&self) -> Option<SharedClock> {
        self.fleet.clone().map(|f| f as SharedClock)
    }

    /// Measures Redis's `TIME` against the pod clock and sets the fleet clock's offset (one
    /// read-deadline call, through the breaker; the middle of the call's round trip on the pod
    /// clock is taken as the moment Redis read its clock). Returns the offset in ms; on an error
    /// the last offset stays. Does nothing (`Ok(0)`) when `fleet_clock` is off.
    pub async fn sync_clock(&self) -> Result<i64, RedisError> {
        let Some(fleet) = &self.fleet else { return Ok(0) };
        let pod = fleet.pod();
        let before = pod.now_ms();
        let (secs, micros): (u64, u64) = self.call("time", Deadline::Read, &redis::cmd("TIME")).await?;
        let after = pod.now_ms();
        let redis_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
        let pod_ms = before + after.saturating_sub(before) / 2;
        let offset = redis_ms as i64 - pod_ms as i64;
        // Within the measurement's own error the last offset stays: the fleet clock does not
        // wobble back and forth by a millisecond every tick.
        let error = (after.saturating_sub(before) / 2 + CLOCK_JITTER_MS) as i64;
        match fleet.offset_ms() {
            Some(old) if (old - offset).abs() <= error => return Ok(old),
            Some(old) if (old - offset).abs() <= 1_000 => {}
            _ => tracing::info!(offset_ms = offset, "fleet clock: Redis TIME minus this pod's clock"),
        }
        fleet.set_offset_ms(offset);
        self.metrics.clock_offset.set(offset);
        Ok(offset)
    }

    /// Breaker state now.
    pub fn state(&self) -> BreakerState {
        self.breaker.state(self.clock.now_ms())
    }

    /// The client (for the subscriber's own connection).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs `fut` on the Redis runtime (background work that must outlive a request).
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.runtime.0 {
            rt.spawn(fut);
        }
    }

    /// What `/health` shows.
    pub fn status(&self) -> serde_json::Value {
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        serde_json::json!({
            "tier": "redis",
            "url": crate::config::redact_url(&self.settings.url),
            "breaker": self.state().as_str(),
            "consecutive_failures": self.breaker.failures(),
            "last_error": last.as_ref().map(|(_, e)| e.as_str()),
            "last_error_unix_ms": last.map(|(at, _)| at),
            "max_value_bytes": self.settings.max_value,
            "fleet_clock": self.fleet.is_some(),
            "clock_offset_ms": self.fleet.as_ref().and_then(|f| f.offset_ms()),
        })
    }

    /// A standing problem, for `/health`.
    pub fn problem(&self) -> Option<String> {
        match self.state() {
            BreakerState::Closed => None,
            s => {
                let last = self.last_error.lock().ok().and_then(|l| l.clone()).map(|(_, e)| e).unwrap_or_default();
                Some(format!("redis unavailable (breaker {}): {last}; serving from local tiers", s.as_str()))
            }
        }
    }
}

/// A Lua script and its SHA-1.
pub struct Lua {
    code: &'static str,
    sha: String,
}

impl Lua {
    pub fn new(code: &'static str) -> Lua {
        Lua { code, sha: redis::Script::new(code).get_hash().to_string() }
    }

    fn cmd(&self, by_sha: bool, keys: &[&str], args: &[&str]) -> Cmd {
        let mut c = if by_sha { redis::cmd("EVALSHA") } else { redis::cmd("EVAL") };
        c.arg(if by_sha { self.sha.as_str() } else { self.code }).arg(keys.len()).arg(keys).arg(args);
        c
    }
}

/// Gives a probe permit back if the call's future is dropped before it reports.
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    permit: Option<Permit>,
}

impl ProbeGuard<'_> {
    fn record(mut self, ok: bool, now: u64) -> Option<BreakerState> {
        let permit = self.permit.take()?;
        self.breaker.record(permit, ok, now)
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.release(p);
        }
    }
}

/// A random token (lease owner, rule id): 128 bits from the OS at start, then a counter mixed
/// through SHA-256, so no syscall per call.
pub fn token() -> String {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static SEED: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let mut buf = [0u8; 16];
        let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
        if ok.is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            buf[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
        }
        format!("{}-{}", hex::encode(buf), std::process::id())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    stable_hash(format!("{seed}-{n}").as_bytes(), 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_tile_share_a_hash_tag() {
        let k = Keys::new("tp");
        let tag = "abc";
        for name in [k.entry(tag), k.lease(tag), k.large(tag)] {
            let open = name.find('{').unwrap();
            let close = name.find('}').unwrap();
            assert_eq!(&name[open + 1..close], tag, "{name}");
        }
    }

    #[test]
    fn tokens_differ() {
        let a = token();
        let b = token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}

//! The Redis shared tier: many pods as one cache.
//!
//! [`Redis`] is the one way any part of tile-proxy talks to Redis. Every call goes through
//! [`Redis::call`]: a hard deadline (`[redis] timeout` for reads and leases, `write_timeout` for
//! writes) and a circuit breaker, so a Redis that hangs (SIGSTOP, a paused container) costs a
//! request at most one deadline, and after `breaker_failures` failures none at all until a probe
//! succeeds. One node (single, Sentinel) has one breaker for all calls. A cluster has one per
//! slot group ([`SLOT_GROUPS`] of 512 slots, by the slot of the command's first key; keyless
//! commands have one of their own): a dead or hung primary opens the groups its slots fall in,
//! and the tiles of the other primaries stay shared meanwhile. Redis never fails a request: every caller treats an error as "no
//! answer" and goes on with the local tiers and the upstream.
//!
//! The connections are a few lazily connecting `ConnectionManager`s used round-robin (a small GET
//! does not queue behind a 4 MB reply on the same multiplexed connection). In cluster mode
//! (`redis_mode = "cluster"`) they are as many `cluster_async::ClusterConnection`s, each of which
//! holds one connection per node, follows the slot map (MOVED, ASK, a replica promoted after its
//! primary died) and reconnects by itself; every command and script goes to the node of its
//! keys' slot, and the keys of each script share one hash tag (below).
//! In Sentinel mode (`redis_mode = "sentinel"`) they are `ConnectionManager`s of the primary the
//! Sentinels name, replaced when they name another (`Pool`). They and the
//! subscriber ([`pubsub`]) live on a small runtime of their own, so reconnecting never runs on an
//! HTTP worker.
//!
//! Key layout (Cluster-ready: the keys of one tile share a hash tag, so the lease script can
//! touch them together):
//! * `<prefix>:{<h>}:e`: the entry ([`crate::domain::entry::Entry::encode`] bytes), `PX` its retention;
//! * `<prefix>:{<h>}:l`: the fetch lease (a random token, `PX` the lease);
//! * `<prefix>:{<h>}:x`: "too large to share" marker (skip the lease);
//! * `<prefix>:purges`: hash of purge rules (id -> JSON);
//! * `<prefix>:cap:<api>`, `<prefix>:rl:{<ip>}:<index>`, `<prefix>:budget:{<index>}:<h|d>:<n>`,
//!   `<prefix>:stats`: the rate cap, client buckets, budgets (both windows of one index in one
//!   slot) and per-pod statistics;
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
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Arg, Cmd, FromRedisValue, IntoConnectionInfo, RedisResult};

use crate::base::clock::{FleetClock, SharedClock};
use crate::base::hashing::stable_hash;
use crate::config::{RedisSettings, RedisTopology};
use crate::domain::breaker::{Breaker, BreakerState, Permit};
use crate::domain::key::CacheKey;

/// A new measurement of the fleet clock's offset within this many ms (plus half the call's round
/// trip) of the one in use leaves it in place.
const CLOCK_JITTER_MS: u64 = 2;

/// Breakers of a cluster: one per group of 16,384 / `SLOT_GROUPS` slots (512). A group's slots
/// belong to one primary (or to two, at a boundary of their ranges): a dead primary opens about
/// its share of the groups, one failed call each.
pub const SLOT_GROUPS: usize = 32;

/// Slots in a Redis Cluster.
const SLOTS: usize = 16_384;

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

/// One connection of the pool: to one node, or to a whole cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// The shared Redis client. See the module docs.
pub struct Redis {
    /// The nodes a subscriber may listen on: the one node, or the cluster's seed nodes (a
    /// classic PUBLISH reaches subscribers on every node of a cluster).
    subscribe_to: Vec<redis::Client>,
    pool: Arc<Pool>,
    next: AtomicUsize,
    /// One breaker (single, Sentinel), or the keyless calls' and one per slot group (cluster).
    breakers: Box<[Breaker]>,
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
        let open = |url: &str| {
            match &settings.ca_pem {
                Some(pem) => redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
                ),
                None => redis::Client::open(url),
            }
            .map_err(|e| format!("redis_url: {}", crate::config::redact_url(&e.to_string())))
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis runtime: {e}"))?;
        // Our own deadlines bound every call; this only bounds what is left behind.
        let response_timeout = settings.write_timeout.max(settings.timeout) * 4;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let (subscribe_to, pool) = match &settings.mode {
            RedisTopology::Single => {
                let client = open(settings.url.as_str())?;
                let _enter = runtime.enter();
                let conns = managers(&client, &manager_config, settings.connections)?;
                (vec![client], Pool::fixed(conns))
            }
            RedisTopology::Cluster { nodes } => {
                let subscribe_to = nodes.iter().map(|n| open(n)).collect::<Result<Vec<_>, _>>()?;
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(response_timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(pem) = &settings.ca_pem {
                    builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) });
                }
                let client = builder
                    .build()
                    .map_err(|e| format!("redis_nodes: {}", crate::config::redact_url(&e.to_string())))?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(settings.connect_timeout)
                    .set_response_timeout(response_timeout);
                let _enter = runtime.enter();
                // Connects in the background: a cluster that is down at start is not an error.
                let conns = (0..settings.connections)
                    .map(|_| Conn::Cluster(client.get_pending_async_connection_with_config(config.clone())))
                    .collect();
                (subscribe_to, Pool::fixed(conns))
            }
            RedisTopology::Sentinel { sentinels, master } => {
                let bad =
                    |what: &str, e: redis::RedisError| format!("{what}: {}", crate::config::redact_url(&e.to_string()));
                // The primary's password and database come from redis_url; the Sentinels' own
                // from their URLs.
                let primary = settings.url.as_str().into_connection_info().map_err(|e| bad("redis_url", e))?;
                let primary = primary.redis_settings();
                let mut addrs = Vec::new();
                let mut sentinel_auth = None;
                for url in sentinels {
                    let info = url.as_str().into_connection_info().map_err(|e| bad("redis_nodes", e))?;
                    if sentinel_auth.is_none() && info.redis_settings().password().is_some() {
                        sentinel_auth = Some(info.redis_settings().clone());
                    }
                    addrs.push(info.addr().clone());
                }
                let mut b = SentinelClientBuilder::new(addrs, master.as_str(), SentinelServerType::Master)
                    .map_err(|e| bad("redis_nodes", e))?
                    .set_client_to_redis_db(primary.db());
                if let Some(u) = primary.username() {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = primary.password() {
                    b = b.set_client_to_redis_password(p);
                }
                if settings.url.starts_with("rediss://") {
                    b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(auth) = &sentinel_auth {
                    if let Some(u) = auth.username() {
                        b = b.set_client_to_sentinel_username(u);
                    }
                    if let Some(p) = auth.password() {
                        b = b.set_client_to_sentinel_password(p);
                    }
                }
                if let Some(pem) = &settings.ca_pem {
                    let certs = || redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
                    b = b.set_client_to_redis_certificates(certs()).set_client_to_sentinel_certificates(certs());
                }
                let client = b.build().map_err(|e| bad("redis_nodes", e))?;
                let pool = Pool {
                    conns: std::sync::RwLock::new(Arc::new(Vec::new())),
                    sentinel: Some(SentinelState {
                        client: tokio::sync::Mutex::new((client, None)),
                        primary: std::sync::RwLock::new(None),
                        manager_config: manager_config.clone(),
                        connections: settings.connections,
                        connect_timeout: settings.connect_timeout,
                    }),
                };
                (Vec::new(), pool)
            }
        };
        let pool = Arc::new(pool);
        if pool.sentinel.is_some() {
            // Find the primary now, so the first requests need not wait for it.
            let p = pool.clone();
            runtime.spawn(async move { p.resolve().await });
        }
        let metrics = RedisMetrics::new(registry).map_err(|e| e.to_string())?;
        metrics.up.set(1);
        Ok(Arc::new(Redis {
            subscribe_to,
            pool,
            next: AtomicUsize::new(0),
            breakers: {
                let n = if matches!(settings.mode, RedisTopology::Cluster { .. }) { 1 + SLOT_GROUPS } else { 1 };
                // Probed after a twentieth of the cool-down first (250 ms of 5 s), doubling while
                // probes fail: a failover or restart of seconds is over and used again within a
                // fraction of a second, a long outage still costs one probe per cool-down.
                let first = (settings.breaker_cooldown / 20).max(Duration::from_millis(100));
                (0..n)
                    .map(|_| Breaker::with_backoff(settings.breaker_failures, first, settings.breaker_cooldown))
                    .collect()
            },
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
        let group = self.group(cmd);
        let breaker = &self.breakers[group];
        let permit = match breaker.try_acquire(now) {
            Ok(p) => p,
            Err(_) => {
                self.metrics.ops.with_label_values(&[op, "rejected"]).inc();
                return Err(RedisError::Open);
            }
        };
        let guard = ProbeGuard { breaker, permit: Some(permit) };
        let limit = match deadline {
            Deadline::Read => self.settings.timeout,
            Deadline::Write => self.settings.write_timeout,
        };
        let deadline = tokio::time::Instant::now() + limit;
        let sentinel = self.pool.sentinel.is_some();
        let mut conns = self.pool.conns();
        if sentinel && (conns.is_empty() || matches!(permit, Permit::Probe)) {
            // No primary known yet, or the first call after the breaker opened (the primary may
            // have failed over): ask the Sentinels first.
            self.resolve_by(deadline).await;
            conns = self.pool.conns();
        }
        let conn = match permit {
            _ if conns.is_empty() => Err(RedisError::Failed("no redis primary known (sentinel)".into())),
            Permit::Probe => self.answering(&conns, deadline).await,
            Permit::Normal => Ok(self.next.fetch_add(1, Ordering::Relaxed) % conns.len()),
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
                let mut conn = conns[i].clone();
                match tokio::time::timeout_at(deadline, conn.query::<T>(cmd)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => {
                        // A cluster error (MOVED, TRYAGAIN, CLUSTERDOWN while a failover runs)
                        // is a live node's quick answer: it costs no deadline, and counting it
                        // would keep the breakers open a cool-down past the failover's end.
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
        if sentinel
            && (!reachable
                || matches!(&result, Err(RedisError::Failed(m)) if m.to_ascii_uppercase().contains("READONLY")))
        {
            // The primary went away, or is one no more (a replica now): ask the Sentinels.
            self.primary_lost();
        }
        let mut changed = guard.record(ok, self.clock.now_ms());
        if matches!(result, Err(RedisError::Timeout)) {
            // A Redis that hangs: open at once, so no request pays a second deadline.
            changed = breaker.trip(self.clock.now_ms()).or(changed);
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
            self.metrics.up.set(i64::from(self.state() == BreakerState::Closed));
            let slots = self.slots_of(group);
            match state {
                BreakerState::Closed => tracing::info!(slots, "redis answers again; shared tier back"),
                _ => tracing::warn!(
                    breaker = state.as_str(),
                    slots,
                    "redis unavailable; serving from local tiers and upstream"
                ),
            }
        }
        result
    }

    /// The breaker a command goes through: the only one, or in a cluster its first key's slot
    /// group (1..=SLOT_GROUPS), 0 for keyless commands (`TIME`, `PING`).
    fn group(&self, cmd: &Cmd) -> usize {
        if self.breakers.len() == 1 {
            return 0;
        }
        match first_key(cmd) {
            Some(key) => 1 + usize::from(slot(key)) * SLOT_GROUPS / SLOTS,
            None => 0,
        }
    }

    /// The slots a breaker guards, for the log: `None` for the one breaker of a single node.
    fn slots_of(&self, group: usize) -> Option<String> {
        match group {
            _ if self.breakers.len() == 1 => None,
            0 => Some("keyless commands".into()),
            g => {
                let per = SLOTS / SLOT_GROUPS;
                Some(format!("{}-{}", (g - 1) * per, g * per - 1))
            }
        }
    }

    /// For a breaker probe: the first connection to answer a PING sent on every connection at
    /// once (by `deadline`). After Redis went away and came back, each connection made before
    /// still holds its dead socket and fails its next command, which makes it reconnect. A probe
    /// sent on one of those re-opened the breaker for another cool-down, and the calls after a
    /// good probe failed on the others (three failures re-open it): recovering took up to
    /// `connections` cool-downs. The PINGs, run to their end on the Redis runtime, make every
    /// dead connection reconnect now; the probe itself goes to one that answered.
    ///
    /// A cluster connection reconnects to each node by itself, and a PING goes to every node (one
    /// dead primary would fail it even after its replica took over): there the probe is the call.
    async fn answering(&self, conns: &[Conn], deadline: tokio::time::Instant) -> Result<usize, RedisError> {
        if matches!(self.settings.mode, RedisTopology::Cluster { .. }) {
            return Ok(self.next.fetch_add(1, Ordering::Relaxed) % conns.len());
        }
        let (tx, mut answers) = tokio::sync::mpsc::channel(conns.len());
        for (i, conn) in conns.iter().enumerate() {
            let (mut conn, tx) = (conn.clone(), tx.clone());
            self.spawn(async move {
                let ping = conn.query::<redis::Value>(&redis::cmd("PING")).await;
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

    /// Breaker state now: the worst of them (a cluster: open while any slot group is).
    pub fn state(&self) -> BreakerState {
        let now = self.clock.now_ms();
        let states = self.breakers.iter().map(|b| b.state(now));
        states
            .max_by_key(|s| match s {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            })
            .unwrap_or(BreakerState::Closed)
    }

    /// Breakers not closed now (a cluster's slot groups), of how many.
    fn breakers_not_closed(&self) -> (usize, usize) {
        let now = self.clock.now_ms();
        let n = self.breakers.iter().filter(|b| b.state(now) != BreakerState::Closed).count();
        (n, self.breakers.len())
    }

    /// The node the subscriber listens on, after `failures` failed sessions: the one node; a
    /// cluster's seed nodes in turn; the primary the Sentinels named last (none yet: `None`,
    /// and they are asked).
    pub fn subscriber(&self, failures: usize) -> Option<redis::Client> {
        match &self.pool.sentinel {
            Some(s) => {
                let primary = s.primary.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, c)| c.clone());
                if primary.is_none() {
                    self.primary_lost();
                }
                primary
            }
            None => self.subscribe_to.get(failures % self.subscribe_to.len().max(1)).cloned(),
        }
    }

    /// Sentinel mode: the primary did not answer; ask the Sentinels which one it is now (in the
    /// background, at most every `RESOLVE_EVERY`). Otherwise nothing.
    pub fn primary_lost(&self) {
        if self.pool.sentinel.is_some() {
            let pool = self.pool.clone();
            self.spawn(async move { pool.resolve().await });
        }
    }

    /// Sentinel mode: asks the Sentinels for the primary, waiting at most until `deadline`.
    async fn resolve_by(&self, deadline: tokio::time::Instant) {
        let pool = self.pool.clone();
        if let Some(rt) = &self.runtime.0 {
            let task = rt.spawn(async move { pool.resolve().await });
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
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
            "mode": self.settings.mode.name(),
            "nodes": self.settings.mode.shown(&self.settings.url),
            "primary": self.pool.sentinel.as_ref().and_then(|s| {
                s.primary.read().ok().and_then(|p| p.as_ref().map(|(addr, _)| addr.clone()))
            }),
            "breaker": self.state().as_str(),
            "breakers_not_closed": self.breakers_not_closed().0,
            "breakers": self.breakers_not_closed().1,
            "consecutive_failures": self.breakers.iter().map(Breaker::failures).max().unwrap_or(0),
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
                let (open, all) = self.breakers_not_closed();
                let part = if all > 1 { format!(", {open} of {all} slot groups") } else { String::new() };
                Some(format!("redis unavailable (breaker {}{part}): {last}; serving from local tiers", s.as_str()))
            }
        }
    }
}

/// `connections` lazily connecting managers of one node.
fn managers(client: &redis::Client, config: &ConnectionManagerConfig, connections: usize) -> Result<Vec<Conn>, String> {
    (0..connections)
        .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map(Conn::Single))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("redis connection: {e}"))
}

/// How often at most the Sentinels are asked for the primary.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// The connections in use. Fixed in single and cluster mode; in Sentinel mode replaced when the
/// Sentinels name another primary (the crate does not follow `+switch-master` by itself).
struct Pool {
    conns: std::sync::RwLock<Arc<Vec<Conn>>>,
    sentinel: Option<SentinelState>,
}

struct SentinelState {
    /// The Sentinels' client, and when it was last asked.
    client: tokio::sync::Mutex<(SentinelClient, Option<tokio::time::Instant>)>,
    /// The primary in use: its address and a client of it (for the subscriber).
    primary: std::sync::RwLock<Option<(String, redis::Client)>>,
    manager_config: ConnectionManagerConfig,
    connections: usize,
    connect_timeout: Duration,
}

impl Pool {
    fn fixed(conns: Vec<Conn>) -> Pool {
        Pool { conns: std::sync::RwLock::new(Arc::new(conns)), sentinel: None }
    }

    fn conns(&self) -> Arc<Vec<Conn>> {
        self.conns.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sentinel mode: asks the Sentinels for the primary (the crate checks it answers `ROLE` as
    /// a master) and, when it is another than the one in use, connects to it. Runs on the
    /// Redis runtime (the managers it makes live there).
    async fn resolve(&self) {
        let Some(s) = &self.sentinel else { return };
        let mut guard = s.client.lock().await;
        if guard.1.is_some_and(|at| at.elapsed() < RESOLVE_EVERY) {
            return;
        }
        let found = tokio::time::timeout(s.connect_timeout * 2, guard.0.async_get_client()).await;
        guard.1 = Some(tokio::time::Instant::now());
        let client = match found {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::config::redact_url(&e.to_string()), "the redis sentinels name no reachable primary");
                return;
            }
            Err(_) => {
                tracing::warn!("the redis sentinels did not answer in time");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let same = s.primary.read().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|(a, _)| *a == addr);
        if same {
            return;
        }
        match managers(&client, &s.manager_config, s.connections) {
            Ok(conns) => {
                *self.conns.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(conns);
                *s.primary.write().unwrap_or_else(|p| p.into_inner()) = Some((addr.clone(), client));
                tracing::info!(primary = %addr, "redis primary named by the sentinels");
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the redis primary"),
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

/// The key a command routes by in a cluster: the first key of `EVAL`/`EVALSHA` (after the
/// script and the key count), else the first argument; `None` for a keyless command.
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()?;
        if args.next()? == b"0" {
            return None;
        }
    }
    args.next()
}

/// A key's cluster slot: CRC16 (XMODEM) of its hash tag (the part in the first `{...}`, when
/// not empty) or of the whole key, modulo 16,384, as Redis Cluster computes it.
fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|close| &rest[..close])
        })
        .filter(|t| !t.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % SLOTS as u16
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
    fn slots_are_redis_clusters_own() {
        // `CLUSTER KEYSLOT` answers, from the Redis Cluster specification's examples.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag: the whole key");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn a_command_routes_by_its_first_key_and_a_script_by_its_first_key_after_the_count() {
        let k = |c: &Cmd| first_key(c).map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(k(&Cmd::get("p:{t}:e")).as_deref(), Some("p:{t}:e"));
        assert_eq!(k(&redis::cmd("TIME")), None);
        let lua = Lua::new("return 1");
        assert_eq!(k(&lua.cmd(true, &["p:{t}:l", "p:{t}:e"], &["x"])).as_deref(), Some("p:{t}:l"));
        assert_eq!(k(&lua.cmd(false, &["p:{u}:l"], &[])).as_deref(), Some("p:{u}:l"));
        assert_eq!(k(&lua.cmd(true, &[], &["x"])), None);
    }

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

//! The resolved configuration the server runs with ([`Settings`]: one struct), the named
//! defaults and bounds every layer reads, and what one index's policy resolves to ([`Policy`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{redact_url, MemoryEviction, UnknownIndices};

/// Redis shared tier, resolved.
#[derive(Clone)]
pub struct RedisSettings {
    /// Holds the password, if any: never log it (`Debug` hides it).
    pub url: String,
    pub max_value: usize,
    pub timeout: Duration,
    pub write_timeout: Duration,
    pub connect_timeout: Duration,
    pub connections: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub lease: Duration,
    pub lease_wait: Duration,
    /// Time entries and purge rules on Redis's `TIME` (see `base::clock::FleetClock`).
    pub fleet_clock: bool,
    pub prefix: String,
    /// PEM of an extra CA for `rediss://`.
    pub ca_pem: Option<Vec<u8>>,
    /// How Redis is reached: one node (`url`) or a cluster.
    pub mode: RedisTopology,
}

/// How the shared tier reaches Redis, resolved from `redis_mode`.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One node at `RedisSettings::url`.
    Single,
    /// A Redis Cluster, found from these seed URLs (the first is `RedisSettings::url`).
    Cluster { nodes: Vec<String> },
    /// The primary these Sentinels name `master`; `RedisSettings::url` gives its password and
    /// database.
    Sentinel { sentinels: Vec<String>, master: String },
}

/// Passwords redacted.
impl std::fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTopology::Single => f.write_str("Single"),
            RedisTopology::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field("nodes", &nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>())
                .finish(),
            RedisTopology::Sentinel { sentinels, master } => f
                .debug_struct("Sentinel")
                .field("sentinels", &sentinels.iter().map(|n| redact_url(n)).collect::<Vec<_>>())
                .field("master", master)
                .finish(),
        }
    }
}

impl RedisTopology {
    pub fn name(&self) -> &'static str {
        match self {
            RedisTopology::Single => "single",
            RedisTopology::Cluster { .. } => "cluster",
            RedisTopology::Sentinel { .. } => "sentinel",
        }
    }

    /// Every URL it names, passwords redacted (for `/health` and logs).
    pub fn shown(&self, url: &str) -> Vec<String> {
        match self {
            RedisTopology::Single => vec![redact_url(url)],
            RedisTopology::Cluster { nodes } => nodes.iter().map(|n| redact_url(n)).collect(),
            RedisTopology::Sentinel { sentinels, .. } => sentinels.iter().map(|n| redact_url(n)).collect(),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("max_value", &self.max_value)
            .field("timeout", &self.timeout)
            .field("write_timeout", &self.write_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("connections", &self.connections)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("lease", &self.lease)
            .field("lease_wait", &self.lease_wait)
            .field("fleet_clock", &self.fleet_clock)
            .field("prefix", &self.prefix)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("mode", &self.mode.name())
            .field("nodes", &self.mode.shown(&self.url))
            .finish()
    }
}

/// Cache policy of one index, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub negative_ttl: Duration,
    pub client_cache_control: Option<String>,
    pub budget: Budget,
    /// Per-client token bucket; `None`: unlimited.
    pub rate_limit: Option<ClientRate>,
    /// XFetch's `beta` ([`crate::domain::freshness::early_refresh`]): 0 = no early refresh. Finite,
    /// 0 to [`crate::config::MAX_EARLY_REFRESH_BETA`].
    pub early_refresh_beta: f64,
    /// How the same index treats traffic tiles ([`Policy::traffic_view`]).
    pub traffic: TrafficPolicy,
}

/// An index's traffic settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficPolicy {
    pub ttl: Duration,
    pub stale_if_error: Duration,
    pub budget: Budget,
}

impl Policy {
    /// The policy this index applies to traffic tiles: `traffic.ttl` as its TTL (over the
    /// upstream's `max-age`) and as the lifetime of a 204 "no traffic" answer, its own
    /// stale-if-error and budget, a stale-while-revalidate window of at most one TTL; the rest
    /// (client `Cache-Control` template, rate limit, early refresh) as for its other tiles.
    pub fn traffic_view(&self) -> Policy {
        let t = self.traffic;
        Policy {
            ttl: Some(t.ttl),
            stale_while_revalidate: self.stale_while_revalidate.min(t.ttl),
            stale_if_error: t.stale_if_error,
            negative_ttl: t.ttl,
            budget: t.budget,
            ..self.clone()
        }
    }
}

/// An index's upstream budget: fetches per UTC hour and day (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub hour: Option<u64>,
    pub day: Option<u64>,
}

impl Budget {
    pub fn is_limited(&self) -> bool {
        self.hour.is_some() || self.day.is_some()
    }
}

/// A client token bucket: `burst` requests at once, refilled one per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRate {
    pub interval: Duration,
    pub burst: u32,
    /// The built-in default ([`crate::config::DEFAULT_RATE_LIMIT`]), not an operator's choice:
    /// not applied to requests an untrusted proxy forwarded (they share its address).
    pub shipped: bool,
}

/// Upstream timeouts, retries, protocols and trust, resolved.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub retry_attempts: usize,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    pub retry_total: Duration,
    pub max_connections: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Offer `h2` by ALPN (else HTTP/1.1 only).
    pub http2: bool,
    /// PEM of extra CAs to trust besides the public web roots, each checked at load
    /// ([`crate::base::tls::ca_certificates`] accepts it).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamSettings {
    // Hand-written so the CA file shows as its size, not as thousands of bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("connect_timeout", &self.connect_timeout)
            .field("head_timeout", &self.head_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_min_delay", &self.retry_min_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("retry_total", &self.retry_total)
            .field("max_connections", &self.max_connections)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("http2", &self.http2)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
    }
}

/// The validated configuration the server runs with. Every duration is at most
/// [`crate::config::MAX_DURATION`] (timeouts at most [`crate::config::MAX_TIMEOUT`]) and every
/// size at most [`crate::config::MAX_SIZE`].
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where `/metrics`, `/health` and `/admin/*` are served apart from the tiles (default none:
    /// on `listen`).
    pub admin_listen: Option<SocketAddr>,
    pub workers: usize,
    /// `None` only when `upstream_requires_key = false` and no key was given.
    pub api_key: Option<String>,
    pub raster_upstream: String,
    pub vector_upstream: String,
    pub traffic_raster_upstream: String,
    pub traffic_vector_upstream: String,
    pub cache_dir: PathBuf,
    pub memory_cache: usize,
    pub memory_eviction: MemoryEviction,
    pub disk_cache: usize,
    /// A disk tier that cannot be used at start stops the start (default false: memory-only).
    pub disk_required: bool,
    pub max_entry_size: usize,
    /// Each of the disk tier's two write buffers (foyer's flush buffer; default 8 MiB, at least
    /// `max_entry_size` + 64 KiB). Writes queue for disk up to twice this; beyond, new entries
    /// are kept in memory only (counted by foyer's metrics).
    pub disk_write_buffer: usize,
    pub ttl_cap: Duration,
    pub default_ttl: Duration,
    pub reject_unknown_params: bool,
    pub cors_origins: Vec<String>,
    pub log_json: bool,
    /// The access log; `None`: off.
    pub access_log: Option<AccessLogSettings>,
    pub metrics_max_indices: usize,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    pub upstream: UpstreamSettings,
    pub default_policy: Policy,
    pub policies: BTreeMap<String, Policy>,
    /// [`Policy::traffic_view`] of `default_policy` and of each of `policies`.
    pub traffic_default_policy: Policy,
    pub traffic_policies: BTreeMap<String, Policy>,
    /// Indices without a section: served with `[defaults]` or refused. Default: allow.
    pub unknown_indices: UnknownIndices,
    /// Peers whose forwarding headers are believed; a bare IP is a /32 or /128. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// Bytes one in-flight fetch may buffer for late joiners (64 KiB to 1 GiB; default 8 MiB).
    pub flight_buffer: usize,
    /// Per-index HERE keys (index name -> key), from `api_key_env` / `api_key_file`.
    pub index_keys: BTreeMap<String, String>,
    /// The shared tier, when `redis_url` is set.
    pub redis: Option<RedisSettings>,
    /// Bearer token of `/admin/*`; `None`: the admin API answers 404.
    pub admin_token: Option<String>,
    pub surrogate_keys: bool,
    pub map_page: bool,
    /// Without a trailing slash.
    pub public_base_url: Option<String>,
    pub compression: bool,
    pub compress_min_size: usize,
    pub metadata_ttl: Duration,
    pub copyright_ttl: Duration,
    /// Time between two upstream requests per API under `upstream_rps`; `None`: no cap.
    pub upstream_interval: Option<Duration>,
    pub upstream_queue_wait: Duration,
    pub rate_limit_exempt: Vec<IpNet>,
    pub rate_limit_clients: u64,
    pub rate_limit_shared: bool,
    /// Tiles the cache map keeps (default 200,000; 0: off).
    pub cache_map_tiles: usize,
    /// `[billing]`, resolved.
    pub billing: Billing,
}

/// One HERE API's price, resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    /// Price of 1,000 transactions (finite, 0 to [`crate::config::MAX_PRICE_PER_1000`]).
    pub per_1000: f64,
    /// Transactions a month that cost nothing (once per account).
    pub free_per_month: u64,
}

/// How upstream transactions are counted and priced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Billing {
    /// A 304 counts as a transaction (default true).
    pub bill_not_modified: bool,
    /// Per API, in `domain::routes::Api::ALL` order (raster, vector, traffic raster, traffic
    /// vector).
    pub prices: [Price; 4],
}

impl Default for Billing {
    fn default() -> Self {
        Billing { bill_not_modified: super::DEFAULT_BILL_NOT_MODIFIED, prices: [Price::default(); 4] }
    }
}

impl std::fmt::Debug for Settings {
    // Hand-written so no key can ever reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index_keys: BTreeMap<&str, &str> = self.index_keys.keys().map(|k| (k.as_str(), "<redacted>")).collect();
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("workers", &self.workers)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("raster_upstream", &self.raster_upstream)
            .field("vector_upstream", &self.vector_upstream)
            .field("traffic_raster_upstream", &self.traffic_raster_upstream)
            .field("traffic_vector_upstream", &self.traffic_vector_upstream)
            .field("cache_dir", &self.cache_dir)
            .field("memory_cache", &self.memory_cache)
            .field("memory_eviction", &self.memory_eviction)
            .field("disk_cache", &self.disk_cache)
            .field("disk_required", &self.disk_required)
            .field("max_entry_size", &self.max_entry_size)
            .field("disk_write_buffer", &self.disk_write_buffer)
            .field("flight_buffer", &self.flight_buffer)
            .field("ttl_cap", &self.ttl_cap)
            .field("default_ttl", &self.default_ttl)
            .field("reject_unknown_params", &self.reject_unknown_params)
            .field("unknown_indices", &self.unknown_indices)
            .field("cors_origins", &self.cors_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("log_json", &self.log_json)
            .field("access_log", &self.access_log)
            .field("metrics_max_indices", &self.metrics_max_indices)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("drain_delay", &self.drain_delay)
            .field("upstream", &self.upstream)
            .field("default_policy", &self.default_policy)
            .field("policies", &self.policies)
            .field("index_keys", &index_keys)
            .field("redis", &self.redis)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("surrogate_keys", &self.surrogate_keys)
            .field("map_page", &self.map_page)
            .field("public_base_url", &self.public_base_url)
            .field("compression", &self.compression)
            .field("compress_min_size", &self.compress_min_size)
            .field("metadata_ttl", &self.metadata_ttl)
            .field("copyright_ttl", &self.copyright_ttl)
            .field("upstream_interval", &self.upstream_interval)
            .field("upstream_queue_wait", &self.upstream_queue_wait)
            .field("rate_limit_exempt", &self.rate_limit_exempt)
            .field("rate_limit_clients", &self.rate_limit_clients)
            .field("cache_map_tiles", &self.cache_map_tiles)
            .field("rate_limit_shared", &self.rate_limit_shared)
            .field("billing", &self.billing)
            .finish()
    }
}

impl Settings {
    /// The start-time warning for a proxy anyone may spend the HERE quota through: listening
    /// on an address other than loopback with neither a budget nor a client rate limit on the
    /// default index (what every index without a section of its own gets). `None`: guarded.
    pub fn exposure_warning(&self) -> Option<String> {
        let p = &self.default_policy;
        if self.listen.ip().is_loopback()
            || p.budget.is_limited()
            || p.traffic.budget.is_limited()
            || p.rate_limit.is_some()
        {
            return None;
        }
        Some(format!(
            "listening on {} (not loopback) with no budget and no client rate limit on the default index: \
             anyone who can reach this port can spend the HERE quota. Set [defaults] budget_hour / budget_day \
             (TILE_PROXY_DEFAULTS__BUDGET_DAY) and rate_limit (TILE_PROXY_DEFAULTS__RATE_LIMIT), or \
             unknown_indices = \"reject\" with budgeted [index.NAME] sections, or listen on 127.0.0.1",
            self.listen
        ))
    }

    /// The policy for `index`: its own section, else `[defaults]`.
    pub fn policy(&self, index: &str) -> &Policy {
        self.policies.get(index).unwrap_or(&self.default_policy)
    }

    /// The policy `index` applies to its tiles: [`Settings::policy`], or for `traffic` tiles
    /// (`Api::is_traffic`) its traffic view.
    pub fn policy_for(&self, index: &str, traffic: bool) -> &Policy {
        if traffic {
            self.traffic_policies.get(index).unwrap_or(&self.traffic_default_policy)
        } else {
            self.policy(index)
        }
    }
}

/// How the access log (`http::access_log`) is written.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogSettings {
    /// JSON lines (else text lines in the style of the other logs).
    pub json: bool,
    /// Log one request in `sample` (and every status >= 400); 1 logs all.
    pub sample: u32,
    /// Bytes gathered before a write.
    pub buffer: usize,
    /// Longest a line waits in the buffer.
    pub flush: Duration,
}

//! The configuration file's format ([`FileConfig`]: what a TOML file, the environment and the
//! flags may set, serde with unknown keys rejected) and its effective form as TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::units;
use bytesize::ByteSize;

/// What to do with a request for an index that has no `[index.<name>]` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownIndices {
    /// Serve it with the `[defaults]` policy (the default).
    #[default]
    Allow,
    /// Refuse it: only configured indices are served.
    Reject,
}

/// Which entries the memory tier evicts first when full (`memory_eviction`): foyer's
/// algorithms. Chosen by measurement on tile traces (`bench/eviction.sh`, bench/README.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryEviction {
    /// Least recently used.
    Lru,
    /// W-TinyLFU: a small LRU window, then admission by estimated frequency.
    Lfu,
    /// S3-FIFO: a small probationary FIFO, a main FIFO and a ghost queue. The default: on
    /// Zipf tile traffic 0.899 x Belady's hit ratio against LRU's 0.791, and a scan (a crawler,
    /// a seed job) does not evict the hot set (bench/README.md, eviction policies).
    #[default]
    S3fifo,
    /// SIEVE: one FIFO with a visited bit.
    Sieve,
    /// First in, first out.
    Fifo,
}

impl MemoryEviction {
    pub const ALL: [MemoryEviction; 5] =
        [MemoryEviction::Lru, MemoryEviction::Lfu, MemoryEviction::S3fifo, MemoryEviction::Sieve, MemoryEviction::Fifo];

    pub fn as_str(self) -> &'static str {
        match self {
            MemoryEviction::Lru => "lru",
            MemoryEviction::Lfu => "lfu",
            MemoryEviction::S3fifo => "s3fifo",
            MemoryEviction::Sieve => "sieve",
            MemoryEviction::Fifo => "fifo",
        }
    }
}

/// How the shared tier reaches Redis (`redis_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis node at `redis_url` (the default).
    #[default]
    Single,
    /// A Redis Cluster found from the seed nodes `redis_nodes` (or `redis_url` alone).
    Cluster,
    /// A primary watched by the Sentinels `redis_nodes`, named `redis_master_name`; followed
    /// after a failover.
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// The whole configuration as the file spells it. Unknown keys are rejected.
///
/// Tests build one with struct update syntax:
/// `FileConfig { memory_cache: ByteSize::mib(32), ..FileConfig::default() }`, then
/// [`crate::config::Settings::from_file_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    /// A second address for `/metrics`, `/health` and `/admin/*` (the tile port then answers
    /// them 404; `/live` and `/ready` stay on both). Unset: everything on `listen`.
    pub admin_listen: Option<String>,
    /// Default: the number of CPUs.
    pub workers: Option<usize>,
    /// Best given as `HERE_API_KEY` or `here_api_key_file`, not in the file.
    pub here_api_key: Option<String>,
    pub here_api_key_file: Option<PathBuf>,
    /// When false the upstream is called without a key (test upstreams, internal mirrors).
    pub upstream_requires_key: bool,
    pub raster_upstream: String,
    pub vector_upstream: String,
    /// Traffic Raster Tile API v3 (`/v3/flow/...`).
    pub traffic_raster_upstream: String,
    /// Traffic Vector Tile API v2 (`/v2/traffictiles/...`).
    pub traffic_vector_upstream: String,
    pub cache_dir: PathBuf,
    #[serde(with = "units::size")]
    pub memory_cache: ByteSize,
    /// The memory tier's eviction: `lru`, `lfu` (w-TinyLFU), `s3fifo`, `sieve` or `fifo`.
    pub memory_eviction: MemoryEviction,
    /// 0 turns the disk tier off.
    #[serde(with = "units::size")]
    pub disk_cache: ByteSize,
    /// A disk tier that cannot be used at start is fatal (exit non-zero) instead of leaving the
    /// proxy memory-only. Default false.
    pub disk_required: bool,
    #[serde(with = "units::size")]
    pub max_entry_size: ByteSize,
    /// Each of the disk tier's two write buffers; entries queue for disk in them.
    #[serde(with = "units::size")]
    pub disk_write_buffer: ByteSize,
    /// Bytes one in-flight fetch may buffer for requests that join it late.
    #[serde(with = "units::size")]
    pub flight_buffer: ByteSize,
    /// Cap on every TTL (`CACHE_TTL_CAP`, seconds).
    #[serde(with = "units::duration")]
    pub ttl_cap: Duration,
    #[serde(with = "units::duration")]
    pub default_ttl: Duration,
    /// Reject query parameters that are not in HERE's documented list (default true).
    pub reject_unknown_params: bool,
    /// What an index without its own section gets (default `allow`).
    pub unknown_indices: UnknownIndices,
    /// Allowed CORS origins; `["*"]` allows any.
    #[serde(deserialize_with = "units::list")]
    pub cors_origins: Vec<String>,
    /// Peers (CIDRs or IPs) whose forwarding headers are believed. Default: none.
    #[serde(deserialize_with = "units::list")]
    pub trusted_proxies: Vec<String>,
    pub log_format: String,
    /// One access line per request (also off when `RUST_LOG` turns `tile_proxy::access` off).
    pub access_log: bool,
    /// Log one request in N (every answer with status >= 400 is logged whatever N is).
    pub access_log_sample: u32,
    /// Access lines gathered before one write to stdout.
    #[serde(with = "units::size")]
    pub access_log_buffer: ByteSize,
    /// Longest an access line waits in that buffer.
    #[serde(with = "units::duration")]
    pub access_log_flush: Duration,
    /// Distinct index labels kept in metrics before the rest are folded into `_other`.
    pub metrics_max_indices: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "units::duration")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, keep serving with `/ready` failing this long before draining, so load
    /// balancers (Kubernetes endpoints, NGINX health checks) stop sending traffic first.
    #[serde(with = "units::duration")]
    pub drain_delay: Duration,
    pub upstream: UpstreamFileConfig,
    /// Redis shared tier (`REDIS_URL`): `redis://[:password@]host:port[/db]` or `rediss://` (TLS).
    /// Unset: every pod caches on its own.
    pub redis_url: Option<String>,
    /// `single` (one node at `redis_url`), `cluster` (a Redis Cluster, found from
    /// `redis_nodes`) or `sentinel` (the primary the Sentinels `redis_nodes` name).
    pub redis_mode: RedisMode,
    /// Cluster mode: seed nodes (`redis://host:port`, a few of the cluster's nodes; the rest are
    /// found from them; empty: `redis_url` is the one seed). Sentinel mode: the Sentinels
    /// (`redis://host:26379`).
    #[serde(deserialize_with = "units::list")]
    pub redis_nodes: Vec<String>,
    /// Sentinel mode: the name the Sentinels monitor the primary under (`sentinel monitor NAME`).
    /// `redis_url`, if set, gives the primary's password and database (its host is not used).
    pub redis_master_name: Option<String>,
    /// Entries larger than this stay in the local tiers (and skip the fleet-wide lease).
    #[serde(with = "units::size")]
    pub redis_max_value: ByteSize,
    /// Deadlines, connections, breaker and lease of the Redis tier.
    pub redis: RedisFileConfig,
    /// Bearer token for `/admin/*` (best given as `TILE_PROXY_ADMIN_TOKEN`); unset: no admin API.
    pub admin_token: Option<String>,
    /// File holding the admin token (whitespace trimmed).
    pub admin_token_file: Option<PathBuf>,
    /// Send `Surrogate-Key` and `Cache-Tag` headers (index, zoom, tile block) for CDN purging.
    pub surrogate_keys: bool,
    /// Serve the built-in map page at `/` and `/map` (turn off in production if unwanted).
    pub map_page: bool,
    /// This proxy's public base URL as clients reach it (behind NGINX or a CDN), for the tile
    /// templates of TileJSON documents and the map page; unset: taken from each request's Host.
    pub public_base_url: Option<String>,
    /// Compress vector tiles and JSON for clients that accept br or gzip.
    pub compression: bool,
    /// Bodies smaller than this are sent as they are.
    #[serde(with = "units::size")]
    pub compress_min_size: ByteSize,
    /// How long HERE's metadata answers (`/v3/info`, languages, features, political views) are
    /// kept.
    #[serde(with = "units::duration")]
    pub metadata_ttl: Duration,
    /// How long copyright answers are kept: at most 1 day (HERE's terms want it refreshed daily).
    #[serde(with = "units::duration")]
    pub copyright_ttl: Duration,
    /// Most requests per second sent to each upstream API (raster, vector); shared by every pod
    /// through Redis, else per pod. Unset: no cap.
    #[serde(with = "units::opt_decimal")]
    pub upstream_rps: Option<f64>,
    /// Longest a miss waits for its turn under `upstream_rps` before answering 503 `upstream_busy`.
    #[serde(with = "units::duration")]
    pub upstream_queue_wait: Duration,
    /// Client addresses (IPs or CIDRs) never rate limited (internal callers, the seeder).
    #[serde(deserialize_with = "units::list")]
    pub rate_limit_exempt: Vec<String>,
    /// Most clients whose rate-limit state is kept per pod (least recently seen dropped first).
    pub rate_limit_clients: u64,
    /// Share client rate limits between pods through Redis (when `redis_url` is set).
    pub rate_limit_shared: bool,
    /// Tiles the cache map (`/admin/cache-map`, the map page's cache overlay) keeps per pod,
    /// least recently requested dropped first; 0 turns it off.
    pub cache_map_tiles: u64,
    /// Policy for indices without a section of their own.
    pub defaults: PolicyFileConfig,
    /// Per-index policies: `[index.<name>]`.
    pub index: BTreeMap<String, PolicyFileConfig>,
    /// `[billing]`: what HERE charges per API, for the monthly bill of `/admin/stats`.
    pub billing: BillingFileConfig,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: None,
            workers: None,
            here_api_key: None,
            here_api_key_file: None,
            upstream_requires_key: true,
            raster_upstream: DEFAULT_RASTER_UPSTREAM.into(),
            vector_upstream: DEFAULT_VECTOR_UPSTREAM.into(),
            traffic_raster_upstream: DEFAULT_TRAFFIC_RASTER_UPSTREAM.into(),
            traffic_vector_upstream: DEFAULT_TRAFFIC_VECTOR_UPSTREAM.into(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            memory_cache: DEFAULT_MEMORY_CACHE,
            memory_eviction: MemoryEviction::default(),
            disk_cache: DEFAULT_DISK_CACHE,
            disk_required: false,
            max_entry_size: DEFAULT_MAX_ENTRY,
            disk_write_buffer: DEFAULT_DISK_WRITE_BUFFER,
            flight_buffer: DEFAULT_FLIGHT_BUFFER,
            ttl_cap: DEFAULT_TTL_CAP,
            default_ttl: DEFAULT_TTL,
            reject_unknown_params: true,
            unknown_indices: UnknownIndices::Allow,
            cors_origins: vec!["*".into()],
            trusted_proxies: Vec::new(),
            log_format: "json".into(),
            access_log: true,
            access_log_sample: 1,
            access_log_buffer: ByteSize::kib(64),
            access_log_flush: Duration::from_secs(1),
            metrics_max_indices: 500,
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            upstream: UpstreamFileConfig::default(),
            redis_url: None,
            redis_mode: RedisMode::Single,
            redis_nodes: Vec::new(),
            redis_master_name: None,
            redis_max_value: DEFAULT_REDIS_MAX_VALUE,
            redis: RedisFileConfig::default(),
            admin_token: None,
            admin_token_file: None,
            surrogate_keys: false,
            map_page: true,
            public_base_url: None,
            compression: true,
            compress_min_size: ByteSize::kib(1),
            metadata_ttl: Duration::from_secs(24 * 3600),
            copyright_ttl: Duration::from_secs(24 * 3600),
            upstream_rps: None,
            upstream_queue_wait: Duration::from_secs(5),
            rate_limit_exempt: Vec::new(),
            rate_limit_clients: 200_000,
            cache_map_tiles: DEFAULT_CACHE_MAP_TILES,
            rate_limit_shared: true,
            defaults: PolicyFileConfig::default(),
            index: BTreeMap::new(),
            billing: BillingFileConfig::default(),
        }
    }
}

/// `[billing]`: how upstream transactions are counted and priced. Prices default to 0 (no
/// price is assumed): set your contract's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingFileConfig {
    /// Count a `304 Not Modified` (a revalidation) as a billable transaction (default true:
    /// HERE counts a transaction per request, and its tile APIs call a 304 a success).
    pub bill_not_modified: bool,
    /// `[billing.raster]`: Raster Tile API v3.
    pub raster: PriceFileConfig,
    /// `[billing.vector]`: Vector Tile API v2.
    pub vector: PriceFileConfig,
    /// `[billing.traffic_raster]`: Traffic Raster Tile API v3.
    pub traffic_raster: PriceFileConfig,
    /// `[billing.traffic_vector]`: Traffic Vector Tile API v2.
    pub traffic_vector: PriceFileConfig,
}

impl Default for BillingFileConfig {
    fn default() -> Self {
        Self {
            bill_not_modified: DEFAULT_BILL_NOT_MODIFIED,
            raster: PriceFileConfig::default(),
            vector: PriceFileConfig::default(),
            traffic_raster: PriceFileConfig::default(),
            traffic_vector: PriceFileConfig::default(),
        }
    }
}

/// One HERE API's price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceFileConfig {
    /// Price of 1,000 transactions, in your contract's currency (default 0).
    #[serde(with = "units::decimal")]
    pub price_per_1000: f64,
    /// Transactions each month that cost nothing, once for the whole account (default 0).
    pub free_per_month: u64,
}

/// `[upstream]`: timeouts, retries, protocols and trust for calls to HERE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFileConfig {
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Until the response head has arrived.
    #[serde(with = "units::duration")]
    pub head_timeout: Duration,
    /// For the whole body after the head.
    #[serde(with = "units::duration")]
    pub body_timeout: Duration,
    /// Attempts in all, first one included.
    pub retry_attempts: usize,
    #[serde(with = "units::duration")]
    pub retry_min_delay: Duration,
    #[serde(with = "units::duration")]
    pub retry_max_delay: Duration,
    /// Bound on the time spent waiting between attempts.
    #[serde(with = "units::duration")]
    pub retry_total: Duration,
    /// Connections per worker to each upstream.
    pub max_connections: usize,
    /// Failed fetches in a row that open the circuit breaker; 0 disables it.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through.
    #[serde(with = "units::duration")]
    pub breaker_cooldown: Duration,
    /// Offer HTTP/2 (`h2`) besides HTTP/1.1 by ALPN on TLS connections (default true): one
    /// connection then carries many requests at once. False: HTTP/1.1 only. Plain `http://`
    /// upstreams always get HTTP/1.1.
    pub http2: bool,
    /// PEM file of a CA trusted besides the public web roots (an upstream or mirror behind a
    /// private CA). Unset: the public web roots only.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamFileConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            retry_attempts: 3,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            retry_total: Duration::from_secs(5),
            max_connections: 100,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            http2: true,
            ca_file: None,
        }
    }
}

/// `[redis]`: how the shared tier talks to Redis. Every call has a deadline and all of them
/// share one circuit breaker, so a Redis that hangs costs a request at most one deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisFileConfig {
    /// Deadline of a read (GET) and of the lease commands.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Deadline of a write (SET of an entry up to `redis_max_value`, PUBLISH).
    #[serde(with = "units::duration")]
    pub write_timeout: Duration,
    /// Deadline of connecting (connections are made lazily and again after a failure).
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Connections used round-robin, so a small GET does not queue behind a large reply.
    pub connections: usize,
    /// Failed Redis calls in a row that open the Redis breaker (no calls until a probe succeeds).
    pub breaker_failures: u32,
    /// How long the Redis breaker stays open before one probe.
    #[serde(with = "units::duration")]
    pub breaker_cooldown: Duration,
    /// Fleet-wide fetch lease, renewed every third of itself while its fetch runs; default 6s
    /// (how soon a dead pod's lease frees its tile).
    #[serde(with = "units::opt_duration")]
    pub lease: Option<Duration>,
    /// Longest a pod waits for another pod's fetch before fetching itself; default: the longest a
    /// fetch may last (the upstream's head timeout x attempts + retry total + 1s).
    #[serde(with = "units::opt_duration")]
    pub lease_wait: Option<Duration>,
    /// Compare purge rules and stored entries on Redis's `TIME` instead of each pod's clock
    /// (the pod clock plus an offset measured every 2 s; default on).
    pub fleet_clock: bool,
    /// Prefix of every Redis key and channel (several deployments can share one Redis).
    pub prefix: String,
    /// PEM file of the CA that signed the server's certificate, for `rediss://` with a private
    /// CA (otherwise the public web roots are trusted).
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisFileConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            write_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            connections: 4,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(5),
            lease: None,
            lease_wait: None,
            fleet_clock: true,
            prefix: "tile-proxy".into(),
            ca_file: None,
        }
    }
}

/// A cache policy as written in `[defaults]` or `[index.<name>]`. Unset fields fall back to
/// `[defaults]`, then to the built-in default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFileConfig {
    /// Fixed TTL for this index; overrides the upstream's `max-age`. Still capped by `ttl_cap`.
    #[serde(with = "units::opt_duration")]
    pub ttl: Option<Duration>,
    /// After expiry, serve the old copy while one background refresh runs.
    #[serde(with = "units::opt_duration")]
    pub stale_while_revalidate: Option<Duration>,
    /// After expiry, serve the old copy when the upstream fails.
    #[serde(with = "units::opt_duration")]
    pub stale_if_error: Option<Duration>,
    /// XFetch early refresh: how eagerly a fresh tile close to expiry is refreshed in the
    /// background while hits keep serving it (0 = off, default 1.0, at most 10).
    #[serde(with = "units::opt_decimal")]
    pub early_refresh_beta: Option<f64>,
    /// How long upstream 404/204 answers are remembered.
    #[serde(with = "units::opt_duration")]
    pub negative_ttl: Option<Duration>,
    /// `Cache-Control` sent to clients instead of `public, max-age=<lifetime>`; `{max_age}` is
    /// replaced by the index's lifetime for the tile (sent with `Age`, so RFC 9111 caches keep
    /// it for what is left), e.g. `"public, max-age={max_age}, s-maxage=60"`.
    pub client_cache_control: Option<String>,
    /// Upstream fetches this index may cause per UTC hour; past it, misses answer 429
    /// `budget_exhausted` (hits and stale copies still serve).
    pub budget_hour: Option<u64>,
    /// Upstream fetches per UTC day.
    pub budget_day: Option<u64>,
    /// How long a traffic tile (flow, incidents) is fresh for this index (default 30s); it
    /// overrides `ttl` and the upstream's `max-age` for traffic, and is how long a 204 "no
    /// traffic here" is remembered.
    #[serde(with = "units::opt_duration")]
    pub traffic_ttl: Option<Duration>,
    /// How long past `traffic_ttl` the last known traffic is served when HERE fails (default 5m).
    #[serde(with = "units::opt_duration")]
    pub traffic_stale_if_error: Option<Duration>,
    /// Traffic tile fetches this index may cause per UTC hour (HERE bills traffic apart).
    pub traffic_budget_hour: Option<u64>,
    /// Traffic tile fetches per UTC day.
    pub traffic_budget_day: Option<u64>,
    /// Requests per second one client (IP) may make for this index (token bucket refill).
    #[serde(with = "units::opt_decimal")]
    pub rate_limit: Option<f64>,
    /// Requests a client may make at once before `rate_limit` applies (bucket size; default:
    /// one second of `rate_limit`, at least 1).
    pub rate_burst: Option<u32>,
    /// `[index.<name>]` only: environment variable holding this index's own HERE key.
    pub api_key_env: Option<String>,
    /// `[index.<name>]` only: file holding this index's own HERE key (used when `api_key_env`
    /// is unset or empty).
    pub api_key_file: Option<PathBuf>,
}

/// Every leaf key path of a serialized configuration (`upstream.head_timeout`, ...), each after
/// `prefix`; maps empty in the value (like `index` in the defaults) are leaves too. The tests
/// use it to prove every setting is documented and settable.
pub fn key_paths(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                key_paths(&format!("{prefix}{k}."), v, out);
            }
        }
        _ => out.push(prefix.trim_end_matches('.').to_string()),
    }
}

/// A URL with any password replaced by `<redacted>` (for logs and `check-config`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:<redacted>@{host}")
            } else {
                format!("{scheme}://<redacted>@{host}")
            }
        }
        None => url.to_string(),
    }
}

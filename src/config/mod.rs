//! Configuration: one serde struct ([`FileConfig`]), layered defaults -> TOML file ->
//! environment -> command line, validated into [`Settings`].
//!
//! [`layers`] merges the sources with figment: the file (`--config` / `TILE_PROXY_CONFIG`),
//! every setting as `TILE_PROXY_<KEY>` with `__` between nested keys
//! (`TILE_PROXY_UPSTREAM__HEAD_TIMEOUT=5s`, `TILE_PROXY_INDEX__123__TTL=10m`), the legacy
//! `HERE_API_KEY`, `HERE_API_KEY_FILE` and `CACHE_TTL_CAP`, then the flags of [`ServeArgs`].
//! Unknown keys are rejected, in the file and in the environment. [`Settings::from_file_config`]
//! then checks every value and its bounds. Every problem is reported at once, each naming what
//! the user set: the file and line, the environment variable or the flag.
//!
//! Durations and sizes are spelled as in [`units`] and bounded ([`MAX_DURATION`],
//! [`MAX_TIMEOUT`], [`MAX_SIZE`]), so no later arithmetic on them can overflow.
//! Defaults are the named constants below; `--help` shows the same values.

mod layers;
pub mod units;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default raster (v3) upstream base URL.
pub const DEFAULT_RASTER_UPSTREAM: &str = "https://maps.hereapi.com";
/// Default vector (v2) upstream base URL.
pub const DEFAULT_VECTOR_UPSTREAM: &str = "https://vector.hereapi.com";
/// Default cache folder (the disk tier's block files live here).
pub const DEFAULT_CACHE_DIR: &str = "./tile-cache";
/// Default memory tier size.
pub const DEFAULT_MEMORY_CACHE: ByteSize = ByteSize::mib(256);
/// Default disk tier size.
pub const DEFAULT_DISK_CACHE: ByteSize = ByteSize::gib(1);
/// Default cap on any TTL (`CACHE_TTL_CAP`): 7 days.
pub const DEFAULT_TTL_CAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// TTL used when neither the index nor the upstream says anything: 1 day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest tile body that is stored; larger ones are streamed but not cached.
pub const DEFAULT_MAX_ENTRY: ByteSize = ByteSize::mib(2);
/// Bytes one in-flight fetch may buffer for requests that join it late.
pub const DEFAULT_FLIGHT_BUFFER: ByteSize = ByteSize::mib(8);
/// Each of the disk tier's two write buffers (foyer's flush buffer; both stay resident).
pub const DEFAULT_DISK_WRITE_BUFFER: ByteSize = ByteSize::mib(8);
/// Room `disk_write_buffer` must have beyond `max_entry_size` (the entry's header, page alignment).
pub const DISK_WRITE_BUFFER_HEADROOM: ByteSize = ByteSize::kib(64);
/// Default `redis_max_value`.
pub const DEFAULT_REDIS_MAX_VALUE: ByteSize = ByteSize::mib(4);
/// Smallest `flight_buffer`.
pub const MIN_FLIGHT_BUFFER: ByteSize = ByteSize::kib(64);

/// Longest duration any setting accepts (TTLs, stale windows): 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest timeout, delay or cooldown: 1 hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest size any setting accepts: 1 TiB.
pub const MAX_SIZE: ByteSize = ByteSize::tib(1);
/// Largest `max_entry_size` and `flight_buffer` (both are held in memory whole): 1 GiB.
pub const MAX_BUFFERED: ByteSize = ByteSize::gib(1);
/// Most worker threads.
pub const MAX_WORKERS: usize = 1024;

/// `tile-proxy`: a caching proxy for HERE map tiles.
#[derive(Debug, Parser)]
#[command(name = "tile-proxy", version, about, long_about = None, after_help = ENV_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy server (the default when no subcommand is given).
    #[command(after_help = ENV_HELP)]
    Serve(ServeArgs),
    /// Load and validate the configuration, print it as TOML (keys redacted) and exit;
    /// exit status 2 and every problem listed when it is invalid.
    #[command(after_help = ENV_HELP)]
    CheckConfig(ServeArgs),
    /// Probe a running proxy (a container HEALTHCHECK without curl): GET /live on the port of
    /// TILE_PROXY_LISTEN, else of `listen` in TILE_PROXY_CONFIG's file (default 8080), on the
    /// loopback; exit status 0 on a 200, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Warm the cache: fetch every tile of a bbox over a zoom range, through a running proxy
    /// (default) or straight into the cache of a config file (`--direct`); resumable.
    Seed(crate::app::seed::SeedArgs),
    /// Print a running proxy's per-index statistics (`GET /admin/stats`) as a table.
    Stats(StatsArgs),
}

/// The flags of `stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The proxy's base URL
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin token [env: TILE_PROXY_ADMIN_TOKEN]
    #[arg(long, env = "TILE_PROXY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the JSON document instead of a table
    #[arg(long)]
    pub json: bool,
}

/// The flags of `healthcheck`.
#[derive(Debug, Clone, Default, Args)]
pub struct HealthcheckArgs {
    /// URL to probe instead, e.g. http://127.0.0.1:8080/ready
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// How long the probe may take
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = units::parse_duration)]
    pub timeout: std::time::Duration,
}

const ENV_HELP: &str = "\
Precedence: built-in defaults < config file < environment < flags.
Every key of the config file can be set from the environment as TILE_PROXY_<KEY>, nested keys
joined by __ (index names as written), e.g. TILE_PROXY_UPSTREAM__HEAD_TIMEOUT=5s,
TILE_PROXY_DEFAULTS__TTL=1h, TILE_PROXY_INDEX__123__TTL=10m, TILE_PROXY_CORS_ORIGINS=https://a.example,https://b.example.
An unknown TILE_PROXY_* variable is an error. See config.example.toml for every key.";

fn help(what: &str, env: &str, default: impl std::fmt::Display) -> String {
    format!("{what} [env: {env}] [default: {default}]")
}

/// The flags of `serve` and `check-config`. Each overrides the environment and the file; unset
/// ones leave them alone. The environment itself is read by [`Settings::load`], not by clap.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file [env: TILE_PROXY_CONFIG]
    #[arg(long, env = "TILE_PROXY_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "ADDR", help = help("Address to listen on", "TILE_PROXY_LISTEN", DEFAULT_LISTEN))]
    pub listen: Option<String>,
    /// HERE API key sent upstream; prefer HERE_API_KEY_FILE in production [env: HERE_API_KEY]
    #[arg(long, value_name = "KEY")]
    pub here_api_key: Option<String>,
    /// File holding the HERE API key, whitespace trimmed [env: HERE_API_KEY_FILE]
    #[arg(long, value_name = "PATH")]
    pub here_api_key_file: Option<PathBuf>,
    #[arg(long, value_name = "URL", help = help("Raster tile upstream base URL", "TILE_PROXY_RASTER_UPSTREAM", DEFAULT_RASTER_UPSTREAM))]
    pub raster_upstream: Option<String>,
    #[arg(long, value_name = "URL", help = help("Vector tile upstream base URL", "TILE_PROXY_VECTOR_UPSTREAM", DEFAULT_VECTOR_UPSTREAM))]
    pub vector_upstream: Option<String>,
    #[arg(long, value_name = "DIR", help = help("Cache folder for the disk tier", "TILE_PROXY_CACHE_DIR", DEFAULT_CACHE_DIR))]
    pub cache_dir: Option<PathBuf>,
    #[arg(long, value_name = "SIZE", help = help("Memory tier size, e.g. 256MiB", "TILE_PROXY_MEMORY_CACHE", units::format_size(DEFAULT_MEMORY_CACHE)))]
    pub memory_cache: Option<String>,
    #[arg(long, value_name = "SIZE", help = help("Disk tier size, e.g. 10GiB; 0 disables the disk tier", "TILE_PROXY_DISK_CACHE", units::format_size(DEFAULT_DISK_CACHE)))]
    pub disk_cache: Option<String>,
    #[arg(long, value_name = "N", help = help("HTTP worker threads", "TILE_PROXY_WORKERS", "number of CPUs"))]
    pub workers: Option<usize>,
    #[arg(long, value_name = "SECONDS", help = help("Cap on every TTL, in seconds", "CACHE_TTL_CAP or TILE_PROXY_TTL_CAP", DEFAULT_TTL_CAP.as_secs()))]
    pub ttl_cap: Option<u64>,
    #[arg(long, value_name = "FORMAT", help = help("Log format: json or text", "TILE_PROXY_LOG_FORMAT", "json"))]
    pub log_format: Option<String>,
    /// Redis shared tier, e.g. redis://:password@redis:6379/0 or rediss://...; unset: no Redis [env: REDIS_URL]
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

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

/// The whole configuration as the file spells it. Unknown keys are rejected.
///
/// Tests build one with struct update syntax:
/// `FileConfig { memory_cache: ByteSize::mib(32), ..FileConfig::default() }`, then
/// [`Settings::from_file_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    /// Default: the number of CPUs.
    pub workers: Option<usize>,
    /// Best given as `HERE_API_KEY` or `here_api_key_file`, not in the file.
    pub here_api_key: Option<String>,
    pub here_api_key_file: Option<PathBuf>,
    /// When false the upstream is called without a key (test upstreams, internal mirrors).
    pub upstream_requires_key: bool,
    pub raster_upstream: String,
    pub vector_upstream: String,
    pub cache_dir: PathBuf,
    #[serde(with = "units::size")]
    pub memory_cache: ByteSize,
    /// 0 turns the disk tier off.
    #[serde(with = "units::size")]
    pub disk_cache: ByteSize,
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
    /// Policy for indices without a section of their own.
    pub defaults: PolicyFileConfig,
    /// Per-index policies: `[index.<name>]`.
    pub index: BTreeMap<String, PolicyFileConfig>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            workers: None,
            here_api_key: None,
            here_api_key_file: None,
            upstream_requires_key: true,
            raster_upstream: DEFAULT_RASTER_UPSTREAM.into(),
            vector_upstream: DEFAULT_VECTOR_UPSTREAM.into(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            memory_cache: DEFAULT_MEMORY_CACHE,
            disk_cache: DEFAULT_DISK_CACHE,
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
            rate_limit_shared: true,
            defaults: PolicyFileConfig::default(),
            index: BTreeMap::new(),
        }
    }
}

/// `[upstream]`: timeouts and retries for calls to HERE.
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
    /// Fleet-wide fetch lease; default: the upstream's head timeout x attempts + retry total + 1s.
    #[serde(with = "units::opt_duration")]
    pub lease: Option<Duration>,
    /// Longest a pod waits for another pod's fetch before fetching itself; default: the lease.
    #[serde(with = "units::opt_duration")]
    pub lease_wait: Option<Duration>,
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
            prefix: "tile-proxy".into(),
            ca_file: None,
        }
    }
}

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
    pub prefix: String,
    /// PEM of an extra CA for `rediss://`.
    pub ca_pem: Option<Vec<u8>>,
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
            .field("prefix", &self.prefix)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
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
    /// Requests per second one client (IP) may make for this index (token bucket refill).
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
    /// 0 to [`MAX_EARLY_REFRESH_BETA`].
    pub early_refresh_beta: f64,
}

/// Default `early_refresh_beta`: XFetch's own recommendation.
pub const DEFAULT_EARLY_REFRESH_BETA: f64 = 1.0;
/// Largest `early_refresh_beta` accepted (10 refreshes about 10 fetch times before expiry).
pub const MAX_EARLY_REFRESH_BETA: f64 = 10.0;

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
}

/// Upstream timeouts and retries, resolved.
#[derive(Debug, Clone)]
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
}

/// The validated configuration the server runs with. Every duration is at most
/// [`MAX_DURATION`] (timeouts at most [`MAX_TIMEOUT`]) and every size at most [`MAX_SIZE`].
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub workers: usize,
    /// `None` only when `upstream_requires_key = false` and no key was given.
    pub api_key: Option<String>,
    pub raster_upstream: String,
    pub vector_upstream: String,
    pub cache_dir: PathBuf,
    pub memory_cache: usize,
    pub disk_cache: usize,
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
    pub access_log: Option<crate::http::access_log::Config>,
    pub metrics_max_indices: usize,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    pub upstream: UpstreamSettings,
    pub default_policy: Policy,
    pub policies: BTreeMap<String, Policy>,
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
}

impl std::fmt::Debug for Settings {
    // Hand-written so no key can ever reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index_keys: BTreeMap<&str, &str> = self.index_keys.keys().map(|k| (k.as_str(), "<redacted>")).collect();
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("workers", &self.workers)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("raster_upstream", &self.raster_upstream)
            .field("vector_upstream", &self.vector_upstream)
            .field("cache_dir", &self.cache_dir)
            .field("memory_cache", &self.memory_cache)
            .field("disk_cache", &self.disk_cache)
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
            .field("rate_limit_shared", &self.rate_limit_shared)
            .finish()
    }
}

impl Settings {
    /// The policy for `index`: its own section, else `[defaults]`.
    pub fn policy(&self, index: &str) -> &Policy {
        self.policies.get(index).unwrap_or(&self.default_policy)
    }

    /// Loads defaults -> file -> environment -> flags and validates. The error lists every
    /// problem found, each naming its source.
    pub fn load(args: &ServeArgs) -> Result<Settings, ConfigErrors> {
        Self::load_effective(args).map(|(settings, _)| settings)
    }

    /// Like [`Settings::load`], and also gives the merged [`FileConfig`] the settings were
    /// validated from (see [`FileConfig::effective_toml`]).
    pub fn load_effective(args: &ServeArgs) -> Result<(Settings, FileConfig), ConfigErrors> {
        layers::load(args, std::env::vars_os())
    }

    /// Validates a complete [`FileConfig`] into [`Settings`], collecting every problem.
    /// `api_key_env` variables are read from the process environment.
    pub fn from_file_config(file: FileConfig) -> Result<Settings, ConfigErrors> {
        validate(&file, &|name| std::env::var(name).ok())
            .map_err(|problems| ConfigErrors(problems.iter().map(Problem::to_string).collect()))
    }
}

impl FileConfig {
    /// This configuration as a TOML config file, with `workers` resolved from `settings` and the
    /// key shown as `"<redacted>"`. It parses back into an equal `FileConfig` (but the key).
    pub fn effective_toml(&self, settings: &Settings) -> String {
        let mut shown = self.clone();
        shown.workers = Some(settings.workers);
        if shown.here_api_key.is_some() {
            shown.here_api_key = Some("<redacted>".into());
        }
        if shown.admin_token.is_some() {
            shown.admin_token = Some("<redacted>".into());
        }
        shown.redis_url = shown.redis_url.as_deref().map(redact_url);
        let body = toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot be shown as TOML: {e}\n"));
        format!("# tile-proxy effective configuration (defaults < file < environment < flags)\n{body}")
    }
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

/// Every problem found in the configuration, one line each.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One problem: the setting it is about (`["upstream", "head_timeout"]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    path: Vec<String>,
    message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.join("."), self.message)
    }
}

/// Collects problems while validating.
#[derive(Default)]
struct Check {
    problems: Vec<Problem>,
}

impl Check {
    fn push(&mut self, path: &[&str], message: impl Into<String>) {
        self.problems.push(Problem { path: path.iter().map(|s| s.to_string()).collect(), message: message.into() });
    }

    /// `d`, or an error when it is longer than `max` (then `max`).
    fn duration(&mut self, path: &[&str], d: Duration, max: Duration) -> Duration {
        if d > max {
            self.push(
                path,
                format!("{} is too long: at most {}", units::format_duration(d), units::format_duration(max)),
            );
            return max;
        }
        d
    }

    /// Like [`Check::duration`], and longer than zero.
    fn timeout(&mut self, path: &[&str], d: Duration) -> Duration {
        if d.is_zero() {
            self.push(path, "must be longer than 0");
        }
        self.duration(path, d, MAX_TIMEOUT)
    }

    /// `b` in bytes, or an error when it is outside `min..=max` (then clamped).
    fn size(&mut self, path: &[&str], b: ByteSize, min: ByteSize, max: ByteSize) -> usize {
        let clamped = if b > max {
            self.push(path, format!("{} is too large: at most {}", units::format_size(b), units::format_size(max)));
            max
        } else if b < min {
            self.push(path, format!("must be at least {}", units::format_size(min)));
            min
        } else {
            b
        };
        usize::try_from(clamped.as_u64()).unwrap_or(usize::MAX)
    }

    fn count<T: PartialOrd + std::fmt::Display>(&mut self, path: &[&str], n: T, min: T, max: T) {
        if n < min || n > max {
            self.push(path, format!("{n} is out of range: {min} to {max}"));
        }
    }
}

/// Reads an environment variable (the process's, or a test's list).
type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn validate(file: &FileConfig, env: EnvLookup<'_>) -> Result<Settings, Vec<Problem>> {
    let mut c = Check::default();
    let listen = file
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| c.push(&["listen"], format!("`{}` is not an address like 0.0.0.0:8080", file.listen)))
        .ok();
    let workers = match file.workers {
        Some(n) => {
            c.count(&["workers"], n, 1, MAX_WORKERS);
            n.clamp(1, MAX_WORKERS)
        }
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_WORKERS),
    };
    let api_key = resolve_key(file, &mut c);
    let raster_upstream = check_base_url("raster_upstream", &file.raster_upstream, &mut c);
    let vector_upstream = check_base_url("vector_upstream", &file.vector_upstream, &mut c);
    let memory_cache = c.size(&["memory_cache"], file.memory_cache, ByteSize::b(1), MAX_SIZE);
    let max_entry_size = c.size(&["max_entry_size"], file.max_entry_size, ByteSize::b(1), MAX_BUFFERED);
    let disk_cache = c.size(&["disk_cache"], file.disk_cache, ByteSize::b(0), MAX_SIZE);
    let block = crate::store::cache::block_size_for(max_entry_size);
    if disk_cache != 0 && disk_cache < 4 * block {
        c.push(
            &["disk_cache"],
            format!(
                "must be 0 (off) or at least 4 blocks of {} (4 x block size, derived from max_entry_size)",
                units::format_size(ByteSize::b(block as u64))
            ),
        );
    }
    // The largest entry must fit a write buffer, or it never reaches the disk tier.
    let min_write_buffer = (max_entry_size as u64 + DISK_WRITE_BUFFER_HEADROOM.as_u64()).min(MAX_BUFFERED.as_u64());
    let disk_write_buffer = if file.disk_write_buffer.as_u64() < min_write_buffer {
        let min = units::format_size(ByteSize::b(min_write_buffer));
        c.push(&["disk_write_buffer"], format!("must be at least max_entry_size + 64KiB ({min})"));
        min_write_buffer as usize
    } else {
        c.size(&["disk_write_buffer"], file.disk_write_buffer, ByteSize::b(0), MAX_BUFFERED)
    };
    let flight_buffer = c.size(&["flight_buffer"], file.flight_buffer, MIN_FLIGHT_BUFFER, MAX_BUFFERED);
    if file.ttl_cap < Duration::from_secs(1) {
        c.push(&["ttl_cap"], "must be at least 1 second (CACHE_TTL_CAP is in seconds)");
    }
    let ttl_cap = c.duration(&["ttl_cap"], file.ttl_cap, MAX_DURATION);
    let default_ttl = c.duration(&["default_ttl"], file.default_ttl, MAX_DURATION);
    let log_json = match file.log_format.as_str() {
        "json" => true,
        "text" => false,
        other => {
            c.push(&["log_format"], format!("`{other}` is not json or text"));
            true
        }
    };
    c.count(&["access_log_sample"], file.access_log_sample, 1, 1_000_000);
    let access_log_buffer = c.size(&["access_log_buffer"], file.access_log_buffer, ByteSize::b(0), ByteSize::mib(16));
    let access_log_flush = c.duration(&["access_log_flush"], file.access_log_flush, Duration::from_secs(60));
    if access_log_flush < Duration::from_millis(10) {
        c.push(&["access_log_flush"], "must be at least 10ms");
    }
    let access_log = file.access_log.then_some(crate::http::access_log::Config {
        json: log_json,
        sample: file.access_log_sample.max(1),
        buffer: access_log_buffer,
        flush: access_log_flush.max(Duration::from_millis(10)),
    });
    for origin in &file.cors_origins {
        if origin != "*" && !is_origin(origin) {
            c.push(
                &["cors_origins"],
                format!("`{origin}` must be `*` or an origin like https://maps.example.com (scheme, host, optional port; no path)"),
            );
        }
    }
    let trusted_proxies = file
        .trusted_proxies
        .iter()
        .filter_map(|s| match parse_net(s) {
            Some(net) => Some(net),
            None => {
                c.push(
                    &["trusted_proxies"],
                    format!("`{s}` is not an IP network like 10.0.0.0/8 or an IP like 127.0.0.1"),
                );
                None
            }
        })
        .collect();
    let rate_limit_exempt = file
        .rate_limit_exempt
        .iter()
        .filter_map(|s| {
            parse_net(s).or_else(|| {
                c.push(&["rate_limit_exempt"], format!("`{s}` is not an IP network like 10.0.0.0/8 or an IP"));
                None
            })
        })
        .collect();
    c.count(&["rate_limit_clients"], file.rate_limit_clients, 1_000, 100_000_000);
    let upstream_interval = file.upstream_rps.and_then(|rps| {
        if !(rps.is_finite() && (0.001..=100_000.0).contains(&rps)) {
            c.push(&["upstream_rps"], format!("{rps} is out of range: 0.001 to 100000 requests per second"));
            return None;
        }
        Some(Duration::from_secs_f64(1.0 / rps))
    });
    let upstream_queue_wait = c.duration(&["upstream_queue_wait"], file.upstream_queue_wait, MAX_TIMEOUT);
    let public_base_url = file.public_base_url.as_deref().map(|u| check_base_url("public_base_url", u, &mut c));
    let compress_min_size = c.size(&["compress_min_size"], file.compress_min_size, ByteSize::b(0), ByteSize::mib(16));
    let metadata_ttl = c.duration(&["metadata_ttl"], file.metadata_ttl, MAX_DURATION);
    let day = Duration::from_secs(24 * 3600);
    if file.copyright_ttl > day {
        c.push(&["copyright_ttl"], "at most 1d: HERE's terms want copyright text refreshed daily");
    }
    let copyright_ttl = file.copyright_ttl.min(day);
    c.count(&["metrics_max_indices"], file.metrics_max_indices, 0, 100_000);
    let shutdown_timeout = c.duration(&["shutdown_timeout"], file.shutdown_timeout, MAX_TIMEOUT);
    let drain_delay = c.duration(&["drain_delay"], file.drain_delay, MAX_TIMEOUT);
    let u = &file.upstream;
    let upstream = UpstreamSettings {
        connect_timeout: c.timeout(&["upstream", "connect_timeout"], u.connect_timeout),
        head_timeout: c.timeout(&["upstream", "head_timeout"], u.head_timeout),
        body_timeout: c.timeout(&["upstream", "body_timeout"], u.body_timeout),
        retry_attempts: u.retry_attempts,
        retry_min_delay: c.duration(&["upstream", "retry_min_delay"], u.retry_min_delay, MAX_TIMEOUT),
        retry_max_delay: c.duration(&["upstream", "retry_max_delay"], u.retry_max_delay, MAX_TIMEOUT),
        retry_total: c.duration(&["upstream", "retry_total"], u.retry_total, MAX_TIMEOUT),
        max_connections: u.max_connections,
        breaker_failures: u.breaker_failures,
        breaker_cooldown: c.duration(&["upstream", "breaker_cooldown"], u.breaker_cooldown, MAX_TIMEOUT),
    };
    c.count(&["upstream", "retry_attempts"], u.retry_attempts, 1, 10);
    c.count(&["upstream", "max_connections"], u.max_connections, 1, 10_000);
    c.count(&["upstream", "breaker_failures"], u.breaker_failures, 0, 10_000);
    let builtin = Policy {
        ttl: None,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::from_secs(24 * 3600),
        negative_ttl: Duration::from_secs(60),
        client_cache_control: None,
        budget: Budget::default(),
        rate_limit: None,
        early_refresh_beta: DEFAULT_EARLY_REFRESH_BETA,
    };
    let default_policy = resolve_policy(&["defaults"], &file.defaults, &builtin, &mut c);
    let own_key_only = "only an [index.<name>] section can have its own key";
    if file.defaults.api_key_env.is_some() {
        c.push(&["defaults", "api_key_env"], own_key_only);
    }
    if file.defaults.api_key_file.is_some() {
        c.push(&["defaults", "api_key_file"], own_key_only);
    }
    let mut policies = BTreeMap::new();
    let mut index_keys = BTreeMap::new();
    for (name, p) in &file.index {
        if !crate::domain::routes::is_valid_index(name) {
            c.push(&["index", name], "index names are 1-64 characters of A-Z a-z 0-9 _ . -");
        }
        let policy = resolve_policy(&["index", name], p, &default_policy, &mut c);
        policies.insert(name.clone(), policy);
        if let Some(key) = resolve_index_key(name, p, env, &mut c) {
            index_keys.insert(name.clone(), key);
        }
    }
    let redis = resolve_redis(file, &upstream, &mut c);
    let admin_token = resolve_admin_token(file, &mut c);
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Settings {
        listen: listen.unwrap_or_else(|| ([0, 0, 0, 0], 8080).into()),
        workers,
        api_key,
        raster_upstream,
        vector_upstream,
        cache_dir: file.cache_dir.clone(),
        memory_cache,
        disk_cache,
        max_entry_size,
        disk_write_buffer,
        ttl_cap,
        default_ttl,
        reject_unknown_params: file.reject_unknown_params,
        cors_origins: file.cors_origins.clone(),
        log_json,
        access_log,
        metrics_max_indices: file.metrics_max_indices,
        shutdown_timeout,
        drain_delay,
        upstream,
        default_policy,
        policies,
        unknown_indices: file.unknown_indices,
        trusted_proxies,
        flight_buffer,
        index_keys,
        redis,
        admin_token,
        surrogate_keys: file.surrogate_keys,
        map_page: file.map_page,
        public_base_url,
        compression: file.compression,
        compress_min_size,
        metadata_ttl,
        copyright_ttl,
        upstream_interval,
        upstream_queue_wait,
        rate_limit_exempt,
        rate_limit_clients: file.rate_limit_clients,
        rate_limit_shared: file.rate_limit_shared,
    })
}

fn resolve_redis(file: &FileConfig, upstream: &UpstreamSettings, c: &mut Check) -> Option<RedisSettings> {
    let r = &file.redis;
    let timeout = c.timeout(&["redis", "timeout"], r.timeout);
    let write_timeout = c.timeout(&["redis", "write_timeout"], r.write_timeout);
    let connect_timeout = c.timeout(&["redis", "connect_timeout"], r.connect_timeout);
    c.count(&["redis", "connections"], r.connections, 1, 64);
    c.count(&["redis", "breaker_failures"], r.breaker_failures, 1, 10_000);
    let breaker_cooldown = c.duration(&["redis", "breaker_cooldown"], r.breaker_cooldown, MAX_TIMEOUT);
    let max_value = c.size(&["redis_max_value"], file.redis_max_value, ByteSize::b(0), ByteSize::mib(512));
    if r.prefix.is_empty()
        || r.prefix.len() > 64
        || !r.prefix.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.:".contains(ch))
    {
        c.push(&["redis", "prefix"], "must be 1-64 characters of A-Z a-z 0-9 - _ . :");
    }
    // A lease covers the whole fetch: each attempt's wait for its turn under `upstream_rps` too.
    let turns = if file.upstream_rps.is_some() { file.upstream_queue_wait.min(MAX_TIMEOUT) } else { Duration::ZERO };
    let attempts = upstream.retry_attempts.clamp(1, 10) as u32;
    let derived = (upstream.head_timeout + turns) * attempts + upstream.retry_total + Duration::from_secs(1);
    let lease = match r.lease {
        Some(l) => c.duration(&["redis", "lease"], l, MAX_TIMEOUT),
        None => derived.min(MAX_TIMEOUT),
    }
    .max(Duration::from_millis(100));
    let lease_wait = c.duration(&["redis", "lease_wait"], r.lease_wait.unwrap_or(lease), MAX_TIMEOUT);
    let url = file.redis_url.as_deref().map(str::trim).filter(|u| !u.is_empty())?;
    let ca_pem = match &r.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => Some(pem),
            Ok(_) => {
                c.push(&["redis", "ca_file"], format!("{} holds no PEM certificate", path.display()));
                None
            }
            Err(e) => {
                c.push(&["redis", "ca_file"], format!("cannot read {}: {e}", path.display()));
                None
            }
        },
        None => None,
    };
    if ca_pem.is_some() && !url.starts_with("rediss://") {
        c.push(&["redis", "ca_file"], "only used with a rediss:// redis_url");
    }
    if let Err(e) = redis::Client::open(url) {
        let shown = redact_url(url);
        c.push(
            &["redis_url"],
            format!("`{shown}` is not a Redis URL (redis://[:password@]host:port[/db] or rediss://...): {e}"),
        );
        return None;
    }
    Some(RedisSettings {
        url: url.to_string(),
        max_value,
        timeout,
        write_timeout,
        connect_timeout,
        connections: r.connections.clamp(1, 64),
        breaker_failures: r.breaker_failures.max(1),
        breaker_cooldown,
        lease,
        lease_wait,
        prefix: r.prefix.clone(),
        ca_pem,
    })
}

fn resolve_admin_token(file: &FileConfig, c: &mut Check) -> Option<String> {
    let token = match (&file.admin_token, &file.admin_token_file) {
        (Some(t), _) if !t.trim().is_empty() => t.trim().to_string(),
        (_, Some(path)) => match read_key_file(path) {
            Ok(t) => t,
            Err(e) => {
                c.push(&["admin_token_file"], e);
                return None;
            }
        },
        _ => return None,
    };
    if token.len() < 16 {
        c.push(&["admin_token"], "must be at least 16 characters (use a random token, e.g. `openssl rand -hex 32`)");
        return None;
    }
    Some(token)
}

/// A HERE key as HERE issues them: A-Z a-z 0-9 - _ . ~ (so it is safe in a URL as is).
fn is_key(k: &str) -> bool {
    k.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
}

const KEY_CHARSET: &str = "the key holds characters other than A-Z a-z 0-9 - _ . ~";

/// The trimmed, non-empty contents of a key file, or what is wrong with it.
fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn resolve_key(file: &FileConfig, c: &mut Check) -> Option<String> {
    let (key, from) = match (&file.here_api_key, &file.here_api_key_file) {
        (Some(k), _) if !k.trim().is_empty() => (Some(k.trim().to_string()), "here_api_key"),
        (_, Some(path)) => match read_key_file(path) {
            Ok(k) => (Some(k), "here_api_key_file"),
            Err(e) => {
                c.push(&["here_api_key_file"], format!("HERE_API_KEY_FILE: {e}"));
                return None;
            }
        },
        _ => (None, "here_api_key"),
    };
    if key.is_none() && file.upstream_requires_key {
        c.push(
            &["here_api_key"],
            "no HERE API key given. Set HERE_API_KEY or HERE_API_KEY_FILE \
             (or `upstream_requires_key = false` in the config file for an upstream that needs none)",
        );
    }
    if key.as_deref().is_some_and(|k| !is_key(k)) {
        c.push(&[from], KEY_CHARSET);
    }
    key
}

/// The index's own key: `api_key_env` when that variable is set and not empty, else the
/// contents of `api_key_file`.
fn resolve_index_key(name: &str, p: &PolicyFileConfig, env: EnvLookup<'_>, c: &mut Check) -> Option<String> {
    let mut env_problem = None;
    if let Some(var) = &p.api_key_env {
        if var.is_empty() || !var.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            env_problem = Some(format!("`{var}` is not an environment variable name"));
        } else {
            match env(var).map(|v| v.trim().to_string()) {
                Some(k) if !k.is_empty() => {
                    if !is_key(&k) {
                        c.push(&["index", name, "api_key_env"], format!("{var}: {KEY_CHARSET}"));
                    }
                    return Some(k);
                }
                Some(_) => env_problem = Some(format!("environment variable {var} is empty")),
                None => env_problem = Some(format!("environment variable {var} is not set")),
            }
        }
    }
    if let Some(path) = &p.api_key_file {
        match read_key_file(path) {
            Ok(k) => {
                if !is_key(&k) {
                    c.push(&["index", name, "api_key_file"], format!("{}: {KEY_CHARSET}", path.display()));
                }
                return Some(k);
            }
            Err(e) => c.push(&["index", name, "api_key_file"], e),
        }
    }
    if let Some(e) = env_problem {
        c.push(&["index", name, "api_key_env"], e);
    }
    None
}

fn check_base_url(field: &str, url: &str, c: &mut Check) -> String {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()) && !host.contains(['?', '#', '@']) =>
        {
            trimmed.to_string()
        }
        _ => {
            c.push(&[field], format!("`{url}` is not an http(s):// base URL without query"));
            String::new()
        }
    }
}

/// `scheme://host[:port]` as browsers send it in `Origin`: http or https, a DNS name or IP
/// (IPv6 in brackets), an optional port, nothing after.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) else {
        return false;
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((ip, "")) if ip.parse::<std::net::Ipv6Addr>().is_ok() => (ip, None),
            Some((ip, after)) if ip.parse::<std::net::Ipv6Addr>().is_ok() && after.starts_with(':') => {
                (ip, Some(&after[1..]))
            }
            _ => return false,
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0) && !p.starts_with('0'));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (rest.starts_with('[')
            || host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    host_ok && port_ok
}

/// `10.0.0.0/8`, `::1/128`, or a bare IP (a /32 or /128). Host bits are cleared.
fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>().map(|n| n.trunc()).ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A `Cache-Control` template is sent as a header: one line of visible ASCII, and `{max_age}`
/// is the only placeholder.
fn check_client_cache_control(path: &[&str], cc: &str, c: &mut Check) {
    let sample = cc.replace("{max_age}", "3600");
    if !sample.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        c.push(path, "must be one line of visible ASCII (it is sent as a header)");
    } else if sample.contains(['{', '}']) {
        c.push(path, "`{max_age}` is the only placeholder; other braces are not allowed");
    } else if actix_web::http::header::HeaderValue::from_str(&sample).is_err() {
        c.push(path, "is not a valid header value");
    }
}

fn resolve_policy(section: &[&str], p: &PolicyFileConfig, base: &Policy, c: &mut Check) -> Policy {
    let path = |name: &'static str| -> Vec<&str> { section.iter().copied().chain([name]).collect() };
    let dur =
        |c: &mut Check, name: &'static str, v: Option<Duration>| v.map(|d| c.duration(&path(name), d, MAX_DURATION));
    let ttl = dur(c, "ttl", p.ttl);
    if ttl.is_some_and(|d| d.is_zero()) {
        c.push(&path("ttl"), "must be longer than 0");
    }
    if let Some(cc) = &p.client_cache_control {
        check_client_cache_control(&path("client_cache_control"), cc, c);
    }
    Policy {
        ttl: ttl.or(base.ttl),
        stale_while_revalidate: dur(c, "stale_while_revalidate", p.stale_while_revalidate)
            .unwrap_or(base.stale_while_revalidate),
        stale_if_error: dur(c, "stale_if_error", p.stale_if_error).unwrap_or(base.stale_if_error),
        negative_ttl: dur(c, "negative_ttl", p.negative_ttl).unwrap_or(base.negative_ttl),
        client_cache_control: p.client_cache_control.clone().or_else(|| base.client_cache_control.clone()),
        budget: Budget { hour: p.budget_hour.or(base.budget.hour), day: p.budget_day.or(base.budget.day) },
        rate_limit: resolve_rate(section, p, base, c),
        early_refresh_beta: match p.early_refresh_beta {
            Some(b) if b.is_finite() && (0.0..=MAX_EARLY_REFRESH_BETA).contains(&b) => b,
            Some(b) => {
                c.push(
                    &path("early_refresh_beta"),
                    format!("{b} is out of range: 0 (off) to {MAX_EARLY_REFRESH_BETA}"),
                );
                base.early_refresh_beta
            }
            None => base.early_refresh_beta,
        },
    }
}

/// A client rate limit: the section's own, else the base's; `rate_burst` alone adjusts the
/// base's bucket.
fn resolve_rate(section: &[&str], p: &PolicyFileConfig, base: &Policy, c: &mut Check) -> Option<ClientRate> {
    let path = |name: &'static str| -> Vec<&str> { section.iter().copied().chain([name]).collect() };
    if let Some(b) = p.rate_burst {
        c.count(&path("rate_burst"), b, 1, 1_000_000);
    }
    match p.rate_limit {
        Some(rate) if rate.is_finite() && (0.0001..=1_000_000.0).contains(&rate) => Some(ClientRate {
            interval: Duration::from_secs_f64(1.0 / rate),
            burst: p.rate_burst.unwrap_or_else(|| rate.ceil() as u32).clamp(1, 1_000_000),
        }),
        Some(rate) => {
            c.push(&path("rate_limit"), format!("{rate} is out of range: 0.0001 to 1000000 requests per second"));
            None
        }
        None => base.rate_limit.map(|r| ClientRate { burst: p.rate_burst.unwrap_or(r.burst).clamp(1, 1_000_000), ..r }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> FileConfig {
        FileConfig { here_api_key: Some("k".into()), ..Default::default() }
    }

    fn problems(f: FileConfig) -> Vec<String> {
        Settings::from_file_config(f).map(|_| ()).expect_err("invalid").0
    }

    #[test]
    fn missing_key_is_an_error_unless_not_required() {
        let err = Settings::from_file_config(FileConfig::default()).unwrap_err();
        assert!(err.0.iter().any(|e| e.contains("HERE_API_KEY")), "{err}");
        let ok = Settings::from_file_config(FileConfig { upstream_requires_key: false, ..Default::default() });
        assert!(ok.is_ok());
    }

    #[test]
    fn defaults_are_valid_and_resolved() {
        let s = Settings::from_file_config(with_key()).unwrap();
        assert_eq!(s.memory_cache, 256 << 20);
        assert_eq!(s.disk_cache, 1 << 30);
        assert_eq!(s.flight_buffer, 8 << 20);
        assert_eq!(s.disk_write_buffer, 8 << 20);
        assert_eq!(s.ttl_cap, Duration::from_secs(7 * 86400));
        assert_eq!(s.unknown_indices, UnknownIndices::Allow);
        assert!(s.trusted_proxies.is_empty() && s.index_keys.is_empty());
        assert_eq!(s.policy("any").stale_if_error, Duration::from_secs(86400));
        assert!(format!("{s:?}").contains("<redacted>"));
    }

    #[test]
    fn every_problem_is_reported() {
        let mut f = FileConfig {
            listen: "nowhere".into(),
            memory_cache: ByteSize::tib(2),
            raster_upstream: "ftp://x".into(),
            ..with_key()
        };
        f.upstream.retry_attempts = 0;
        f.index.insert(
            "bad name!".into(),
            PolicyFileConfig { ttl: Some(Duration::from_secs(400 * 86400)), ..Default::default() },
        );
        let errs = problems(f);
        let text = errs.join("\n");
        for needle in [
            "listen:",
            "memory_cache: 2TiB is too large: at most 1TiB",
            "raster_upstream:",
            "upstream.retry_attempts:",
            "index.bad name!:",
            "index.bad name!.ttl: 400d is too long: at most 365d",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert_eq!(errs.len(), 6, "{text}");
    }

    #[test]
    fn every_duration_and_size_is_bounded() {
        let huge = Duration::from_secs(u64::MAX);
        let mut f = FileConfig {
            memory_cache: ByteSize(u64::MAX),
            disk_cache: ByteSize(u64::MAX),
            max_entry_size: ByteSize(u64::MAX),
            disk_write_buffer: ByteSize(u64::MAX),
            flight_buffer: ByteSize(u64::MAX),
            ttl_cap: huge,
            default_ttl: huge,
            shutdown_timeout: huge,
            drain_delay: huge,
            workers: Some(usize::MAX),
            metrics_max_indices: usize::MAX,
            ..with_key()
        };
        let u = &mut f.upstream;
        (u.connect_timeout, u.head_timeout, u.body_timeout) = (huge, huge, huge);
        (u.retry_min_delay, u.retry_max_delay, u.retry_total, u.breaker_cooldown) = (huge, huge, huge, huge);
        (u.retry_attempts, u.max_connections, u.breaker_failures) = (usize::MAX, usize::MAX, u32::MAX);
        let p = PolicyFileConfig {
            ttl: Some(huge),
            stale_while_revalidate: Some(huge),
            stale_if_error: Some(huge),
            negative_ttl: Some(huge),
            ..Default::default()
        };
        f.defaults = p.clone();
        f.index.insert("i".into(), p);
        let errs = problems(f).join("\n");
        let leaves = [
            "memory_cache",
            "disk_cache",
            "max_entry_size",
            "disk_write_buffer",
            "flight_buffer",
            "ttl_cap",
            "default_ttl",
            "shutdown_timeout",
            "drain_delay",
            "workers",
            "metrics_max_indices",
            "upstream.connect_timeout",
            "upstream.head_timeout",
            "upstream.body_timeout",
            "upstream.retry_min_delay",
            "upstream.retry_max_delay",
            "upstream.retry_total",
            "upstream.breaker_cooldown",
            "upstream.retry_attempts",
            "upstream.max_connections",
            "upstream.breaker_failures",
            "defaults.ttl",
            "defaults.stale_while_revalidate",
            "defaults.stale_if_error",
            "defaults.negative_ttl",
            "index.i.ttl",
            "index.i.negative_ttl",
        ];
        for leaf in leaves {
            assert!(
                errs.contains(&format!("\n{leaf}:")) || errs.starts_with(&format!("{leaf}:")),
                "{leaf} not bounded:\n{errs}"
            );
        }
        // At the bounds everything is accepted.
        let mut f = FileConfig {
            memory_cache: MAX_SIZE,
            disk_cache: MAX_SIZE,
            max_entry_size: MAX_BUFFERED,
            disk_write_buffer: MAX_BUFFERED,
            flight_buffer: MAX_BUFFERED,
            ttl_cap: MAX_DURATION,
            default_ttl: MAX_DURATION,
            drain_delay: MAX_TIMEOUT,
            ..with_key()
        };
        f.upstream.head_timeout = MAX_TIMEOUT;
        f.defaults.stale_if_error = Some(MAX_DURATION);
        Settings::from_file_config(f).unwrap();
    }

    #[test]
    fn early_refresh_beta_is_inherited_and_bounded() {
        let s = Settings::from_file_config(with_key()).unwrap();
        assert_eq!(s.policy("any").early_refresh_beta, DEFAULT_EARLY_REFRESH_BETA);
        let mut f = with_key();
        f.defaults.early_refresh_beta = Some(2.5);
        f.index.insert("off".into(), PolicyFileConfig { early_refresh_beta: Some(0.0), ..Default::default() });
        f.index.insert("inherits".into(), PolicyFileConfig::default());
        let s = Settings::from_file_config(f).unwrap();
        assert_eq!(s.policy("off").early_refresh_beta, 0.0);
        assert_eq!(s.policy("inherits").early_refresh_beta, 2.5);
        assert_eq!(s.policy("unconfigured").early_refresh_beta, 2.5);
        for bad in [-0.1, 10.5, f64::NAN, f64::INFINITY] {
            let mut f = with_key();
            f.index.insert("i".into(), PolicyFileConfig { early_refresh_beta: Some(bad), ..Default::default() });
            let errs = problems(f);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].starts_with("index.i.early_refresh_beta: ") && errs[0].contains("0 (off) to 10"),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn header_values_and_networks_are_checked_at_load() {
        let cc = |v: &str| {
            let mut f = with_key();
            f.index.insert("i".into(), PolicyFileConfig { client_cache_control: Some(v.into()), ..Default::default() });
            Settings::from_file_config(f).map(|s| s.policy("i").client_cache_control.clone())
        };
        assert!(cc("public, max-age={max_age}, s-maxage=60").is_ok());
        for bad in ["public\r\nX-Evil: 1", "public, max-age=1\n", "caf\u{e9}", "max-age={maxage}", "a\tb", "\u{7f}"] {
            assert!(cc(bad).is_err(), "{bad:?} accepted");
        }
        let origins = |v: &[&str]| {
            Settings::from_file_config(FileConfig {
                cors_origins: v.iter().map(|s| s.to_string()).collect(),
                ..with_key()
            })
        };
        for good in
            ["*", "https://maps.example.com", "http://localhost:8080", "http://127.0.0.1:3000", "https://[::1]:8443"]
        {
            assert!(origins(&[good]).is_ok(), "{good} refused");
        }
        for bad in [
            "maps.example.com",
            "https://maps.example.com/",
            "https://maps.example.com/path",
            "https://",
            "https://a b.com",
            "https://a.com:0",
            "https://a.com:99999",
            "https://[::1]/x",
            "ftp://a.com",
            "https://a.com\r\n",
        ] {
            assert!(origins(&[bad]).is_err(), "{bad:?} accepted");
        }
        let errs = origins(&["https://ok.example", "bad1", "bad2"]).unwrap_err().0;
        assert_eq!(errs.len(), 2, "each bad origin listed: {errs:?}");

        let nets = |v: &[&str]| {
            Settings::from_file_config(FileConfig {
                trusted_proxies: v.iter().map(|s| s.to_string()).collect(),
                ..with_key()
            })
            .map(|s| s.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            nets(&["10.0.0.0/8", "127.0.0.1", "::1", "192.168.1.77/24"]).unwrap(),
            ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.168.1.0/24"]
        );
        for bad in ["10.0.0.0/33", "localhost", "10.0.0", ""] {
            assert!(nets(&[bad]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn new_settings_are_checked() {
        let s = Settings::from_file_config(FileConfig {
            unknown_indices: UnknownIndices::Reject,
            flight_buffer: ByteSize::kib(64),
            ..with_key()
        })
        .unwrap();
        assert_eq!((s.unknown_indices, s.flight_buffer), (UnknownIndices::Reject, 64 << 10));
        let errs = problems(FileConfig { flight_buffer: ByteSize::kib(63), ..with_key() });
        assert_eq!(errs, ["flight_buffer: must be at least 64KiB"]);
        let errs = problems(FileConfig { disk_write_buffer: ByteSize::mib(2), ..with_key() });
        assert_eq!(errs, ["disk_write_buffer: must be at least max_entry_size + 64KiB (2112KiB)"]);
        let s = Settings::from_file_config(FileConfig {
            max_entry_size: ByteSize::kib(512),
            disk_write_buffer: ByteSize::kib(576),
            ..with_key()
        })
        .unwrap();
        assert_eq!(s.disk_write_buffer, 576 << 10);
        let mut f = with_key();
        f.defaults.api_key_env = Some("X".into());
        assert_eq!(problems(f), ["defaults.api_key_env: only an [index.<name>] section can have its own key"]);
        let mut f = with_key();
        f.index.insert("i".into(), PolicyFileConfig { api_key_env: Some("NOT A NAME".into()), ..Default::default() });
        assert_eq!(problems(f), ["index.i.api_key_env: `NOT A NAME` is not an environment variable name"]);
    }

    #[test]
    fn the_example_config_documents_every_key_with_its_default() {
        let text = include_str!("../../config.example.toml");
        let f: FileConfig = toml::from_str(text).expect("example parses");
        // [defaults] spells out the built-in policy, which FileConfig::default() leaves unset.
        assert_eq!(FileConfig { defaults: PolicyFileConfig::default(), ..f.clone() }, FileConfig::default());
        assert!(f.index.is_empty(), "the example ships no active index policy");
        let s = Settings::from_file_config(FileConfig { here_api_key: Some("k".into()), ..f }).expect("valid");
        assert_eq!(s.default_policy, Settings::from_file_config(with_key()).unwrap().default_policy);
        let mut keys = Vec::new();
        key_paths("", &serde_json::to_value(FileConfig::default()).unwrap(), &mut keys);
        key_paths("", &serde_json::to_value(PolicyFileConfig::default()).unwrap(), &mut keys);
        for key in keys {
            let name = key.rsplit('.').next().unwrap();
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{name} =")) || l.starts_with(&format!("{name}="))
            });
            assert!(documented || key == "index", "{key} is not documented in config.example.toml");
        }
        // The commented-out index example is valid once uncommented.
        let uncommented: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# [index."))
            .map(|l| l.strip_prefix("# ").unwrap_or(l).to_string() + "\n")
            .collect();
        let example: FileConfig = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert!(!example.index.is_empty(), "{uncommented}");
    }

    #[test]
    fn unknown_keys_rejected() {
        let r: Result<FileConfig, _> = toml::from_str("listen = \"0.0.0.0:1\"\nlisten_port = 3\n");
        assert!(r.is_err());
        let r: Result<FileConfig, _> = toml::from_str("[index.a]\napi_key = \"SECRET\"\n");
        assert!(r.is_err(), "keys themselves are not accepted in the file per index");
    }
}

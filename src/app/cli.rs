//! The command line (clap): the subcommands and their flags. `serve` and `check-config` hand
//! their flags to the configuration as [`Flags`]; the configuration itself knows nothing of clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::units;
#[allow(unused_imports)] // for the doc links
use crate::config::Settings;
use crate::config::{
    FlagValue, Flags, DEFAULT_CACHE_DIR, DEFAULT_DISK_CACHE, DEFAULT_LISTEN, DEFAULT_MEMORY_CACHE,
    DEFAULT_RASTER_UPSTREAM, DEFAULT_TRAFFIC_RASTER_UPSTREAM, DEFAULT_TRAFFIC_VECTOR_UPSTREAM, DEFAULT_TTL_CAP,
    DEFAULT_VECTOR_UPSTREAM,
};

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
    Seed(super::seed::SeedArgs),
    /// Print a running proxy's per-index statistics (`GET /admin/stats`) as a table.
    Stats(StatsArgs),
    /// Purge tiles of a running fleet through its admin API (`POST /admin/purge`): an index, a
    /// tile URL, a bbox, a GeoJSON area or a tile list, optionally narrowed to an index or zooms.
    Purge(super::purge::PurgeArgs),
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
    /// The bill of this UTC month (YYYY-MM) instead of the current one
    #[arg(long, value_name = "YYYY-MM")]
    pub month: Option<String>,
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
/// ones leave them alone. The environment itself is read by [`Settings::load`], not by clap; [`ServeArgs::flags`]
/// hands the flags to it.
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
    #[arg(long, value_name = "URL", help = help("Traffic raster tile upstream base URL", "TILE_PROXY_TRAFFIC_RASTER_UPSTREAM", DEFAULT_TRAFFIC_RASTER_UPSTREAM))]
    pub traffic_raster_upstream: Option<String>,
    #[arg(long, value_name = "URL", help = help("Traffic vector tile upstream base URL", "TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM", DEFAULT_TRAFFIC_VECTOR_UPSTREAM))]
    pub traffic_vector_upstream: Option<String>,
    #[arg(long, value_name = "DIR", help = help("Cache folder for the disk tier", "TILE_PROXY_CACHE_DIR", DEFAULT_CACHE_DIR))]
    pub cache_dir: Option<PathBuf>,
    #[arg(long, value_name = "SIZE", help = help("Memory tier size, e.g. 256MiB", "TILE_PROXY_MEMORY_CACHE", units::format_size(DEFAULT_MEMORY_CACHE)))]
    pub memory_cache: Option<String>,
    #[arg(long, value_name = "SIZE", help = help("Disk tier size, e.g. 10GiB; 0 disables the disk tier", "TILE_PROXY_DISK_CACHE", units::format_size(DEFAULT_DISK_CACHE)))]
    pub disk_cache: Option<String>,
    #[arg(long, value_name = "N", help = help("HTTP worker threads", "TILE_PROXY_WORKERS", "number of CPUs"))]
    pub workers: Option<usize>,
    #[arg(long, value_name = "DURATION", help = help("Cap on every TTL, e.g. 7d, 12h or seconds", "CACHE_TTL_CAP or TILE_PROXY_TTL_CAP", units::format_duration(DEFAULT_TTL_CAP)))]
    pub ttl_cap: Option<String>,
    #[arg(long, value_name = "FORMAT", help = help("Log format: json or text", "TILE_PROXY_LOG_FORMAT", "json"))]
    pub log_format: Option<String>,
    /// Redis shared tier, e.g. redis://:password@redis:6379/0 or rediss://...; unset: no Redis [env: REDIS_URL]
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

impl ServeArgs {
    /// The flags given, each with the key it sets, for [`Settings::load`].
    pub fn flags(&self) -> Flags {
        let mut f = Flags { config: self.config.clone(), values: Vec::new() };
        let texts = [
            ("listen", "--listen", &self.listen),
            ("here_api_key", "--here-api-key", &self.here_api_key),
            ("raster_upstream", "--raster-upstream", &self.raster_upstream),
            ("vector_upstream", "--vector-upstream", &self.vector_upstream),
            ("traffic_raster_upstream", "--traffic-raster-upstream", &self.traffic_raster_upstream),
            ("traffic_vector_upstream", "--traffic-vector-upstream", &self.traffic_vector_upstream),
            ("memory_cache", "--memory-cache", &self.memory_cache),
            ("disk_cache", "--disk-cache", &self.disk_cache),
            ("log_format", "--log-format", &self.log_format),
            ("redis_url", "--redis-url", &self.redis_url),
        ];
        for (key, name, value) in texts {
            if let Some(v) = value {
                f = f.with(key, name, FlagValue::Text(v.clone()));
            }
        }
        let paths = [
            ("here_api_key_file", "--here-api-key-file", &self.here_api_key_file),
            ("cache_dir", "--cache-dir", &self.cache_dir),
        ];
        for (key, name, value) in paths {
            if let Some(v) = value {
                f = f.with(key, name, FlagValue::Path(v.clone()));
            }
        }
        if let Some(n) = self.workers {
            f = f.with("workers", "--workers", FlagValue::Number(n as u64));
        }
        // A duration like CACHE_TTL_CAP's: `7d`, `12h`, or bare seconds.
        if let Some(cap) = &self.ttl_cap {
            f = f.with("ttl_cap", "--ttl-cap", FlagValue::Text(cap.clone()));
        }
        f
    }
}

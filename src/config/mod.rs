//! Configuration: one serde struct, layered file -> environment -> command line.
//!
//! The TOML file (`--config`) is read first; every environment variable and CLI flag that is set
//! overrides the file (clap resolves env vs. CLI, the CLI wins). [`Settings::validate`] then checks
//! everything at once and reports every problem, not just the first, before the server starts.
//! Defaults are the named constants below; `--help` shows the same values.

pub mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default raster (v3) upstream base URL.
pub const DEFAULT_RASTER_UPSTREAM: &str = "https://maps.hereapi.com";
/// Default vector (v2) upstream base URL.
pub const DEFAULT_VECTOR_UPSTREAM: &str = "https://vector.hereapi.com";
/// Default cache folder (the disk tier's block files live here).
pub const DEFAULT_CACHE_DIR: &str = "./tile-cache";
/// Default memory tier size.
pub const DEFAULT_MEMORY_CACHE: &str = "256MiB";
/// Default disk tier size.
pub const DEFAULT_DISK_CACHE: &str = "1GiB";
/// Default cap on any TTL, in seconds (`CACHE_TTL_CAP`): 7 days.
pub const DEFAULT_TTL_CAP_SECS: u64 = 7 * 24 * 3600;
/// TTL used when neither the index nor the upstream says anything: 1 day.
pub const DEFAULT_TTL: &str = "1d";
/// Largest tile body that is stored; larger ones are streamed but not cached.
pub const DEFAULT_MAX_ENTRY: &str = "2MiB";

/// `tile-proxy`: a caching proxy for HERE map tiles.
#[derive(Debug, Parser)]
#[command(name = "tile-proxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Load and validate the configuration, print it (key redacted) and exit.
    CheckConfig(ServeArgs),
}

/// Settings that can come from the environment or the command line. Every one overrides the
/// config file; unset ones leave the file's value (or the default) alone.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (per-index policies live there).
    #[arg(long, env = "TILE_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long, env = "TILE_PROXY_LISTEN")]
    pub listen: Option<String>,
    /// HERE API key sent upstream. Prefer HERE_API_KEY_FILE in production.
    #[arg(long, env = "HERE_API_KEY", hide_env_values = true)]
    pub here_api_key: Option<String>,
    /// File holding the HERE API key (whitespace trimmed).
    #[arg(long, env = "HERE_API_KEY_FILE")]
    pub here_api_key_file: Option<PathBuf>,
    /// Raster tile upstream base URL [default: https://maps.hereapi.com].
    #[arg(long, env = "TILE_PROXY_RASTER_UPSTREAM")]
    pub raster_upstream: Option<String>,
    /// Vector tile upstream base URL [default: https://vector.hereapi.com].
    #[arg(long, env = "TILE_PROXY_VECTOR_UPSTREAM")]
    pub vector_upstream: Option<String>,
    /// Cache folder for the disk tier [default: ./tile-cache].
    #[arg(long, env = "TILE_PROXY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Memory tier size, e.g. 256MiB [default: 256MiB].
    #[arg(long, env = "TILE_PROXY_MEMORY_CACHE")]
    pub memory_cache: Option<String>,
    /// Disk tier size, e.g. 10GiB; 0 disables the disk tier [default: 1GiB].
    #[arg(long, env = "TILE_PROXY_DISK_CACHE")]
    pub disk_cache: Option<String>,
    /// HTTP worker threads [default: number of CPUs].
    #[arg(long, env = "TILE_PROXY_WORKERS")]
    pub workers: Option<usize>,
    /// Cap on every TTL, in seconds [default: 604800].
    #[arg(long, env = "CACHE_TTL_CAP")]
    pub ttl_cap: Option<u64>,
    /// Log format: json or text [default: json].
    #[arg(long, env = "TILE_PROXY_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The whole configuration as the file spells it. Unknown keys are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    pub workers: Option<usize>,
    pub here_api_key: Option<String>,
    pub here_api_key_file: Option<PathBuf>,
    /// When false the upstream is called without a key (test upstreams, internal mirrors).
    pub upstream_requires_key: bool,
    pub raster_upstream: String,
    pub vector_upstream: String,
    pub cache_dir: PathBuf,
    pub memory_cache: String,
    pub disk_cache: String,
    pub max_entry_size: String,
    /// Seconds (`CACHE_TTL_CAP`).
    pub ttl_cap: u64,
    pub default_ttl: String,
    /// Reject query parameters that are not in HERE's documented list (default true).
    pub reject_unknown_params: bool,
    /// Allowed CORS origins; `["*"]` allows any.
    pub cors_origins: Vec<String>,
    pub log_format: String,
    /// Distinct index labels kept in metrics before the rest are folded into `_other`.
    pub metrics_max_indices: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout: String,
    /// After SIGTERM, keep serving with `/ready` failing this long before draining, so load
    /// balancers (Kubernetes endpoints, NGINX health checks) stop sending traffic first.
    pub drain_delay: String,
    pub upstream: UpstreamFileConfig,
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
            memory_cache: DEFAULT_MEMORY_CACHE.into(),
            disk_cache: DEFAULT_DISK_CACHE.into(),
            max_entry_size: DEFAULT_MAX_ENTRY.into(),
            ttl_cap: DEFAULT_TTL_CAP_SECS,
            default_ttl: DEFAULT_TTL.into(),
            reject_unknown_params: true,
            cors_origins: vec!["*".into()],
            log_format: "json".into(),
            metrics_max_indices: 500,
            shutdown_timeout: "10s".into(),
            drain_delay: "0s".into(),
            upstream: UpstreamFileConfig::default(),
            defaults: PolicyFileConfig::default(),
            index: BTreeMap::new(),
        }
    }
}

/// `[upstream]`: timeouts and retries for calls to HERE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFileConfig {
    pub connect_timeout: String,
    /// Until the response head has arrived.
    pub head_timeout: String,
    /// For the whole body after the head.
    pub body_timeout: String,
    /// Attempts in all, first one included.
    pub retry_attempts: usize,
    pub retry_min_delay: String,
    pub retry_max_delay: String,
    /// Bound on the time spent waiting between attempts.
    pub retry_total: String,
    /// Connections per worker to each upstream.
    pub max_connections: usize,
    /// Failed fetches in a row that open the circuit breaker; 0 disables it.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through.
    pub breaker_cooldown: String,
}

impl Default for UpstreamFileConfig {
    fn default() -> Self {
        Self {
            connect_timeout: "2s".into(),
            head_timeout: "10s".into(),
            body_timeout: "30s".into(),
            retry_attempts: 3,
            retry_min_delay: "100ms".into(),
            retry_max_delay: "2s".into(),
            retry_total: "5s".into(),
            max_connections: 100,
            breaker_failures: 5,
            breaker_cooldown: "30s".into(),
        }
    }
}

/// A cache policy as written in `[defaults]` or `[index.<name>]`. Unset fields fall back to
/// `[defaults]`, then to the built-in default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFileConfig {
    /// Fixed TTL for this index; overrides the upstream's `max-age`. Still capped by `ttl_cap`.
    pub ttl: Option<String>,
    /// After expiry, serve the old copy while one background refresh runs.
    pub stale_while_revalidate: Option<String>,
    /// After expiry, serve the old copy when the upstream fails.
    pub stale_if_error: Option<String>,
    /// How long upstream 404/204 answers are remembered.
    pub negative_ttl: Option<String>,
    /// `Cache-Control` sent to clients instead of `public, max-age=<remaining>`; `{max_age}` is
    /// replaced by the remaining freshness, e.g. `"public, max-age={max_age}, s-maxage=60"`.
    pub client_cache_control: Option<String>,
}

/// Cache policy of one index, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub negative_ttl: Duration,
    pub client_cache_control: Option<String>,
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

/// The validated configuration the server runs with.
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
    pub ttl_cap: Duration,
    pub default_ttl: Duration,
    pub reject_unknown_params: bool,
    pub cors_origins: Vec<String>,
    pub log_json: bool,
    pub metrics_max_indices: usize,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    pub upstream: UpstreamSettings,
    pub default_policy: Policy,
    pub policies: BTreeMap<String, Policy>,
}

impl std::fmt::Debug for Settings {
    // Hand-written so the key can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
            .field("ttl_cap", &self.ttl_cap)
            .field("default_ttl", &self.default_ttl)
            .field("reject_unknown_params", &self.reject_unknown_params)
            .field("cors_origins", &self.cors_origins)
            .field("upstream", &self.upstream)
            .field("default_policy", &self.default_policy)
            .field("policies", &self.policies)
            .finish()
    }
}

impl Settings {
    /// The policy for `index`: its own section, else `[defaults]`.
    pub fn policy(&self, index: &str) -> &Policy {
        self.policies.get(index).unwrap_or(&self.default_policy)
    }

    /// Loads file -> env -> CLI and validates. The error lists every problem found.
    pub fn load(args: &ServeArgs) -> Result<Settings, ConfigErrors> {
        let mut file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        apply_overrides(&mut file, args);
        Self::from_file_config(file)
    }

    /// Validates a complete [`FileConfig`] into [`Settings`], collecting every problem.
    pub fn from_file_config(file: FileConfig) -> Result<Settings, ConfigErrors> {
        let mut errs = Vec::new();
        let listen = file
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| errs.push(format!("listen: `{}` is not an address like 0.0.0.0:8080", file.listen)))
            .ok();
        let workers = match file.workers {
            Some(0) => {
                errs.push("workers: must be at least 1".into());
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        };
        let api_key = resolve_key(&file, &mut errs);
        let raster_upstream = check_base_url("raster_upstream", &file.raster_upstream, &mut errs);
        let vector_upstream = check_base_url("vector_upstream", &file.vector_upstream, &mut errs);
        let memory_cache = size_field("memory_cache", &file.memory_cache, &mut errs);
        let disk_cache = size_field("disk_cache", &file.disk_cache, &mut errs);
        let max_entry_size = size_field("max_entry_size", &file.max_entry_size, &mut errs);
        if memory_cache == 0 && parse_size(&file.memory_cache).is_some() {
            errs.push("memory_cache: must be larger than 0".into());
        }
        if max_entry_size == 0 || max_entry_size > 64 << 20 {
            errs.push("max_entry_size: must be between 1 byte and 64MiB".into());
        }
        if disk_cache > 0 && disk_cache < 4 * crate::cache::block_size_for(max_entry_size) {
            errs.push(format!(
                "disk_cache: must be 0 (off) or at least 4 blocks of {} bytes (4 x block size, derived from max_entry_size)",
                crate::cache::block_size_for(max_entry_size)
            ));
        }
        if file.ttl_cap == 0 {
            errs.push("ttl_cap (CACHE_TTL_CAP): must be at least 1 second".into());
        }
        let default_ttl = duration_field("default_ttl", &file.default_ttl, &mut errs);
        let log_json = match file.log_format.as_str() {
            "json" => true,
            "text" => false,
            other => {
                errs.push(format!("log_format: `{other}` is not json or text"));
                true
            }
        };
        for origin in &file.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                errs.push(format!("cors_origins: `{origin}` must be `*` or an http(s):// origin"));
            }
        }
        let shutdown_timeout = duration_field("shutdown_timeout", &file.shutdown_timeout, &mut errs);
        let drain_delay = duration_field("drain_delay", &file.drain_delay, &mut errs);
        let u = &file.upstream;
        let upstream = UpstreamSettings {
            connect_timeout: duration_field("upstream.connect_timeout", &u.connect_timeout, &mut errs),
            head_timeout: duration_field("upstream.head_timeout", &u.head_timeout, &mut errs),
            body_timeout: duration_field("upstream.body_timeout", &u.body_timeout, &mut errs),
            retry_attempts: u.retry_attempts,
            retry_min_delay: duration_field("upstream.retry_min_delay", &u.retry_min_delay, &mut errs),
            retry_max_delay: duration_field("upstream.retry_max_delay", &u.retry_max_delay, &mut errs),
            retry_total: duration_field("upstream.retry_total", &u.retry_total, &mut errs),
            max_connections: u.max_connections,
            breaker_failures: u.breaker_failures,
            breaker_cooldown: duration_field("upstream.breaker_cooldown", &u.breaker_cooldown, &mut errs),
        };
        if upstream.retry_attempts == 0 || upstream.retry_attempts > 10 {
            errs.push("upstream.retry_attempts: must be between 1 and 10".into());
        }
        if upstream.max_connections == 0 {
            errs.push("upstream.max_connections: must be at least 1".into());
        }
        let builtin = Policy {
            ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(60),
            client_cache_control: None,
        };
        let default_policy = resolve_policy("defaults", &file.defaults, &builtin, &mut errs);
        let mut policies = BTreeMap::new();
        for (name, p) in &file.index {
            if !crate::routes::is_valid_index(name) {
                errs.push(format!("index.{name}: index names are 1-64 characters of A-Z a-z 0-9 _ . -"));
            }
            let policy = resolve_policy(&format!("index.{name}"), p, &default_policy, &mut errs);
            policies.insert(name.clone(), policy);
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Settings {
            listen: listen.unwrap_or_else(|| ([0, 0, 0, 0], 8080).into()),
            workers,
            api_key,
            raster_upstream,
            vector_upstream,
            cache_dir: file.cache_dir,
            memory_cache,
            disk_cache,
            max_entry_size,
            ttl_cap: Duration::from_secs(file.ttl_cap),
            default_ttl,
            reject_unknown_params: file.reject_unknown_params,
            cors_origins: file.cors_origins,
            log_json,
            metrics_max_indices: file.metrics_max_indices,
            shutdown_timeout,
            drain_delay,
            upstream,
            default_policy,
            policies,
        })
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

fn read_file(path: &Path) -> Result<FileConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("config file {}: {e}", path.display())]))?;
    toml::from_str(&text).map_err(|e| ConfigErrors(vec![format!("config file {}: {e}", path.display())]))
}

fn apply_overrides(file: &mut FileConfig, a: &ServeArgs) {
    if let Some(v) = &a.listen {
        file.listen = v.clone();
    }
    if let Some(v) = &a.here_api_key {
        file.here_api_key = Some(v.clone());
    }
    if let Some(v) = &a.here_api_key_file {
        file.here_api_key_file = Some(v.clone());
    }
    if let Some(v) = &a.raster_upstream {
        file.raster_upstream = v.clone();
    }
    if let Some(v) = &a.vector_upstream {
        file.vector_upstream = v.clone();
    }
    if let Some(v) = &a.cache_dir {
        file.cache_dir = v.clone();
    }
    if let Some(v) = &a.memory_cache {
        file.memory_cache = v.clone();
    }
    if let Some(v) = &a.disk_cache {
        file.disk_cache = v.clone();
    }
    if let Some(v) = a.workers {
        file.workers = Some(v);
    }
    if let Some(v) = a.ttl_cap {
        file.ttl_cap = v;
    }
    if let Some(v) = &a.log_format {
        file.log_format = v.clone();
    }
}

fn resolve_key(file: &FileConfig, errs: &mut Vec<String>) -> Option<String> {
    let key = match (&file.here_api_key, &file.here_api_key_file) {
        (Some(k), _) if !k.trim().is_empty() => Some(k.trim().to_string()),
        (_, Some(path)) => match std::fs::read_to_string(path) {
            Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
            Ok(_) => {
                errs.push(format!("HERE_API_KEY_FILE: {} is empty", path.display()));
                return None;
            }
            Err(e) => {
                errs.push(format!("HERE_API_KEY_FILE: cannot read {}: {e}", path.display()));
                return None;
            }
        },
        _ => None,
    };
    if key.is_none() && file.upstream_requires_key {
        errs.push(
            "HERE_API_KEY: no HERE API key given. Set HERE_API_KEY or HERE_API_KEY_FILE \
             (or `upstream_requires_key = false` in the config file for an upstream that needs none)"
                .into(),
        );
    }
    if let Some(k) = &key {
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)) {
            errs.push("HERE_API_KEY: the key holds characters other than A-Z a-z 0-9 - _ . ~".into());
        }
    }
    key
}

fn check_base_url(field: &str, url: &str, errs: &mut Vec<String>) -> String {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#', '@', ' ']) => trimmed.to_string(),
        _ => {
            errs.push(format!("{field}: `{url}` is not an http(s):// base URL without query"));
            String::new()
        }
    }
}

fn size_field(field: &str, v: &str, errs: &mut Vec<String>) -> usize {
    parse_size(v).unwrap_or_else(|| {
        errs.push(format!("{field}: `{v}` is not a size like 512KiB, 256MiB or 10GiB"));
        0
    })
}

fn duration_field(field: &str, v: &str, errs: &mut Vec<String>) -> Duration {
    parse_duration(v).unwrap_or_else(|| {
        errs.push(format!("{field}: `{v}` is not a duration like 500ms, 30s, 10m, 1h or 7d"));
        Duration::ZERO
    })
}

fn resolve_policy(section: &str, p: &PolicyFileConfig, base: &Policy, errs: &mut Vec<String>) -> Policy {
    let dur = |name: &str, v: &Option<String>, fallback: Duration, errs: &mut Vec<String>| match v {
        Some(s) => duration_field(&format!("{section}.{name}"), s, errs),
        None => fallback,
    };
    let ttl = match &p.ttl {
        Some(s) => {
            let d = duration_field(&format!("{section}.ttl"), s, errs);
            if d.is_zero() {
                errs.push(format!("{section}.ttl: must be longer than 0"));
            }
            Some(d)
        }
        None => base.ttl,
    };
    if let Some(cc) = &p.client_cache_control {
        if cc.contains(['\r', '\n']) || !cc.is_ascii() {
            errs.push(format!("{section}.client_cache_control: must be one line of ASCII"));
        }
    }
    Policy {
        ttl,
        stale_while_revalidate: dur(
            "stale_while_revalidate",
            &p.stale_while_revalidate,
            base.stale_while_revalidate,
            errs,
        ),
        stale_if_error: dur("stale_if_error", &p.stale_if_error, base.stale_if_error, errs),
        negative_ttl: dur("negative_ttl", &p.negative_ttl, base.negative_ttl, errs),
        client_cache_control: p.client_cache_control.clone().or_else(|| base.client_cache_control.clone()),
    }
}

/// Parses `256MiB`, `10GiB`, `512KiB`, `1GB`, `4096` (bytes). Case-insensitive units.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    usize::try_from(n.checked_mul(mult)?).ok()
}

/// Parses `500ms`, `30s`, `10m`, `1h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86400)?),
        _ => return None,
    };
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("256MiB", Some(256 << 20)),
            ("10GiB", Some(10usize << 30)),
            ("512kib", Some(512 << 10)),
            ("4096", Some(4096)),
            ("1MB", Some(1_000_000)),
            ("12 MiB", Some(12 << 20)),
            ("MiB", None),
            ("-1", None),
            ("1.5GiB", None),
            ("3 parsecs", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), want, "{input}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(Duration::from_millis(500))),
            ("30s", Some(Duration::from_secs(30))),
            ("45", Some(Duration::from_secs(45))),
            ("10m", Some(Duration::from_secs(600))),
            ("2h", Some(Duration::from_secs(7200))),
            ("7d", Some(Duration::from_secs(604800))),
            ("1w", None),
            ("", None),
            ("s", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), want, "{input}");
        }
    }

    #[test]
    fn missing_key_is_an_error_unless_not_required() {
        let err = Settings::from_file_config(FileConfig::default()).unwrap_err();
        assert!(err.0.iter().any(|e| e.contains("HERE_API_KEY")), "{err}");
        let ok = Settings::from_file_config(FileConfig { upstream_requires_key: false, ..Default::default() });
        assert!(ok.is_ok());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut f = FileConfig {
            here_api_key: Some("k".into()),
            listen: "nowhere".into(),
            memory_cache: "lots".into(),
            raster_upstream: "ftp://x".into(),
            ..Default::default()
        };
        f.upstream.retry_attempts = 0;
        f.index.insert("bad name!".into(), PolicyFileConfig { ttl: Some("forever".into()), ..Default::default() });
        let err = Settings::from_file_config(f).unwrap_err();
        let text = err.to_string();
        for needle in ["listen", "memory_cache", "raster_upstream", "retry_attempts", "index.bad name!", "ttl"] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(err.0.len() >= 6, "{text}");
    }

    #[test]
    fn file_then_overrides() {
        let f: FileConfig = toml::from_str(
            r#"
            here_api_key = "from-file"
            listen = "127.0.0.1:9000"
            memory_cache = "64MiB"
            [defaults]
            ttl = "1h"
            [index.123]
            ttl = "10m"
            stale_while_revalidate = "30s"
            "#,
        )
        .unwrap();
        let mut f2 = f.clone();
        apply_overrides(&mut f2, &ServeArgs { listen: Some("127.0.0.1:9100".into()), ..Default::default() });
        let s = Settings::from_file_config(f2).unwrap();
        assert_eq!(s.listen.port(), 9100);
        assert_eq!(s.memory_cache, 64 << 20);
        assert_eq!(s.policy("123").ttl, Some(Duration::from_secs(600)));
        assert_eq!(s.policy("123").stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(s.policy("other").ttl, Some(Duration::from_secs(3600)));
        assert!(format!("{s:?}").contains("<redacted>"));
        assert!(!format!("{s:?}").contains("from-file"));
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let f: FileConfig = toml::from_str(include_str!("../../config.example.toml")).expect("example parses");
        let d = FileConfig::default();
        assert_eq!(
            (f.listen.as_str(), f.memory_cache.as_str(), f.ttl_cap),
            (d.listen.as_str(), d.memory_cache.as_str(), d.ttl_cap)
        );
        assert_eq!(f.upstream.retry_attempts, d.upstream.retry_attempts);
        let s = Settings::from_file_config(FileConfig { here_api_key: Some("k".into()), ..f }).expect("valid");
        assert_eq!(s.policy("123").ttl, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(s.policy("other").stale_if_error, Duration::from_secs(86400));
    }

    #[test]
    fn unknown_keys_rejected() {
        let r: Result<FileConfig, _> = toml::from_str("listen = \"0.0.0.0:1\"\nlisten_port = 3\n");
        assert!(r.is_err());
    }
}

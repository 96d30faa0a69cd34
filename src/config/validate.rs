//! Validation: a [`FileConfig`] checked whole into [`Settings`], every problem collected
//! ([`ConfigErrors`]), each naming the setting it is about.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::defaults::*;
use super::file::*;
use super::settings::*;
use super::units;
use bytesize::ByteSize;

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
pub(super) struct Problem {
    pub(super) path: Vec<String>,
    pub(super) message: String,
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

pub(super) fn validate(file: &FileConfig, env: EnvLookup<'_>) -> Result<Settings, Vec<Problem>> {
    let mut c = Check::default();
    let listen = file
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| c.push(&["listen"], format!("`{}` is not an address like 0.0.0.0:8080", file.listen)))
        .ok();
    let admin_listen = match &file.admin_listen {
        Some(a) => a
            .parse::<SocketAddr>()
            .map_err(|_| c.push(&["admin_listen"], format!("`{a}` is not an address like 127.0.0.1:9090")))
            .ok(),
        None => None,
    };
    if let (Some(a), Some(l)) = (admin_listen, listen) {
        if a == l && a.port() != 0 {
            c.push(&["admin_listen"], format!("must differ from listen ({l})"));
        }
    }
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
    let traffic_raster_upstream = check_base_url("traffic_raster_upstream", &file.traffic_raster_upstream, &mut c);
    let traffic_vector_upstream = check_base_url("traffic_vector_upstream", &file.traffic_vector_upstream, &mut c);
    let memory_cache = c.size(&["memory_cache"], file.memory_cache, ByteSize::b(1), MAX_SIZE);
    let max_entry_size = c.size(&["max_entry_size"], file.max_entry_size, ByteSize::b(1), MAX_BUFFERED);
    let disk_cache = c.size(&["disk_cache"], file.disk_cache, ByteSize::b(0), MAX_SIZE);
    let block = block_size_for(max_entry_size);
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
    let access_log = file.access_log.then_some(AccessLogSettings {
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
    c.count(&["cache_map_tiles"], file.cache_map_tiles, 0, MAX_CACHE_MAP_TILES);
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
        http2: u.http2,
        ca_pem: u.ca_file.as_deref().and_then(|path| read_ca_file(&["upstream", "ca_file"], path, &mut c)),
    };
    c.count(&["upstream", "retry_attempts"], u.retry_attempts, 1, 10);
    c.count(&["upstream", "max_connections"], u.max_connections, 1, 10_000);
    c.count(&["upstream", "breaker_failures"], u.breaker_failures, 0, 10_000);
    let default_policy = resolve_policy(&["defaults"], &file.defaults, &builtin_policy(), &mut c);
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
        if !crate::base::names::is_valid_index(name) {
            c.push(&["index", name], "index names are 1-64 characters of A-Z a-z 0-9 _ . -");
        }
        let policy = resolve_policy(&["index", name], p, &default_policy, &mut c);
        policies.insert(name.clone(), policy);
        if let Some(key) = resolve_index_key(name, p, env, &mut c) {
            index_keys.insert(name.clone(), key);
        }
    }
    let redis = resolve_redis(file, &upstream, &mut c);
    let billing = resolve_billing(&file.billing, &mut c);
    let admin_token = resolve_admin_token(file, &mut c);
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Settings {
        listen: listen.unwrap_or_else(|| ([0, 0, 0, 0], 8080).into()),
        admin_listen,
        workers,
        api_key,
        raster_upstream,
        vector_upstream,
        traffic_raster_upstream,
        traffic_vector_upstream,
        cache_dir: file.cache_dir.clone(),
        memory_cache,
        memory_eviction: file.memory_eviction,
        disk_cache,
        disk_required: file.disk_required,
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
        traffic_default_policy: default_policy.traffic_view(),
        traffic_policies: policies.iter().map(|(k, p)| (k.clone(), p.traffic_view())).collect(),
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
        cache_map_tiles: file.cache_map_tiles.min(MAX_CACHE_MAP_TILES) as usize,
        billing,
    })
}

/// `[billing]`: each price finite and within 0 to [`MAX_PRICE_PER_1000`].
fn resolve_billing(b: &BillingFileConfig, c: &mut Check) -> Billing {
    let apis = [
        ("raster", &b.raster),
        ("vector", &b.vector),
        ("traffic_raster", &b.traffic_raster),
        ("traffic_vector", &b.traffic_vector),
    ];
    let prices = apis.map(|(name, p)| {
        let ok = p.price_per_1000.is_finite() && (0.0..=MAX_PRICE_PER_1000).contains(&p.price_per_1000);
        if !ok {
            c.push(
                &["billing", name, "price_per_1000"],
                format!("{} is out of range: 0 to {MAX_PRICE_PER_1000}", p.price_per_1000),
            );
        }
        Price { per_1000: if ok { p.price_per_1000 } else { 0.0 }, free_per_month: p.free_per_month }
    });
    Billing { bill_not_modified: b.bill_not_modified, prices }
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
    // The lease is renewed every third of itself while its flight runs, so it need not cover a
    // whole fetch: short, a dead holder's lease (a SIGKILLed pod's) frees its tile in seconds.
    // A waiter waits as long as a live holder's fetch may last (`derived`).
    let lease = match r.lease {
        Some(l) => c.duration(&["redis", "lease"], l, MAX_TIMEOUT),
        None => DEFAULT_LEASE.min(derived),
    }
    .max(Duration::from_millis(100));
    let lease_wait =
        c.duration(&["redis", "lease_wait"], r.lease_wait.unwrap_or(derived.min(MAX_TIMEOUT)), MAX_TIMEOUT);
    let url = file.redis_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
    let nodes: Vec<&str> = file.redis_nodes.iter().map(|n| n.trim()).filter(|n| !n.is_empty()).collect();
    let (url, mode) = match file.redis_mode {
        RedisMode::Single => {
            if !nodes.is_empty() {
                c.push(&["redis_nodes"], "only used with redis_mode = \"cluster\" or \"sentinel\"");
            }
            (url?, RedisTopology::Single)
        }
        RedisMode::Cluster => {
            let seeds: Vec<&str> = if nodes.is_empty() { url.into_iter().collect() } else { nodes };
            if seeds.is_empty() {
                c.push(&["redis_nodes"], "redis_mode = \"cluster\" needs seed nodes (redis_nodes, or redis_url)");
                return None;
            }
            for seed in &seeds {
                if let Err(e) = redis::Client::open(*seed) {
                    let shown = redact_url(seed);
                    c.push(
                        &["redis_nodes"],
                        format!("`{shown}` is not a Redis URL (redis://[:password@]host:port): {e}"),
                    );
                }
            }
            (seeds[0], RedisTopology::Cluster { nodes: seeds.iter().map(|s| s.to_string()).collect() })
        }
        RedisMode::Sentinel => {
            let master = file.redis_master_name.as_deref().map(str::trim).unwrap_or_default();
            if master.is_empty() {
                c.push(&["redis_master_name"], "redis_mode = \"sentinel\" needs the name the Sentinels monitor");
            }
            if nodes.is_empty() {
                c.push(&["redis_nodes"], "redis_mode = \"sentinel\" needs the Sentinels (redis://host:26379, ...)");
            }
            for node in &nodes {
                if let Err(e) = redis::Client::open(*node) {
                    let shown = redact_url(node);
                    c.push(
                        &["redis_nodes"],
                        format!("`{shown}` is not a Redis URL (redis://[:password@]host:port): {e}"),
                    );
                }
            }
            if master.is_empty() || nodes.is_empty() {
                return None;
            }
            // The primary's password and database, if any, come from redis_url.
            let mode = RedisTopology::Sentinel {
                sentinels: nodes.iter().map(|s| s.to_string()).collect(),
                master: master.to_string(),
            };
            (url.unwrap_or("redis://sentinel-primary"), mode)
        }
    };
    let ca_pem = r.ca_file.as_deref().and_then(|path| read_ca_file(&["redis", "ca_file"], path, c));
    if ca_pem.is_some() && !url.starts_with("rediss://") && !matches!(mode, RedisTopology::Sentinel { .. }) {
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
        fleet_clock: r.fleet_clock,
        prefix: r.prefix.clone(),
        ca_pem,
        mode,
    })
}

/// The contents of a CA file (`redis.ca_file`, `upstream.ca_file`) when it can be read and every
/// certificate in it can be a trust anchor ([`crate::base::tls::ca_certificates`]).
fn read_ca_file(key: &[&str], path: &std::path::Path, c: &mut Check) -> Option<Vec<u8>> {
    let checked = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(|pem| {
        match crate::base::tls::ca_certificates(&pem) {
            Ok(_) => Ok(pem),
            Err(e) => Err(format!("{} {e}", path.display())),
        }
    });
    checked.map_err(|e| c.push(key, e)).ok()
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
             (or `upstream_requires_key = false` in the config file for an upstream that needs none). \
             To try the proxy without a key, `scripts/demo.sh` runs it in front of a local HERE-like \
             test upstream",
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

/// The policy of an index when neither `[defaults]` nor its own section sets anything.
pub fn builtin_policy() -> Policy {
    Policy {
        ttl: None,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::from_secs(24 * 3600),
        negative_ttl: Duration::from_secs(60),
        client_cache_control: None,
        budget: Budget::default(),
        rate_limit: Some(ClientRate {
            interval: Duration::from_secs_f64(1.0 / DEFAULT_RATE_LIMIT),
            burst: DEFAULT_RATE_BURST,
            shipped: true,
        }),
        early_refresh_beta: DEFAULT_EARLY_REFRESH_BETA,
        traffic: TrafficPolicy {
            ttl: DEFAULT_TRAFFIC_TTL,
            stale_if_error: DEFAULT_TRAFFIC_STALE_IF_ERROR,
            budget: Budget::default(),
        },
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
        traffic: TrafficPolicy {
            ttl: match dur(c, "traffic_ttl", p.traffic_ttl) {
                Some(d) if d.is_zero() => {
                    c.push(&path("traffic_ttl"), "must be longer than 0");
                    base.traffic.ttl
                }
                Some(d) => d,
                None => base.traffic.ttl,
            },
            stale_if_error: dur(c, "traffic_stale_if_error", p.traffic_stale_if_error)
                .unwrap_or(base.traffic.stale_if_error),
            budget: Budget {
                hour: p.traffic_budget_hour.or(base.traffic.budget.hour),
                day: p.traffic_budget_day.or(base.traffic.budget.day),
            },
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
        // Off: no limit for this section (and, in [defaults], for the indices inheriting it).
        Some(0.0) => None,
        Some(rate) if rate.is_finite() && (0.0001..=1_000_000.0).contains(&rate) => Some(ClientRate {
            interval: Duration::from_secs_f64(1.0 / rate),
            burst: p.rate_burst.unwrap_or_else(|| rate.ceil() as u32).clamp(1, 1_000_000),
            shipped: false,
        }),
        Some(rate) => {
            c.push(
                &path("rate_limit"),
                format!("{rate} is out of range: 0 (off) or 0.0001 to 1000000 requests per second"),
            );
            None
        }
        None => base.rate_limit.map(|r| ClientRate {
            burst: p.rate_burst.unwrap_or(r.burst).clamp(1, 1_000_000),
            // A burst of the operator's own makes it their limit.
            shipped: r.shipped && p.rate_burst.is_none(),
            ..r
        }),
    }
}

impl Settings {
    /// Validates a complete [`FileConfig`] into [`Settings`], collecting every problem.
    /// `api_key_env` variables are read from the process environment.
    pub fn from_file_config(file: FileConfig) -> Result<Settings, ConfigErrors> {
        validate(&file, &|name| std::env::var(name).ok())
            .map_err(|problems| ConfigErrors(problems.iter().map(Problem::to_string).collect()))
    }
}

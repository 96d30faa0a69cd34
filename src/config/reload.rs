//! What a reload of the configuration may change ([`keep_restart_only`]), the files a reload
//! watches ([`read_files`]) and the loaded configuration's identity ([`config_hash`]). Pure: the
//! app's reloader (`app::reload`) loads, asks these, and swaps.
//!
//! Restart-only settings are those something was built from once at start: the sockets and
//! the actix workers (listen addresses, workers, CORS, shutdown timeout), the cache tiers and
//! their folder, Redis's client, the per-worker upstream clients (connect and head timeouts,
//! connection limit, HTTP/2, CA file), the breakers, the rate cap and the client limiter's table, the
//! compressor, the cache map, the logs. Everything else (the HERE keys, upstream URLs, the
//! body timeout, retries, index policies with their TTLs, budgets and rate limits, the admin token,
//! trusted proxies, prices...) is read per request from the current snapshot.

use std::path::PathBuf;

use super::file::FileConfig;
use super::layers::Flags;
use super::settings::Settings;

/// Copies every restart-only setting of `old` into `new` and names those that differed (in
/// the file's spelling): they stay as they were until a restart.
pub fn keep_restart_only(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($name:literal => $($f:ident).+),* $(,)?) => {$(
            if old.$($f).+ != new.$($f).+ {
                changed.push($name);
                new.$($f).+ = old.$($f).+.clone();
            }
        )*};
    }
    keep!(
        "listen" => listen,
        "admin_listen" => admin_listen,
        "workers" => workers,
        "cache_dir" => cache_dir,
        "memory_cache" => memory_cache,
        "memory_eviction" => memory_eviction,
        "disk_cache" => disk_cache,
        "disk_required" => disk_required,
        "max_entry_size" => max_entry_size,
        "disk_write_buffer" => disk_write_buffer,
        "flight_buffer" => flight_buffer,
        "log_format" => log_json,
        "metrics_max_indices" => metrics_max_indices,
        "cors_origins" => cors_origins,
        "shutdown_timeout" => shutdown_timeout,
        "upstream.connect_timeout" => upstream.connect_timeout,
        "upstream.head_timeout" => upstream.head_timeout,
        "upstream.max_connections" => upstream.max_connections,
        "upstream.http2" => upstream.http2,
        "upstream.ca_file" => upstream.ca_pem,
        "upstream.breaker_failures" => upstream.breaker_failures,
        "upstream.breaker_cooldown" => upstream.breaker_cooldown,
        "upstream_rps" => upstream_interval,
        "upstream_queue_wait" => upstream_queue_wait,
        "rate_limit_exempt" => rate_limit_exempt,
        "rate_limit_clients" => rate_limit_clients,
        "rate_limit_shared" => rate_limit_shared,
        "compression" => compression,
        "compress_min_size" => compress_min_size,
        "cache_map_tiles" => cache_map_tiles,
        "billing.bill_not_modified" => billing.bill_not_modified,
    );
    // No `PartialEq` (their `Debug` shows everything but the Redis password).
    if format!("{:?}", old.access_log) != format!("{:?}", new.access_log) {
        changed.push("access_log");
        new.access_log = old.access_log;
    }
    let redis_of = |s: &Settings| s.redis.as_ref().map(|r| (format!("{r:?}"), r.url.clone()));
    if redis_of(old) != redis_of(new) {
        changed.push("redis");
        new.redis = old.redis.clone();
    }
    changed
}

/// The files the configuration read (or would read): the TOML file, the HERE key files, the
/// admin token file, the CA files. A change of any of them is a reason to reload.
pub fn read_files(flags: &Flags, file: &FileConfig) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = flags.config.iter().cloned().collect();
    files.extend(file.here_api_key_file.iter().cloned());
    files.extend(file.admin_token_file.iter().cloned());
    files.extend(file.upstream.ca_file.iter().cloned());
    files.extend(file.redis.ca_file.iter().cloned());
    files.extend(file.index.values().filter_map(|p| p.api_key_file.clone()));
    files.sort();
    files.dedup();
    files
}

/// A short, stable name of this configuration (hex): equal for equal settings, different when
/// anything differs, the keys and the admin token included (they go into SHA-256 with the rest;
/// the name cannot be turned back into them).
pub fn config_hash(s: &Settings) -> String {
    let mut text = format!("{s:?}");
    for secret in s.api_key.iter().chain(s.index_keys.values()).chain(s.admin_token.iter()) {
        text.push('\0');
        text.push_str(secret);
    }
    if let Some(r) = &s.redis {
        text.push('\0');
        text.push_str(&r.url);
    }
    crate::base::hashing::stable_hash(text.as_bytes(), 16)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::PolicyFileConfig;

    fn load(f: FileConfig) -> Settings {
        Settings::from_file_config(f).unwrap()
    }

    fn with_key(key: &str) -> FileConfig {
        FileConfig { here_api_key: Some(key.into()), ..Default::default() }
    }

    #[test]
    fn restart_only_settings_are_named_and_kept() {
        let old = load(with_key("k"));
        let mut f = FileConfig {
            listen: "127.0.0.1:9999".into(),
            memory_cache: crate::config::ByteSize::mib(8),
            ..with_key("k2")
        };
        f.index.insert("i".into(), PolicyFileConfig { ttl: Some(Duration::from_secs(60)), ..Default::default() });
        let mut new = load(f);
        let changed = keep_restart_only(&old, &mut new);
        assert_eq!(changed, ["listen", "memory_cache"]);
        assert_eq!((new.listen, new.memory_cache), (old.listen, old.memory_cache), "left as they were");
        assert_eq!(new.api_key.as_deref(), Some("k2"), "the key is reloadable");
        assert_eq!(new.policy("i").ttl, Some(Duration::from_secs(60)), "so are policies");
        let mut same = load(with_key("k"));
        assert!(keep_restart_only(&old, &mut same).is_empty());
    }

    #[test]
    fn the_hash_follows_every_setting_and_secret() {
        let a = config_hash(&load(with_key("k")));
        assert_eq!(a, config_hash(&load(with_key("k"))));
        assert_eq!(a.len(), 16);
        assert_ne!(a, config_hash(&load(with_key("k2"))), "a new key is a new configuration");
        let mut f = with_key("k");
        f.defaults.ttl = Some(Duration::from_secs(5));
        assert_ne!(a, config_hash(&load(f)));
        assert!(!a.contains('k'));
    }

    #[test]
    fn every_file_read_is_watched() {
        let mut f = with_key("k");
        f.here_api_key_file = Some("/s/here".into());
        f.admin_token_file = Some("/s/admin".into());
        f.index.insert("i".into(), PolicyFileConfig { api_key_file: Some("/s/i".into()), ..Default::default() });
        let files = read_files(&Flags::file("/c/tile-proxy.toml"), &f);
        let want: Vec<PathBuf> =
            ["/c/tile-proxy.toml", "/s/admin", "/s/here", "/s/i"].iter().map(PathBuf::from).collect();
        assert_eq!(files, want);
    }
}

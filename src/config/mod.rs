//! Configuration: one serde struct ([`FileConfig`]), layered defaults -> TOML file ->
//! environment -> command line, validated into [`Settings`].
//!
//! `layers` merges the sources with figment: the file (`--config` / `TILE_PROXY_CONFIG`),
//! every setting as `TILE_PROXY_<KEY>` with `__` between nested keys
//! (`TILE_PROXY_UPSTREAM__HEAD_TIMEOUT=5s`, `TILE_PROXY_INDEX__123__TTL=10m`), the legacy
//! `HERE_API_KEY`, `HERE_API_KEY_FILE` and `CACHE_TTL_CAP`, then the command line's [`Flags`].
//! Unknown keys are rejected, in the file and in the environment. [`Settings::from_file_config`]
//! then checks every value and its bounds. Every problem is reported at once, each naming what
//! the user set: the file and line, the environment variable or the flag.
//!
//! Durations and sizes are spelled as in [`units`] and bounded ([`MAX_DURATION`],
//! [`MAX_TIMEOUT`], [`MAX_SIZE`]), so no later arithmetic on them can overflow.
//! Defaults are the named constants below; `--help` shows the same values.

mod defaults;
mod file;
mod layers;
pub mod reload;
mod settings;
pub mod units;
mod validate;

pub use bytesize::ByteSize;
pub use defaults::*;
pub use file::*;
pub use layers::{Flag, FlagValue, Flags};
pub use settings::*;
pub use validate::*;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_shipped_client_limit_can_be_changed_and_turned_off() {
        let load = |f: FileConfig| Settings::from_file_config(f).unwrap();
        let shipped = load(with_key()).default_policy.rate_limit.expect("a default limit");
        assert_eq!((shipped.interval, shipped.burst, shipped.shipped), (Duration::from_millis(10), 1000, true));
        let mut f = with_key();
        f.defaults.rate_limit = Some(0.0);
        f.index.insert("on".into(), PolicyFileConfig { rate_limit: Some(5.0), ..Default::default() });
        let s = load(f);
        assert_eq!(s.default_policy.rate_limit, None, "0 = off");
        assert_eq!(s.policy("other").rate_limit, None);
        assert_eq!(s.policy("on").rate_limit.map(|r| (r.burst, r.shipped)), Some((5, false)));
        let mut f = with_key();
        f.defaults.rate_burst = Some(300);
        let r = load(f).default_policy.rate_limit.unwrap();
        assert_eq!((r.burst, r.shipped), (300, false), "a burst of the operator's own is their limit");
        let mut f = with_key();
        f.defaults.rate_limit = Some(-1.0);
        assert!(problems(f)[0].contains("0 (off)"));
    }

    #[test]
    fn an_unguarded_proxy_on_a_public_address_is_warned_about() {
        let load = |f: FileConfig| Settings::from_file_config(f).unwrap();
        let public = |f: FileConfig| FileConfig { listen: "0.0.0.0:8080".into(), ..f };
        assert_eq!(load(public(with_key())).exposure_warning(), None, "the shipped client limit guards");
        let mut off = public(with_key());
        off.defaults.rate_limit = Some(0.0);
        let open = load(off);
        let warning = open.exposure_warning().expect("warned");
        for needle in ["0.0.0.0:8080", "budget_day", "rate_limit", "HERE quota"] {
            assert!(warning.contains(needle), "{needle} not in {warning}");
        }
        let mut budgeted = public(with_key());
        budgeted.defaults.rate_limit = Some(0.0);
        budgeted.defaults.budget_day = Some(1000);
        assert_eq!(load(budgeted).exposure_warning(), None);
        let mut limited = public(with_key());
        limited.defaults.rate_limit = Some(10.0);
        assert_eq!(load(limited).exposure_warning(), None);
        let unlimited = |listen: &str| {
            let mut f = FileConfig { listen: listen.into(), ..with_key() };
            f.defaults.rate_limit = Some(0.0);
            load(f)
        };
        for local in ["127.0.0.1:8080", "[::1]:8080"] {
            assert_eq!(unlimited(local).exposure_warning(), None, "{local}");
        }
        assert!(unlimited("[::]:8080").exposure_warning().is_some());
    }

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
    fn upstream_protocols_and_ca_file() {
        let s = Settings::from_file_config(with_key()).unwrap();
        assert!(s.upstream.http2, "HTTP/2 offered by default");
        assert!(s.upstream.ca_pem.is_none());
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, want) in [
            (&junk, "certificate 1 cannot be a trust anchor"),
            (&empty, "holds no PEM certificate"),
            (&missing, "cannot read"),
        ] {
            let mut f = FileConfig { upstream_requires_key: false, ..Default::default() };
            f.upstream.http2 = false;
            f.upstream.ca_file = Some(path.clone());
            let errs = problems(f);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with("upstream.ca_file: ") && errs[0].contains(want), "{errs:?}");
        }
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

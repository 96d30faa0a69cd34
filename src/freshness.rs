//! Freshness: how long an answer may be kept, and the one place that decides "fetch upstream?".
//!
//! Pure functions, table-tested. An entry's life, with `t` = its `fresh_until`:
//!
//! ```text
//!  stored ........ fresh ........ t ... stale-while-revalidate ... t+swr
//!                                 t ........ stale-if-error grace ........ t+sie
//! ```
//! * before `t`: served as a `HIT`, no upstream call;
//! * within `swr` after `t`: served at once as `STALE`, one background refresh;
//! * within `sie` after `t`: fetched; if the upstream fails the old copy is served as `STALE`;
//! * after both: a plain miss.

use std::time::Duration;

use crate::cache::Entry;
use crate::config::Policy;

/// What to do with a request, given what the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the entry; no upstream call.
    Fresh,
    /// Serve the entry now and refresh it in the background.
    StaleWhileRevalidate,
    /// Fetch from upstream; if that fails and `fallback` is true, serve the entry.
    Fetch { fallback: bool },
}

/// Decides for a cached entry at `now_ms`.
pub fn decide(entry: &Entry, policy: &Policy, now_ms: u64) -> Decision {
    if entry.is_fresh(now_ms) {
        return Decision::Fresh;
    }
    let past = Duration::from_millis(now_ms - entry.fresh_until_ms);
    if past < policy.stale_while_revalidate {
        Decision::StaleWhileRevalidate
    } else {
        Decision::Fetch { fallback: past < policy.stale_if_error }
    }
}

/// True while an expired entry may still stand in for a failing upstream.
pub fn usable_if_error(entry: &Entry, policy: &Policy, now_ms: u64) -> bool {
    entry.is_fresh(now_ms) || Duration::from_millis(now_ms - entry.fresh_until_ms) < policy.stale_if_error
}

/// The freshness lifetime of a 200: the index's TTL, else the upstream's `s-maxage`/`max-age`,
/// else `default_ttl`; always capped by `cap`. `None` means "do not store": the upstream said
/// `no-store`/`private`/`no-cache` and the index sets no TTL of its own.
pub fn ttl_for(policy: &Policy, cache_control: Option<&str>, default_ttl: Duration, cap: Duration) -> Option<Duration> {
    let ttl = match policy.ttl {
        Some(t) => t,
        None => {
            let cc = cache_control.map(CacheControl::parse).unwrap_or_default();
            if cc.no_store {
                return None;
            }
            cc.s_maxage.or(cc.max_age).unwrap_or(default_ttl)
        }
    };
    Some(ttl.min(cap))
}

/// The parts of a `Cache-Control` header a shared cache cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    /// `no-store`, `private` or `no-cache`: a shared cache must not reuse it without asking.
    pub no_store: bool,
}

impl CacheControl {
    pub fn parse(v: &str) -> CacheControl {
        let mut cc = CacheControl::default();
        for part in v.split(',') {
            let part = part.trim();
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let secs = || value.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
            match name.trim().to_ascii_lowercase().as_str() {
                "max-age" => cc.max_age = secs(),
                "s-maxage" => cc.s_maxage = secs(),
                "no-store" | "private" | "no-cache" => cc.no_store = true,
                _ => {}
            }
        }
        cc
    }
}

/// The `Cache-Control` header sent to clients for an entry with `remaining` seconds of freshness.
pub fn client_cache_control(policy: &Policy, remaining_secs: u64) -> String {
    match &policy.client_cache_control {
        Some(template) => template.replace("{max_age}", &remaining_secs.to_string()),
        None => format!("public, max-age={remaining_secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use bytes::Bytes;

    fn policy(ttl: Option<u64>, swr: u64, sie: u64) -> Policy {
        Policy {
            ttl: ttl.map(Duration::from_secs),
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::from_secs(sie),
            negative_ttl: Duration::from_secs(60),
            client_cache_control: None,
        }
    }

    fn entry(fresh_until_ms: u64) -> Entry {
        Entry {
            status: 200,
            content_type: HeaderValue::from_static("image/png"),
            etag: None,
            stored_at_ms: 0,
            fresh_until_ms,
            body: Bytes::new(),
        }
    }

    #[test]
    fn ttl_rules() {
        let day = Duration::from_secs(86400);
        let cap = Duration::from_secs(3600);
        let cases: [(Option<u64>, Option<&str>, Option<u64>); 8] = [
            (Some(60), Some("max-age=10"), Some(60)), // index TTL wins
            (Some(7200), None, Some(3600)),           // capped
            (None, Some("public, max-age=120"), Some(120)),
            (None, Some("max-age=120, s-maxage=30"), Some(30)),
            (None, Some("max-age=999999"), Some(3600)), // capped
            (None, None, Some(3600)),                   // default (1 day) capped
            (None, Some("no-store"), None),
            (Some(60), Some("private"), Some(60)), // the operator's TTL overrides
        ];
        for (ttl, cc, want) in cases {
            let got = ttl_for(&policy(ttl, 0, 0), cc, day, cap);
            assert_eq!(got, want.map(Duration::from_secs), "{ttl:?} {cc:?}");
        }
    }

    #[test]
    fn decisions_over_an_entry_life() {
        let p = policy(None, 10, 100);
        let e = entry(1_000_000);
        let cases = [
            (0, Decision::Fresh),
            (999_999, Decision::Fresh),
            (1_000_000, Decision::StaleWhileRevalidate),
            (1_009_999, Decision::StaleWhileRevalidate),
            (1_010_000, Decision::Fetch { fallback: true }),
            (1_099_999, Decision::Fetch { fallback: true }),
            (1_100_000, Decision::Fetch { fallback: false }),
        ];
        for (now, want) in cases {
            assert_eq!(decide(&e, &p, now), want, "at {now}");
        }
        let strict = policy(None, 0, 0);
        assert_eq!(decide(&e, &strict, 1_000_000), Decision::Fetch { fallback: false });
        assert!(usable_if_error(&e, &p, 1_050_000));
        assert!(!usable_if_error(&e, &p, 1_100_000));
    }

    #[test]
    fn client_header() {
        assert_eq!(client_cache_control(&policy(None, 0, 0), 42), "public, max-age=42");
        let mut p = policy(None, 0, 0);
        p.client_cache_control = Some("public, max-age={max_age}, s-maxage=60".into());
        assert_eq!(client_cache_control(&p, 7), "public, max-age=7, s-maxage=60");
    }
}

//! Freshness: how long an index may use a stored answer, and the one place that decides "fetch
//! upstream?".
//!
//! Pure functions, table-tested. A stored entry carries the upstream's own facts
//! ([`crate::domain::entry::Freshness`]); each index turns them into a lifetime with its policy
//! ([`lifetime`]): its fixed `ttl`, else the upstream's, else `default_ttl`, capped. With `t` =
//! stored + lifetime:
//!
//! ```text
//!  stored ........ fresh ........ t ... stale-while-revalidate ... t+swr
//!                                 t ........ stale-if-error grace ........ t+sie
//! ```
//! * before `t`: served as a `HIT`, no upstream call; close to `t`, a hit may also start one
//!   background refresh (XFetch probabilistic early refresh, [`early_refresh`]), so a popular
//!   tile is refreshed before it expires and no client waits for it;
//! * within `swr` after `t`: served at once as `STALE`, one background refresh;
//! * within `sie` after `t`: fetched; if the upstream fails the old copy is served as `STALE`;
//! * after both: a plain miss.
//!
//! Downstream caches get `Cache-Control: max-age=<lifetime>` with `Age: <elapsed>` (RFC 9111
//! 4.2.3: they subtract the age themselves), on misses and hits alike.

use std::time::Duration;

use crate::config::Policy;
use crate::domain::entry::{Freshness, Meta};

/// What to do with a request, given what the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the entry; no upstream call.
    Fresh,
    /// Serve the entry as a fresh `HIT` now and start one background refresh: it is close
    /// enough to its expiry that XFetch chose to refresh it early ([`early_refresh`]).
    EarlyRefresh,
    /// Serve the entry now and refresh it in the background.
    StaleWhileRevalidate,
    /// Fetch from upstream; if that fails and `fallback` is true, serve the entry.
    Fetch { fallback: bool },
}

/// The limits every lifetime is computed within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lifetime of a 200 when neither the index nor the upstream says anything.
    pub default_ttl: Duration,
    /// Cap on every lifetime (`CACHE_TTL_CAP`).
    pub cap: Duration,
}

/// How long `policy`'s index may use an answer with this metadata. `None`: not at all (the
/// upstream said `no-store` and the index has no TTL of its own, negative caching is off, or
/// the status is never reused).
pub fn lifetime(meta: &Meta, policy: &Policy, limits: Limits) -> Option<Duration> {
    match meta.status {
        200 => match policy.ttl {
            Some(t) => Some(t.min(limits.cap)),
            None if meta.freshness.no_store => None,
            None => Some(
                meta.freshness.ttl_secs.map_or(limits.default_ttl, |s| Duration::from_secs(s.into())).min(limits.cap),
            ),
        },
        404 | 204 if !policy.negative_ttl.is_zero() => Some(policy.negative_ttl.min(limits.cap)),
        _ => None,
    }
}

/// Decides for a cached entry at `now_ms`, given the index's lifetime for it. `u` is XFetch's
/// uniform draw in (0, 1] ([`early_refresh`]); it is called only for a fresh entry close to
/// its expiry. `|| 1.0` never refreshes early.
pub fn decide(
    meta: &Meta,
    lifetime: Option<Duration>,
    policy: &Policy,
    now_ms: u64,
    u: impl FnOnce() -> f64,
) -> Decision {
    let Some(lifetime) = lifetime else {
        return Decision::Fetch { fallback: false };
    };
    let fresh_until = meta.stored_at_ms.saturating_add(lifetime.as_millis() as u64);
    if now_ms < fresh_until {
        if early_refresh(fresh_until - now_ms, meta.fetch_ms, policy.early_refresh_beta, u) {
            return Decision::EarlyRefresh;
        }
        return Decision::Fresh;
    }
    let past = Duration::from_millis(now_ms - fresh_until);
    if past < policy.stale_while_revalidate {
        Decision::StaleWhileRevalidate
    } else {
        Decision::Fetch { fallback: past < policy.stale_if_error }
    }
}

/// The largest `-ln(u)` [`draw_unit`] can give: u >= 2^-53, so 53 ln 2 = 36.74.
pub const MAX_EARLY_GAP: f64 = 36.75;

/// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh a fresh entry early when
/// `now - delta * beta * ln(u) >= fresh_until`, i.e. when `remaining_ms`, the time left before
/// it expires, is at most `delta * beta * -ln(u)`; `delta` = `fetch_ms`, how long its last
/// upstream fetch took; `u` uniform in (0, 1]. The chance is `exp(-remaining / (delta * beta))`:
/// about 1 at expiry, negligible a few `delta`s before it, so under traffic one request a little
/// before expiry refreshes it. A bigger `beta` (or a slower fetch) refreshes earlier; `beta = 0`
/// or an unknown `delta` (0) never.
///
/// `u` is only drawn when it could matter: further than `delta * beta * MAX_EARLY_GAP` from
/// expiry no draw can trigger, so the hit path pays one multiplication and a comparison.
pub fn early_refresh(remaining_ms: u64, fetch_ms: u32, beta: f64, u: impl FnOnce() -> f64) -> bool {
    let scale = f64::from(fetch_ms) * beta;
    let remaining = remaining_ms as f64;
    // beta 0 (off), an unknown fetch time (0), or a NaN validation would have refused.
    if scale.is_nan() || scale <= 0.0 || remaining > scale * MAX_EARLY_GAP {
        return false;
    }
    remaining <= -scale * u().ln()
}

/// A uniform draw in (0, 1] for [`early_refresh`]: wyrand on a per-thread state, seeded once per
/// thread from std's `RandomState` (no system call per draw). Not for anything secret.
pub fn draw_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id())
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x).wrapping_mul(u128::from(x ^ 0xe703_7ed1_a0b4_28db));
        let r = ((t >> 64) as u64) ^ (t as u64);
        // 53 random bits + 1: 1 ..= 2^53, scaled into (0, 1].
        ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    })
}

/// True while an entry may still stand in for a failing upstream.
pub fn usable_if_error(meta: &Meta, lifetime: Option<Duration>, policy: &Policy, now_ms: u64) -> bool {
    match decide(meta, lifetime, policy, now_ms, || 1.0) {
        Decision::Fresh | Decision::EarlyRefresh | Decision::StaleWhileRevalidate => lifetime.is_some(),
        Decision::Fetch { fallback } => fallback,
    }
}

/// How long the shared entry must be kept: the longest any index can use it (its lifetime plus
/// its stale windows). `None`: no index can use it, so it is not stored.
pub fn retention<'a>(meta: &Meta, policies: impl IntoIterator<Item = &'a Policy>, limits: Limits) -> Option<Duration> {
    policies
        .into_iter()
        .filter_map(|p| lifetime(meta, p, limits).map(|l| l + p.stale_while_revalidate.max(p.stale_if_error)))
        .max()
}

impl crate::config::Settings {
    /// The limits every lifetime is computed within.
    pub fn limits(&self) -> Limits {
        Limits { default_ttl: self.default_ttl, cap: self.ttl_cap }
    }

    /// How long a shared entry must be kept for the longest view of any configured index (and
    /// of unconfigured ones, which use `[defaults]`); a `traffic` tile for their traffic views.
    /// `None`: no index can use it.
    pub fn retention(&self, meta: &Meta, traffic: bool) -> Option<Duration> {
        let (default, policies) = if traffic {
            (&self.traffic_default_policy, &self.traffic_policies)
        } else {
            (&self.default_policy, &self.policies)
        };
        retention(meta, std::iter::once(default).chain(policies.values()), self.limits())
    }

    /// The longest any entry can be of use to any index: `ttl_cap` plus the longest stale
    /// window. A purge rule older than this can match nothing still cached.
    pub fn max_entry_life(&self) -> Duration {
        let stale = [&self.default_policy, &self.traffic_default_policy]
            .into_iter()
            .chain(self.policies.values())
            .chain(self.traffic_policies.values())
            .map(|p| p.stale_while_revalidate.max(p.stale_if_error))
            .max()
            .unwrap_or_default();
        self.ttl_cap + stale
    }
}

/// The upstream's freshness facts from its response headers, at `now_ms`.
///
/// `s-maxage` wins over `max-age`, which wins over `Expires` (taken relative to the upstream's
/// `Date`, else to now; an unparseable `Expires` means "already expired", RFC 9111 5.3). The
/// upstream's `Age` is subtracted: the answer was already that old when we got it.
pub fn upstream_freshness(
    cache_control: Option<&str>,
    expires: Option<&str>,
    date: Option<&str>,
    age: Option<&str>,
    now_ms: u64,
) -> Freshness {
    let cc = cache_control.map(CacheControl::parse).unwrap_or_default();
    let secs = cc.s_maxage.or(cc.max_age).map(|d| d.as_secs()).or_else(|| {
        let expires = expires?;
        let Ok(exp) = httpdate::parse_http_date(expires.trim()) else {
            return Some(0);
        };
        let base = date
            .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
            .unwrap_or_else(|| std::time::UNIX_EPOCH + Duration::from_millis(now_ms));
        Some(exp.duration_since(base).map(|d| d.as_secs()).unwrap_or(0))
    });
    let age = age.and_then(|a| a.trim().parse::<u64>().ok()).unwrap_or(0);
    Freshness {
        ttl_secs: secs.map(|s| u32::try_from(s.saturating_sub(age)).unwrap_or(u32::MAX - 1)),
        no_store: cc.no_store,
    }
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

/// The `Cache-Control` header sent to clients for an answer this index may keep `lifetime`
/// (sent together with `Age`), or `no-store` when it may not be kept.
pub fn client_cache_control(policy: &Policy, lifetime: Option<Duration>) -> String {
    let Some(lifetime) = lifetime else {
        return "no-store".to_string();
    };
    let secs = lifetime.as_secs();
    match &policy.client_cache_control {
        Some(template) => template.replace("{max_age}", &secs.to_string()),
        None => format!("public, max-age={secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    const DAY: Duration = Duration::from_secs(86400);
    const LIMITS: Limits = Limits { default_ttl: DAY, cap: Duration::from_secs(3600) };

    fn policy(ttl: Option<u64>, swr: u64, sie: u64) -> Policy {
        Policy {
            ttl: ttl.map(Duration::from_secs),
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::from_secs(sie),
            negative_ttl: Duration::from_secs(60),
            client_cache_control: None,
            budget: Default::default(),
            rate_limit: None,
            early_refresh_beta: 1.0,
            traffic: crate::config::TrafficPolicy {
                ttl: Duration::from_secs(30),
                stale_if_error: Duration::from_secs(300),
                budget: Default::default(),
            },
        }
    }

    fn meta(status: u16, ttl_secs: Option<u32>, no_store: bool) -> Meta {
        Meta {
            status,
            content_type: Some(HeaderValue::from_static("image/png")),
            content_encoding: None,
            etag: None,
            stored_at_ms: 1_000_000,
            version_ms: 1_000_000,
            freshness: Freshness { ttl_secs, no_store },
            fetch_ms: 0,
            last_modified: None,
        }
    }

    #[test]
    fn lifetime_rules() {
        type Case = (Option<u64>, u16, Option<u32>, bool, Option<u64>);
        let cases: [Case; 10] = [
            (Some(60), 200, Some(10), false, Some(60)), // index TTL wins
            (Some(7200), 200, None, false, Some(3600)), // capped
            (None, 200, Some(120), false, Some(120)),   // the upstream's
            (None, 200, Some(999_999), false, Some(3600)),
            (None, 200, None, false, Some(3600)),    // default (1 day) capped
            (None, 200, None, true, None),           // no-store, no TTL of our own
            (Some(60), 200, None, true, Some(60)),   // the operator's TTL overrides
            (None, 404, Some(500), false, Some(60)), // negative TTL
            (None, 204, None, true, Some(60)),
            (None, 400, None, false, None),
        ];
        for (ttl, status, up, no_store, want) in cases {
            let got = lifetime(&meta(status, up, no_store), &policy(ttl, 0, 0), LIMITS);
            assert_eq!(got, want.map(Duration::from_secs), "{ttl:?} {status} {up:?} {no_store}");
        }
        let mut off = policy(None, 0, 0);
        off.negative_ttl = Duration::ZERO;
        assert_eq!(lifetime(&meta(404, None, false), &off, LIMITS), None);
    }

    #[test]
    fn decisions_over_an_entry_life() {
        let p = policy(None, 10, 100);
        let m = meta(200, Some(1000), false);
        let l = lifetime(&m, &p, LIMITS);
        // stored at 1_000_000 ms, fresh 1000 s: fresh until 2_000_000.
        let cases = [
            (1_000_000, Decision::Fresh),
            (1_999_999, Decision::Fresh),
            (2_000_000, Decision::StaleWhileRevalidate),
            (2_009_999, Decision::StaleWhileRevalidate),
            (2_010_000, Decision::Fetch { fallback: true }),
            (2_099_999, Decision::Fetch { fallback: true }),
            (2_100_000, Decision::Fetch { fallback: false }),
        ];
        for (now, want) in cases {
            assert_eq!(decide(&m, l, &p, now, || 1.0), want, "at {now}");
        }
        assert_eq!(decide(&m, l, &policy(None, 0, 0), 2_000_000, || 1.0), Decision::Fetch { fallback: false });
        assert_eq!(decide(&m, None, &p, 1_000_001, || 1.0), Decision::Fetch { fallback: false });
        assert!(usable_if_error(&m, l, &p, 2_050_000));
        assert!(!usable_if_error(&m, l, &p, 2_100_000));
        assert!(!usable_if_error(&m, None, &p, 1_000_001));
    }

    #[test]
    fn early_refresh_table() {
        // (remaining ms, fetch ms, beta, u, refresh early?)
        let cases: &[(u64, u32, f64, f64, bool)] = &[
            (0, 100, 1.0, 1.0, true),  // at expiry any draw holds (`decide` never asks: no longer fresh)
            (1, 100, 1.0, 0.5, true),  // 1 ms left, 69 ms of "head start": yes
            (1, 100, 1.0, 1.0, false), // u = 1: -ln u = 0, never before expiry
            (69, 100, 1.0, 0.5, true), // 100 * ln 2 = 69.3
            (70, 100, 1.0, 0.5, false),
            (60_000, 100, 1.0, f64::MIN_POSITIVE, false), // a minute early: not even the luckiest draw
            (3_000, 100, 1.0, 2f64.powi(-53), true),      // within 36.7 x delta, the luckiest draw does
            (1, 100, 0.0, f64::MIN_POSITIVE, false),      // beta 0: off
            (1, 0, 1.0, f64::MIN_POSITIVE, false),        // fetch time unknown (an old entry): off
            (130, 100, 2.0, 0.5, true),                   // a bigger beta refreshes earlier
            (130, 200, 1.0, 0.5, true),                   // so does a slower fetch
            (130, 100, 1.0, 0.5, false),
            (1, 100, f64::NAN, 0.5, false),
        ];
        for &(remaining, fetch, beta, u, want) in cases {
            assert_eq!(early_refresh(remaining, fetch, beta, || u), want, "{remaining} {fetch} {beta} {u}");
        }
        // Far from expiry the draw is not even made (the hit path stays cheap).
        assert!(!early_refresh(10_000, 100, 1.0, || panic!("drawn far from expiry")));
        assert!(!early_refresh(1, 100, 0.0, || panic!("drawn with beta 0")));
    }

    #[test]
    fn early_refresh_in_the_entry_life() {
        let p = policy(None, 10, 100);
        let mut m = meta(200, Some(1000), false);
        m.fetch_ms = 200;
        let l = lifetime(&m, &p, LIMITS);
        let lucky = || f64::MIN_POSITIVE;
        // Fresh until 2_000_000: far before it never, just before it with a lucky draw, at and
        // after it the usual stale decisions whatever the draw.
        assert_eq!(decide(&m, l, &p, 1_000_000, lucky), Decision::Fresh);
        assert_eq!(decide(&m, l, &p, 1_999_000, || 0.5), Decision::Fresh);
        assert_eq!(decide(&m, l, &p, 1_999_999, || 0.5), Decision::EarlyRefresh);
        assert_eq!(decide(&m, l, &p, 1_999_999, || 1.0), Decision::Fresh);
        assert_eq!(decide(&m, l, &p, 1_995_000, lucky), Decision::EarlyRefresh);
        assert_eq!(decide(&m, l, &p, 2_000_000, lucky), Decision::StaleWhileRevalidate);
        assert_eq!(decide(&m, l, &p, 2_100_000, lucky), Decision::Fetch { fallback: false });
        let off = Policy { early_refresh_beta: 0.0, ..p.clone() };
        assert_eq!(decide(&m, l, &off, 1_999_999, lucky), Decision::Fresh);
        assert!(usable_if_error(&m, l, &p, 1_999_999));
    }

    #[test]
    fn draws_are_in_the_unit_interval_and_spread() {
        let draws: Vec<f64> = (0..10_000).map(|_| draw_unit()).collect();
        assert!(draws.iter().all(|&u| u > 0.0 && u <= 1.0));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.48..0.52).contains(&mean), "mean {mean}");
        let low = draws.iter().filter(|&&u| u < 0.1).count();
        assert!((800..1200).contains(&low), "{low} of 10000 below 0.1");
    }

    #[test]
    fn one_entry_many_views() {
        // One stored tile, two indices: each sees its own freshness.
        let m = meta(200, Some(100), false);
        let short = policy(Some(10), 0, 0);
        let long = policy(None, 0, 0);
        let at = 1_000_000 + 50_000;
        assert_eq!(decide(&m, lifetime(&m, &short, LIMITS), &short, at, || 1.0), Decision::Fetch { fallback: false });
        assert_eq!(decide(&m, lifetime(&m, &long, LIMITS), &long, at, || 1.0), Decision::Fresh);
        // Kept for the longest view: 100 s + the long index's 30 s stale window.
        let stale = policy(None, 0, 30);
        assert_eq!(retention(&m, [&short, &stale], LIMITS), Some(Duration::from_secs(130)));
        assert_eq!(retention(&meta(200, None, true), [&long], LIMITS), None);
    }

    #[test]
    fn upstream_facts() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let f = |cc, exp, date, age| upstream_freshness(cc, exp, date, age, now);
        assert_eq!(f(Some("max-age=120"), None, None, None).ttl_secs, Some(120));
        assert_eq!(f(Some("max-age=120, s-maxage=30"), None, None, None).ttl_secs, Some(30));
        assert_eq!(f(Some("max-age=120"), None, None, Some("100")).ttl_secs, Some(20));
        assert_eq!(f(Some("max-age=120"), None, None, Some("500")).ttl_secs, Some(0));
        assert_eq!(f(None, Some("Wed, 21 Oct 2015 08:28:00 GMT"), None, None).ttl_secs, Some(3600));
        let with_date = f(None, Some("Wed, 21 Oct 2015 08:28:00 GMT"), Some("Wed, 21 Oct 2015 08:00:00 GMT"), None);
        assert_eq!(with_date.ttl_secs, Some(1680));
        assert_eq!(f(None, Some("0"), None, None).ttl_secs, Some(0));
        assert_eq!(f(Some("max-age=5"), Some("Wed, 21 Oct 2015 08:28:00 GMT"), None, None).ttl_secs, Some(5));
        assert_eq!(f(None, None, None, None), Freshness::default());
        assert!(f(Some("private, max-age=60"), None, None, None).no_store);
    }

    #[test]
    fn client_header() {
        let p = policy(None, 0, 0);
        assert_eq!(client_cache_control(&p, Some(Duration::from_secs(42))), "public, max-age=42");
        assert_eq!(client_cache_control(&p, None), "no-store");
        let mut p = policy(None, 0, 0);
        p.client_cache_control = Some("public, max-age={max_age}, s-maxage=60".into());
        assert_eq!(client_cache_control(&p, Some(Duration::from_secs(7))), "public, max-age=7, s-maxage=60");
    }
}

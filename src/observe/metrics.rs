//! Our own Prometheus metrics, per index, registered into the registry of `http_metrics` (which also
//! carries the HTTP metrics and foyer's own, so `/metrics` shows all three).
//!
//! Index names come from clients: to keep label cardinality bounded, the first
//! `metrics_max_indices` distinct indices get their own label and the rest share `_other`.
//! The default index and the indices named in the config file always get their own label.
//!
//! Series that dashboards and alerts read exist at 0 from the start (an absent series is
//! "No data" in a panel, and `increase(...)` misses the first event): the per-index counters
//! for the default index and every configured one, with every label value the code counts
//! ([`NotStored::ALL`], [`Revalidation::ALL`], [`BUDGET_WINDOWS`], the cache results), and the
//! per-upstream, per-tier and per-reason ones. Indices first seen in requests get theirs as
//! they are counted.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::base::hashing::Fnv;
use crate::domain::entry::HitSource;
use crate::domain::routes::DEFAULT_INDEX;

/// Label used for indices past the cardinality limit.
pub const OTHER_INDEX: &str = "_other";

/// Why an upstream answer was not stored: `tile_proxy_cache_not_stored_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// `no_length`: a 200 without `Content-Length` (relayed; its completeness cannot be proven).
    NoLength,
    /// `too_large`: the body outgrew `max_entry_size` (relayed).
    TooLarge,
    /// `truncated`: the body failed or fell short of its `Content-Length` (the transfer is cut).
    Truncated,
    /// `no_store`: a 200 no index may keep (`no-store`/`private` and no index TTL).
    NoStore,
}

impl NotStored {
    /// Every reason: each has its series from the start.
    pub const ALL: [NotStored; 4] =
        [NotStored::NoLength, NotStored::TooLarge, NotStored::Truncated, NotStored::NoStore];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            NotStored::NoLength => "no_length",
            NotStored::TooLarge => "too_large",
            NotStored::Truncated => "truncated",
            NotStored::NoStore => "no_store",
        }
    }
}

/// What a revalidation (`If-None-Match`) got: `tile_proxy_revalidations_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revalidation {
    /// `not_modified`: a 304, the entry kept with new times.
    NotModified,
    /// `modified`: a 200, a new body.
    Modified,
}

impl Revalidation {
    /// Every result: each has its series from the start.
    pub const ALL: [Revalidation; 2] = [Revalidation::NotModified, Revalidation::Modified];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Revalidation::NotModified => "not_modified",
            Revalidation::Modified => "modified",
        }
    }
}

/// The budget window of the current UTC hour: the `window` label of `tile_proxy_budget_*` and of
/// a `budget_exhausted` answer.
pub const BUDGET_HOUR: &str = "hour";
/// The budget window of the current UTC day.
pub const BUDGET_DAY: &str = "day";
/// Every budget window: `tile_proxy_budget_exhausted_total{window}` has each from the start.
/// The traffic budget's windows (`traffic_budget_hour`, `traffic_budget_day`).
pub const BUDGET_TRAFFIC_HOUR: &str = "traffic_hour";
pub const BUDGET_TRAFFIC_DAY: &str = "traffic_day";
pub const BUDGET_WINDOWS: [&str; 4] = [BUDGET_HOUR, BUDGET_DAY, BUDGET_TRAFFIC_HOUR, BUDGET_TRAFFIC_DAY];

/// Every metric the proxy itself records.
pub struct Metrics {
    /// `tile_proxy_requests_total{index, cache}`: tile requests by cache result
    /// (`hit`, `miss`, `coalesced`, `stale`, `negative_hit`, `error`, `invalid`).
    pub requests: IntCounterVec,
    /// `tile_proxy_upstream_requests_total{index, status, protocol, upstream}`: upstream attempts
    /// by HTTP status, or `connect_error`, `timeout`, `body_error`; `protocol` is the answer's
    /// (`h2`, `http/1.1`), `none` for an attempt that got no answer; `upstream` the HERE API
    /// (`raster`, `vector`, `traffic_raster`, `traffic_vector`: HERE bills each apart).
    pub upstream_requests: IntCounterVec,
    /// `tile_proxy_upstream_duration_seconds{index}`: time to the upstream response head.
    pub upstream_latency: HistogramVec,
    /// `tile_proxy_upstream_retries_total{index}`.
    pub upstream_retries: IntCounterVec,
    /// `tile_proxy_bytes_served_total{index, cache}`: body bytes sent to clients.
    pub bytes_served: IntCounterVec,
    /// `tile_proxy_cache_hits_total{index, tier}`: where hits were found (`memory`, `disk`).
    pub hits_by_tier: IntCounterVec,
    /// `tile_proxy_cache_inserts_total{index}` and `tile_proxy_cache_not_stored_total{index, reason}`
    /// (reasons: [`NotStored`]; count with [`Metrics::count_not_stored`]).
    pub inserts: IntCounterVec,
    pub not_stored: IntCounterVec,
    /// `tile_proxy_cache_errors_total{tier, op}`: failing tiers (bypassed, fail-open).
    pub cache_errors: IntCounterVec,
    /// `tile_proxy_revalidations_total{index, result}`: `not_modified` (304) or `modified` (200)
    /// ([`Revalidation`]; count with [`Metrics::count_revalidation`]).
    pub revalidations: IntCounterVec,
    /// `tile_proxy_early_refresh_total{index}`: background refreshes started for a still fresh
    /// entry close to its expiry (XFetch, `early_refresh_beta`).
    pub early_refresh: IntCounterVec,
    /// `tile_proxy_upstream_auth_failures_total{status}`: 401/403 from HERE: our key is wrong.
    pub auth_failures: IntCounterVec,
    /// `tile_proxy_breaker_open{upstream}`: 1 while the circuit breaker is open.
    pub breaker_open: IntGaugeVec,
    /// `tile_proxy_purge_rules`: active purge rules.
    pub purge_rules: prometheus::IntGauge,
    /// `tile_proxy_purged_total{index}`: cached entries a purge rule turned into misses.
    pub purged: IntCounterVec,
    /// `tile_proxy_upstream_cap_wait_seconds{upstream}`: how long misses waited for their turn
    /// under `upstream_rps`.
    pub cap_wait: HistogramVec,
    /// `tile_proxy_upstream_busy_total{upstream}`: misses refused with 503 `upstream_busy`.
    pub cap_busy: IntCounterVec,
    /// `tile_proxy_budget_used{index, window}` and `tile_proxy_budget_limit{index, window}`:
    /// upstream fetches in the current UTC hour/day, and the budget (indices with one).
    pub budget_used: IntGaugeVec,
    pub budget_limit: IntGaugeVec,
    /// `tile_proxy_budget_remaining{index, window}`: what is left of it.
    pub budget_remaining: IntGaugeVec,
    /// `tile_proxy_budget_exhausted_total{index, window}`: misses refused with 429 `budget_exhausted`
    /// (windows: [`BUDGET_WINDOWS`]).
    pub budget_exhausted: IntCounterVec,
    /// `tile_proxy_rate_limited_total{index}`: requests refused by a client rate limit.
    pub rate_limited: IntCounterVec,
    /// `tile_proxy_protect_fallback_total{what}`: decisions taken on this pod alone because Redis
    /// was unavailable (`cap`, `budget`, `client`).
    pub protect_fallback: IntCounterVec,
    /// `tile_proxy_metadata_requests_total{endpoint, cache}`: HERE metadata requests (`/v3/info`,
    /// copyright, ...) by result (`hit`, `miss`, `stale`, `error`, `invalid`).
    pub metadata_requests: IntCounterVec,
    /// `tile_proxy_compressed_total{encoding, source}`: answers sent compressed, the encoded
    /// body `stored` (a tile's cached variant, a document's cached body) or `compressed` now.
    pub compressed: IntCounterVec,
    /// `tile_proxy_compression_bytes_total{encoding, body}`: body bytes of the answers sent
    /// compressed, `identity` (before) and `encoded` (sent): the saving is their difference.
    pub compression_bytes: IntCounterVec,
    /// The month's bill, from the shared store ([`BillGauges`]).
    pub bill: BillGauges,
    /// `tile_proxy_config_reloads_total{outcome}`: configuration reloads (SIGHUP, a changed
    /// file) by outcome: `applied`, `invalid` (the old one stays), `unchanged`.
    pub config_reloads: IntCounterVec,
    /// Each index label's handles, resolved once (the first `max_indices` indices and the
    /// configured ones; the rest share `other`).
    indices: RwLock<HashMap<Box<str>, Arc<IndexMetrics>, Fnv>>,
    other: Arc<IndexMetrics>,
    max_indices: usize,
}

/// The current UTC month's bill as gauges, set every housekeeping tick from the shared store
/// (Redis, else this pod's `bill.json`), so with Redis every pod shows the fleet's value:
/// `max by (index, api)` is the fleet's, not `sum`.
pub struct BillGauges {
    /// `tile_proxy_bill_month_transactions{index, api}`: billable upstream transactions.
    pub transactions: IntGaugeVec,
    /// `tile_proxy_bill_month_hits{index, api}`: answers served from the cache (fresh or stale).
    pub hits: IntGaugeVec,
    /// `tile_proxy_bill_month_cost{index, api}`: the transactions at list price.
    pub cost: GaugeVec,
    /// `tile_proxy_bill_month_saved{index, api}`: the hits at list price.
    pub saved: GaugeVec,
    /// `tile_proxy_bill_month_account_cost{api}`: the account's estimated bill (the free
    /// transactions of the month deducted once).
    pub account_cost: GaugeVec,
}

impl BillGauges {
    fn new(registry: &Registry) -> prometheus::Result<BillGauges> {
        let int = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["index", "api"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let money = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauges = BillGauges {
            transactions: int("tile_proxy_bill_month_transactions", "Billable HERE transactions this UTC month")?,
            hits: int("tile_proxy_bill_month_hits", "Tile answers served from the cache this UTC month")?,
            cost: money(
                "tile_proxy_bill_month_cost",
                "This UTC month's transactions at list price ([billing])",
                &["index", "api"],
            )?,
            saved: money(
                "tile_proxy_bill_month_saved",
                "This UTC month's cache hits at list price: what the cache saved",
                &["index", "api"],
            )?,
            account_cost: money(
                "tile_proxy_bill_month_account_cost",
                "This UTC month's estimated HERE bill per API, free transactions deducted",
                &["api"],
            )?,
        };
        for api in ["raster", "vector", "traffic_raster", "traffic_vector"] {
            gauges.account_cost.with_label_values(&[api]).set(0.0);
        }
        Ok(gauges)
    }
}

/// Cache results a tile request is counted under (`tile_proxy_requests_total{cache}`) whose
/// series [`IndexMetrics`] keeps resolved.
const RESULTS: [&str; 7] = ["hit", "negative_hit", "stale", "miss", "coalesced", "error", "rate_limited"];

/// One index label's metric handles, looked up once per request instead of one label lookup
/// (hash of the label values, read lock, map lookup) per counter.
pub struct IndexMetrics {
    label: Box<str>,
    requests_vec: IntCounterVec,
    bytes_vec: IntCounterVec,
    tiers_vec: IntCounterVec,
    requests: [OnceLock<IntCounter>; RESULTS.len()],
    bytes: [OnceLock<IntCounter>; RESULTS.len()],
    tiers: [OnceLock<IntCounter>; 3],
}

impl IndexMetrics {
    fn new(label: &str, m: &Metrics) -> IndexMetrics {
        Self::with_vecs(label, &m.requests, &m.bytes_served, &m.hits_by_tier)
    }

    fn with_vecs(label: &str, requests: &IntCounterVec, bytes: &IntCounterVec, tiers: &IntCounterVec) -> Self {
        IndexMetrics {
            label: label.into(),
            requests_vec: requests.clone(),
            bytes_vec: bytes.clone(),
            tiers_vec: tiers.clone(),
            requests: Default::default(),
            bytes: Default::default(),
            tiers: Default::default(),
        }
    }

    /// The label (the index, or `_other`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Counts a request in `tile_proxy_requests_total{index, cache}`.
    pub fn count_request(&self, cache: &'static str) {
        match RESULTS.iter().position(|r| *r == cache) {
            Some(i) => {
                self.requests[i].get_or_init(|| self.requests_vec.with_label_values(&[&self.label, cache])).inc()
            }
            None => self.requests_vec.with_label_values(&[&self.label, cache]).inc(),
        }
    }

    /// `tile_proxy_bytes_served_total{index, cache}`.
    pub fn bytes(&self, cache: &'static str) -> IntCounter {
        match RESULTS.iter().position(|r| *r == cache) {
            Some(i) => self.bytes[i].get_or_init(|| self.bytes_vec.with_label_values(&[&self.label, cache])).clone(),
            None => self.bytes_vec.with_label_values(&[&self.label, cache]),
        }
    }

    /// Counts a hit in `tile_proxy_cache_hits_total{index, tier}`.
    pub fn count_hit(&self, tier: HitSource) {
        let slot = match tier {
            HitSource::Memory => 0,
            HitSource::Disk => 1,
            HitSource::Remote => 2,
        };
        self.tiers[slot].get_or_init(|| self.tiers_vec.with_label_values(&[&self.label, tier.as_str()])).inc();
    }
}

impl Metrics {
    /// Creates and registers every metric. The default index and the `configured` indices always
    /// keep their own label, and their counters exist at 0 from the start.
    pub fn new(
        registry: &Registry,
        max_indices: usize,
        configured: impl IntoIterator<Item = String>,
    ) -> prometheus::Result<Metrics> {
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new("tile_proxy_upstream_duration_seconds", "Time to the upstream response head")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["index"],
        )?;
        registry.register(Box::new(upstream_latency.clone()))?;
        let breaker_open = IntGaugeVec::new(
            Opts::new("tile_proxy_breaker_open", "1 while the upstream circuit breaker is open"),
            &["upstream"],
        )?;
        registry.register(Box::new(breaker_open.clone()))?;
        let cap_wait = HistogramVec::new(
            HistogramOpts::new(
                "tile_proxy_upstream_cap_wait_seconds",
                "Time misses waited for their turn under upstream_rps",
            )
            .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["upstream"],
        )?;
        registry.register(Box::new(cap_wait.clone()))?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["index", "window"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let budget_used = gauge("tile_proxy_budget_used", "Upstream fetches in the current UTC hour/day")?;
        let budget_limit = gauge("tile_proxy_budget_limit", "Upstream fetch budget per UTC hour/day")?;
        let budget_remaining = gauge("tile_proxy_budget_remaining", "Upstream fetches left this UTC hour/day")?;
        let purge_rules = prometheus::IntGauge::new("tile_proxy_purge_rules", "Active purge rules")?;
        registry.register(Box::new(purge_rules.clone()))?;
        // Series dashboards and alerts read exist from the start, at 0.
        for api in ["raster", "vector"] {
            breaker_open.with_label_values(&[api]).set(0);
        }
        let requests =
            counter(registry, "tile_proxy_requests_total", "Tile requests by cache result", &["index", "cache"])?;
        let bytes_served =
            counter(registry, "tile_proxy_bytes_served_total", "Body bytes served to clients", &["index", "cache"])?;
        let hits_by_tier = counter(registry, "tile_proxy_cache_hits_total", "Cache hits by tier", &["index", "tier"])?;
        // Registered in every registry made (tests make several): one process-wide count.
        let _ = registry.register(Box::new(access_log_dropped().clone()));
        let metrics = Metrics {
            requests: requests.clone(),
            upstream_requests: counter(
                registry,
                "tile_proxy_upstream_requests_total",
                "Upstream requests by status, protocol and HERE API",
                &["index", "status", "protocol", "upstream"],
            )?,
            upstream_latency,
            upstream_retries: counter(registry, "tile_proxy_upstream_retries_total", "Upstream retries", &["index"])?,
            bytes_served: bytes_served.clone(),
            hits_by_tier: hits_by_tier.clone(),
            inserts: counter(registry, "tile_proxy_cache_inserts_total", "Entries stored", &["index"])?,
            not_stored: counter(
                registry,
                "tile_proxy_cache_not_stored_total",
                "Upstream answers not stored, by reason",
                &["index", "reason"],
            )?,
            cache_errors: counter(
                registry,
                "tile_proxy_cache_errors_total",
                "Cache tier failures (bypassed)",
                &["tier", "op"],
            )?,
            revalidations: counter(
                registry,
                "tile_proxy_revalidations_total",
                "Upstream revalidations by result",
                &["index", "result"],
            )?,
            early_refresh: counter(
                registry,
                "tile_proxy_early_refresh_total",
                "Background refreshes started for fresh entries close to their expiry (XFetch)",
                &["index"],
            )?,
            auth_failures: counter(
                registry,
                "tile_proxy_upstream_auth_failures_total",
                "401/403 answers from the upstream",
                &["status"],
            )?,
            breaker_open,
            purge_rules,
            purged: counter(
                registry,
                "tile_proxy_purged_total",
                "Cached entries treated as missing because of a purge rule",
                &["index"],
            )?,
            cap_wait,
            cap_busy: counter(
                registry,
                "tile_proxy_upstream_busy_total",
                "Misses refused because the upstream rate cap queue was full",
                &["upstream"],
            )?,
            budget_used,
            budget_limit,
            budget_remaining,
            budget_exhausted: counter(
                registry,
                "tile_proxy_budget_exhausted_total",
                "Misses refused because the index spent its upstream budget",
                &["index", "window"],
            )?,
            rate_limited: counter(
                registry,
                "tile_proxy_rate_limited_total",
                "Requests refused by a client rate limit",
                &["index"],
            )?,
            protect_fallback: counter(
                registry,
                "tile_proxy_protect_fallback_total",
                "Rate cap, budget and client limit decisions taken locally because Redis was unavailable",
                &["what"],
            )?,
            metadata_requests: counter(
                registry,
                "tile_proxy_metadata_requests_total",
                "HERE metadata requests by endpoint and cache result",
                &["endpoint", "cache"],
            )?,
            compressed: counter(
                registry,
                "tile_proxy_compressed_total",
                "Answers sent compressed, by encoding and where the encoded body came from",
                &["encoding", "source"],
            )?,
            compression_bytes: counter(
                registry,
                "tile_proxy_compression_bytes_total",
                "Body bytes of answers sent compressed, before (identity) and after (encoded)",
                &["encoding", "body"],
            )?,
            bill: BillGauges::new(registry)?,
            config_reloads: counter(
                registry,
                "tile_proxy_config_reloads_total",
                "Configuration reloads by outcome (applied, invalid, unchanged)",
                &["outcome"],
            )?,
            indices: RwLock::default(),
            other: Arc::new(IndexMetrics::with_vecs(OTHER_INDEX, &requests, &bytes_served, &hits_by_tier)),
            max_indices,
        };
        let known: Vec<String> = std::iter::once(DEFAULT_INDEX.to_string()).chain(configured).collect();
        if let Ok(mut indices) = metrics.indices.write() {
            for index in &known {
                let m = Arc::new(IndexMetrics::new(index, &metrics));
                indices.insert(index.as_str().into(), m);
            }
        }
        for index in &known {
            metrics.register_index(index);
        }
        for api in ["raster", "vector"] {
            metrics.cap_busy.with_label_values(&[api]);
        }
        for what in ["cap", "budget", "client"] {
            metrics.protect_fallback.with_label_values(&[what]);
        }
        for outcome in ["applied", "invalid", "unchanged"] {
            metrics.config_reloads.with_label_values(&[outcome]);
        }
        for status in ["401", "403"] {
            metrics.auth_failures.with_label_values(&[status]);
        }
        for encoding in ["br", "gzip"] {
            for source in ["stored", "compressed"] {
                metrics.compressed.with_label_values(&[encoding, source]);
            }
            for body in ["identity", "encoded"] {
                metrics.compression_bytes.with_label_values(&[encoding, body]);
            }
        }
        for (tier, op) in [("foyer", "get"), ("foyer", "insert"), ("foyer", "open_disk")] {
            metrics.cache_errors.with_label_values(&[tier, op]);
        }
        Ok(metrics)
    }

    /// Makes the per-index counters dashboards and alerts read exist for `index`, at 0, with every
    /// label value the code counts.
    fn register_index(&self, index: &str) {
        for cache in RESULTS {
            self.requests.with_label_values(&[index, cache]);
        }
        for c in [&self.upstream_retries, &self.inserts, &self.early_refresh, &self.purged, &self.rate_limited] {
            c.with_label_values(&[index]);
        }
        for reason in NotStored::ALL {
            self.not_stored.with_label_values(&[index, reason.label()]);
        }
        for result in Revalidation::ALL {
            self.revalidations.with_label_values(&[index, result.label()]);
        }
        for window in BUDGET_WINDOWS {
            self.budget_exhausted.with_label_values(&[index, window]);
        }
    }

    /// Counts an upstream answer for `index` (its label) that was not stored, and why.
    pub fn count_not_stored(&self, index: &str, reason: NotStored) {
        self.not_stored.with_label_values(&[index, reason.label()]).inc();
    }

    /// Counts a revalidation for `index` (its label) and what it got.
    pub fn count_revalidation(&self, index: &str, result: Revalidation) {
        self.revalidations.with_label_values(&[index, result.label()]).inc();
    }

    /// The label to use for `index`: itself while under the cardinality limit, else `_other`.
    pub fn index_label<'a>(&self, index: &'a str) -> &'a str {
        if Arc::ptr_eq(&self.index(index), &self.other) {
            OTHER_INDEX
        } else {
            index
        }
    }

    /// Counts an answer sent in `encoding`: its `identity` and `encoded` body bytes.
    pub fn count_compressed_bytes(&self, encoding: &str, identity: usize, encoded: usize) {
        let m = &self.compression_bytes;
        m.with_label_values(&[encoding, "identity"]).inc_by(identity as u64);
        m.with_label_values(&[encoding, "encoded"]).inc_by(encoded as u64);
    }

    /// The metric handles of `index`'s label: its own while under the cardinality limit (or
    /// configured), else `_other`'s.
    pub fn index(&self, index: &str) -> Arc<IndexMetrics> {
        if let Ok(indices) = self.indices.read() {
            if let Some(m) = indices.get(index) {
                return m.clone();
            }
            if indices.len() >= self.max_indices {
                return self.other.clone();
            }
        }
        match self.indices.write() {
            Ok(mut indices) => {
                if let Some(m) = indices.get(index) {
                    return m.clone();
                }
                if indices.len() >= self.max_indices {
                    return self.other.clone();
                }
                let m = Arc::new(IndexMetrics::new(index, self));
                indices.insert(index.into(), m.clone());
                m
            }
            Err(_) => self.other.clone(),
        }
    }
}

/// `tile_proxy_access_log_dropped_total`: lines dropped because stdout could not keep up.
pub fn access_log_dropped() -> &'static prometheus::IntCounter {
    static DROPPED: OnceLock<prometheus::IntCounter> = OnceLock::new();
    DROPPED.get_or_init(|| {
        prometheus::IntCounter::new(
            "tile_proxy_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up",
        )
        .expect("valid metric")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_labels_are_bounded() {
        let m = Metrics::new(&Registry::new(), 3, ["configured".to_string()]).unwrap();
        assert_eq!(m.index_label("configured"), "configured");
        assert_eq!(m.index_label(DEFAULT_INDEX), DEFAULT_INDEX, "the default index is always known");
        assert_eq!(m.index_label("a"), "a");
        assert_eq!(m.index_label("b"), OTHER_INDEX);
        assert_eq!(m.index_label("a"), "a");
        assert_eq!(m.index("zzz").label(), OTHER_INDEX);
        assert!(Arc::ptr_eq(&m.index("a"), &m.index("a")), "resolved once");
        m.index("a").count_request("hit");
        m.index("a").count_request("invalid");
        m.index("a").bytes("hit").inc_by(7);
        m.index("a").count_hit(HitSource::Disk);
        assert_eq!(m.requests.with_label_values(&["a", "hit"]).get(), 1);
        assert_eq!(m.requests.with_label_values(&["a", "invalid"]).get(), 1);
        assert_eq!(m.bytes_served.with_label_values(&["a", "hit"]).get(), 7);
        assert_eq!(m.hits_by_tier.with_label_values(&["a", "disk"]).get(), 1);
    }

    /// `(labels, value)` of every sample of the family `name` in `registry`.
    fn samples(registry: &Registry, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let family = registry.gather().into_iter().find(|f| f.name() == name);
        family.map_or_else(Vec::new, |f| {
            f.get_metric()
                .iter()
                .map(|m| {
                    let labels = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                    (labels, m.get_counter().get_value())
                })
                .collect()
        })
    }

    #[test]
    fn known_indices_have_every_counted_label_value_at_zero_from_the_start() {
        let registry = Registry::new();
        let m = Metrics::new(&registry, 10, ["configured".to_string()]).unwrap();
        // The label sets `{index, second}` of both known indices, `second` taking each of `values`
        // (no second label when `second` is empty).
        let expected = |second: &str, values: &[&str]| -> Vec<Vec<(String, String)>> {
            let mut out = Vec::new();
            for index in [DEFAULT_INDEX, "configured"] {
                for v in values {
                    let mut labels = vec![("index".to_string(), index.to_string())];
                    if !second.is_empty() {
                        labels.push((second.to_string(), v.to_string()));
                    }
                    labels.sort();
                    out.push(labels);
                }
            }
            out.sort();
            out
        };
        let reasons: Vec<&str> = NotStored::ALL.iter().map(|r| r.label()).collect();
        let results: Vec<&str> = Revalidation::ALL.iter().map(|r| r.label()).collect();
        for (name, second, values) in [
            ("tile_proxy_cache_not_stored_total", "reason", reasons.as_slice()),
            ("tile_proxy_revalidations_total", "result", results.as_slice()),
            ("tile_proxy_budget_exhausted_total", "window", BUDGET_WINDOWS.as_slice()),
            ("tile_proxy_requests_total", "cache", RESULTS.as_slice()),
            ("tile_proxy_rate_limited_total", "", &[""]),
            ("tile_proxy_upstream_retries_total", "", &[""]),
            ("tile_proxy_cache_inserts_total", "", &[""]),
            ("tile_proxy_purged_total", "", &[""]),
            ("tile_proxy_early_refresh_total", "", &[""]),
        ] {
            let got = samples(&registry, name);
            assert!(got.iter().all(|(_, v)| *v == 0.0), "{name}: {got:?}");
            let mut labels: Vec<_> = got
                .into_iter()
                .map(|(mut l, _)| {
                    l.sort();
                    l
                })
                .collect();
            labels.sort();
            assert_eq!(labels, expected(second, values), "{name}");
        }
        // The labels `count_*` uses are the pre-registered ones: counting adds no series.
        m.count_not_stored("configured", NotStored::TooLarge);
        m.count_revalidation(DEFAULT_INDEX, Revalidation::NotModified);
        assert_eq!(samples(&registry, "tile_proxy_cache_not_stored_total").len(), 2 * NotStored::ALL.len());
        assert_eq!(samples(&registry, "tile_proxy_revalidations_total").len(), 2 * Revalidation::ALL.len());
        assert_eq!(m.not_stored.with_label_values(&["configured", "too_large"]).get(), 1);
        assert_eq!(m.revalidations.with_label_values(&[DEFAULT_INDEX, "not_modified"]).get(), 1);
    }
}

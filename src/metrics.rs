//! Our own Prometheus metrics, per index, registered into actix-web-prom's registry (which also
//! carries the HTTP metrics and foyer's own, so `/metrics` shows all three).
//!
//! Index names come from clients: to keep label cardinality bounded, the first
//! `metrics_max_indices` distinct indices get their own label and the rest share `_other`.
//! Indices named in the config file always get their own label.

use std::collections::HashSet;
use std::sync::RwLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Label used for indices past the cardinality limit.
pub const OTHER_INDEX: &str = "_other";

/// Every metric the proxy itself records.
pub struct Metrics {
    /// `tile_proxy_requests_total{index, cache}`: tile requests by cache result
    /// (`hit`, `miss`, `coalesced`, `stale`, `negative_hit`, `error`, `invalid`).
    pub requests: IntCounterVec,
    /// `tile_proxy_upstream_requests_total{index, status}`: upstream attempts by HTTP status, or
    /// `connect_error`, `timeout`, `body_error`.
    pub upstream_requests: IntCounterVec,
    /// `tile_proxy_upstream_duration_seconds{index}`: time to the upstream response head.
    pub upstream_latency: HistogramVec,
    /// `tile_proxy_upstream_retries_total{index}`.
    pub upstream_retries: IntCounterVec,
    /// `tile_proxy_bytes_served_total{index, cache}`: body bytes sent to clients.
    pub bytes_served: IntCounterVec,
    /// `tile_proxy_cache_hits_total{index, tier}`: where hits were found (`memory`, `disk`).
    pub hits_by_tier: IntCounterVec,
    /// `tile_proxy_cache_inserts_total{index}` and `tile_proxy_cache_not_stored_total{index, reason}`.
    pub inserts: IntCounterVec,
    pub not_stored: IntCounterVec,
    /// `tile_proxy_cache_errors_total{tier, op}`: failing tiers (bypassed, fail-open).
    pub cache_errors: IntCounterVec,
    /// `tile_proxy_revalidations_total{index, result}`: `not_modified` (304) or `modified` (200).
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
    /// `tile_proxy_budget_exhausted_total{index, window}`: misses refused with 429 `budget_exhausted`.
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
    known: RwLock<HashSet<String>>,
    max_indices: usize,
}

impl Metrics {
    /// Creates and registers every metric. `configured` indices always keep their own label.
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
        let metrics = Metrics {
            requests: counter(
                registry,
                "tile_proxy_requests_total",
                "Tile requests by cache result",
                &["index", "cache"],
            )?,
            upstream_requests: counter(
                registry,
                "tile_proxy_upstream_requests_total",
                "Upstream requests by status",
                &["index", "status"],
            )?,
            upstream_latency,
            upstream_retries: counter(registry, "tile_proxy_upstream_retries_total", "Upstream retries", &["index"])?,
            bytes_served: counter(
                registry,
                "tile_proxy_bytes_served_total",
                "Body bytes served to clients",
                &["index", "cache"],
            )?,
            hits_by_tier: counter(registry, "tile_proxy_cache_hits_total", "Cache hits by tier", &["index", "tier"])?,
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
            known: RwLock::new(configured.into_iter().collect()),
            max_indices,
        };
        for api in ["raster", "vector"] {
            metrics.cap_busy.with_label_values(&[api]);
        }
        for what in ["cap", "budget", "client"] {
            metrics.protect_fallback.with_label_values(&[what]);
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

    /// The label to use for `index`: itself while under the cardinality limit, else `_other`.
    pub fn index_label<'a>(&self, index: &'a str) -> &'a str {
        if let Ok(known) = self.known.read() {
            if known.contains(index) {
                return index;
            }
            if known.len() >= self.max_indices {
                return OTHER_INDEX;
            }
        }
        match self.known.write() {
            Ok(mut known) if known.len() < self.max_indices || known.contains(index) => {
                known.insert(index.to_string());
                index
            }
            _ => OTHER_INDEX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_labels_are_bounded() {
        let m = Metrics::new(&Registry::new(), 2, ["configured".to_string()]).unwrap();
        assert_eq!(m.index_label("configured"), "configured");
        assert_eq!(m.index_label("a"), "a");
        assert_eq!(m.index_label("b"), OTHER_INDEX);
        assert_eq!(m.index_label("a"), "a");
    }
}

//! The state every worker shares: settings, cache, flights, upstream config, health, breakers,
//! metrics, the clock and the compressor. Built once by [`crate::app::server::start`].

use std::sync::Arc;

use crate::base::clock::SharedClock;
use crate::config::Settings;
use crate::domain::breaker::Breakers;
use crate::domain::purge::PurgeRules;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::store::cache::TileCache;
use crate::store::flight::{FillLock, Flights};
use crate::store::redis::Redis;
use crate::upstream::UpstreamConfig;

/// Shared by every worker.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub cache: Arc<TileCache>,
    /// Who fills a missing key (in-process flights; a fleet-wide lease wraps them).
    pub fill: Arc<dyn FillLock>,
    /// The in-process flights (for `/health`'s count).
    pub flights: Arc<Flights>,
    pub metrics: Arc<Metrics>,
    pub upstream: Arc<UpstreamConfig>,
    pub health: Arc<Health>,
    pub breakers: Arc<Breakers>,
    pub clock: SharedClock,
    /// XFetch's uniform draw in (0, 1] (`freshness::draw_unit`; tests inject a fixed one).
    pub early_refresh_draw: fn() -> f64,
    /// Active purge rules (checked on every lookup).
    pub purges: Arc<PurgeRules>,
    /// Where this pod keeps its rules (the cache folder, when the disk tier is on).
    pub purge_file: Option<std::path::PathBuf>,
    /// The shared tier's client, when `redis_url` is set.
    pub redis: Option<Arc<Redis>>,
    /// Rate cap, budgets and client limits.
    pub protect: crate::protect::Protect,
    /// This server's id among the fleet's statistics snapshots.
    pub pod_id: String,
    /// Seed jobs started through `POST /admin/seed`.
    pub seeds: crate::http::admin::seed::Jobs,
    /// HERE's metadata answers (`/v3/info`, copyright, ...), cached apart from tiles.
    pub metadata: crate::http::metadata::MetadataCache,
    /// Compression of whole non-tile answers ([`crate::http::compress::Compressor::encode_response`]).
    pub compressor: crate::http::compress::Compressor,
}

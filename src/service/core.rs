//! What serving a tile needs, shared by every worker ([`Core`]): settings, the cache tiers, who
//! fills a missing key, metrics, the upstream's config, health, the breakers, the clock, the
//! purge rules and the bill's guards. Built by the app (`app::server::build`, `app::reload`); the HTTP
//! side keeps it inside its own state, and `seed --direct` uses it without HTTP.

use std::sync::Arc;

use crate::base::clock::SharedClock;
use crate::config::Settings;
use crate::domain::breaker::Breakers;
use crate::domain::purge::PurgeRules;
use crate::observe::cache_map::CacheMap;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::protect::Protect;
use crate::store::bill::Ledger;
use crate::store::cache::TileCache;
use crate::store::flight::{FillLock, Flights};
use crate::upstream::UpstreamConfig;

/// Shared by every worker and every fetch task. A reload of the configuration builds a new one
/// with new `settings` and `upstream` around the same parts (`app::reload`).
pub struct Core {
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
    /// Rate cap, budgets and client limits (kept across reloads: their state is the point).
    pub protect: Arc<Protect>,
    /// What was requested and cached where (`cache_map_tiles`; the admin API draws it).
    pub cache_map: Arc<CacheMap>,
    /// The HERE bill's counts (billable transactions, hits) per index and API.
    pub bill: Arc<Ledger>,
}

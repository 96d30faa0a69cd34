//! The state every worker shares: settings, cache, flights, upstream config, health, breakers,
//! metrics and the clock. Built once by [`crate::server::start`].

use std::sync::Arc;

use crate::breaker::Breakers;
use crate::cache::TileCache;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::flight::{FillLock, Flights};
use crate::health::Health;
use crate::metrics::Metrics;
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
}

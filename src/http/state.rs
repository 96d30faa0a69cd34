//! What the HTTP side shares between its workers ([`AppState`]): the tile service's [`Core`] and
//! the [`TileService`] over it, plus what only HTTP handlers use (the admin API's purge file,
//! Redis client and pod id, seed jobs, the metadata cache, the compressor of whole answers).
//! Built by `app::server::build`, and again on each reload of the configuration
//! (`app::reload`) around the same cache, flights, metrics and guards. Every handler reaches the
//! current one as [`State`]: one snapshot per request, so a reload never changes the settings
//! under a request in flight.

use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::http::negotiate::Compressor;
use crate::seed::fleet::FleetJobs;
use crate::seed::jobs::Jobs;
use crate::service::core::Core;
use crate::service::metadata::MetadataCache;
use crate::service::tiles::TileService;
use crate::store::redis::Redis;

/// Shared by every worker.
pub struct AppState {
    /// What serving a tile needs (the fields handlers read most: `AppState` derefs to it).
    pub core: Arc<Core>,
    /// Serves tiles from `core`.
    pub tiles: TileService,
    /// Where this pod keeps its rules (the cache folder, when the disk tier is on).
    pub purge_file: Option<std::path::PathBuf>,
    /// The shared tier's client, when `redis_url` is set.
    pub redis: Option<Arc<Redis>>,
    /// This server's id among the fleet's statistics snapshots.
    pub pod_id: String,
    /// Seed jobs started through `POST /admin/seed` that are this pod's own (no Redis, or it
    /// did not answer).
    pub seeds: Arc<Jobs>,
    /// With Redis: the fleet's seed jobs.
    pub fleet_seeds: Option<Arc<FleetJobs>>,
    /// HERE's metadata answers (`/v3/info`, copyright, ...), cached apart from tiles.
    pub metadata: Arc<MetadataCache>,
    /// Compression of whole non-tile answers ([`Compressor::encode_response`]).
    pub compressor: Arc<Compressor>,
    /// Which configuration this is and when it was loaded (`/health`).
    pub loaded: Loaded,
}

/// The identity of a loaded configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// `config::reload::config_hash` of the settings.
    pub hash: String,
    /// When it was loaded (ms since the epoch, the core's clock).
    pub at_ms: u64,
    /// Settings the file changed that keep their old value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The current state, swapped whole by a reload.
pub type Live = Arc<ArcSwap<AppState>>;

/// One worker's view of [`Live`] (each worker's `App` holds one): `arc_swap::Cache` keeps the
/// last snapshot and checks it with one atomic load a request, no write to a shared line.
pub struct WorkerState(RefCell<arc_swap::Cache<Live, Arc<AppState>>>);

impl WorkerState {
    pub fn new(live: Live) -> WorkerState {
        WorkerState(RefCell::new(arc_swap::Cache::new(live)))
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<AppState> {
        self.0.borrow_mut().load().clone()
    }
}

/// The state one request reads, taken once when it starts ([`WorkerState::current`]).
#[derive(Clone)]
pub struct State(pub Arc<AppState>);

impl State {
    /// The current snapshot for `req` (`None` outside an app built by `app::server`).
    pub fn of(req: &actix_web::HttpRequest) -> Option<State> {
        req.app_data::<WorkerState>().map(|w| State(w.current()))
    }

    pub fn into_inner(self) -> Arc<AppState> {
        self.0
    }

    pub fn get_ref(&self) -> &AppState {
        &self.0
    }
}

impl std::ops::Deref for State {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl actix_web::FromRequest for State {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<State, actix_web::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(State::of(req).ok_or_else(|| actix_web::error::ErrorInternalServerError("no app state")))
    }
}

impl std::ops::Deref for AppState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

//! What the HTTP side shares between its workers ([`AppState`]): the tile service's [`Core`] and
//! the [`TileService`] over it, plus what only HTTP handlers use (the admin API's purge file,
//! Redis client and pod id, seed jobs, the metadata cache, the compressor of whole answers).
//! Built once by `app::server::build`; every handler reaches it as `web::Data<AppState>`.

use std::sync::Arc;

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
    pub seeds: Jobs,
    /// With Redis: the fleet's seed jobs.
    pub fleet_seeds: Option<Arc<FleetJobs>>,
    /// HERE's metadata answers (`/v3/info`, copyright, ...), cached apart from tiles.
    pub metadata: MetadataCache,
    /// Compression of whole non-tile answers ([`Compressor::encode_response`]).
    pub compressor: Compressor,
}

impl std::ops::Deref for AppState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

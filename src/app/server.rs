//! Builds and runs the server: opens the cache, registers metrics, wires routes and middleware,
//! and shuts down in order (not ready -> drain HTTP -> close the cache so entries reach disk).
//! Production (`main.rs`) and the integration tests both go through [`start`].

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::http::header;
use actix_web::middleware::{Condition, DefaultHeaders};
use actix_web::{web, App, HttpServer};

use crate::base::clock::{SharedClock, SystemClock};
use crate::config::Settings;
use crate::domain::purge::PurgeRules;
use crate::http::admin::health;
use crate::http::admin::purge;
use crate::http::http_metrics::{HttpMetrics, Observe};
use crate::http::state::{AppState, Live, Loaded, WorkerState};
use crate::http::tile;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::service::core::Core;
use crate::service::tiles::TileService;
use crate::store::cache::{lock_dir, DirLock, FoyerOptions, FoyerTier, LockError, NewFiles, Tier, TileCache};
use crate::store::flight::{FillLock, Flights};
use crate::store::redis::{self, lease::FleetFill, lease::Waiters, tier::RedisTier, Redis};
use crate::upstream::{self, UpstreamConfig};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("{0}")]
    Cache(#[from] crate::store::cache::TierError),
    #[error("{0}")]
    CacheInUse(LockError),
    #[error("{0}")]
    Redis(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cache folder {dir} is unusable and disk_required = true: {problem}")]
    DiskRequired { dir: PathBuf, problem: String },
}

/// Binds `addr` before anything else of a start happens: a port in use fails the start before
/// the cache folder is touched.
fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    // std listens with a backlog of 128; actix's own bind asks for 1024 (a map opening is a
    // burst of connections). Listening again only changes the backlog.
    // SAFETY: plain syscall on a socket we own for the duration of the call.
    unsafe { libc::listen(listener.as_raw_fd(), 1024) };
    Ok(listener)
}

/// A running server.
pub struct Running {
    /// The tile port's address, then the admin port's (with `admin_listen`).
    addrs: Vec<SocketAddr>,
    tiles: Served,
    admin: Option<Served>,
    state: Arc<AppState>,
    /// The current state (a reload swaps it; `state` stays the first one).
    live: Live,
    _dir_lock: Option<DirLock>,
}

/// What tests (and embedders) may swap in; production uses the defaults.
#[derive(Default)]
pub struct StartOptions {
    /// The clock freshness follows; default the system clock.
    pub clock: Option<SharedClock>,
    /// Cache tiers to use instead of the built-in foyer tier.
    pub tiers: Option<Vec<Box<dyn Tier>>>,
    /// XFetch's uniform draw in (0, 1]; default `freshness::draw_unit`. Tests make early
    /// refresh certain (`|| f64::MIN_POSITIVE`) or impossible (`|| 1.0`).
    pub early_refresh_draw: Option<fn() -> f64>,
}

/// `cors_origins` allows every origin (`*`).
fn any_origin(origins: &[String]) -> bool {
    origins.iter().any(|o| o == "*")
}

/// With any origin allowed, `Access-Control-Allow-Origin: *` on every answer, not only (as
/// actix-cors does) on answers to requests that carry an `Origin`. A cache in front (nginx's
/// `proxy_cache`, a CDN) keys tiles on the URL alone, as there is no `Vary: Origin` in this
/// mode: a tile first asked for without an `Origin` (an SDK, a seed, curl) would otherwise be
/// kept without the header and then refused by every browser that gets that copy. With an
/// allowlist, actix-cors sends `Vary: Origin` on every answer instead, and this is off.
fn every_answer_allows_any_origin(origins: &[String]) -> Condition<DefaultHeaders> {
    Condition::new(
        any_origin(origins),
        DefaultHeaders::new().add((header::ACCESS_CONTROL_ALLOW_ORIGIN, header::HeaderValue::from_static("*"))),
    )
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "HEAD", "OPTIONS"])
        .allowed_headers([header::IF_NONE_MATCH, header::ACCEPT, header::CACHE_CONTROL])
        .expose_headers([
            "X-Cache",
            "X-Cache-Tier",
            "X-Cache-Reason",
            "ETag",
            "Age",
            "Cache-Control",
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
        ])
        .max_age(86_400);
    if any_origin(origins) {
        // The same answer for every origin: no `Vary: Origin`, so a CDN keeps one copy a tile
        // (with `Access-Control-Allow-Origin: *` on answers to requests without an `Origin`
        // too: `every_answer_allows_any_origin`).
        cors = cors.allow_any_origin().send_wildcard().disable_vary_header();
    } else {
        for o in origins {
            cors = cors.allowed_origin(o);
        }
    }
    cors
}

/// Opens the cache, binds and starts serving. Ready once this returns.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    start_with(settings, StartOptions::default()).await
}

/// Everything a server serves from, built but not yet serving: the state, and what must live
/// as long as it (the cache folder's lock, the metrics middleware and its registry).
pub struct Built {
    pub state: Arc<AppState>,
    pub http: Arc<HttpMetrics>,
    dir_lock: Option<DirLock>,
}

/// [`start`] with a chosen clock or cache tiers.
pub async fn start_with(settings: Settings, opts: StartOptions) -> Result<Running, StartError> {
    // The socket first: a start that cannot listen creates no cache folder.
    let listener = bind(settings.listen)?;
    let admin_listener = settings.admin_listen.map(bind).transpose()?;
    if let Some(warning) = settings.exposure_warning() {
        tracing::warn!("{warning}");
    }
    let Built { state, http, dir_lock } = build(settings, opts).await?;
    serve(state, http, dir_lock, listener, admin_listener)
}

/// Opens the cache tiers, Redis and the purge rules, and builds the shared state; no socket.
/// `tile-proxy seed --direct` fills the cache through this state without serving HTTP.
///
/// A build that fails after locking the cache folder removes what it created there (the
/// folder itself if it was new, else the new files); a folder another process holds is left
/// alone.
pub async fn build(settings: Settings, opts: StartOptions) -> Result<Built, StartError> {
    let new_files = (opts.tiers.is_none() && settings.disk_cache > 0).then(|| NewFiles::snapshot(&settings.cache_dir));
    let mut dir_lock = None;
    let built = assemble(settings, opts, &mut dir_lock).await;
    if let (Err(_), Some(_), Some(new_files)) = (&built, &dir_lock, &new_files) {
        new_files.remove(&[]);
    }
    built
}

async fn assemble(settings: Settings, opts: StartOptions, held: &mut Option<DirLock>) -> Result<Built, StartError> {
    // awc builds rustls without a crypto provider; a second install is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clock = opts.clock.unwrap_or_else(|| Arc::new(SystemClock));

    // Tiles have no router pattern (see below): the HTTP metrics count them as
    // `tiles_or_unknown`, by status; our own tile_proxy_requests_total has the per-index detail.
    let http = HttpMetrics::new().map_err(|e| StartError::Metrics(e.to_string()))?;
    let metrics = Arc::new(
        Metrics::new(http.registry(), settings.metrics_max_indices, settings.policies.keys().cloned())
            .map_err(|e| StartError::Metrics(e.to_string()))?,
    );
    let dir = &settings.cache_dir;
    let tiers = match opts.tiers {
        Some(tiers) => tiers,
        None => {
            if settings.disk_cache > 0 {
                // One process per folder: a second one would corrupt the first one's blocks.
                match lock_dir(dir) {
                    Ok(l) => *held = Some(l),
                    Err(e @ LockError::InUse(_)) => return Err(StartError::CacheInUse(e)),
                    Err(e) if settings.disk_required => {
                        return Err(StartError::DiskRequired { dir: dir.clone(), problem: e.to_string() })
                    }
                    // An unusable folder: the tier below degrades to memory only.
                    Err(e) => tracing::error!(
                        error = %e,
                        dir = %dir.display(),
                        "cache folder unusable; continuing memory-only (set disk_required = true to make this fatal)"
                    ),
                }
            }
            let foyer = FoyerOptions {
                dir,
                memory: settings.memory_cache,
                eviction: settings.memory_eviction,
                disk: if held.is_some() { settings.disk_cache } else { 0 },
                max_entry: settings.max_entry_size,
                write_buffer: settings.disk_write_buffer,
                required: settings.disk_required,
            };
            let before_open = held.as_ref().map(|_| NewFiles::snapshot(dir));
            let tier = FoyerTier::open(foyer, http.registry()).await?;
            if let (Some(before_open), false) = (&before_open, tier.disk_enabled()) {
                // Memory-only after all: block files this open made (a reservation that failed
                // half-way) would only take the disk's room.
                before_open.remove(&[]);
            }
            if settings.disk_cache > 0 && held.is_none() {
                tier.set_problem(format!("disk tier disabled: cache folder {} unusable", settings.cache_dir.display()));
            }
            if settings.disk_cache > 0 && !tier.disk_enabled() {
                metrics.cache_errors.with_label_values(&["foyer", "open_disk"]).inc();
            }
            let tier: Box<dyn Tier> = Box::new(tier);
            vec![tier]
        }
    };
    let redis = match &settings.redis {
        Some(r) => Some(Redis::new(r, clock.clone(), http.registry()).map_err(StartError::Redis)?),
        None => None,
    };
    // With `fleet_clock` everything below reads the pod clock corrected to Redis's TIME (stored
    // times, purge rules, freshness), measured now and on every housekeeping tick.
    let clock = match redis.as_ref().and_then(|r| r.fleet_clock().map(|c| (r, c))) {
        Some((redis, fleet)) => {
            if let Err(e) = redis.sync_clock().await {
                tracing::warn!(error = %e, "cannot read Redis TIME at start; the pod clock is used until it answers");
            }
            fleet
        }
        None => clock,
    };
    let mut tiers = tiers;
    if let Some(redis) = &redis {
        tiers.push(Box::new(RedisTier::new(redis.clone(), settings.max_entry_size)));
    }
    let cache = Arc::new(TileCache::new(tiers, metrics.clone()));
    let purges = Arc::new(PurgeRules::new(settings.max_entry_life()));
    // Without the disk tier nothing outlives the process, so neither need the rules.
    let purge_file = held.as_ref().map(|_| settings.cache_dir.join("purges.json"));
    if let Some(path) = &purge_file {
        match crate::store::purge_file::load(&purges, path, clock.now_ms()) {
            Ok(n) if n > 0 => tracing::info!(rules = n, "purge rules loaded from the cache folder"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot read saved purge rules"),
        }
    }
    if let Some(redis) = &redis {
        // The fleet's rules before the first request (the subscriber keeps them current).
        if let Err(e) = redis::pubsub::load_rules(redis, &purges, clock.now_ms()).await {
            tracing::warn!(error = %e, "cannot read purge rules from redis at start; the subscriber retries");
        }
    }
    metrics.purge_rules.set(purges.len() as i64);
    let settings = Arc::new(settings);
    let flights = Flights::new(settings.flight_buffer);
    let fill: Arc<dyn FillLock> = match &redis {
        Some(redis) => {
            let waiters = Arc::new(Waiters::default());
            let (rules, gauge, file) = (purges.clone(), metrics.purge_rules.clone(), purge_file.clone());
            let on_change: redis::pubsub::OnChange = Arc::new(move || {
                gauge.set(rules.len() as i64);
                if let Some(path) = &file {
                    if let Err(e) = crate::store::purge_file::save(&rules, path) {
                        tracing::warn!(error = %e, "cannot save purge rules");
                    }
                }
            });
            redis::pubsub::start(redis.clone(), waiters.clone(), purges.clone(), clock.clone(), on_change);
            Arc::new(FleetFill::new(flights.clone(), redis.clone(), waiters))
        }
        None => flights.clone(),
    };
    let protect = crate::protect::Protect::new(&settings, redis.clone(), clock.clone(), metrics.clone());
    let compressor = crate::http::negotiate::Compressor::new(&settings, metrics.clone());
    let bill_store = match (&redis, &purge_file) {
        (Some(redis), _) => crate::store::bill::Store::Redis(redis.clone()),
        (None, Some(_)) => crate::store::bill::Store::File(settings.cache_dir.join(crate::store::bill::FILE_NAME)),
        (None, None) => {
            tracing::warn!("no Redis and no disk tier: the bill's counts are kept in memory and restart from 0");
            crate::store::bill::Store::Memory
        }
    };
    let bill = Arc::new(crate::store::bill::Ledger::new(bill_store, settings.billing.bill_not_modified, clock.clone()));
    let core = Arc::new(Core {
        upstream: Arc::new(UpstreamConfig::from_settings(&settings)),
        settings: settings.clone(),
        cache,
        fill,
        flights,
        metrics,
        health: Arc::new(Health::new(clock.clone())),
        breakers: Arc::new(crate::domain::breaker::Breakers::new(
            settings.upstream.breaker_failures,
            settings.upstream.breaker_cooldown,
        )),
        clock,
        early_refresh_draw: opts.early_refresh_draw.unwrap_or(crate::domain::freshness::draw_unit),
        purges,
        protect: Arc::new(protect),
        cache_map: Arc::new(crate::observe::cache_map::CacheMap::new(settings.cache_map_tiles)),
        bill,
    });
    let pod_id = crate::service::stats::new_pod_id();
    let tiles = TileService::new(core.clone());
    let fleet_seeds =
        redis.as_ref().map(|r| crate::seed::fleet::FleetJobs::new(r.clone(), tiles.clone(), pod_id.clone()));
    let loaded = Loaded {
        hash: crate::config::reload::config_hash(&settings),
        at_ms: core.clock.now_ms(),
        needs_restart: Vec::new(),
    };
    let state = Arc::new(AppState {
        tiles,
        core,
        purge_file,
        redis,
        pod_id,
        seeds: Arc::default(),
        fleet_seeds,
        metadata: Arc::default(),
        compressor: Arc::new(compressor),
        loaded,
    });
    Ok(Built { state, http, dir_lock: held.take() })
}

/// `/metrics`, `/health` and the admin API: on the tile port, or on `admin_listen` alone.
fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health::health))
        .route("/metrics", web::get().to(crate::http::http_metrics::endpoint))
        // One scope for the admin API: a tile request is checked against its static prefix
        // only (each top-level route costs every tile request a match, and a pattern such as
        // /admin/seed/{id} a regex match).
        .service(
            web::scope("/admin")
                .app_data(web::PayloadConfig::new(crate::http::admin::auth::MAX_BODY))
                .route("/purge", web::post().to(purge::purge))
                .route("/purges", web::get().to(purge::purges))
                .route("/stats", web::get().to(crate::http::admin::stats::api))
                .route("/seed", web::post().to(crate::http::admin::seed::api_start))
                .route("/seed", web::get().to(crate::http::admin::seed::api_list))
                .route("/seed/{id}", web::get().to(crate::http::admin::seed::api_status))
                .route("/cache-map", web::get().to(crate::http::admin::cache_map::geojson))
                .route("/cache-map/{z}/{x}/{y}", web::get().to(crate::http::admin::cache_map::png)),
        );
}

/// A running actix server and its task.
struct Served {
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn serve(
    state: Arc<AppState>,
    http: Arc<HttpMetrics>,
    dir_lock: Option<DirLock>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
) -> Result<Running, StartError> {
    let settings = state.settings.clone();
    let live: Live = Arc::new(arc_swap::ArcSwap::new(state.clone()));
    let app_state = live.clone();
    let upstream_settings = settings.upstream.clone();
    let origins = settings.cors_origins.clone();
    let http_data = web::Data::from(http.clone());
    let admin_here = admin_listener.is_none();
    let (data, metrics) = (live.clone(), http.clone());
    let (http_data2, upstream2) = (http_data.clone(), upstream_settings.clone());
    let server = HttpServer::new(move || {
        // One awc client per worker: awc is not Send, and its pool is per client.
        let client = web::Data::new(upstream::build_client(&upstream_settings));
        App::new()
            .app_data(WorkerState::new(app_state.clone()))
            .app_data(client)
            .app_data(http_data.clone())
            .wrap(crate::http::bypass::TilesFirst)
            .wrap(cors(&origins))
            .wrap(every_answer_allows_any_origin(&origins))
            .wrap(Observe(http.clone()))
            .route("/live", web::get().to(health::live))
            .route("/ready", web::get().to(health::ready))
            // With `admin_listen`, not here: these paths fall to the tile handler, a 404.
            .configure(|cfg| {
                if admin_here {
                    admin_routes(cfg)
                }
            })
            // Tiles are routed by `routes::parse` itself (one pass, no regex router on the hot
            // path): everything that is not an admin route goes there; it answers 404 for
            // non-tile paths and 405 for methods other than GET and HEAD.
            .default_service(web::to(tile::tile))
    })
    .workers(settings.workers)
    // A streamed miss ends with a small write; with Nagle's algorithm it waits for the client's
    // delayed ACK (~40 ms on Linux). Tiles are whole answers: send every write at once.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1));
    let server = server.listen(listener).map_err(|source| StartError::Bind { addr: settings.listen, source })?;
    let mut addrs = server.addrs();
    let server = server.run();
    let tiles = Served { handle: server.handle(), task: actix_web::rt::spawn(server) };
    let admin = match admin_listener {
        None => None,
        Some(listener) => {
            // Scrapes, health checks and the admin API on a worker of their own: a busy tile
            // port does not delay them, and they need no CORS (not for browsers).
            let server = HttpServer::new(move || {
                let client = web::Data::new(upstream::build_client(&upstream2));
                App::new()
                    .app_data(WorkerState::new(data.clone()))
                    .app_data(client)
                    .app_data(http_data2.clone())
                    .wrap(Observe(metrics.clone()))
                    .route("/live", web::get().to(health::live))
                    .route("/ready", web::get().to(health::ready))
                    .configure(admin_routes)
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1));
            let addr = settings.admin_listen.unwrap_or(settings.listen);
            let server = server.listen(listener).map_err(|source| StartError::Bind { addr, source })?;
            addrs.extend(server.addrs());
            let server = server.run();
            Some(Served { handle: server.handle(), task: actix_web::rt::spawn(server) })
        }
    };
    let current = live.clone();
    crate::service::stats::spawn_housekeeping(
        move || current.load().core.clone(),
        state.redis.clone(),
        state.pod_id.clone(),
    );
    if let Some(fleet) = &state.fleet_seeds {
        // Takes over the seed jobs of pods that died.
        fleet.spawn_watch(&settings.upstream);
    }
    state.health.set_ready(true);
    Ok(Running { addrs, tiles, admin, state, live, _dir_lock: dir_lock })
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The bound `admin_listen` address, when set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|_| self.addrs.last().copied())
    }

    /// Shared state as started (tests read metrics and the cache through it; the cache,
    /// metrics and guards are the same in every later snapshot).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The state of the configuration loaded now.
    pub fn current(&self) -> Arc<AppState> {
        self.live.load_full()
    }

    /// Where a reload puts a new state ([`crate::app::reload`]).
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Graceful stop: not ready, finish in-flight requests, then close the cache (its write
    /// buffers reach disk, so entries come back on the next start).
    pub async fn shutdown(self) {
        self.state.health.set_ready(false);
        let delay = self.current().settings.drain_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "not ready; serving on before draining");
            tokio::time::sleep(delay).await;
        }
        // The bill's counts so far, while every runtime still runs; the drain's are flushed after.
        flush_bill(&self.state, false).await;
        for served in std::iter::once(self.tiles).chain(self.admin) {
            served.handle.stop(true).await;
            match served.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "server stopped with an error"),
                Err(e) => tracing::error!(error = %e, "server task failed"),
            }
        }
        // The bill's last counts (a store that fails now loses them: logged).
        flush_bill(&self.state, true).await;
        self.state.cache.close().await;
        tracing::info!("cache closed; bye");
    }

    /// Serves until SIGTERM or SIGINT (`stop`: handlers installed by the caller, before it says
    /// it listens; `None`: installed now), then shuts down gracefully.
    pub async fn run_until_signal(self, stop: Option<StopSignals>) {
        wait_for_signal(stop).await;
        tracing::info!("signal received; draining");
        self.shutdown().await;
    }
}

/// Stores the bill's pending counts (`last`: and closes the ledger), in a task of its own: a
/// Redis connection that was reconnecting on an HTTP worker's runtime, stopped meanwhile, panics
/// when polled (its timer's runtime is gone); that costs this flush (logged), not the shutdown.
async fn flush_bill(state: &Arc<AppState>, last: bool) {
    let ledger = state.bill.clone();
    let flushed = actix_web::rt::spawn(async move {
        if last {
            ledger.close().await
        } else {
            ledger.flush().await
        }
    });
    match flushed.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the bill's last counts could not be stored"),
        Err(e) => tracing::error!(error = %e, "the bill's last counts could not be stored (flush failed)"),
    }
}

async fn wait_for_signal(stop: Option<StopSignals>) {
    match stop.or_else(StopSignals::new) {
        Some(mut signals) => signals.recv().await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGTERM and SIGINT, the signals that stop the server and a seed job.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Listens for both; `None` when a handler cannot be installed.
    pub fn new() -> Option<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(StopSignals { term: signal(SignalKind::terminate()).ok()?, int: signal(SignalKind::interrupt()).ok()? })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

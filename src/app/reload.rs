//! Reload without restart: on `SIGHUP`, or when a file the configuration reads changes (the
//! TOML file, `HERE_API_KEY_FILE`, an index's `api_key_file`, `admin_token_file`, a CA file), the
//! configuration is loaded again as at start ([`Settings::load_effective`]).
//!
//! - Valid: a new [`AppState`] is built around the same cache, flights, metrics, breakers and
//!   guards, with the new settings and upstream config, and swapped in ([`Live`], one atomic
//!   store). Requests that started keep the snapshot they took; new ones get the new one.
//! - Invalid: the loaded configuration stays; the problems are logged as `check-config` prints
//!   them and counted (`tile_proxy_config_reloads_total{outcome="invalid"}`).
//! - Settings that cannot change without a restart (`config::reload::keep_restart_only`) keep
//!   their old values and are logged and shown in `/health` as "needs restart".
//!
//! Files are watched through their parent folders (the `notify` crate), so a file replaced by a
//! rename, and a Kubernetes Secret or ConfigMap volume (files are symlinks through `..data`,
//! itself a symlink swapped by an atomic rename), are seen too. Events are debounced, and a
//! reload happens only when the content of a watched file differs from the last one read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::reload::{config_hash, keep_restart_only, read_files};
use crate::config::{Flags, Settings};
use crate::http::state::{AppState, Live, Loaded};
use crate::service::core::Core;
use crate::service::tiles::TileService;
use crate::upstream::UpstreamConfig;

/// Quiet time after the last file event before the files are read (a Kubernetes update is a
/// burst of creates and renames; an editor writes in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new configuration is in use (its hash).
    Applied(String),
    /// Nothing that can change without a restart changed.
    Unchanged,
    /// The configuration is invalid; the loaded one stays.
    Invalid,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The files a configuration read, and what they held when it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    files: Vec<PathBuf>,
    contents: Vec<Option<Vec<u8>>>,
}

impl Baseline {
    /// Right after loading `file` with `flags` (at start: before the cache opens, so a change
    /// made meanwhile is seen).
    pub fn read(flags: &Flags, file: &crate::config::FileConfig) -> Baseline {
        let files = read_files(flags, file);
        Baseline { contents: contents(&files), files }
    }

    /// Whether a watched file now holds something else.
    fn changed(&self) -> bool {
        contents(&self.files) != self.contents
    }
}

/// Loads the configuration again and swaps it in.
pub struct Reloader {
    live: Live,
    flags: Flags,
    /// What the loaded configuration read (serialises reloads too: SIGHUP and a file change).
    seen: Mutex<Baseline>,
}

impl Reloader {
    /// For the server whose state is `live`, loading with `flags` (the command line's, as at
    /// start); `seen`: what the loaded configuration read.
    pub fn new(live: Live, flags: Flags, seen: Baseline) -> Reloader {
        Reloader { live, flags, seen: Mutex::new(seen) }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Baseline> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The files the configuration read, watched for changes.
    pub fn files(&self) -> Vec<PathBuf> {
        self.seen().files.clone()
    }

    /// Loads the configuration again (`why`: what asked, for the log) and applies it if valid.
    pub fn reload(&self, why: &str) -> Outcome {
        let mut seen = self.seen();
        // Read before loading: a write after this is a change still to load.
        let before = contents(&seen.files);
        let old = self.live.load_full();
        // Counted before it is logged: whoever reads the log line finds the count.
        let count = |outcome: Outcome| {
            old.metrics.config_reloads.with_label_values(&[outcome.label()]).inc();
            outcome
        };
        match Settings::load_effective(&self.flags) {
            Err(e) => {
                seen.contents = before;
                let outcome = count(Outcome::Invalid);
                tracing::error!(why, "configuration reload refused, the loaded one stays: {e}");
                outcome
            }
            Ok((mut settings, file)) => {
                let files = read_files(&self.flags, &file);
                *seen = match files == seen.files {
                    true => Baseline { files, contents: before },
                    false => Baseline { contents: contents(&files), files },
                };
                let needs_restart = keep_restart_only(&old.settings, &mut settings);
                if !needs_restart.is_empty() {
                    tracing::warn!(
                        why,
                        settings = %needs_restart.join(", "),
                        "configuration reload: these settings need a restart; they stay as they were until then"
                    );
                }
                let hash = config_hash(&settings);
                let changed = hash != old.loaded.hash;
                if changed || needs_restart != old.loaded.needs_restart {
                    let at_ms = if changed { old.clock.now_ms() } else { old.loaded.at_ms };
                    let loaded = Loaded { hash: hash.clone(), at_ms, needs_restart };
                    self.live.store(Arc::new(rebuild(&old, settings, loaded)));
                }
                if changed {
                    let outcome = count(Outcome::Applied(hash.clone()));
                    tracing::info!(why, hash, "configuration reloaded");
                    outcome
                } else {
                    let outcome = count(Outcome::Unchanged);
                    tracing::info!(why, hash, "configuration reload: nothing changed");
                    outcome
                }
            }
        }
    }

    /// Reloads on SIGHUP and on changes of the files the configuration reads, until the
    /// server's runtime stops. Without a watcher (inotify unavailable) SIGHUP still works.
    pub fn spawn(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed now: from here on SIGHUP no longer ends the process.
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let me = self.clone();
                actix_web::rt::spawn(async move {
                    while hup.recv().await.is_some() {
                        me.reload("SIGHUP");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot handle SIGHUP: reload by signal is off"),
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the configuration's files: reload them with SIGHUP");
                return;
            }
        };
        // Watching before this returns (and before the proxy says it listens).
        let mut watched = BTreeSet::new();
        watch_folders(&mut watcher, &self.files(), &mut watched);
        actix_web::rt::spawn(async move {
            loop {
                // First: changed since it was loaded, before the watches were in place.
                let changed = self.seen().changed();
                if changed {
                    self.reload("a configuration file changed");
                    // The new configuration may read other files.
                    watch_folders(&mut watcher, &self.files(), &mut watched);
                }
                if rx.recv().await.is_none() {
                    return;
                }
                // Debounce: wait until the folders are quiet.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            }
        });
    }
}

/// Each file's bytes (through symlinks), `None` when unreadable.
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// Watches the parent folder of each file not yet watched.
fn watch_folders(watcher: &mut impl notify::Watcher, files: &[PathBuf], watched: &mut BTreeSet<PathBuf>) {
    for file in files {
        let folder = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if watched.contains(&folder) {
            continue;
        }
        match watcher.watch(Path::new(&folder), notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(folder);
            }
            Err(e) => tracing::warn!(error = %e, folder = %folder.display(), "cannot watch a configuration folder"),
        }
    }
}

/// `old`'s state with `settings`: the same cache, flights, metrics, breakers, guards, purge
/// rules, bill, seed jobs and metadata cache; the settings and what is derived from them
/// (upstream URLs and keys, the tile service) new.
pub fn rebuild(old: &AppState, settings: Settings, loaded: Loaded) -> AppState {
    let c = &old.core;
    for name in settings.policies.keys().filter(|n| !old.settings.policies.contains_key(*n)) {
        // A new index's budget gauges, as at start.
        let policy = settings.policy(name);
        c.protect.budgets.register(name, crate::protect::budget::Account::Tiles, policy.budget);
        c.protect.budgets.register(name, crate::protect::budget::Account::Traffic, policy.traffic.budget);
    }
    let settings = Arc::new(settings);
    let core = Arc::new(Core {
        upstream: Arc::new(UpstreamConfig::from_settings(&settings)),
        settings,
        cache: c.cache.clone(),
        fill: c.fill.clone(),
        flights: c.flights.clone(),
        metrics: c.metrics.clone(),
        health: c.health.clone(),
        breakers: c.breakers.clone(),
        clock: c.clock.clone(),
        early_refresh_draw: c.early_refresh_draw,
        purges: c.purges.clone(),
        protect: c.protect.clone(),
        cache_map: c.cache_map.clone(),
        bill: c.bill.clone(),
    });
    AppState {
        tiles: TileService::new(core.clone()),
        core,
        purge_file: old.purge_file.clone(),
        redis: old.redis.clone(),
        pod_id: old.pod_id.clone(),
        seeds: old.seeds.clone(),
        fleet_seeds: old.fleet_seeds.clone(),
        metadata: old.metadata.clone(),
        compressor: old.compressor.clone(),
        loaded,
    }
}

//! Cache tiers behind one small interface.
//!
//! [`Tier`] is what every tier implements: `get` (and a sync, memory-only `peek` for the hot
//! path), and async, fallible `insert`/`remove` that carry the entry's expiry (a shared tier such
//! as Redis needs them). [`TileCache`] asks its tiers in order, promotes a hit into the tiers
//! before it, and writes to all. Tiers fail open: an error is logged, counted
//! (`tile_proxy_cache_errors_total`) and treated as a miss.
//!
//! The built-in tier is [`FoyerTier`]: a foyer `HybridCache` with a memory tier weighted by bytes
//! and a block-engine disk tier in the cache folder, written on insertion and flushed by
//! [`TileCache::close`], so entries survive a restart. The folder is locked
//! ([`lock_dir`]): a second process on it is refused. The disk tier's whole capacity is reserved
//! when it opens (`fallocate`), so a disk that fills up later cannot fail its writes; a disk
//! without room for it leaves the tier memory-only, reported on `/health`.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy, Load,
    PsyncIoEngineConfig, RecoverMode,
};

use crate::config::{block_size_for, MemoryEviction};
use crate::domain::entry::{Entry, HitSource};
use crate::domain::key::CacheKey;
use crate::observe::metrics::Metrics;

/// Boxed future returned by [`Tier`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A tier failure. Never fatal: the caller logs, counts and goes on as on a miss.
#[derive(Debug, thiserror::Error)]
#[error("cache tier {tier}: {message}")]
pub struct TierError {
    pub tier: &'static str,
    pub message: String,
}

/// One cache tier.
pub trait Tier: Send + Sync {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Looks a key up in what the tier holds in memory, without I/O; `None` if that would need
    /// I/O or the tier has no memory part. The hot path for hits.
    fn peek(&self, _key: &CacheKey) -> Option<(Entry, HitSource)> {
        None
    }
    /// Looks a key up.
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<(Entry, HitSource)>, TierError>>;
    /// Stores an entry (replacing any older one) that no index can use after `expires_at_ms`
    /// (Unix ms). Tiers that evict by size alone may ignore the expiry.
    fn insert<'a>(
        &'a self,
        key: &'a CacheKey,
        entry: Entry,
        expires_at_ms: u64,
    ) -> BoxFuture<'a, Result<(), TierError>>;
    /// Forgets a key.
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), TierError>>;
    /// Flushes and closes (entries in write buffers reach disk).
    fn close(&self) -> BoxFuture<'_, Result<(), TierError>>;
    /// JSON status for `/health`.
    fn status(&self) -> serde_json::Value;
    /// A standing problem for `/health` (`degraded`), if any.
    fn problem(&self) -> Option<String> {
        None
    }
}

/// Largest body a decoded entry may have: the largest `max_entry_size` of any cache opened in
/// this process (foyer's decoder takes no context, so it reads it here).
static MAX_DECODE: AtomicUsize = AtomicUsize::new(0);

/// The foyer value: our own codec ([`Entry::encode`]) behind foyer's trait.
#[derive(Debug, Clone)]
pub struct Stored(pub Entry);

impl Code for Stored {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        self.0.encode(w).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        // foyer has checked its own checksum of these bytes before decoding them.
        Entry::decode_verified(r, MAX_DECODE.load(Ordering::Relaxed))
            .map(Stored)
            .map_err(|e| foyer::Error::io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))
    }

    fn estimated_size(&self) -> usize {
        self.0.encoded_len()
    }
}

/// An exclusive lock on a cache folder, held until dropped (at the latest, on exit).
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Unlocked, not only closed: a child process forked meanwhile shares the open file until
        // its exec, and would keep the folder locked after a graceful stop (a restart in the same
        // process was refused as `InUse`).
        let _ = self.file.unlock();
    }
}

/// Why a cache folder cannot be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cache folder {0} is in use by another tile-proxy process (lock file {0}/.tile-proxy.lock); give each process its own folder")]
    InUse(PathBuf),
    #[error("cannot use cache folder {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// Creates `dir` and takes an exclusive lock on it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let io = |source| LockError::Io { dir: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".tile-proxy.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::InUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// What a cache folder held before a start touched it, so a start that fails can take back
/// what it created, and only that: the folder itself if it (or a parent) did not exist, else
/// the files that were not there. Files that were there are never removed.
#[derive(Debug)]
pub struct NewFiles {
    dir: PathBuf,
    /// The outermost folder this start would create (`dir` or a parent), if any.
    created_root: Option<PathBuf>,
    before: std::collections::HashSet<std::ffi::OsString>,
}

impl NewFiles {
    /// Notes what `dir` holds now.
    pub fn snapshot(dir: &Path) -> NewFiles {
        let mut created_root = None;
        let mut p = Some(dir);
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if d.exists() {
                break;
            }
            created_root = Some(d.to_path_buf());
            p = d.parent();
        }
        let before = std::fs::read_dir(dir)
            .map(|files| files.filter_map(Result::ok).map(|f| f.file_name()).collect())
            .unwrap_or_default();
        NewFiles { dir: dir.to_path_buf(), created_root, before }
    }

    /// Removes the files created in the folder since the snapshot (all but those named in
    /// `keep`), and the folders the start created when `keep` is empty. Best effort: what
    /// cannot be removed is logged.
    pub fn remove(&self, keep: &[&str]) {
        let Ok(files) = std::fs::read_dir(&self.dir) else { return };
        for f in files.filter_map(Result::ok) {
            let name = f.file_name();
            if self.before.contains(&name) || keep.iter().any(|k| name == *k) {
                continue;
            }
            let path = f.path();
            let removed = if f.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a file this start created");
            }
        }
        if let (Some(root), true) = (&self.created_root, keep.is_empty()) {
            // Only empty folders: anything another process put there meanwhile stays.
            let mut d = Some(self.dir.as_path());
            while let Some(dir) = d {
                if std::fs::remove_dir(dir).is_err() || dir == root {
                    break;
                }
                d = dir.parent();
            }
        }
    }
}

/// Reserves the disk space of every block file foyer created in `dir`, so later writes cannot
/// fail for lack of space. Filesystems without `fallocate` are left as they are.
fn reserve_blocks(dir: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut reserved = 0;
    for f in std::fs::read_dir(dir)? {
        let f = f?;
        if !f.file_name().to_string_lossy().starts_with("foyer-storage-") {
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).open(f.path())?;
        let len = file.metadata()?.len();
        // SAFETY: plain syscall on an fd we own for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::warn!(dir = %dir.display(), "filesystem cannot reserve space; a full disk may fail cache writes");
                return Ok(reserved);
            }
            return Err(e);
        }
        reserved += len;
    }
    Ok(reserved)
}

/// Threads of the disk tier's blocking pool, where foyer runs every `pread`/`pwrite`. Few, so
/// that reads queued while the workers run are taken in turn by a thread already awake (an
/// unbounded pool wakes a new thread, and pays two context switches, per read).
pub const DISK_IO_THREADS: usize = 4;

/// Runtimes made by [`FoyerTier::build`] so far (the next one's thread name).
static TIERS_OPENED: AtomicUsize = AtomicUsize::new(0);

/// Runs on every thread of the disk tier's runtime: `SCHED_BATCH`, so a disk read finishing does
/// not preempt an actix worker on the same core (with one core per pod, each disk hit cost an
/// involuntary switch; the read waits until the worker yields instead). No privilege needed;
/// where it is refused, the thread keeps the normal policy.
fn yield_to_workers() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's own policy; `param` is valid for the call.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    }
}

/// foyer `HybridCache`: memory tier weighted by bytes, block-engine disk tier.
pub struct FoyerTier {
    cache: HybridCache<String, Stored>,
    /// Name of the threads of this tier's runtime.
    #[cfg_attr(not(test), allow(dead_code))]
    threads: String,
    disk_enabled: bool,
    memory_capacity: usize,
    disk_capacity: usize,
    problem: Mutex<Option<String>>,
}

/// Sizes and place of the foyer tier.
#[derive(Debug, Clone)]
pub struct FoyerOptions<'a> {
    pub dir: &'a Path,
    pub memory: usize,
    /// The memory tier's eviction algorithm.
    pub eviction: MemoryEviction,
    /// 0 disables the disk tier.
    pub disk: usize,
    pub max_entry: usize,
    /// Each of the disk tier's two write buffers (foyer's buffer pool with one flusher): both
    /// stay resident once used. Entries waiting for them are capped at twice this.
    pub write_buffer: usize,
    /// A disk tier that cannot open is an error (`disk_required`) instead of memory-only.
    pub required: bool,
}

/// foyer's configuration of `eviction`, with foyer's defaults for each algorithm's ratios.
fn eviction_config(eviction: MemoryEviction) -> foyer::EvictionConfig {
    match eviction {
        MemoryEviction::Lru => foyer::LruConfig::default().into(),
        MemoryEviction::Lfu => foyer::LfuConfig::default().into(),
        MemoryEviction::S3fifo => foyer::S3FifoConfig::default().into(),
        MemoryEviction::Sieve => foyer::SieveConfig.into(),
        MemoryEviction::Fifo => foyer::FifoConfig::default().into(),
    }
}

impl FoyerTier {
    /// Opens the tier, recovering what the disk tier holds. Its I/O runs on a dedicated runtime.
    /// A disk tier that cannot be opened or reserved degrades to memory only (see
    /// [`Tier::problem`]); only a memory tier that cannot start is an error.
    pub async fn open(opts: FoyerOptions<'_>, registry: &prometheus::Registry) -> Result<FoyerTier, TierError> {
        MAX_DECODE.fetch_max(opts.max_entry, Ordering::Relaxed);
        if opts.disk == 0 {
            return Self::build(&opts, None, registry).await;
        }
        let problem = match Self::room_for(opts.dir, opts.disk) {
            // Not even started: foyer would create every block file before finding out.
            Err(problem) => problem,
            Ok(()) => match Self::build(&opts, Some(opts.dir), registry).await {
                Ok(tier) => match reserve_blocks(opts.dir) {
                    Ok(_) => return Ok(tier),
                    Err(e) => {
                        let _ = tier.cache.close().await;
                        format!("cannot reserve {} bytes in {}: {e}", opts.disk, opts.dir.display())
                    }
                },
                Err(e) => e.message,
            },
        };
        if opts.required {
            return Err(TierError {
                tier: "foyer",
                message: format!(
                    "cache folder {} cannot hold the disk tier and disk_required = true: {problem}",
                    opts.dir.display()
                ),
            });
        }
        tracing::error!(
            problem = %problem,
            dir = %opts.dir.display(),
            "disk tier unavailable; continuing memory-only (set disk_required = true to make this fatal)"
        );
        // A failed open may have registered foyer's metrics already: the fallback gets its own.
        let tier = Self::build(&FoyerOptions { disk: 0, ..opts }, None, &prometheus::Registry::new()).await?;
        *tier.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("disk tier disabled: {problem}"));
        Ok(tier)
    }

    /// Whether `dir`'s filesystem can hold a disk tier of `disk` bytes: its free space plus what
    /// the tier's own block files already take (a restart reuses them). Unknown (no `statvfs`):
    /// assumed yes, the reservation after opening still catches it.
    fn room_for(dir: &Path, disk: usize) -> Result<(), String> {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return Ok(()) };
        // SAFETY: statvfs fills the struct we pass; `path` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Ok(());
        }
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        let ours: u64 = std::fs::read_dir(dir)
            .map(|files| {
                files
                    .filter_map(Result::ok)
                    .filter(|f| f.file_name().to_string_lossy().starts_with("foyer-storage-"))
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        if free + ours >= disk as u64 {
            return Ok(());
        }
        Err(format!(
            "disk_cache is {} bytes but {} has {} bytes free (plus {} already used by the tier)",
            disk,
            dir.display(),
            free,
            ours
        ))
    }

    async fn build(
        opts: &FoyerOptions<'_>,
        dir: Option<&Path>,
        registry: &prometheus::Registry,
    ) -> Result<FoyerTier, TierError> {
        let err = |message: String| TierError { tier: "foyer", message };
        // The disk device first: a folder we cannot use fails here, before anything is registered.
        let device = match dir {
            Some(dir) => Some(
                FsDeviceBuilder::new(dir)
                    .with_capacity(opts.disk)
                    .build()
                    .map_err(|e| err(format!("cannot open cache dir {}: {e}", dir.display())))?,
            ),
            None => None,
        };
        // Named per tier ("foyer-0", "foyer-1", ...): a test can tell one tier's threads.
        let id = TIERS_OPENED.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("foyer-{id}"))
            .max_blocking_threads(DISK_IO_THREADS)
            .on_thread_start(yield_to_workers)
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start the cache runtime: {e}")))?;
        let metrics = mixtrics::registry::prometheus::PrometheusMetricsRegistry::new(registry.clone());
        let builder = HybridCacheBuilder::new()
            .with_name("tiles")
            .with_metrics_registry(Box::new(metrics))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .memory(opts.memory)
            .with_eviction_config(eviction_config(opts.eviction))
            .with_weighter(|k: &String, v: &Stored| k.len() + v.0.weight())
            .storage()
            .with_spawner(runtime.into());
        let cache = match device {
            Some(device) => {
                builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(
                        BlockEngineConfig::new(device)
                            .with_block_size(block_size_for(opts.max_entry))
                            .with_buffer_pool_size(opts.write_buffer)
                            .with_submit_queue_size_threshold(2 * opts.write_buffer),
                    )
                    .with_recover_mode(RecoverMode::Quiet)
                    .build()
                    .await
            }
            None => builder.build().await,
        }
        .map_err(|e| err(format!("cannot open the cache: {e}")))?;
        Ok(FoyerTier {
            cache,
            threads: format!("foyer-{id}"),
            disk_enabled: dir.is_some(),
            memory_capacity: opts.memory,
            disk_capacity: if dir.is_some() { opts.disk } else { 0 },
            problem: Mutex::new(None),
        })
    }

    /// Records a standing problem for `/health`.
    pub fn set_problem(&self, problem: String) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    /// True when the disk tier is in use.
    pub fn disk_enabled(&self) -> bool {
        self.disk_enabled
    }
}

impl Tier for FoyerTier {
    fn name(&self) -> &'static str {
        "foyer"
    }

    fn peek(&self, key: &CacheKey) -> Option<(Entry, HitSource)> {
        self.cache.memory().get(key.as_str()).map(|e| (e.value().0.clone(), HitSource::Memory))
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<(Entry, HitSource)>, TierError>> {
        // Not `HybridCache::get`: that runs the disk load as a task on foyer's runtime, which
        // then hands the read to its blocking pool (two thread hops a disk hit). Loading from the
        // store here leaves one: the read itself.
        Box::pin(async move {
            if let Some(e) = self.cache.memory().get(key.as_str()) {
                return Ok(Some((e.value().0.clone(), HitSource::Memory)));
            }
            if !self.disk_enabled {
                return Ok(None);
            }
            match self.cache.storage().load(key.as_str()).await {
                Ok(Load::Entry { key: stored_key, value, .. }) => {
                    let entry = value.0.clone();
                    // Promoted into the memory tier only (under write-on-insertion nothing writes
                    // memory evictions to disk, so it is not written again), under the key foyer
                    // has just decoded (equal to ours: foyer compares them). Not marked
                    // `Location::OnDisk`: foyer keeps such an entry as a phantom, not in memory.
                    self.cache.memory().insert(stored_key, value);
                    Ok(Some((entry, HitSource::Disk)))
                }
                // Still in the write queue: served from there, not promoted (it is in memory).
                Ok(Load::Piece { piece, .. }) => Ok(Some((piece.value().0.clone(), HitSource::Disk))),
                Ok(Load::Throttled | Load::Miss) => Ok(None),
                Err(e) => Err(TierError { tier: "foyer", message: e.to_string() }),
            }
        })
    }

    fn insert<'a>(
        &'a self,
        key: &'a CacheKey,
        entry: Entry,
        _expires_at_ms: u64,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        self.cache.insert(key.as_str().to_string(), Stored(entry));
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), TierError>> {
        self.cache.remove(key.as_str());
        Box::pin(std::future::ready(Ok(())))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), TierError>> {
        // In a task of its own: should foyer's I/O have panicked (it does on a failed block
        // write), closing reports an error instead of panicking the shutdown.
        let cache = self.cache.clone();
        Box::pin(async move {
            let err = |message: String| TierError { tier: "foyer", message };
            match tokio::spawn(async move { cache.close().await }).await {
                Ok(r) => r.map_err(|e| err(e.to_string())),
                Err(e) => Err(err(format!("closing the cache failed: {e}"))),
            }
        })
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "tier": "foyer",
            "memory": {"capacity_bytes": self.memory_capacity, "used_bytes": self.cache.memory().usage()},
            "disk": {"enabled": self.disk_enabled, "capacity_bytes": self.disk_capacity},
        })
    }

    fn problem(&self) -> Option<String> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }
}

/// The tiers, asked in order. A hit in a later tier is promoted into the earlier ones.
pub struct TileCache {
    tiers: Vec<Box<dyn Tier>>,
    metrics: Arc<Metrics>,
}

impl TileCache {
    pub fn new(tiers: Vec<Box<dyn Tier>>, metrics: Arc<Metrics>) -> Self {
        Self { tiers, metrics }
    }

    fn failed(&self, tier: &dyn Tier, op: &str, e: &TierError) {
        self.metrics.cache_errors.with_label_values(&[tier.name(), op]).inc();
        tracing::warn!(error = %e, op, "cache tier failed; bypassed");
    }

    /// The first tier's memory, without I/O (the hot path).
    pub fn peek(&self, key: &CacheKey) -> Option<(Entry, HitSource)> {
        self.tiers.first().and_then(|t| t.peek(key))
    }

    /// First hit that `valid` accepts wins: an entry it rejects (purged) is skipped in favour of
    /// a later tier's, which is then promoted over it. A failing tier counts as a miss for that
    /// tier.
    pub async fn get_valid(&self, key: &CacheKey, valid: impl Fn(&Entry) -> bool) -> Option<(Entry, HitSource)> {
        if let Some(hit) = self.peek(key) {
            if valid(&hit.0) {
                return Some(hit);
            }
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            match tier.get(key).await {
                Ok(Some((entry, _))) if !valid(&entry) => {}
                Ok(Some((entry, source))) => {
                    // Promotion keeps the entry as long as the tier it came from would.
                    for earlier in &self.tiers[..i] {
                        if let Err(e) = earlier.insert(key, entry.clone(), u64::MAX).await {
                            self.failed(earlier.as_ref(), "insert", &e);
                        }
                    }
                    return Some((entry, source));
                }
                Ok(None) => {}
                Err(e) => self.failed(tier.as_ref(), "get", &e),
            }
        }
        None
    }

    /// Stores into every tier; failures are counted and the other tiers still get it.
    pub async fn insert(&self, key: &CacheKey, entry: Entry, expires_at_ms: u64) {
        for tier in &self.tiers {
            if let Err(e) = tier.insert(key, entry.clone(), expires_at_ms).await {
                self.failed(tier.as_ref(), "insert", &e);
            }
        }
    }

    /// Removes from every tier.
    pub async fn remove(&self, key: &CacheKey) {
        for tier in &self.tiers {
            if let Err(e) = tier.remove(key).await {
                self.failed(tier.as_ref(), "remove", &e);
            }
        }
    }

    /// Closes every tier; failures are logged, the others still close.
    pub async fn close(&self) {
        for tier in &self.tiers {
            if let Err(e) = tier.close().await {
                tracing::error!(error = %e, "closing cache tier failed");
            }
        }
    }

    /// JSON status of every tier.
    pub fn status(&self) -> serde_json::Value {
        serde_json::Value::Array(self.tiers.iter().map(|t| t.status()).collect())
    }

    /// Standing problems of the tiers.
    pub fn problems(&self) -> Vec<String> {
        self.tiers.iter().filter_map(|t| t.problem()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored 200 of `len` bytes of `fill`, fresh for a minute.
    fn png_entry(len: usize, fill: u8) -> Entry {
        use crate::domain::entry::{Freshness, Meta};
        Entry {
            meta: Meta {
                status: 200,
                content_type: None,
                content_encoding: None,
                etag: None,
                stored_at_ms: 1,
                version_ms: 1,
                freshness: Freshness { ttl_secs: Some(60), no_store: false },
                fetch_ms: 5,
                last_modified: None,
            },
            body: bytes::Bytes::from(vec![fill; len]),
        }
    }

    #[test]
    fn block_sizes() {
        assert_eq!(block_size_for(2 << 20), 4 << 20);
        assert_eq!(block_size_for(10_000), 1 << 20);
        assert!(block_size_for(60_000) >= 60_000 + (64 << 10));
    }

    #[test]
    fn new_files_removes_only_what_came_after_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        // An existing folder: its files stay, new ones go, the folder stays.
        let old = tmp.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("foyer-storage-0"), b"kept").unwrap();
        let seen = NewFiles::snapshot(&old);
        std::fs::write(old.join("foyer-storage-1"), b"new").unwrap();
        std::fs::write(old.join(".tile-proxy.lock"), b"").unwrap();
        seen.remove(&[]);
        let left: Vec<_> = std::fs::read_dir(&old).unwrap().map(|f| f.unwrap().file_name()).collect();
        assert_eq!(left, ["foyer-storage-0"]);
        assert_eq!(std::fs::read(old.join("foyer-storage-0")).unwrap(), b"kept");
        // A new folder two levels deep: gone with its parent, the parent's parent stays.
        let new = tmp.path().join("a").join("b");
        let seen = NewFiles::snapshot(&new);
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("foyer-storage-0"), b"new").unwrap();
        seen.remove(&[]);
        assert!(!tmp.path().join("a").exists());
        assert!(tmp.path().exists());
        // Kept names stay, and so does the folder.
        let seen = NewFiles::snapshot(&new);
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join(".tile-proxy.lock"), b"").unwrap();
        std::fs::write(new.join("foyer-storage-0"), b"new").unwrap();
        seen.remove(&[".tile-proxy.lock"]);
        let left: Vec<_> = std::fs::read_dir(&new).unwrap().map(|f| f.unwrap().file_name()).collect();
        assert_eq!(left, [".tile-proxy.lock"]);
    }

    #[test]
    fn a_disk_tier_larger_than_the_free_space_is_refused_before_any_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FoyerTier::room_for(dir.path(), 1 << 20).is_ok());
        let err = FoyerTier::room_for(dir.path(), usize::MAX / 2).unwrap_err();
        assert!(err.contains("bytes free"), "{err}");
        // What the tier already holds counts as room (a restart on a full disk).
        std::fs::write(dir.path().join("foyer-storage-0"), vec![1u8; 1 << 16]).unwrap();
        let free_now = FoyerTier::room_for(dir.path(), usize::MAX / 2).unwrap_err();
        assert!(free_now.contains("plus 65536 already used"), "{free_now}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing created");
    }

    #[test]
    fn a_folder_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        assert!(matches!(lock_dir(dir.path()), Err(LockError::InUse(_))));
        drop(first);
        assert!(lock_dir(dir.path()).is_ok());
    }

    #[test]
    fn a_dropped_lock_is_free_at_once_even_while_a_forked_child_still_has_the_file_open() {
        // A process that starts other processes (a test starting redis-server, an embedder)
        // shares every open file with each child from its fork to its exec. Closing the lock
        // file alone leaves the folder locked until then; a restart on it is refused.
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        // SAFETY: the child only sleeps and exits, both async-signal-safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork failed");
        drop(first);
        let again = lock_dir(dir.path());
        // SAFETY: `child` is our own child process.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(again.is_ok(), "the folder is still locked: {again:?}");
    }

    /// Threads of this process named `name`, with their scheduling policy (`/proc`, field 41).
    #[cfg(target_os = "linux")]
    fn threads_named(name: &str) -> Vec<u32> {
        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().filter_map(Result::ok) {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the `(comm)`: state is field 3, policy field 41.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            policies.push(after.split_whitespace().nth(38).and_then(|p| p.parse().ok()).unwrap_or(u32::MAX));
        }
        policies
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_reads_run_on_a_few_batch_scheduled_threads() {
        use crate::domain::key::Origin;
        use actix_web::http::header::HeaderValue;
        let dir = tempfile::tempdir().unwrap();
        let opts = |memory| FoyerOptions {
            dir: dir.path(),
            memory,
            eviction: MemoryEviction::Lru,
            disk: 64 << 20,
            max_entry: 64 << 10,
            // Room for every entry at once: none is left memory-only for want of a buffer.
            write_buffer: 8 << 20,
            required: true,
        };
        let origin = Origin::new("http://upstream.test", Some("k"));
        let keys: Vec<CacheKey> = (0..64)
            .map(|x| {
                let t = crate::domain::routes::parse(&format!("/v3/base/mc/12/{x}/7/png"), "", Default::default());
                CacheKey::of(&t.unwrap().unwrap(), &origin)
            })
            .collect();
        let entry = |i: usize| {
            let mut e = png_entry(20_000, i as u8);
            e.meta.content_type = Some(HeaderValue::from_static("image/png"));
            e
        };
        let tier = FoyerTier::open(opts(32 << 20), &prometheus::Registry::new()).await.unwrap();
        for (i, key) in keys.iter().enumerate() {
            tier.insert(key, entry(i), u64::MAX).await.unwrap();
        }
        tier.close().await.unwrap();
        drop(tier);
        // Reopened: the memory tier is empty, every entry is read from the disk tier, at once.
        let tier = FoyerTier::open(opts(1 << 20), &prometheus::Registry::new()).await.unwrap();
        let reads = keys.iter().map(|k| tier.get(k));
        let got = futures_util::future::join_all(reads).await;
        for (i, got) in got.into_iter().enumerate() {
            let (e, source) = got.unwrap().expect("on disk");
            assert_eq!((source, e.body.len(), e.body[0]), (HitSource::Disk, 20_000, i as u8));
        }
        let policies = threads_named(&tier.threads);
        assert!(!policies.is_empty(), "the tier's threads are named {}", tier.threads);
        assert!(policies.len() <= 2 + DISK_IO_THREADS, "2 workers + at most {DISK_IO_THREADS} I/O: {policies:?}");
        assert!(policies.iter().all(|p| *p == libc::SCHED_BATCH as u32), "SCHED_BATCH everywhere: {policies:?}");
        tier.close().await.unwrap();
    }

    #[tokio::test]
    async fn each_memory_eviction_keeps_its_size_and_the_scan_resistant_ones_keep_a_hot_set_through_a_scan() {
        use crate::domain::key::Origin;
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::new("http://upstream.test", None);
        let key = |z: u8, x: u32| {
            let t = crate::domain::routes::parse(&format!("/v3/base/mc/{z}/{x}/7/png"), "", Default::default());
            CacheKey::of(&t.unwrap().unwrap(), &origin)
        };
        let entry = || png_entry(10_000, 7);
        let mut survivors = Vec::new();
        for eviction in MemoryEviction::ALL {
            let opts = FoyerOptions {
                dir: dir.path(),
                memory: 1 << 20,
                eviction,
                disk: 0,
                max_entry: 64 << 10,
                write_buffer: 1 << 20,
                required: false,
            };
            let tier = FoyerTier::open(opts, &prometheus::Registry::new()).await.unwrap();
            // A hot set of 20 tiles (200 KB of a 1 MiB tier), each asked 5 times...
            let hot: Vec<CacheKey> = (0..20).map(|x| key(14, x)).collect();
            for k in &hot {
                tier.insert(k, entry(), u64::MAX).await.unwrap();
            }
            for _ in 0..5 {
                for k in &hot {
                    tier.get(k).await.unwrap();
                }
            }
            // ...then a scan of 5 MB of tiles seen once (a crawler, a seed job).
            for x in 0..500 {
                tier.insert(&key(18, x), entry(), u64::MAX).await.unwrap();
            }
            let usage = tier.cache.memory().usage();
            assert!(usage <= (1 << 20) + 20_000, "{eviction:?}: {usage} bytes in a 1 MiB tier");
            assert!(tier.get(&key(18, 499)).await.unwrap().is_some(), "{eviction:?}: the newest entry");
            let mut kept = 0;
            for k in &hot {
                kept += usize::from(tier.get(k).await.unwrap().is_some());
            }
            survivors.push((eviction, kept));
            tier.close().await.unwrap();
        }
        println!("hot tiles kept through the scan, of 20: {survivors:?}");
        let kept = |e: MemoryEviction| survivors.iter().find(|(p, _)| *p == e).unwrap().1;
        assert_eq!(kept(MemoryEviction::Lru), 0, "LRU: the scan evicts the hot set: {survivors:?}");
        assert_eq!(kept(MemoryEviction::Fifo), 0, "{survivors:?}");
        for resistant in [MemoryEviction::Lfu, MemoryEviction::S3fifo, MemoryEviction::Sieve] {
            assert!(kept(resistant) >= 10, "{resistant:?} keeps most of the hot set: {survivors:?}");
        }
    }
}

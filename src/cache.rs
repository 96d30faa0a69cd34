//! Cache tiers behind one small interface, and the entry they store.
//!
//! An [`Entry`] is a complete upstream answer (a 200 tile, or later a remembered 404/204) that
//! knows when it was stored, until when it is fresh, and its ETag. [`Tier`] is the interface every
//! tier implements; [`TileCache`] asks its tiers in order, promotes a hit into the tiers before
//! it, and writes to all. Tiers fail open: an error is logged, counted and treated as a miss.
//!
//! The built-in tier is [`FoyerTier`]: a foyer `HybridCache` with a memory tier weighted by bytes
//! and a block-engine disk tier in the cache folder, written on insertion and flushed by
//! [`TileCache::close`], so entries survive a restart.

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy,
    PsyncIoEngineConfig, RecoverMode, Source,
};

use crate::key::CacheKey;
use crate::metrics::Metrics;

/// Boxed future returned by [`Tier`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One stored upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Upstream status: 200, or a remembered "no tile here" (404/204).
    pub status: u16,
    pub content_type: HeaderValue,
    /// Quoted ETag, from the upstream or derived from the body.
    pub etag: Option<HeaderValue>,
    /// Unix milliseconds when the body was fetched or last revalidated.
    pub stored_at_ms: u64,
    /// Unix milliseconds until which the entry is fresh.
    pub fresh_until_ms: u64,
    pub body: Bytes,
}

impl Entry {
    /// Seconds since stored (the `Age` header).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Whole seconds of freshness left, rounded down: never promises more than we have.
    pub fn remaining_secs(&self, now_ms: u64) -> u64 {
        self.fresh_until_ms.saturating_sub(now_ms) / 1000
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms
    }

    /// Bytes this entry weighs in the memory tier.
    pub fn weight(&self) -> usize {
        self.body.len() + self.content_type.len() + self.etag.as_ref().map_or(0, |e| e.len()) + 64
    }
}

const ENTRY_MAGIC: u8 = 0xE1;

fn io_err(msg: &str) -> foyer::Error {
    foyer::Error::io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string()))
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    w.write_all(&(b.len() as u32).to_le_bytes())?;
    w.write_all(b)
}

fn get_bytes(r: &mut impl Read, limit: usize) -> foyer::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(foyer::Error::io_error)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(io_err("entry field longer than allowed"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(foyer::Error::io_error)?;
    Ok(buf)
}

fn header_value(b: Vec<u8>) -> foyer::Result<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(b)).map_err(|_| io_err("invalid header value in entry"))
}

/// On-disk encoding: magic, status, times, then length-prefixed content type, ETag and body.
/// A new layout must bump [`crate::key::KEY_VERSION`] so old entries are never decoded.
impl Code for Entry {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        let run = |w: &mut dyn Write| -> std::io::Result<()> {
            let mut w = w;
            w.write_all(&[ENTRY_MAGIC])?;
            w.write_all(&self.status.to_le_bytes())?;
            w.write_all(&self.stored_at_ms.to_le_bytes())?;
            w.write_all(&self.fresh_until_ms.to_le_bytes())?;
            put_bytes(&mut w, self.content_type.as_bytes())?;
            match &self.etag {
                Some(e) => {
                    w.write_all(&[1])?;
                    put_bytes(&mut w, e.as_bytes())?;
                }
                None => w.write_all(&[0])?,
            }
            put_bytes(&mut w, &self.body)
        };
        run(w).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut head = [0u8; 1 + 2 + 8 + 8];
        r.read_exact(&mut head).map_err(foyer::Error::io_error)?;
        if head[0] != ENTRY_MAGIC {
            return Err(io_err("not a tile-proxy entry"));
        }
        let status = u16::from_le_bytes([head[1], head[2]]);
        let stored_at_ms = u64::from_le_bytes(head[3..11].try_into().map_err(|_| io_err("short entry"))?);
        let fresh_until_ms = u64::from_le_bytes(head[11..19].try_into().map_err(|_| io_err("short entry"))?);
        let content_type = header_value(get_bytes(r, 256)?)?;
        let mut flag = [0u8; 1];
        r.read_exact(&mut flag).map_err(foyer::Error::io_error)?;
        let etag = match flag[0] {
            0 => None,
            1 => Some(header_value(get_bytes(r, 256)?)?),
            _ => return Err(io_err("bad etag flag")),
        };
        let body = Bytes::from(get_bytes(r, 256 << 20)?);
        Ok(Entry { status, content_type, etag, stored_at_ms, fresh_until_ms, body })
    }

    fn estimated_size(&self) -> usize {
        1 + 2
            + 8
            + 8
            + 4
            + self.content_type.len()
            + 1
            + self.etag.as_ref().map_or(0, |e| 4 + e.len())
            + 4
            + self.body.len()
    }
}

/// Where a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitSource {
    Memory,
    Disk,
    /// A shared tier (Redis) in a later version.
    Remote,
}

impl HitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HitSource::Memory => "memory",
            HitSource::Disk => "disk",
            HitSource::Remote => "remote",
        }
    }
}

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
    /// Stores an entry (replacing any older one). Best effort.
    fn insert(&self, key: &CacheKey, entry: Entry);
    /// Forgets a key. Best effort.
    fn remove(&self, key: &CacheKey);
    /// Flushes and closes (entries in write buffers reach disk).
    fn close(&self) -> BoxFuture<'_, Result<(), TierError>>;
    /// JSON status for `/health`.
    fn status(&self) -> serde_json::Value;
}

/// The disk tier's block size for a largest entry: a power of two at least the entry plus
/// 64 KiB of headroom, and at least 1 MiB. foyer silently drops entries that do not fit a block.
pub fn block_size_for(max_entry: usize) -> usize {
    (max_entry + (64 << 10)).next_power_of_two().max(1 << 20)
}

/// foyer `HybridCache`: memory tier weighted by bytes, block-engine disk tier.
pub struct FoyerTier {
    cache: HybridCache<String, Entry>,
    disk_enabled: bool,
    memory_capacity: usize,
    disk_capacity: usize,
}

/// Sizes and place of the foyer tier.
#[derive(Debug, Clone)]
pub struct FoyerOptions<'a> {
    pub dir: &'a Path,
    pub memory: usize,
    /// 0 disables the disk tier.
    pub disk: usize,
    pub max_entry: usize,
}

impl FoyerTier {
    /// Opens the tier, recovering what the disk tier holds. Its I/O runs on a dedicated runtime.
    pub async fn open(opts: FoyerOptions<'_>, registry: &prometheus::Registry) -> Result<FoyerTier, TierError> {
        let err = |message: String| TierError { tier: "foyer", message };
        // The disk device first: a folder we cannot use fails here, before anything is registered.
        let device = if opts.disk > 0 {
            std::fs::create_dir_all(opts.dir)
                .map_err(|e| err(format!("cannot create cache dir {}: {e}", opts.dir.display())))?;
            let device = FsDeviceBuilder::new(opts.dir)
                .with_capacity(opts.disk)
                .build()
                .map_err(|e| err(format!("cannot open cache dir {}: {e}", opts.dir.display())))?;
            Some(device)
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("foyer")
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start the cache runtime: {e}")))?;
        let metrics = mixtrics::registry::prometheus::PrometheusMetricsRegistry::new(registry.clone());
        let builder = HybridCacheBuilder::new()
            .with_name("tiles")
            .with_metrics_registry(Box::new(metrics))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .memory(opts.memory)
            .with_weighter(|k: &String, v: &Entry| k.len() + v.weight())
            .storage()
            .with_spawner(runtime.into());
        let cache = match device {
            Some(device) => {
                builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(BlockEngineConfig::new(device).with_block_size(block_size_for(opts.max_entry)))
                    .with_recover_mode(RecoverMode::Quiet)
                    .build()
                    .await
            }
            None => builder.build().await,
        }
        .map_err(|e| err(format!("cannot open the cache: {e}")))?;
        Ok(FoyerTier { cache, disk_enabled: opts.disk > 0, memory_capacity: opts.memory, disk_capacity: opts.disk })
    }
}

impl Tier for FoyerTier {
    fn name(&self) -> &'static str {
        "foyer"
    }

    fn peek(&self, key: &CacheKey) -> Option<(Entry, HitSource)> {
        self.cache.memory().get(key.as_str()).map(|e| (e.value().clone(), HitSource::Memory))
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<(Entry, HitSource)>, TierError>> {
        Box::pin(async move {
            match self.cache.get(key.as_str()).await {
                Ok(Some(e)) => {
                    let source = match e.source() {
                        Source::Disk => HitSource::Disk,
                        _ => HitSource::Memory,
                    };
                    Ok(Some((e.value().clone(), source)))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(TierError { tier: "foyer", message: e.to_string() }),
            }
        })
    }

    fn insert(&self, key: &CacheKey, entry: Entry) {
        self.cache.insert(key.as_str().to_string(), entry);
    }

    fn remove(&self, key: &CacheKey) {
        self.cache.remove(key.as_str());
    }

    fn close(&self) -> BoxFuture<'_, Result<(), TierError>> {
        Box::pin(
            async move { self.cache.close().await.map_err(|e| TierError { tier: "foyer", message: e.to_string() }) },
        )
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "tier": "foyer",
            "memory": {"capacity_bytes": self.memory_capacity, "used_bytes": self.cache.memory().usage()},
            "disk": {"enabled": self.disk_enabled, "capacity_bytes": self.disk_capacity},
        })
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

    /// First hit wins. A failing tier counts as a miss for that tier.
    pub async fn get(&self, key: &CacheKey) -> Option<(Entry, HitSource)> {
        if let Some(hit) = self.tiers.first().and_then(|t| t.peek(key)) {
            return Some(hit);
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            match tier.get(key).await {
                Ok(Some((entry, source))) => {
                    for earlier in &self.tiers[..i] {
                        earlier.insert(key, entry.clone());
                    }
                    return Some((entry, source));
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.cache_errors.with_label_values(&[tier.name(), "get"]).inc();
                    tracing::warn!(error = %e, "cache tier failed on get; treated as a miss");
                }
            }
        }
        None
    }

    /// Stores into every tier.
    pub fn insert(&self, key: &CacheKey, entry: Entry) {
        for tier in &self.tiers {
            tier.insert(key, entry.clone());
        }
    }

    /// Removes from every tier.
    pub fn remove(&self, key: &CacheKey) {
        for tier in &self.tiers {
            tier.remove(key);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8]) -> Entry {
        Entry {
            status: 200,
            content_type: HeaderValue::from_static("image/png"),
            etag: Some(HeaderValue::from_static("\"abc\"")),
            stored_at_ms: 1_700_000_000_000,
            fresh_until_ms: 1_700_000_060_000,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn entry_roundtrip() {
        for e in [entry(b"\x89PNG..."), Entry { etag: None, status: 404, ..entry(b"") }] {
            let mut buf = Vec::new();
            e.encode(&mut buf).unwrap();
            assert_eq!(buf.len(), e.estimated_size());
            let back = Entry::decode(&mut buf.as_slice()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn corrupt_entries_are_rejected() {
        let mut buf = Vec::new();
        entry(b"data").encode(&mut buf).unwrap();
        let mut bad = buf.clone();
        bad[0] = 0;
        assert!(Entry::decode(&mut bad.as_slice()).is_err());
        let short = &buf[..buf.len() - 2];
        assert!(Entry::decode(&mut &short[..]).is_err());
    }

    #[test]
    fn freshness_helpers() {
        let e = entry(b"x");
        assert!(e.is_fresh(1_700_000_059_999));
        assert!(!e.is_fresh(1_700_000_060_000));
        assert_eq!(e.remaining_secs(1_700_000_000_500), 59);
        assert_eq!(e.age_secs(1_700_000_002_999), 2);
    }

    #[test]
    fn block_sizes() {
        assert_eq!(block_size_for(2 << 20), 4 << 20);
        assert_eq!(block_size_for(10_000), 1 << 20);
        assert!(block_size_for(60_000) >= 60_000 + (64 << 10));
    }
}

//! The built-in defaults and the bounds of every setting, as named constants (`--help` shows
//! the same values), and the disk tier's block size they imply.

use std::time::Duration;

use bytesize::ByteSize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default raster (v3) upstream base URL.
pub const DEFAULT_RASTER_UPSTREAM: &str = "https://maps.hereapi.com";
/// Default vector (v2) upstream base URL.
pub const DEFAULT_VECTOR_UPSTREAM: &str = "https://vector.hereapi.com";
/// Default Traffic Raster Tile API v3 upstream base URL.
pub const DEFAULT_TRAFFIC_RASTER_UPSTREAM: &str = "https://traffic.maps.hereapi.com";
/// Default Traffic Vector Tile API v2 upstream base URL.
pub const DEFAULT_TRAFFIC_VECTOR_UPSTREAM: &str = "https://traffic.vector.hereapi.com";
/// How long a traffic tile is fresh for an index that sets nothing: HERE's flow changes about
/// once a minute, so half of that.
pub const DEFAULT_TRAFFIC_TTL: Duration = Duration::from_secs(30);
/// How long, past its freshness, the last known traffic may stand in for a failing upstream.
pub const DEFAULT_TRAFFIC_STALE_IF_ERROR: Duration = Duration::from_secs(300);
/// Default cache folder (the disk tier's block files live here).
pub const DEFAULT_CACHE_DIR: &str = "./tile-cache";
/// Default memory tier size.
pub const DEFAULT_MEMORY_CACHE: ByteSize = ByteSize::mib(256);
/// Default disk tier size.
pub const DEFAULT_DISK_CACHE: ByteSize = ByteSize::gib(1);
/// Default cap on any TTL (`CACHE_TTL_CAP`): 7 days.
pub const DEFAULT_TTL_CAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// TTL used when neither the index nor the upstream says anything: 1 day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest tile body that is stored; larger ones are streamed but not cached.
pub const DEFAULT_MAX_ENTRY: ByteSize = ByteSize::mib(2);
/// Bytes one in-flight fetch may buffer for requests that join it late.
pub const DEFAULT_FLIGHT_BUFFER: ByteSize = ByteSize::mib(8);
/// Each of the disk tier's two write buffers (foyer's flush buffer; both stay resident).
pub const DEFAULT_DISK_WRITE_BUFFER: ByteSize = ByteSize::mib(8);
/// Room `disk_write_buffer` must have beyond `max_entry_size` (the entry's header, page alignment).
pub const DISK_WRITE_BUFFER_HEADROOM: ByteSize = ByteSize::kib(64);
/// Default `redis_max_value`.
pub const DEFAULT_REDIS_MAX_VALUE: ByteSize = ByteSize::mib(4);
/// Default `[redis] lease` (the fleet fetch lease): renewed every third (2 s) while its fetch
/// runs, it survives two missed renewals, and a dead holder's lease frees its tile within 6 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);
/// Tiles the cache map keeps (`cache_map_tiles`): about 14 MB.
pub const DEFAULT_CACHE_MAP_TILES: u64 = 200_000;
/// Most `cache_map_tiles`.
pub const MAX_CACHE_MAP_TILES: u64 = 10_000_000;

/// Smallest `flight_buffer`.
pub const MIN_FLIGHT_BUFFER: ByteSize = ByteSize::kib(64);

/// Longest duration any setting accepts (TTLs, stale windows): 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest timeout, delay or cooldown: 1 hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest size any setting accepts: 1 TiB.
pub const MAX_SIZE: ByteSize = ByteSize::tib(1);
/// Largest `max_entry_size` and `flight_buffer` (both are held in memory whole): 1 GiB.
pub const MAX_BUFFERED: ByteSize = ByteSize::gib(1);
/// Most worker threads.
pub const MAX_WORKERS: usize = 1024;

/// Default `early_refresh_beta`: XFetch's own recommendation.
pub const DEFAULT_EARLY_REFRESH_BETA: f64 = 1.0;
/// Largest `early_refresh_beta` accepted (10 refreshes about 10 fetch times before expiry).
pub const MAX_EARLY_REFRESH_BETA: f64 = 10.0;

/// The disk tier's block size for a largest entry: a power of two at least the entry plus
/// 64 KiB of headroom, and at least 1 MiB. foyer silently drops entries that do not fit a block.
pub fn block_size_for(max_entry: usize) -> usize {
    (max_entry + (64 << 10)).next_power_of_two().max(1 << 20)
}

/// The per-client rate limit every index gets unless configured (`[defaults] rate_limit`; 0 = off):
/// requests per second refilled. A full-screen map at 4K (3840x2160) shows 8x5 tiles of 512 px,
/// 16x9 of 256 px: with the rows and columns libraries load around the view (and the partial
/// ones at the edges) 60-200 tiles a screen. Panning a screen a second, or zooming through
/// levels (each a new screen), with an overlay (traffic) on the same index, is a few hundred
/// tiles a second for a few seconds, which [`DEFAULT_RATE_BURST`] absorbs; what is left a
/// second for a person who keeps moving is well under 100 (the browser caches what it saw).
/// A scraper asks as fast as the proxy answers: thousands a second, and is held to 100.
pub const DEFAULT_RATE_LIMIT: f64 = 100.0;
/// The default bucket: 1000 requests at once (five full 4K screens of 256 px tiles with the
/// overlay), refilled in 10 s at [`DEFAULT_RATE_LIMIT`].
pub const DEFAULT_RATE_BURST: u32 = 1000;

/// `[billing] bill_not_modified`: a 304 revalidation counts as a billable transaction.
pub const DEFAULT_BILL_NOT_MODIFIED: bool = true;
/// Highest `price_per_1000` accepted (a typo guard).
pub const MAX_PRICE_PER_1000: f64 = 1_000_000.0;

//! The cache map ([`CacheMap`]): per index and tile (`z/x/y`), when it was last requested and
//! when the copy last served or stored for it was stored. The admin API draws it
//! (`/admin/cache-map`, GeoJSON or PNG tiles) and the map page's "cache" overlay shows it: after
//! a seed which areas are warm, after a purge which are cold, which areas users look at.
//!
//! Bounded: at most `cache_map_tiles` tiles (0 turns it off), in 64 shards of a fixed size each
//! (48 bytes a tile plus its hash-map entry: about 14 MB for the default 200,000, allocated as
//! tiles come);
//! a full shard replaces the least recently requested of 8 slots next to its clock hand
//! (sampled, like Redis' approximate LRU). Per request ([`CacheMap::record`]) it costs one
//! FNV-1a hash of the index name, one mix, one uncontended mutex and one hash-map probe; the
//! cache key is hashed only when the stored copy changed (a fill, not a hit).
//!
//! The map only knows what this pod served: entries another pod stored in Redis, or that the
//! tiers evicted or let expire since, are not seen until requested here. Several tiles sharing an
//! index and `z/x/y` (styles, formats, resources) share one slot: the last one served wins.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};

use crate::domain::purge::Rule;

/// Shards (a power of two): requests on different workers rarely take the same lock.
const SHARDS: usize = 64;
/// Slots looked at to pick one to replace when a shard is full.
const SAMPLE: usize = 8;

/// What the map knows of one tile of one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSeen {
    pub z: u8,
    pub x: u32,
    pub y: u32,
    /// Unix ms of the last request.
    pub requested_ms: u64,
    /// Unix ms when the copy last served or stored for it was stored; 0: none known (every
    /// request failed or was refused, or the answer was not cacheable).
    pub stored_ms: u64,
    /// A hash of that copy's cache key ([`key_hash`]), for purge rules naming one key; 0: none.
    pub key_hash: u64,
}

/// A tile's state on the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TileState {
    /// A copy is known and no purge rule made since matches it.
    Cached,
    /// A copy is known, and a purge rule newer than it matches: the next request refetches.
    Purged,
    /// Requested within the window, no copy known.
    Requested,
}

impl TileState {
    pub fn as_str(self) -> &'static str {
        match self {
            TileState::Cached => "cached",
            TileState::Purged => "purged",
            TileState::Requested => "requested",
        }
    }
}

impl TileSeen {
    /// The state of this tile of `index` at `now_ms`, given the active purge `rules`; `None`
    /// when nothing is known worth showing (no copy, and no request within `recent_ms`): drawn
    /// as never seen.
    pub fn state(&self, index: &str, rules: &[Rule], now_ms: u64, recent_ms: u64) -> Option<TileState> {
        if self.stored_ms == 0 {
            return (now_ms.saturating_sub(self.requested_ms) <= recent_ms).then_some(TileState::Requested);
        }
        let purged = rules.iter().any(|r| {
            if r.at_ms <= self.stored_ms {
                return false;
            }
            // A rule naming one cache key matches when it names this copy's key.
            let key = match &r.key {
                Some(k) if key_hash(k) == self.key_hash => k.as_str(),
                Some(_) => return false,
                None => "",
            };
            r.matches(index, self.z, self.x, self.y, key)
        });
        Some(if purged { TileState::Purged } else { TileState::Cached })
    }
}

/// The hash of a cache key kept per tile (FNV-1a, never 0).
pub fn key_hash(key: &str) -> u64 {
    let mut h = crate::base::hashing::FnvHasher::default();
    h.write(key.as_bytes());
    h.finish() | 1
}

/// The map's keys are hashes already: used as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The map key: [`tile_id`] of the index and tile.
    id: u64,
    index_hash: u64,
    /// `z << 48 | x << 24 | y`.
    tile: u64,
    requested_ms: u64,
    stored_ms: u64,
    key_hash: u64,
}

#[derive(Default)]
struct Shard {
    ids: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    slots: Vec<Slot>,
    hand: usize,
}

/// The per-process map of what was requested and cached where. See the module documentation.
pub struct CacheMap {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl std::fmt::Debug for CacheMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheMap").field("capacity", &self.capacity()).field("len", &self.len()).finish()
    }
}

fn pack(z: u8, x: u32, y: u32) -> u64 {
    (u64::from(z) << 48) | (u64::from(x & 0xff_ffff) << 24) | u64::from(y & 0xff_ffff)
}

fn unpack(tile: u64) -> (u8, u32, u32) {
    ((tile >> 48) as u8, ((tile >> 24) & 0xff_ffff) as u32, (tile & 0xff_ffff) as u32)
}

fn index_hash(index: &str) -> u64 {
    let mut h = crate::base::hashing::FnvHasher::default();
    h.write(index.as_bytes());
    h.finish()
}

/// The id of a tile of an index (splitmix64's finaliser over both): spreads over the shards.
fn tile_id(index_hash: u64, tile: u64) -> u64 {
    let mut z = index_hash ^ tile.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl CacheMap {
    /// A map of at most `tiles` tiles (rounded up to a multiple of 64); 0: off (records nothing).
    pub fn new(tiles: usize) -> CacheMap {
        let per_shard = tiles.div_ceil(SHARDS);
        CacheMap { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), per_shard }
    }

    /// How many tiles it keeps at most (0: off).
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// How many tiles it holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a request for tile `(z, x, y)` of `index` at `now_ms`, answered from (or by storing)
    /// a copy stored at `stored_ms` (`None`: no copy, e.g. a failed fetch; the last known copy
    /// is kept). `key` gives that copy's cache key; called only when the stored copy changed.
    pub fn record(
        &self,
        index: &str,
        (z, x, y): (u8, u32, u32),
        now_ms: u64,
        stored_ms: Option<u64>,
        key: impl FnOnce() -> u64,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let (ih, tile) = (index_hash(index), pack(z, x, y));
        let id = tile_id(ih, tile);
        let mut shard = lock(&self.shards[shard_of(id)]);
        if let Some(&i) = shard.ids.get(&id) {
            let slot = &mut shard.slots[i as usize];
            slot.requested_ms = slot.requested_ms.max(now_ms);
            if let Some(at) = stored_ms {
                if at != slot.stored_ms {
                    slot.stored_ms = at;
                    slot.key_hash = key();
                }
            }
            return;
        }
        let slot = Slot {
            id,
            index_hash: ih,
            tile,
            requested_ms: now_ms,
            stored_ms: stored_ms.unwrap_or(0),
            key_hash: if stored_ms.is_some() { key() } else { 0 },
        };
        let len = shard.slots.len();
        if len < self.per_shard {
            // Grown by doubling, but never past the bound.
            if len == shard.slots.capacity() {
                let more = len.max(16).min(self.per_shard - len);
                shard.slots.reserve_exact(more);
            }
            shard.slots.push(slot);
            let i = len as u32;
            shard.ids.insert(id, i);
            return;
        }
        // Full: replace the least recently requested of the slots at the clock hand.
        let n = shard.slots.len();
        let start = shard.hand % n;
        let victim =
            (start..start + SAMPLE.min(n)).map(|i| i % n).min_by_key(|&i| shard.slots[i].requested_ms).unwrap_or(start);
        shard.hand = start + SAMPLE;
        let old = shard.slots[victim].id;
        shard.ids.remove(&old);
        shard.slots[victim] = slot;
        shard.ids.insert(id, victim as u32);
    }

    /// What is known of tile `z/x/y` of `index`.
    pub fn get(&self, index: &str, z: u8, x: u32, y: u32) -> Option<TileSeen> {
        let (ih, tile) = (index_hash(index), pack(z, x, y));
        let id = tile_id(ih, tile);
        let shard = lock(&self.shards[shard_of(id)]);
        shard.ids.get(&id).map(|&i| seen(&shard.slots[i as usize]))
    }

    /// Every tile of `index` that `wanted` accepts, in no order; stops after `limit` (the bool:
    /// whether it stopped). Holds one shard's lock at a time.
    pub fn tiles(&self, index: &str, wanted: impl Fn(&TileSeen) -> bool, limit: usize) -> (Vec<TileSeen>, bool) {
        let ih = index_hash(index);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for slot in shard.slots.iter().filter(|s| s.index_hash == ih) {
                let tile = seen(slot);
                if wanted(&tile) {
                    if out.len() == limit {
                        return (out, true);
                    }
                    out.push(tile);
                }
            }
        }
        (out, false)
    }
}

/// The shard of an id: middle bits (the hash map inside uses the low ones for its buckets and
/// the top seven for its tags).
fn shard_of(id: u64) -> usize {
    (id >> 32) as usize & (SHARDS - 1)
}

fn seen(slot: &Slot) -> TileSeen {
    let (z, x, y) = unpack(slot.tile);
    TileSeen { z, x, y, requested_ms: slot.requested_ms, stored_ms: slot.stored_ms, key_hash: slot.key_hash }
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, at_ms: u64) -> Rule {
        Rule { id: id.into(), at_ms, index: None, zoom: None, bbox: None, tiles: None, key: None, url: None }
    }

    #[test]
    fn records_requests_and_copies() {
        let m = CacheMap::new(1000);
        m.record("a", (3, 1, 2), 100, None, || unreachable!("no copy, no key"));
        let t = m.get("a", 3, 1, 2).unwrap();
        assert_eq!((t.requested_ms, t.stored_ms, t.key_hash), (100, 0, 0));
        m.record("a", (3, 1, 2), 200, Some(150), || 7);
        m.record("a", (3, 1, 2), 300, Some(150), || unreachable!("same copy: the key is not hashed again"));
        m.record("a", (3, 1, 2), 250, None, || unreachable!());
        let t = m.get("a", 3, 1, 2).unwrap();
        assert_eq!((t.z, t.x, t.y, t.requested_ms, t.stored_ms, t.key_hash), (3, 1, 2, 300, 150, 7));
        assert!(m.get("b", 3, 1, 2).is_none() && m.get("a", 3, 2, 1).is_none());
        assert_eq!(m.len(), 1);
        // Off: nothing kept.
        let off = CacheMap::new(0);
        off.record("a", (3, 1, 2), 100, Some(1), || 1);
        assert!(off.is_empty() && off.get("a", 3, 1, 2).is_none());
    }

    #[test]
    fn bounded_and_keeps_the_recently_requested() {
        let m = CacheMap::new(640); // 10 per shard
        for i in 0..5000u32 {
            m.record("a", (14, i, 0), u64::from(i), Some(1), || 1);
        }
        assert_eq!(m.capacity(), 640);
        assert!(m.shards.iter().all(|s| lock(s).slots.capacity() <= 10), "never allocated past the bound");
        assert!(m.len() <= 640 && m.len() > 600, "{}", m.len());
        // The newest ones survive (each replaced the oldest of 8 next to the hand).
        let recent = (4900..5000).filter(|&i| m.get("a", 14, i, 0).is_some()).count();
        let old = (0..100).filter(|&i| m.get("a", 14, i, 0).is_some()).count();
        assert!(recent > 80 && old == 0, "recent {recent}, old {old}");
    }

    #[test]
    fn lists_one_index_in_an_area() {
        let m = CacheMap::new(1000);
        for x in 0..4 {
            m.record("a", (2, x, 1), 10, Some(5), || 1);
        }
        m.record("b", (2, 0, 1), 10, Some(5), || 1);
        let (mut tiles, more) = m.tiles("a", |t| t.z == 2 && t.x < 2, 100);
        tiles.sort_by_key(|t| t.x);
        assert!(!more);
        assert_eq!(tiles.iter().map(|t| (t.z, t.x, t.y)).collect::<Vec<_>>(), [(2, 0, 1), (2, 1, 1)]);
        let (tiles, more) = m.tiles("a", |_| true, 3);
        assert!(more && tiles.len() == 3);
    }

    #[test]
    fn states() {
        let t = TileSeen { z: 5, x: 10, y: 11, requested_ms: 1_000, stored_ms: 500, key_hash: key_hash("k1") };
        assert_eq!(t.state("a", &[], 2_000, 60_000), Some(TileState::Cached));
        // Rules: older than the copy (no), another index (no), this zoom (yes).
        let older = Rule { zoom: Some([0, 22]), ..rule("1", 400) };
        let other = Rule { index: Some("b".into()), ..rule("2", 600) };
        assert_eq!(t.state("a", &[older.clone(), other.clone()], 2_000, 60_000), Some(TileState::Cached));
        let zoom = Rule { zoom: Some([5, 5]), ..rule("3", 600) };
        assert_eq!(t.state("a", &[older, other, zoom], 2_000, 60_000), Some(TileState::Purged));
        // Key rules: this copy's key, or another.
        let key = Rule { key: Some("k1".into()), ..rule("4", 600) };
        let other_key = Rule { key: Some("k2".into()), ..rule("5", 600) };
        assert_eq!(t.state("a", &[other_key], 2_000, 60_000), Some(TileState::Cached));
        assert_eq!(t.state("a", &[key], 2_000, 60_000), Some(TileState::Purged));
        // A bbox rule over Africa does not touch a tile of the Americas.
        let bbox = Rule { bbox: Some([10.0, -10.0, 20.0, 10.0]), ..rule("6", 600) };
        assert_eq!(t.state("a", &[bbox], 2_000, 60_000), Some(TileState::Cached));
        // No copy: requested within the window, else nothing to show.
        let asked = TileSeen { stored_ms: 0, key_hash: 0, ..t };
        assert_eq!(asked.state("a", &[], 2_000, 60_000), Some(TileState::Requested));
        assert_eq!(asked.state("a", &[], 100_000, 60_000), None);
    }
}

//! Cache keys: a typed, versioned, machine-independent name for one tile of one index.
//!
//! The key is a readable string (`tp1|<index>|<api>|<resource>|<z>/<x>/<y>|<format>|<query>`)
//! built only from a validated [`TileRequest`], so it never holds a key or anything unvalidated.
//! Every field's charset excludes `|` except the query, which comes last, so two different tiles
//! never share a key. Hashes derived from it ([`stable_hash`]) use SHA-256, identical on every
//! machine (needed once tiers are shared through Redis).

use sha2::{Digest, Sha256};

use crate::routes::TileRequest;

/// Bumped whenever the key layout or the entry encoding changes, so old entries are never read.
pub const KEY_VERSION: &str = "tp1";

/// The cache key of a tile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Derives the key of a validated request.
    pub fn of(t: &TileRequest) -> CacheKey {
        CacheKey(format!(
            "{KEY_VERSION}|{}|{}|{}|{}/{}/{}|{}|{}",
            t.index,
            t.api.as_str(),
            t.resource,
            t.z,
            t.x,
            t.y,
            t.format,
            t.query_string()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The index part of the key.
    pub fn index(&self) -> &str {
        self.0.split('|').nth(1).unwrap_or_default()
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hex SHA-256 of `data`, truncated to `hex_len` characters (at most 64).
pub fn stable_hash(data: &[u8], hex_len: usize) -> String {
    let digest = Sha256::digest(data);
    let mut s = hex::encode(digest);
    s.truncate(hex_len.min(64));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{parse, ParseOptions};

    fn key(path: &str, q: &str) -> CacheKey {
        CacheKey::of(&parse(path, q, ParseOptions::default()).unwrap().unwrap())
    }

    #[test]
    fn layout_is_stable() {
        assert_eq!(
            key("/here-proxy/mc/5/15/13/png", "indice=123&style=explore.day&size=512&lang=en").as_str(),
            "tp1|123|raster|base|5/15/13|png|lang=en&size=512"
        );
        assert_eq!(key("/v2/vectortiles/core/mc/1/0/1/omv", "").as_str(), "tp1|default|vector|core|1/0/1|omv|");
        assert_eq!(key("/here-proxy/mc/5/15/13/png", "indice=abc").index(), "abc");
    }

    #[test]
    fn same_tile_same_key_different_tile_different_key() {
        let same = [
            ("/here-proxy/mc/5/15/13/png", "indice=1&size=512&lang=en&apiKey=A"),
            ("/here-proxy/5/15/13/png", "lang=en&size=512&indice=1&apikey=B"),
            ("/v3/base/mc/5/15/13/png", "style=explore.day&size=512&lang=en&indice=1"),
        ];
        let k0 = key(same[0].0, same[0].1);
        for (p, q) in same {
            assert_eq!(key(p, q), k0, "{p}?{q}");
        }
        let different = [
            ("/here-proxy/mc/5/15/13/png", "indice=2&size=512&lang=en"),
            ("/here-proxy/mc/5/15/14/png", "indice=1&size=512&lang=en"),
            ("/here-proxy/mc/5/15/13/png8", "indice=1&size=512&lang=en"),
            ("/v3/label/mc/5/15/13/png", "indice=1&size=512&lang=en"),
            ("/here-proxy/mc/5/15/13/png", "indice=1&size=512&lang=de"),
            ("/v2/vectortiles/base/mc/5/15/13/omv", "indice=1"),
        ];
        for (p, q) in different {
            assert_ne!(key(p, q), k0, "{p}?{q}");
        }
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(stable_hash(b"abc", 16), "ba7816bf8f01cfea");
        assert_eq!(stable_hash(b"abc", 100).len(), 64);
    }
}

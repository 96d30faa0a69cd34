//! Cache keys: a typed, versioned, machine-independent name for one upstream tile.
//!
//! A stored entry is what one upstream returns for one request, so the key names exactly that:
//! `tp2|<upstream>|<credential>|<api>|<resource>|<z>/<x>/<y>|<format>|<query>`, where
//! `<upstream>` is a hash of the configured base URL and `<credential>` a hash of whose HERE key
//! is sent: the server's, an index's own, or none (never the key, nor a hash of it). The index
//! (`indice`) is **not** in the key: every index asking for the same tile shares one entry and
//! one upstream request, and applies its own policy when serving it. An index with its own HERE
//! key gets its own entries through the credential part; tiles fetched from a test upstream are
//! never served for a different upstream base. A rotated key keeps its entries: rotating the
//! server's key (a reload) does not turn the fleet's whole cache into misses paid again.
//!
//! Every field's charset excludes `|` except the query, which comes last, so two different tiles
//! never share a key. Hashes use SHA-256 ([`stable_hash`]), identical on every machine (the key
//! is shared through Redis).

use crate::base::hashing::stable_hash;
use crate::domain::routes::TileRequest;

/// Bumped whenever the key layout or the entry encoding changes, so old entries are never read.
pub const KEY_VERSION: &str = "tp2";

/// The cache key of a tile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

/// Who answers a request: stable ids of the upstream base URL and of the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub upstream_id: String,
    pub credential_id: String,
    /// `tp2|<upstream_id>|<credential_id>|`: every key of this origin starts with it.
    prefix: String,
}

impl Origin {
    /// `base_url` as configured (trailing `/` and case of scheme/host ignored); `holder` whose
    /// HERE key is sent with the request ([`SERVER_KEY`], [`index_key`]), `None` without one.
    pub fn new(base_url: &str, holder: Option<&str>) -> Origin {
        let base = base_url.trim_end_matches('/').to_ascii_lowercase();
        let upstream_id = stable_hash(base.as_bytes(), 12);
        let credential_id = credential_id(holder);
        let prefix = format!("{KEY_VERSION}|{upstream_id}|{credential_id}|");
        Origin { upstream_id, credential_id, prefix }
    }
}

/// The holder of the server's HERE key, for [`Origin::new`].
pub const SERVER_KEY: &str = "server";

/// The holder of an index's own HERE key, for [`Origin::new`].
pub fn index_key(index: &str) -> String {
    format!("index\0{index}")
}

/// A hash naming a credential by its holder (not by the key: a rotated key is the same
/// credential); safe to log, store and share.
pub fn credential_id(holder: Option<&str>) -> String {
    match holder {
        Some(h) => stable_hash(format!("tile-proxy credential\0{h}").as_bytes(), 16),
        None => "anon".to_string(),
    }
}

impl CacheKey {
    /// Derives the key of a validated request sent to `origin`.
    pub fn of(t: &TileRequest, origin: &Origin) -> CacheKey {
        // Pushed piece by piece: `write!` costs about 1,200 instructions here, on every hit.
        let mut k = String::with_capacity(origin.prefix.len() + 48 + t.params.len() * 24);
        let mut num = itoa::Buffer::new();
        k.push_str(&origin.prefix);
        for (piece, sep) in [(t.api.as_str(), '|'), (t.resource, '|')] {
            k.push_str(piece);
            k.push(sep);
        }
        k.push_str(num.format(t.z));
        k.push('/');
        k.push_str(num.format(t.x));
        k.push('/');
        k.push_str(num.format(t.y));
        k.push('|');
        k.push_str(t.format);
        k.push('|');
        t.write_query(&mut k);
        CacheKey(k)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of this tile's `encoding` form (a compressed variant, `crate::service::body`) of the
    /// body version `version_ms`: `<encoding>@<version>|<tile key>`. Tile keys start with
    /// [`KEY_VERSION`], so a variant key is never a tile's, and a new body version never finds
    /// an old variant.
    pub fn variant(&self, encoding: &str, version_ms: u64) -> CacheKey {
        CacheKey(format!("{encoding}@{version_ms:x}|{}", self.0))
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::routes::{parse, ParseOptions};

    fn origin() -> Origin {
        Origin::new("https://maps.hereapi.com", Some("KEY"))
    }

    fn key(path: &str, q: &str) -> CacheKey {
        CacheKey::of(&parse(path, q, ParseOptions::default()).unwrap().unwrap(), &origin())
    }

    #[test]
    fn layout_is_stable() {
        let o = origin();
        assert_eq!(o.upstream_id, stable_hash(b"https://maps.hereapi.com", 12));
        assert_eq!(
            key("/here-proxy/mc/5/15/13/png", "indice=123&style=explore.day&size=512&lang=en").as_str(),
            format!("tp2|{}|{}|raster|base|5/15/13|png|lang=en&size=512", o.upstream_id, o.credential_id)
        );
        assert!(!key("/v2/vectortiles/core/mc/1/0/1/omv", "").as_str().contains("KEY"));
    }

    #[test]
    fn same_tile_same_key_whatever_the_index_different_tile_different_key() {
        let same = [
            ("/here-proxy/mc/5/15/13/png", "indice=1&size=512&lang=en&apiKey=A"),
            ("/here-proxy/5/15/13/png", "lang=en&size=512&indice=2&apikey=B"),
            ("/v3/base/mc/5/15/13/png", "style=explore.day&size=512&lang=en"),
        ];
        let k0 = key(same[0].0, same[0].1);
        for (p, q) in same {
            assert_eq!(key(p, q), k0, "{p}?{q}");
        }
        let different = [
            ("/here-proxy/mc/5/15/14/png", "size=512&lang=en"),
            ("/here-proxy/mc/5/15/13/png8", "size=512&lang=en"),
            ("/v3/label/mc/5/15/13/png", "size=512&lang=en"),
            ("/here-proxy/mc/5/15/13/png", "size=512&lang=de"),
            ("/v2/vectortiles/base/mc/5/15/13/omv", ""),
        ];
        for (p, q) in different {
            assert_ne!(key(p, q), k0, "{p}?{q}");
        }
    }

    #[test]
    fn the_upstream_and_the_credential_are_part_of_the_identity() {
        let t = parse("/here-proxy/1/0/0/png", "", ParseOptions::default()).unwrap().unwrap();
        let here = CacheKey::of(&t, &Origin::new("https://maps.hereapi.com/", Some(SERVER_KEY)));
        assert_eq!(here, CacheKey::of(&t, &Origin::new("HTTPS://MAPS.HEREAPI.COM", Some(SERVER_KEY))));
        assert_ne!(here, CacheKey::of(&t, &Origin::new("http://127.0.0.1:9090", Some(SERVER_KEY))));
        let tenant = index_key("tenant");
        assert_ne!(here, CacheKey::of(&t, &Origin::new("https://maps.hereapi.com", Some(&tenant))));
        assert_ne!(here, CacheKey::of(&t, &Origin::new("https://maps.hereapi.com", None)));
    }

    #[test]
    fn variant_keys_name_encoding_and_version_and_are_never_tile_keys() {
        let k = key("/v2/vectortiles/base/mc/5/15/13/omv", "");
        let br = k.variant("br", 0x10);
        assert_eq!(br.as_str(), format!("br@10|{}", k.as_str()));
        assert!(!br.as_str().starts_with(KEY_VERSION));
        assert_ne!(br, k.variant("gzip", 0x10));
        assert_ne!(br, k.variant("br", 0x11));
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(stable_hash(b"abc", 16), "ba7816bf8f01cfea");
        assert_eq!(stable_hash(b"abc", 100).len(), 64);
    }
}

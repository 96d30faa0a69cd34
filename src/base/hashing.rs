//! Hashing that is the same on every machine and every run (the cache key and Redis names are
//! shared by the fleet: never `DefaultHasher` or ahash there), and the cheap FNV-1a hasher for
//! small hot maps.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `data`, truncated to `hex_len` characters (at most 64).
pub fn stable_hash(data: &[u8], hex_len: usize) -> String {
    let digest = Sha256::digest(data);
    let mut s = hex::encode(digest);
    s.truncate(hex_len.min(64));
    s
}

/// FNV-1a, for maps keyed by short strings an operator made (purge rules, index names) and
/// hashed on the hot path: SipHash's flooding resistance buys nothing there and costs a few
/// hundred instructions a hit.
pub type Fnv = std::hash::BuildHasherDefault<FnvHasher>;

#[derive(Debug, Default)]
pub struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

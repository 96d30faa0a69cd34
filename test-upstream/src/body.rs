//! Deterministic tile bodies, ETags, correlation ids and query helpers.
//!
//! Everything here is pure and stable across processes and versions of this crate's
//! dependencies: hashing is hand-written FNV-1a 64 and splitmix64, so two servers (or a
//! server and a test calling [`crate::Upstream::tile_bytes`]) always agree on the bytes.

use bytes::Bytes;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// PNG file signature; raster png/png8 bodies start with it.
pub(crate) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// JPEG start-of-image marker plus the first byte of the next marker.
pub(crate) const JPEG_SOI: [u8; 3] = [0xff, 0xd8, 0xff];

/// FNV-1a 64 over `bytes`, continuing from `h`.
pub(crate) fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// One step of splitmix64: advances `state` and returns the next output.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix64(*state)
}

/// The splitmix64 finaliser (a good 64-bit bit mixer).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fast hash of a whole body, 8 bytes at a time; used for the ETag.
pub(crate) fn body_hash(body: &[u8]) -> u64 {
    let mut h = FNV_OFFSET ^ (body.len() as u64);
    let mut words = body.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(FNV_PRIME).rotate_left(23);
    }
    h = fnv1a(h, words.remainder());
    mix64(h)
}

/// What a 200 body should look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `png` / `png8`: starts with the PNG signature.
    Png,
    /// `jpeg`: starts with `FF D8 FF`.
    Jpeg,
    /// Vector `omv`: pseudo-random bytes only.
    Omv,
}

impl BodyKind {
    fn prefix(self) -> &'static [u8] {
        match self {
            BodyKind::Png => &PNG_SIGNATURE,
            BodyKind::Jpeg => &JPEG_SOI,
            BodyKind::Omv => &[],
        }
    }
}

/// Percent-decodes `s` (`+` becomes a space, as in form-encoded query strings). Invalid
/// escapes are kept literally; invalid UTF-8 is replaced lossily.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| hex_val(*c));
                let lo = bytes.get(i + 2).and_then(|c| hex_val(*c));
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Splits a raw query string (without `?`) into percent-decoded `(name, value)` pairs.
/// Empty segments are skipped; a segment without `=` has an empty value.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(seg), String::new()),
        })
        .collect()
}

/// True for the query parameter names that carry the API key.
pub(crate) fn is_key_param(name: &str) -> bool {
    name == "apiKey" || name == "apikey"
}

/// The query in canonical form for hashing: key parameters removed, decoded pairs sorted,
/// joined with separators that cannot be confused with content.
pub(crate) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = parse_query(query).into_iter().filter(|(k, _)| !is_key_param(k)).collect();
    pairs.sort();
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&k);
        out.push('\u{1}');
        out.push_str(&v);
        out.push('\u{2}');
    }
    out
}

/// A generated tile body with its ETag (already quoted).
#[derive(Debug)]
pub(crate) struct Tile {
    pub(crate) body: Bytes,
    pub(crate) etag: String,
}

/// The seed of a tile: a hash of (version, path, canonical query).
pub(crate) fn tile_seed(version: u64, path: &str, canonical: &str) -> u64 {
    let mut seed = fnv1a(FNV_OFFSET, &version.to_le_bytes());
    seed = fnv1a(seed, &[0xff]);
    seed = fnv1a(seed, path.as_bytes());
    seed = fnv1a(seed, &[0xff]);
    seed = fnv1a(seed, canonical.as_bytes());
    mix64(seed)
}

impl Tile {
    /// A tile for a body made elsewhere (e.g. a rendered image): computes the ETag.
    pub(crate) fn from_body(body: Vec<u8>) -> Tile {
        let etag = format!("\"{:016x}\"", body_hash(&body));
        Tile { body: Bytes::from(body), etag }
    }
}

/// Generates the body for (version, path, canonical query). `min`/`max` bound the size;
/// when `max <= min` the size is exactly `min`.
pub(crate) fn generate(version: u64, path: &str, canonical: &str, kind: BodyKind, min: usize, max: usize) -> Tile {
    let seed = tile_seed(version, path, canonical);
    let size = if max <= min {
        min
    } else {
        let span = (max - min) as u64 + 1;
        min + (seed % span) as usize
    };
    let mut body = Vec::with_capacity(size + 8);
    let mut state = seed;
    while body.len() < size {
        body.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    body.truncate(size);
    let prefix = kind.prefix();
    let n = prefix.len().min(size);
    body[..n].copy_from_slice(&prefix[..n]);
    Tile::from_body(body)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of an endless deterministic stream:
/// the splitmix64 outputs from `seed` in little-endian order, the first bytes replaced by
/// `kind`'s signature. Any split of the stream into pieces gives the same bytes, so a large
/// body can be produced piece by piece without holding it.
pub(crate) fn fill_stream(seed: u64, kind: BodyKind, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word_index = pos / 8;
        let word = mix64(seed.wrapping_add(word_index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let bytes = word.to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
        i += n;
        pos += n as u64;
    }
    let prefix = kind.prefix();
    if offset < prefix.len() as u64 {
        let from = offset as usize;
        let n = (prefix.len() - from).min(buf.len());
        buf[..n].copy_from_slice(&prefix[from..from + n]);
    }
}

/// A UUID-shaped correlation id derived from a sequence number.
pub(crate) fn correlation_id(seq: u64) -> String {
    let mut s = seq ^ 0x5eed_c0de_0000_0000;
    let a = splitmix64(&mut s);
    let b = splitmix64(&mut s);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode() {
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "\u{20ac}");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn canonical_ignores_key_and_order() {
        assert_eq!(canonical_query("b=2&apiKey=x&a=1"), canonical_query("a=1&apikey=y&b=%32"));
        assert_ne!(canonical_query("a=1"), canonical_query("a=2"));
    }

    #[test]
    fn generate_sizes_and_prefixes() {
        let t = generate(0, "/p", "", BodyKind::Png, 100, 100);
        assert_eq!(t.body.len(), 100);
        assert_eq!(&t.body[..8], &PNG_SIGNATURE);
        let t = generate(0, "/p", "", BodyKind::Jpeg, 2, 2);
        assert_eq!(&t.body[..], &JPEG_SOI[..2]);
        for i in 0..50 {
            let t = generate(i, "/p", "", BodyKind::Omv, 10, 20);
            assert!((10..=20).contains(&t.body.len()));
        }
        let t = generate(0, "/p", "", BodyKind::Omv, 0, 0);
        assert!(t.body.is_empty());
        assert_eq!(t.etag.len(), 18);
    }

    #[test]
    fn stream_is_split_independent_and_matches_generate() {
        let mut whole = vec![0u8; 1000];
        fill_stream(42, BodyKind::Png, 0, &mut whole);
        assert_eq!(&whole[..8], &PNG_SIGNATURE);
        let mut pieces = vec![0u8; 1000];
        let mut off = 0;
        for len in [3, 5, 1, 13, 200, 778] {
            fill_stream(42, BodyKind::Png, off as u64, &mut pieces[off..off + len]);
            off += len;
        }
        assert_eq!(whole, pieces);
        // Same generator as the normal tile bodies.
        let seed = tile_seed(0, "/p", "");
        let t = generate(0, "/p", "", BodyKind::Jpeg, 500, 500);
        let mut s = vec![0u8; 500];
        fill_stream(seed, BodyKind::Jpeg, 0, &mut s);
        assert_eq!(&t.body[..], &s[..]);
    }

    #[test]
    fn correlation_ids_differ() {
        assert_ne!(correlation_id(1), correlation_id(2));
        assert_eq!(correlation_id(7).len(), 36);
    }
}

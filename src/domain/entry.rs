//! The stored unit: one upstream answer for one upstream tile, and its byte encoding.
//!
//! An [`Entry`] holds what the upstream sent (status, body, content type and encoding, ETag) and
//! the upstream's own freshness facts ([`Freshness`]), never an index's policy: every index
//! applies its own TTL, stale windows and negative TTL to the same entry when serving it
//! (`freshness::lifetime`). The codec ([`Entry::encode`], [`Entry::decode`]) is ours, not a cache
//! library's: the same bytes go to disk and (later) to Redis. Decoding checks a CRC-32 over the
//! whole record and every length against the caller's limit and against what is actually there,
//! so a corrupt record is an error, never a huge allocation and never wrong bytes.

use std::io::{Read, Write};

use actix_web::http::header::HeaderValue;
use bytes::Bytes;

/// What the upstream said about how long its answer may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    /// The upstream's freshness lifetime in seconds from when we fetched it: `s-maxage`, else
    /// `max-age`, else `Expires - Date`; minus the upstream's `Age`. `None`: it said nothing.
    pub ttl_secs: Option<u32>,
    /// `no-store`, `no-cache` or `private`: usable only by an index with a TTL of its own.
    pub no_store: bool,
}

/// Metadata of a stored answer: everything but the body. Also what a flight publishes as the
/// head of a miss, so misses and hits build their response heads the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// 200, or a remembered 404/204.
    pub status: u16,
    /// `None` for a 204.
    pub content_type: Option<HeaderValue>,
    /// The upstream's `Content-Encoding`, relayed as is (we never ask for compression, so this
    /// is normally `None`).
    pub content_encoding: Option<HeaderValue>,
    /// The upstream's ETag (sent back as `If-None-Match` when revalidating).
    pub etag: Option<HeaderValue>,
    /// Unix ms when the body was fetched or last revalidated: the base of `Age`.
    pub stored_at_ms: u64,
    /// Unix ms when these body bytes were first fetched (unchanged by a 304): names the version
    /// in a derived ETag.
    pub version_ms: u64,
    pub freshness: Freshness,
    /// How long the upstream fetch that stored (or last revalidated) this entry took, in ms:
    /// from sending the request to having the whole body (the head, for a 304). The `delta` of
    /// XFetch early refresh (`freshness::early_refresh`). 0: unknown (an entry written before
    /// this was recorded), which means no early refresh for it.
    pub fetch_ms: u32,
    /// The upstream's `Last-Modified`, in Unix seconds (sent back as `If-Modified-Since` when
    /// revalidating an entry without an ETag). `None`: it sent none.
    pub last_modified: Option<u64>,
}

impl Meta {
    /// The ETag clients see: the upstream's, else one derived from the version and length.
    pub fn client_etag(&self, body_len: Option<u64>) -> Option<HeaderValue> {
        if self.etag.is_some() {
            return self.etag.clone();
        }
        if self.status != 200 {
            return None;
        }
        let len = body_len?;
        HeaderValue::from_str(&format!("\"tp-{:x}-{:x}\"", self.version_ms, len)).ok()
    }

    /// The `Last-Modified` clients see, in Unix seconds: the upstream's, else when these bytes
    /// were first fetched (a 304 renewal does not change it).
    pub fn client_last_modified(&self) -> u64 {
        self.last_modified.unwrap_or(self.version_ms / 1000)
    }

    /// Seconds since stored (the `Age` header).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }
}

/// One stored upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub meta: Meta,
    pub body: Bytes,
}

impl Entry {
    /// Bytes this entry weighs in the memory tier.
    pub fn weight(&self) -> usize {
        let hv = |v: &Option<HeaderValue>| v.as_ref().map_or(0, |v| v.len());
        self.body.len() + hv(&self.meta.content_type) + hv(&self.meta.content_encoding) + hv(&self.meta.etag) + 104
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt cache entry: {0}")]
pub struct DecodeError(pub &'static str);

/// The current layout. `TPE3` (the same without `last_modified`) is still read, as `None`, and
/// `TPE2` (also without `fetch_ms`) as `fetch_ms = 0`.
const MAGIC: &[u8; 4] = b"TPE4";
const MAGIC_V3: &[u8; 4] = b"TPE3";
const MAGIC_V2: &[u8; 4] = b"TPE2";
/// Longest header value we store (content type, encoding, ETag).
const MAX_HEADER: usize = 1024;

fn put_opt(w: &mut Vec<u8>, v: &Option<HeaderValue>) {
    match v {
        Some(v) => {
            w.extend_from_slice(&(v.len() as u32).to_le_bytes());
            w.extend_from_slice(v.as_bytes());
        }
        None => w.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

impl Entry {
    /// Encodes: magic, status, times, freshness, fetch duration, `Last-Modified` (`u64::MAX`:
    /// none), three optional header values, body, CRC-32 of all that precedes it.
    pub fn encode(&self, w: &mut impl Write) -> std::io::Result<()> {
        let m = &self.meta;
        let mut head = Vec::with_capacity(64 + self.weight() - self.body.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&m.status.to_le_bytes());
        head.extend_from_slice(&m.stored_at_ms.to_le_bytes());
        head.extend_from_slice(&m.version_ms.to_le_bytes());
        head.extend_from_slice(&m.freshness.ttl_secs.unwrap_or(u32::MAX).to_le_bytes());
        head.push(u8::from(m.freshness.no_store));
        head.extend_from_slice(&m.fetch_ms.to_le_bytes());
        head.extend_from_slice(&m.last_modified.unwrap_or(u64::MAX).to_le_bytes());
        put_opt(&mut head, &m.content_type);
        put_opt(&mut head, &m.content_encoding);
        put_opt(&mut head, &m.etag);
        head.extend_from_slice(&(self.body.len() as u64).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&self.body);
        w.write_all(&head)?;
        w.write_all(&self.body)?;
        w.write_all(&crc.finalize().to_le_bytes())
    }

    /// Exact size of [`Entry::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let hv = |v: &Option<HeaderValue>| 4 + v.as_ref().map_or(0, |v| v.len());
        4 + 2
            + 8
            + 8
            + 4
            + 1
            + 4
            + 8
            + hv(&self.meta.content_type)
            + hv(&self.meta.content_encoding)
            + hv(&self.meta.etag)
            + 8
            + self.body.len()
            + 4
    }

    /// Decodes a record (the current layout, `TPE3` or `TPE2`), refusing bodies longer than `max_body`.
    /// Never allocates more than the reader actually yields.
    pub fn decode(r: &mut impl Read, max_body: usize) -> Result<Entry, DecodeError> {
        Self::decode_with(r, max_body, true)
    }

    /// [`Entry::decode`] for a store that has just verified a checksum of its own over the
    /// record's bytes (foyer's disk tier: xxHash64 of key and value on every read): the body's
    /// CRC is not computed a second time (about a tenth of a disk hit's instructions). The
    /// layout and every length are still checked.
    pub fn decode_verified(r: &mut impl Read, max_body: usize) -> Result<Entry, DecodeError> {
        Self::decode_with(r, max_body, false)
    }

    fn decode_with(r: &mut impl Read, max_body: usize, check_crc: bool) -> Result<Entry, DecodeError> {
        let mut crc = crc32fast::Hasher::new();
        let mut fixed = [0u8; 4 + 2 + 8 + 8 + 4 + 1];
        read_exact(r, &mut fixed, &mut crc)?;
        let (fetch_ms, last_modified) = if &fixed[..4] == MAGIC || &fixed[..4] == MAGIC_V3 {
            let mut ms = [0u8; 4];
            read_exact(r, &mut ms, &mut crc)?;
            let mut lm = None;
            if &fixed[..4] == MAGIC {
                let mut at = [0u8; 8];
                read_exact(r, &mut at, &mut crc)?;
                lm = Some(u64::from_le_bytes(at)).filter(|v| *v != u64::MAX);
            }
            (u32::from_le_bytes(ms), lm)
        } else if &fixed[..4] == MAGIC_V2 {
            (0, None)
        } else {
            return Err(DecodeError("not a tile-proxy entry (or an older layout)"));
        };
        let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().unwrap_or_default());
        let status = u16::from_le_bytes([fixed[4], fixed[5]]);
        let stored_at_ms = u64_at(6);
        let version_ms = u64_at(14);
        let ttl = u32::from_le_bytes(fixed[22..26].try_into().unwrap_or_default());
        let no_store = match fixed[26] {
            0 => false,
            1 => true,
            _ => return Err(DecodeError("bad flag")),
        };
        if !matches!(status, 200 | 204 | 404) {
            return Err(DecodeError("bad status"));
        }
        let content_type = read_opt(r, &mut crc)?;
        let content_encoding = read_opt(r, &mut crc)?;
        let etag = read_opt(r, &mut crc)?;
        let mut len = [0u8; 8];
        read_exact(r, &mut len, &mut crc)?;
        let len = u64::from_le_bytes(len);
        if len > max_body as u64 {
            return Err(DecodeError("body longer than max_entry_size"));
        }
        let body = read_n(r, len as usize)?;
        let mut want = [0u8; 4];
        r.read_exact(&mut want).map_err(|_| DecodeError("truncated"))?;
        if check_crc {
            crc.update(&body);
            if u32::from_le_bytes(want) != crc.finalize() {
                return Err(DecodeError("checksum mismatch"));
            }
        }
        Ok(Entry {
            meta: Meta {
                status,
                content_type,
                content_encoding,
                etag,
                stored_at_ms,
                version_ms,
                freshness: Freshness { ttl_secs: (ttl != u32::MAX).then_some(ttl), no_store },
                fetch_ms,
                last_modified,
            },
            body: Bytes::from(body),
        })
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], crc: &mut crc32fast::Hasher) -> Result<(), DecodeError> {
    r.read_exact(buf).map_err(|_| DecodeError("truncated"))?;
    crc.update(buf);
    Ok(())
}

/// Reads exactly `n` bytes, growing the buffer only as bytes arrive (a corrupt length cannot
/// make us allocate what is not there).
fn read_n(r: &mut impl Read, n: usize) -> Result<Vec<u8>, DecodeError> {
    let mut buf = Vec::with_capacity(n.min(64 << 10));
    r.take(n as u64).read_to_end(&mut buf).map_err(|_| DecodeError("truncated"))?;
    if buf.len() != n {
        return Err(DecodeError("truncated"));
    }
    Ok(buf)
}

fn read_opt(r: &mut impl Read, crc: &mut crc32fast::Hasher) -> Result<Option<HeaderValue>, DecodeError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, crc)?;
    let len = u32::from_le_bytes(len);
    if len == u32::MAX {
        return Ok(None);
    }
    if len as usize > MAX_HEADER {
        return Err(DecodeError("header value too long"));
    }
    let b = read_n(r, len as usize)?;
    crc.update(&b);
    HeaderValue::from_maybe_shared(Bytes::from(b)).map(Some).map_err(|_| DecodeError("invalid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(body: &'static [u8]) -> Entry {
        Entry {
            meta: Meta {
                status: 200,
                content_type: Some(HeaderValue::from_static("image/png")),
                content_encoding: None,
                etag: Some(HeaderValue::from_static("\"abc\"")),
                stored_at_ms: 1_700_000_000_000,
                version_ms: 1_699_000_000_000,
                freshness: Freshness { ttl_secs: Some(60), no_store: false },
                fetch_ms: 120,
                last_modified: Some(1_698_000_000),
            },
            body: Bytes::from_static(body),
        }
    }

    fn encoded(e: &Entry) -> Vec<u8> {
        let mut buf = Vec::new();
        e.encode(&mut buf).unwrap();
        buf
    }

    #[test]
    fn roundtrip() {
        let mut negative = entry(b"{\"title\":\"not found\"}");
        negative.meta.status = 404;
        negative.meta.etag = None;
        negative.meta.freshness = Freshness { ttl_secs: None, no_store: true };
        negative.meta.last_modified = None;
        let mut empty = entry(b"");
        empty.meta.status = 204;
        empty.meta.content_type = None;
        empty.meta.content_encoding = Some(HeaderValue::from_static("gzip"));
        for e in [entry(b"\x89PNG..."), negative, empty] {
            let buf = encoded(&e);
            assert_eq!(buf.len(), e.encoded_len());
            assert_eq!(Entry::decode(&mut buf.as_slice(), 1 << 20).unwrap(), e);
        }
    }

    /// A `TPE2` record (written before `fetch_ms` existed) or a `TPE3` one (before
    /// `last_modified`), byte for byte as those layouts were.
    fn encoded_old(e: &Entry, magic: &[u8; 4]) -> Vec<u8> {
        let m = &e.meta;
        let mut head = Vec::new();
        head.extend_from_slice(magic);
        head.extend_from_slice(&m.status.to_le_bytes());
        head.extend_from_slice(&m.stored_at_ms.to_le_bytes());
        head.extend_from_slice(&m.version_ms.to_le_bytes());
        head.extend_from_slice(&m.freshness.ttl_secs.unwrap_or(u32::MAX).to_le_bytes());
        head.push(u8::from(m.freshness.no_store));
        if magic == b"TPE3" {
            head.extend_from_slice(&m.fetch_ms.to_le_bytes());
        }
        put_opt(&mut head, &m.content_type);
        put_opt(&mut head, &m.content_encoding);
        put_opt(&mut head, &m.etag);
        head.extend_from_slice(&(e.body.len() as u64).to_le_bytes());
        head.extend_from_slice(&e.body);
        let crc = crc32fast::hash(&head);
        head.extend_from_slice(&crc.to_le_bytes());
        head
    }

    #[test]
    fn an_older_record_still_decodes_with_an_unknown_fetch_time() {
        let e = entry(b"\x89PNG old layout");
        let old = encoded_old(&e, b"TPE2");
        assert_eq!(old.len() + 12, e.encoded_len(), "the fetch time and Last-Modified came since");
        let got = Entry::decode(&mut old.as_slice(), 1 << 20).unwrap();
        assert_eq!(got, Entry { meta: Meta { fetch_ms: 0, last_modified: None, ..e.meta.clone() }, ..e.clone() });
        assert_eq!(&encoded(&e)[..4], b"TPE4");
        for cut in 0..old.len() {
            assert!(Entry::decode(&mut &old[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let v3 = encoded_old(&e, b"TPE3");
        assert_eq!(v3.len() + 8, e.encoded_len(), "TPE4 adds the 8-byte Last-Modified only");
        let got = Entry::decode(&mut v3.as_slice(), 1 << 20).unwrap();
        assert_eq!(got, Entry { meta: Meta { last_modified: None, ..e.meta.clone() }, ..e.clone() });
    }

    #[test]
    fn every_flipped_byte_or_cut_is_detected() {
        let buf = encoded(&entry(b"0123456789abcdef"));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x5a;
            assert!(Entry::decode(&mut bad.as_slice(), 1 << 20).is_err(), "flip at {i}");
        }
        for cut in 0..buf.len() {
            assert!(Entry::decode(&mut &buf[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_store_verified_record_skips_only_the_body_crc() {
        let e = entry(b"0123456789abcdef");
        let buf = encoded(&e);
        assert_eq!(Entry::decode_verified(&mut buf.as_slice(), 1 << 20).unwrap(), e);
        for cut in 0..buf.len() {
            assert!(Entry::decode_verified(&mut &buf[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        // A body byte flipped: only the full decode notices (the store's own checksum would).
        let mut bad = buf.clone();
        let at = buf.len() - 4 - 3;
        bad[at] ^= 0x5a;
        assert!(Entry::decode(&mut bad.as_slice(), 1 << 20).is_err());
        assert!(Entry::decode_verified(&mut bad.as_slice(), 1 << 20).is_ok());
    }

    #[test]
    fn a_huge_length_allocates_nothing_and_is_refused() {
        let e = entry(b"abc");
        let buf = encoded(&e);
        // The body length sits right before the body and the CRC.
        let at = buf.len() - 4 - 3 - 8;
        let mut bad = buf.clone();
        bad[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert_eq!(Entry::decode(&mut bad.as_slice(), 1 << 20), Err(DecodeError("body longer than max_entry_size")));
        // Within the limit but longer than what is there: truncated, not allocated.
        bad[at..at + 8].copy_from_slice(&(1u64 << 19).to_le_bytes());
        assert_eq!(Entry::decode(&mut bad.as_slice(), 1 << 20), Err(DecodeError("truncated")));
        assert_eq!(Entry::decode(&mut buf.as_slice(), 2), Err(DecodeError("body longer than max_entry_size")));
    }

    #[test]
    fn derived_etag_names_the_version() {
        let mut e = entry(b"abc");
        assert_eq!(e.meta.client_etag(Some(3)), e.meta.etag);
        e.meta.etag = None;
        let a = e.meta.client_etag(Some(3)).unwrap();
        e.meta.version_ms += 1;
        assert_ne!(e.meta.client_etag(Some(3)).unwrap(), a);
        assert_eq!(e.meta.client_etag(None), None);
    }
}

/// Where a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitSource {
    Memory,
    Disk,
    /// A shared tier (Redis).
    Remote,
}

impl HitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HitSource::Memory => "memory",
            HitSource::Disk => "disk",
            HitSource::Remote => "redis",
        }
    }
}

//! Compression of vector tiles and JSON for clients that accept it (br, gzip).
//!
//! What is compressed ([`tile_representation`]): a 200 whose content type is a vector tile
//! (`application/x-protobuf`, `application/vnd.mapbox-vector-tile`) or JSON (`application/json`,
//! `*+json`), that the upstream did not encode itself (an upstream `Content-Encoding` is relayed
//! as is: never compressed twice), of at least `compress_min_size` bytes and at most
//! `max_entry_size`. Raster images never are. Such an answer always carries
//! `Vary: Accept-Encoding`, identity ones included, so downstream caches key it correctly.
//!
//! Negotiation ([`negotiate`]) reads `Accept-Encoding` with its q-values without allocating;
//! br wins over gzip on equal q; `q=0` excludes; an identity explicitly preferred wins.
//!
//! Compressed once, kept compressed: each encoded form of a tile is an entry of its own in the
//! [`crate::store::cache::TileCache`] (memory, disk and Redis, like any tile), under a key derived from
//! the tile's key, the encoding and the identity entry's *version*
//! ([`crate::domain::key::CacheKey::variant`]). The identity entry stays the source of truth: it is
//! looked up first as always (freshness, stale windows, purges and revalidation are decided on
//! it), then its variant. So a variant can never outlive or contradict its identity entry: a new
//! version (a refetch after expiry or a purge) has a new variant key, and a 304 revalidation
//! keeps the version and so the variant. A variant is stored with the identity's times and
//! retention and is checked against purge rules under the tile's own key. A variant missing
//! from every tier is compressed now (on the blocking pool, not on the worker's event loop),
//! answered, and stored in the background: once per tile version per fleet with Redis, or per
//! pod without. Concurrent first requests may each compress (no coalescing: it is once per
//! version, and a 50 KB tile takes about 2 ms). Variants weigh their bytes in the
//! memory tier like every entry, so `memory_cache` bounds them too.
//!
//! A miss for a client that accepts an encoding waits for the whole body (bounded by
//! `max_entry_size`; vector tiles are small) and is answered compressed; a body that fails
//! before its end is then a 502, never a truncated 200. The ETag of an encoded form is the
//! identity's with `-br`/`-gzip` appended inside the quotes, so `If-None-Match` is answered 304
//! per encoding without compressing anything.
//!
//! Other whole answers (metadata JSON, TileJSON, the map page and its assets) use
//! [`Compressor::encode_response`], which keeps a small bounded cache of encoded bodies by ETag.
//!
//! Levels: brotli quality 5 (window 2^20) and gzip level 6, measured on 50 KB of MVT-like bytes
//! on these 2-core machines (release build): about 2 ms (br) and 1.5 ms (gzip) each, for about
//! half the size; brotli 6 cost the same for no gain, 4 was 10% bigger. Hence the blocking pool.

use std::io::Write;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::config::Settings;
use crate::domain::entry::{Entry, Meta};
use crate::domain::failure::UpstreamFailure;
use crate::domain::routes::TileRequest;
use crate::http::state::AppState;
use crate::observe::metrics::Metrics;
use crate::service::tiles::Body;

/// Brotli quality for tiles and documents (0-11).
pub const BROTLI_QUALITY: u32 = 5;
/// Brotli window, log2 bytes.
pub const BROTLI_WINDOW: u32 = 20;
/// gzip level (0-9).
pub const GZIP_LEVEL: u32 = 6;
/// Bytes of encoded bodies [`Compressor::encode_response`] keeps (by ETag).
pub const STATIC_CACHE_BYTES: u64 = 8 << 20;

/// A content coding we produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Br,
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token, also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// How an answer is represented to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// Never compressed (raster, error, small, upstream-encoded, compression off): as is,
    /// without `Vary`.
    Plain,
    /// Could be compressed, the client gets identity: `Vary: Accept-Encoding`.
    Identity,
    /// Compressed with this encoding: `Content-Encoding`, `Vary`, the encoding's ETag.
    Encoded(Encoding),
}

impl Representation {
    /// True when the answer depends on `Accept-Encoding` (`Vary` must say so).
    pub fn varies(self) -> bool {
        !matches!(self, Representation::Plain)
    }

    /// The encoding, if any.
    pub fn encoding(self) -> Option<Encoding> {
        match self {
            Representation::Encoded(e) => Some(e),
            _ => None,
        }
    }
}

/// The media type of a `Content-Type` value (parameters and case ignored) is one of ours to
/// compress for tiles: a vector tile or JSON. Raster images never are.
pub fn is_tile_compressible(content_type: &[u8]) -> bool {
    let mt = media_type(content_type);
    mt.eq_ignore_ascii_case(b"application/x-protobuf")
        || mt.eq_ignore_ascii_case(b"application/vnd.mapbox-vector-tile")
        || is_json(mt)
}

/// [`is_tile_compressible`] plus the text types of documents and assets: `text/*`, JavaScript,
/// XML and `*+xml` (SVG included). Never `image/*` except SVG, fonts or archives.
pub fn is_document_compressible(content_type: &[u8]) -> bool {
    let mt = media_type(content_type);
    is_tile_compressible(mt)
        || starts_with_ignore_case(mt, b"text/")
        || mt.eq_ignore_ascii_case(b"application/javascript")
        || mt.eq_ignore_ascii_case(b"application/xml")
        || ends_with_ignore_case(mt, b"+xml")
}

fn is_json(mt: &[u8]) -> bool {
    mt.eq_ignore_ascii_case(b"application/json") || ends_with_ignore_case(mt, b"+json")
}

fn media_type(ct: &[u8]) -> &[u8] {
    let end = ct.iter().position(|&b| b == b';').unwrap_or(ct.len());
    ct[..end].trim_ascii()
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn ends_with_ignore_case(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The encoding to answer with for these `Accept-Encoding` values (every header line), or
/// `None` for identity. q-values are honoured (`q=0` excludes, a malformed q too); `*` stands
/// for br and gzip unless they are named; `x-gzip` is gzip; br wins ties; an `identity` with a
/// higher q than either wins. Does not allocate.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Encoding> {
    // q in thousandths; None: not named.
    let (mut br, mut gzip, mut star, mut identity) = (None, None, None, None);
    for value in values {
        for item in value.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                let param = param.trim_ascii();
                if param.len() >= 2 && param[..2].eq_ignore_ascii_case(b"q=") {
                    q = parse_q(&param[2..]);
                }
            }
            let q = q.unwrap_or(0);
            let slot = if coding.eq_ignore_ascii_case(b"br") {
                &mut br
            } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                &mut gzip
            } else if coding == b"*" {
                &mut star
            } else if coding.eq_ignore_ascii_case(b"identity") {
                &mut identity
            } else {
                continue;
            };
            *slot = Some(q);
        }
    }
    let br = br.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    let (best, q) = if br >= gzip { (Encoding::Br, br) } else { (Encoding::Gzip, gzip) };
    (q > 0 && identity.is_none_or(|i| q >= i)).then_some(best)
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn parse_q(s: &[u8]) -> Option<u16> {
    let s = s.trim_ascii();
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int[0] {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// How to represent a tile answer with this `meta` and identity body length to a client sending
/// `headers`. Cheap: a raster answer is decided on its content type before `Accept-Encoding` is
/// read.
pub fn tile_representation(
    settings: &Settings,
    meta: &Meta,
    content_length: Option<u64>,
    headers: &HeaderMap,
) -> Representation {
    if !settings.compression || meta.status != 200 || meta.content_encoding.is_some() {
        return Representation::Plain;
    }
    if !meta.content_type.as_ref().is_some_and(|ct| is_tile_compressible(ct.as_bytes())) {
        return Representation::Plain;
    }
    // Unknown length (relayed, not stored), larger than any entry, or too small to bother.
    let Some(len) = content_length else { return Representation::Plain };
    if len < settings.compress_min_size as u64 || len > settings.max_entry_size as u64 {
        return Representation::Plain;
    }
    match negotiate(headers.get_all(header::ACCEPT_ENCODING).map(HeaderValue::as_bytes)) {
        Some(e) => Representation::Encoded(e),
        None => Representation::Identity,
    }
}

/// The ETag of the `encoding` form of a representation tagged `etag`: the encoding appended
/// inside the quotes (`"abc"` -> `"abc-br"`, `W/"abc"` -> `W/"abc-br"`).
pub fn variant_etag(etag: &HeaderValue, encoding: Encoding) -> HeaderValue {
    let b = etag.as_bytes();
    let quoted = b.len() >= 2 && b.ends_with(b"\"");
    let body = if quoted { &b[..b.len() - 1] } else { b };
    let mut v = Vec::with_capacity(b.len() + 6);
    v.extend_from_slice(body);
    v.push(b'-');
    v.extend_from_slice(encoding.as_str().as_bytes());
    if quoted {
        v.push(b'"');
    }
    HeaderValue::from_maybe_shared(Bytes::from(v)).unwrap_or_else(|_| etag.clone())
}

/// The ETag a client sees for an answer in `rep`.
pub fn client_etag(identity: Option<HeaderValue>, rep: Representation) -> Option<HeaderValue> {
    match rep.encoding() {
        Some(e) => identity.map(|t| variant_etag(&t, e)),
        None => identity,
    }
}

/// Compresses `body`. In memory, cannot fail.
pub fn encode(encoding: Encoding, body: &[u8]) -> Vec<u8> {
    let out = Vec::with_capacity(body.len() / 2 + 64);
    match encoding {
        Encoding::Br => {
            let mut w = brotli::CompressorWriter::new(out, 16 << 10, BROTLI_QUALITY, BROTLI_WINDOW);
            // Writing into a Vec does not fail.
            let _ = w.write_all(body);
            w.into_inner()
        }
        Encoding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            let _ = w.write_all(body);
            w.finish().unwrap_or_default()
        }
    }
}

/// [`encode`] on the blocking pool (a large tile must not hold up the worker's other requests).
async fn encode_off_loop(encoding: Encoding, body: Bytes) -> Bytes {
    let b = body.clone();
    match actix_web::web::block(move || encode(encoding, &b)).await {
        Ok(v) => Bytes::from(v),
        // The pool is shutting down: do it here.
        Err(_) => Bytes::from(encode(encoding, &body)),
    }
}

/// The `encoding` form of a tile answer's body: the stored variant of the identity entry's
/// version, else compressed now (and stored in the background). A miss's body is read whole
/// first (the representation was only chosen for a known length within `max_entry_size`);
/// `Err` when it fails before its end.
pub async fn tile_body(
    state: &Arc<AppState>,
    tile: &TileRequest,
    meta: &Meta,
    content_length: Option<u64>,
    body: Body,
    encoding: Encoding,
) -> Result<Bytes, UpstreamFailure> {
    let identity = match body {
        Body::Full(b) => b,
        Body::Flight(reader) => {
            let want = content_length.unwrap_or(0);
            let mut buf = BytesMut::with_capacity(want.min(state.settings.max_entry_size as u64) as usize);
            let mut chunks = std::pin::pin!(reader.into_body());
            while let Some(c) = chunks.next().await {
                let c = c.map_err(|_| UpstreamFailure::Body)?;
                if (buf.len() + c.len()) as u64 > want {
                    return Err(UpstreamFailure::Body);
                }
                buf.extend_from_slice(&c);
            }
            if buf.len() as u64 != want {
                return Err(UpstreamFailure::Body);
            }
            buf.freeze()
        }
    };
    let base = state.upstream.cache_key(tile);
    let key = base.variant(encoding.as_str(), meta.version_ms);
    let valid = |e: &Entry| {
        e.meta.version_ms == meta.version_ms
            && e.meta.content_encoding.as_ref().is_some_and(|c| c.as_bytes() == encoding.as_str().as_bytes())
            && !state.purges.is_purged(&tile.index, tile.z, tile.x, tile.y, base.as_str(), e.meta.stored_at_ms)
    };
    let metrics = &state.metrics;
    if let Some((variant, _)) = state.cache.get_valid(&key, valid).await {
        metrics.compressed.with_label_values(&[encoding.as_str(), "stored"]).inc();
        count_bytes(metrics, encoding, identity.len(), variant.body.len());
        return Ok(variant.body);
    }
    let encoded = encode_off_loop(encoding, identity.clone()).await;
    metrics.compressed.with_label_values(&[encoding.as_str(), "compressed"]).inc();
    count_bytes(metrics, encoding, identity.len(), encoded.len());
    // Kept as long as its identity entry would be, with the same times (purges, expiry).
    if let Some(keep) = state.settings.retention(meta) {
        let expires = meta.stored_at_ms.saturating_add(keep.as_millis() as u64);
        let entry =
            Entry { meta: Meta { content_encoding: Some(encoding.header()), ..meta.clone() }, body: encoded.clone() };
        let state = state.clone();
        actix_web::rt::spawn(async move { state.cache.insert(&key, entry, expires).await });
    }
    Ok(encoded)
}

fn count_bytes(metrics: &Metrics, encoding: Encoding, identity: usize, encoded: usize) {
    let m = &metrics.compression_bytes;
    m.with_label_values(&[encoding.as_str(), "identity"]).inc_by(identity as u64);
    m.with_label_values(&[encoding.as_str(), "encoded"]).inc_by(encoded as u64);
}

/// Compression of whole answers other than tiles; holds the bounded cache of their encoded
/// bodies. One per server ([`AppState::compressor`]).
pub struct Compressor {
    enabled: bool,
    min_size: usize,
    /// Encoded bodies by (ETag, identity length, encoding), weighed in bytes.
    statics: moka::sync::Cache<(HeaderValue, usize, Encoding), Bytes>,
    metrics: Arc<Metrics>,
}

impl Compressor {
    /// `compression` and `compress_min_size` from `settings`.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Compressor {
        let statics = moka::sync::Cache::builder()
            .max_capacity(STATIC_CACHE_BYTES)
            .weigher(|k: &(HeaderValue, usize, Encoding), v: &Bytes| (k.0.len() + v.len() + 64) as u32)
            .build();
        Compressor { enabled: settings.compression, min_size: settings.compress_min_size, statics, metrics }
    }

    /// Compresses a whole answer for the client of `req`, when worthwhile; call it last, on the
    /// finished response: `state.compressor.encode_response(&req, res)`.
    ///
    /// Contract: `res` is returned unchanged unless compression is on, it is a 200 without a
    /// `Content-Encoding`, its `Content-Type` is JSON, a vector tile, `text/*`, JavaScript or
    /// XML/SVG ([`is_document_compressible`]), and its body is whole (built with `.body(..)`,
    /// not streamed) of at least `compress_min_size` bytes. Such an answer gets
    /// `Vary: Accept-Encoding`; if the client accepts br or gzip ([`negotiate`]), the body is
    /// replaced by its encoded form, with `Content-Encoding` and, when `res` has an `ETag`, that
    /// ETag with `-br`/`-gzip` appended. An `If-None-Match` naming that encoded ETag is answered
    /// 304 here (check the identity ETag yourself before calling, as for any answer).
    /// `Content-Length` follows the new body. With an `ETag` the encoded body is kept (bounded:
    /// [`STATIC_CACHE_BYTES`]) and reused while the ETag and length match: the ETag must change
    /// when the body does. Without one the body is compressed on every call, on the calling
    /// thread (keep such bodies small). HEAD works as GET (actix drops the body).
    pub fn encode_response(&self, req: &HttpRequest, res: HttpResponse) -> HttpResponse {
        if !self.enabled || res.status() != StatusCode::OK || res.headers().contains_key(header::CONTENT_ENCODING) {
            return res;
        }
        let compressible =
            res.headers().get(header::CONTENT_TYPE).is_some_and(|ct| is_document_compressible(ct.as_bytes()));
        if !compressible {
            return res;
        }
        let (mut head, body) = res.into_parts();
        let body = match body.try_into_bytes() {
            Ok(b) if b.len() >= self.min_size => b,
            Ok(b) => return head.set_body(BoxBody::new(b)),
            Err(streaming) => return head.set_body(streaming),
        };
        add_vary(head.headers_mut());
        let Some(encoding) = negotiate(req.headers().get_all(header::ACCEPT_ENCODING).map(HeaderValue::as_bytes))
        else {
            return head.set_body(BoxBody::new(body));
        };
        let etag = head.headers().get(header::ETAG).cloned();
        let variant_tag = etag.as_ref().map(|t| variant_etag(t, encoding));
        let h = head.headers_mut();
        h.remove(header::CONTENT_LENGTH);
        if let Some(t) = &variant_tag {
            h.insert(header::ETAG, t.clone());
        }
        if crate::http::tile::not_modified(req, variant_tag.as_ref()) {
            *head.status_mut() = StatusCode::NOT_MODIFIED;
            return head.set_body(BoxBody::new(()));
        }
        h.insert(header::CONTENT_ENCODING, encoding.header());
        let encoded = match etag {
            Some(t) => {
                let key = (t, body.len(), encoding);
                match self.statics.get(&key) {
                    Some(b) => {
                        self.metrics.compressed.with_label_values(&[encoding.as_str(), "stored"]).inc();
                        b
                    }
                    None => {
                        let b = self.compress_now(encoding, &body);
                        self.statics.insert(key, b.clone());
                        b
                    }
                }
            }
            None => self.compress_now(encoding, &body),
        };
        count_bytes(&self.metrics, encoding, body.len(), encoded.len());
        head.set_body(BoxBody::new(encoded))
    }

    fn compress_now(&self, encoding: Encoding, body: &[u8]) -> Bytes {
        self.metrics.compressed.with_label_values(&[encoding.as_str(), "compressed"]).inc();
        Bytes::from(encode(encoding, body))
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it is there (or `Vary: *`).
fn add_vary(h: &mut HeaderMap) {
    let named = h.get_all(header::VARY).any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !named {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    pub(crate) fn decode(encoding: Encoding, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Encoding::Br => brotli::Decompressor::new(body, 4096).read_to_end(&mut out).unwrap(),
            Encoding::Gzip => flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap(),
        };
        out
    }

    fn neg(v: &str) -> Option<Encoding> {
        negotiate([v.as_bytes()])
    }

    #[test]
    fn negotiation_follows_q_values_and_prefers_br() {
        use Encoding::{Br, Gzip};
        let table: &[(&str, Option<Encoding>)] = &[
            ("", None),
            ("identity", None),
            ("gzip", Some(Gzip)),
            ("x-gzip", Some(Gzip)),
            ("GZIP", Some(Gzip)),
            ("br", Some(Br)),
            ("gzip, deflate, br, zstd", Some(Br)),
            ("gzip, br", Some(Br)),
            ("br;q=1.0, gzip;q=0.8, *;q=0", Some(Br)),
            ("br;q=0.5, gzip;q=0.8", Some(Gzip)),
            ("br;q=0.8, gzip;q=0.8", Some(Br)),
            ("br;q=0, gzip", Some(Gzip)),
            ("br;q=0, gzip;q=0", None),
            ("br; q=0.000, gzip ;Q=0.001", Some(Gzip)),
            ("*", Some(Br)),
            ("*;q=0", None),
            ("*;q=0.5, br;q=0", Some(Gzip)),
            ("gzip;q=0.5, identity;q=1", None),
            ("gzip;q=1, identity;q=1", Some(Gzip)),
            ("identity;q=0", None),
            ("identity;q=0, gzip", Some(Gzip)),
            ("deflate, zstd", None),
            ("br;q=2", None),
            ("br;q=1.5", None),
            ("br;q=0.1234", None),
            ("br;q=abc, gzip", Some(Gzip)),
            (" , ,br", Some(Br)),
        ];
        for (header, want) in table {
            assert_eq!(neg(header), *want, "{header:?}");
        }
        // Several header lines count together.
        assert_eq!(negotiate([&b"gzip;q=0.5"[..], &b"br"[..]]), Some(Br));
    }

    #[test]
    fn q_values_parse_to_thousandths() {
        for (s, want) in [("1", Some(1000)), ("1.000", Some(1000)), ("0.8", Some(800)), ("0.05", Some(50))] {
            assert_eq!(parse_q(s.as_bytes()), want, "{s}");
        }
        for s in ["", "1.001", "2", ".5", "0.", "-0"] {
            let parsed = parse_q(s.as_bytes());
            assert!(parsed.is_none() || s == "0.", "{s}: {parsed:?}");
        }
    }

    #[test]
    fn vector_tiles_and_json_are_compressible_rasters_are_not() {
        for ct in [
            "application/x-protobuf",
            "application/vnd.mapbox-vector-tile",
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/geo+json",
        ] {
            assert!(is_tile_compressible(ct.as_bytes()), "{ct}");
        }
        for ct in ["image/png", "image/jpeg", "image/webp", "text/html", "application/octet-stream", ""] {
            assert!(!is_tile_compressible(ct.as_bytes()), "{ct}");
        }
        for ct in ["text/html; charset=utf-8", "text/css", "application/javascript", "image/svg+xml"] {
            assert!(is_document_compressible(ct.as_bytes()), "{ct}");
        }
        for ct in ["image/png", "font/woff2", "application/zip"] {
            assert!(!is_document_compressible(ct.as_bytes()), "{ct}");
        }
    }

    #[test]
    fn variant_etags_keep_the_quotes_and_weakness() {
        let t = |s: &'static str, e| variant_etag(&HeaderValue::from_static(s), e);
        assert_eq!(t("\"abc\"", Encoding::Br), "\"abc-br\"");
        assert_eq!(t("W/\"abc\"", Encoding::Gzip), "W/\"abc-gzip\"");
        assert_eq!(t("abc", Encoding::Br), "abc-br");
        assert_ne!(t("\"abc\"", Encoding::Br), t("\"abc\"", Encoding::Gzip));
    }

    #[test]
    fn both_encodings_round_trip_and_shrink_json() {
        let json: Vec<u8> = (0..2000)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"feature {i}\",\"kind\":\"road\"}},").into_bytes())
            .collect();
        for e in [Encoding::Br, Encoding::Gzip] {
            for body in [&json[..], b"", b"x"] {
                let enc = encode(e, body);
                assert_eq!(decode(e, &enc), body, "{e:?}");
            }
            let enc = encode(e, &json);
            assert!(enc.len() * 5 < json.len(), "{e:?}: {} of {}", enc.len(), json.len());
        }
    }

    fn settings() -> Settings {
        let f = crate::config::FileConfig { upstream_requires_key: false, ..Default::default() };
        let mut s = Settings::from_file_config(f).unwrap();
        s.compress_min_size = 100;
        s
    }

    fn meta(ct: &'static str) -> Meta {
        Meta {
            status: 200,
            content_type: Some(HeaderValue::from_static(ct)),
            content_encoding: None,
            etag: Some(HeaderValue::from_static("\"e\"")),
            stored_at_ms: 0,
            version_ms: 0,
            freshness: Default::default(),
            fetch_ms: 0,
        }
    }

    #[test]
    fn tile_representation_table() {
        use Representation::{Encoded, Identity, Plain};
        let s = settings();
        let mut br = HeaderMap::new();
        br.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        let none = HeaderMap::new();
        let mvt = meta("application/x-protobuf");
        assert_eq!(tile_representation(&s, &mvt, Some(1000), &br), Encoded(Encoding::Br));
        assert_eq!(tile_representation(&s, &mvt, Some(1000), &none), Identity);
        assert_eq!(tile_representation(&s, &mvt, Some(99), &br), Plain, "small");
        assert_eq!(tile_representation(&s, &mvt, None, &br), Plain, "unknown length");
        assert_eq!(tile_representation(&s, &mvt, Some(s.max_entry_size as u64 + 1), &br), Plain, "too large");
        assert_eq!(tile_representation(&s, &meta("image/png"), Some(1000), &br), Plain, "raster");
        let mut encoded = mvt.clone();
        encoded.content_encoding = Some(HeaderValue::from_static("gzip"));
        assert_eq!(tile_representation(&s, &encoded, Some(1000), &br), Plain, "upstream-encoded");
        let mut missing = mvt.clone();
        missing.status = 404;
        assert_eq!(tile_representation(&s, &missing, Some(1000), &br), Plain, "404");
        let off = Settings { compression: false, ..settings() };
        assert_eq!(tile_representation(&off, &mvt, Some(1000), &br), Plain, "off");
    }

    fn compressor() -> Compressor {
        Compressor::new(&settings(), Arc::new(Metrics::new(&prometheus::Registry::new(), 10, []).unwrap()))
    }

    fn json_response(body: &'static str, etag: Option<&'static str>) -> HttpResponse {
        let mut b = HttpResponse::Ok();
        b.content_type("application/json");
        if let Some(t) = etag {
            b.insert_header((header::ETAG, t));
        }
        b.body(body)
    }

    async fn body_of(res: HttpResponse) -> Bytes {
        actix_web::body::to_bytes(res.into_body()).await.unwrap()
    }

    const DOC: &str = concat!(
        "{\"tiles\":[\"https://example.com/a/{z}/{x}/{y}\",\"https://example.com/b/{z}/{x}/{y}\"],",
        "\"attribution\":\"HERE HERE HERE HERE HERE HERE HERE HERE HERE HERE HERE HERE HERE\",",
        "\"minzoom\":0,\"maxzoom\":22,\"minzoom2\":0,\"maxzoom2\":22,\"minzoom3\":0,\"maxzoom3\":22}"
    );

    #[actix_web::test]
    async fn encode_response_compresses_caches_and_answers_304_per_encoding() {
        let c = compressor();
        let br = actix_web::test::TestRequest::get().insert_header((header::ACCEPT_ENCODING, "br")).to_http_request();
        let res = c.encode_response(&br, json_response(DOC, Some("\"v1\"")));
        assert_eq!(res.headers().get(header::CONTENT_ENCODING).unwrap(), "br");
        assert_eq!(res.headers().get(header::VARY).unwrap(), "Accept-Encoding");
        assert_eq!(res.headers().get(header::ETAG).unwrap(), "\"v1-br\"");
        let body = body_of(res).await;
        assert_eq!(decode(Encoding::Br, &body), DOC.as_bytes());
        assert!(body.len() < DOC.len());
        // Second time: from the cache.
        let again = c.encode_response(&br, json_response(DOC, Some("\"v1\"")));
        assert_eq!(body_of(again).await, body);
        assert_eq!(c.metrics.compressed.with_label_values(&["br", "stored"]).get(), 1);
        assert_eq!(c.metrics.compressed.with_label_values(&["br", "compressed"]).get(), 1);
        // If-None-Match with the br ETag: 304; with gzip's, a gzip body.
        let inm = |ae: &'static str, tag: &'static str| {
            actix_web::test::TestRequest::get()
                .insert_header((header::ACCEPT_ENCODING, ae))
                .insert_header((header::IF_NONE_MATCH, tag))
                .to_http_request()
        };
        let res = c.encode_response(&inm("br", "\"v1-br\""), json_response(DOC, Some("\"v1\"")));
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        let res = c.encode_response(&inm("gzip", "\"v1-br\""), json_response(DOC, Some("\"v1\"")));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers().get(header::ETAG).unwrap(), "\"v1-gzip\"");
        assert_eq!(decode(Encoding::Gzip, &body_of(res).await), DOC.as_bytes());
    }

    #[actix_web::test]
    async fn encode_response_leaves_what_it_must_not_touch() {
        let c = compressor();
        let plain = actix_web::test::TestRequest::get().to_http_request();
        let res = c.encode_response(&plain, json_response(DOC, None));
        assert!(res.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(res.headers().get(header::VARY).unwrap(), "Accept-Encoding", "identity still varies");
        assert_eq!(body_of(res).await, DOC.as_bytes());
        let br = actix_web::test::TestRequest::get().insert_header((header::ACCEPT_ENCODING, "br")).to_http_request();
        let small = c.encode_response(&br, json_response("{\"a\":1}", None));
        assert!(small.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(small.headers().get(header::VARY).is_none());
        let png = c.encode_response(&br, HttpResponse::Ok().content_type("image/png").body(DOC));
        assert!(png.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(body_of(png).await, DOC.as_bytes());
        let already = c.encode_response(
            &br,
            HttpResponse::Ok()
                .content_type("application/json")
                .insert_header((header::CONTENT_ENCODING, "gzip"))
                .body(DOC),
        );
        assert_eq!(already.headers().get(header::CONTENT_ENCODING).unwrap(), "gzip");
        assert_eq!(body_of(already).await, DOC.as_bytes());
        let not_found = c.encode_response(&br, HttpResponse::NotFound().content_type("application/json").body(DOC));
        assert!(not_found.headers().get(header::CONTENT_ENCODING).is_none());
        let off = Compressor { enabled: false, ..compressor() };
        assert!(off.encode_response(&br, json_response(DOC, None)).headers().get(header::CONTENT_ENCODING).is_none());
    }
}

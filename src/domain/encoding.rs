//! Content codings of tiles and documents, as pure rules: which answers are compressed
//! ([`tile_representation`], [`is_document_compressible`]), which coding a client gets
//! ([`negotiate`]), the ETag of an encoded form ([`variant_etag`]) and the codec ([`encode`]).
//!
//! What is compressed: a 200 whose content type is a vector tile (`application/x-protobuf`,
//! `application/vnd.mapbox-vector-tile`) or JSON (`application/json`, `*+json`), that the
//! upstream did not encode itself (an upstream `Content-Encoding` is relayed as is: never
//! compressed twice), of at least `compress_min_size` bytes and at most `max_entry_size`. Raster
//! images never are. Such an answer always carries `Vary: Accept-Encoding`, identity ones
//! included, so downstream caches key it correctly.
//!
//! Negotiation reads `Accept-Encoding` with its q-values without allocating; br wins over gzip
//! on equal q; `q=0` excludes; an identity explicitly preferred wins. The ETag of an encoded form
//! is the identity's with `-br`/`-gzip` appended inside the quotes, so `If-None-Match` is
//! answered 304 per encoding without compressing anything.
//!
//! Levels: brotli quality 5 (window 2^20) and gzip level 6, measured on 50 KB of MVT-like bytes
//! on these 2-core machines (release build): about 2 ms (br) and 1.5 ms (gzip) each, for about
//! half the size; brotli 6 cost the same for no gain, 4 was 10% bigger. Hence the blocking pool
//! (`service::body`).

use std::io::Write;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::config::Settings;
use crate::domain::entry::Meta;

/// Brotli quality for tiles and documents (0-11).
pub const BROTLI_QUALITY: u32 = 5;
/// Brotli window, log2 bytes.
pub const BROTLI_WINDOW: u32 = 20;
/// gzip level (0-9).
pub const GZIP_LEVEL: u32 = 6;

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

    /// The `Content-Encoding` value.
    pub fn header(self) -> HeaderValue {
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
    // Asked on every hit: a raster tile's `image/...` is turned away by its first byte.
    if !content_type.first().is_some_and(|b| b.eq_ignore_ascii_case(&b'a') || b.is_ascii_whitespace()) {
        return false;
    }
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

#[cfg(test)]
pub(crate) mod tests {
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
            " application/json",
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

    pub(crate) fn settings() -> Settings {
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
            last_modified: None,
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
}

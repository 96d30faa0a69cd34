//! Compression of whole HTTP answers other than tiles (metadata JSON, TileJSON, the map page and
//! its assets): [`Compressor::encode_response`] negotiates with the client (the rules are
//! `domain::encoding`'s) and keeps a small bounded cache of encoded bodies by ETag. Tile bodies
//! are encoded by `service::body`.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;

use crate::config::Settings;
use crate::domain::encoding::{encode, is_document_compressible, negotiate, variant_etag, Encoding};
use crate::observe::metrics::Metrics;

/// Bytes of encoded bodies [`Compressor::encode_response`] keeps (by ETag).
pub const STATIC_CACHE_BYTES: u64 = 8 << 20;

/// Compression of whole answers other than tiles; holds the bounded cache of their encoded
/// bodies. One per server (`AppState::compressor`).
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
        if crate::http::conditional::not_modified(req, variant_tag.as_ref()) {
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
        self.metrics.count_compressed_bytes(encoding.as_str(), body.len(), encoded.len());
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
    use crate::domain::encoding::tests::decode;

    fn settings() -> Settings {
        crate::domain::encoding::tests::settings()
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

//! Conditional requests: the client's `If-None-Match` and `If-Modified-Since` against the ETag
//! and `Last-Modified` of what would be sent (a 304 instead), by the rule of
//! [`crate::domain::conditional`] (If-None-Match first, RFC 9110 §13.2.2). Every answer with an
//! ETag asks here: tiles (which also carry `Last-Modified`), metadata, TileJSON, the map page
//! and its assets, compressed documents.

use actix_web::http::header::{self, HeaderValue};
use actix_web::HttpRequest;

use crate::domain::conditional;

/// True when the client's `If-None-Match` names `etag` (or is `*`).
pub fn not_modified(req: &HttpRequest, etag: Option<&HeaderValue>) -> bool {
    not_modified_since(req, etag, None)
}

/// True when the request's validators say the client's copy is current: `If-None-Match`
/// against `etag` when it has one, else `If-Modified-Since` against `last_modified` (Unix
/// seconds). A header that is not text counts as absent.
pub fn not_modified_since(req: &HttpRequest, etag: Option<&HeaderValue>, last_modified: Option<u64>) -> bool {
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let inm = text(header::IF_NONE_MATCH);
    let ims = text(header::IF_MODIFIED_SINCE);
    if inm.is_none() && ims.is_none() {
        return false;
    }
    conditional::not_modified(inm, ims, etag.and_then(|e| e.to_str().ok()), last_modified)
}

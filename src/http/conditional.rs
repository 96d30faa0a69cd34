//! Conditional requests: `If-None-Match` against the ETag of what would be sent (a 304 instead).
//! Every answer with an ETag asks here: tiles, metadata, TileJSON, the map page and its assets,
//! compressed documents.

use actix_web::http::header::{self, HeaderValue};
use actix_web::HttpRequest;

/// True when the client's `If-None-Match` names `etag` (or is `*`).
pub fn not_modified(req: &HttpRequest, etag: Option<&HeaderValue>) -> bool {
    let (Some(inm), Some(etag)) = (req.headers().get(header::IF_NONE_MATCH), etag) else {
        return false;
    };
    let (Ok(inm), Ok(etag)) = (inm.to_str(), etag.to_str()) else {
        return false;
    };
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let etag = strip(etag);
    inm.split(',').any(|c| c.trim() == "*" || strip(c) == etag)
}

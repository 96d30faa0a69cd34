//! Everything a map developer reaches besides tiles, dispatched from the default service once
//! `routes::parse` has said "not a tile" (so tile requests pay nothing for it): the map page and
//! its assets ([`crate::http::map_page`]), TileJSON documents ([`crate::http::tilejson`]) and HERE's metadata
//! endpoints ([`crate::http::metadata`]). `None`: none of them; the caller answers 404.

use actix_web::{HttpRequest, HttpResponse};

use crate::http::state::AppState;

/// The answer for a non-tile GET/HEAD path, if one of the site's routes takes it.
///
/// Whole answers worth it (the page's HTML, JS and CSS, TileJSON, HERE's JSON) go out br or gzip
/// to clients that accept it ([`crate::http::negotiate::Compressor::encode_response`]).
pub async fn route(req: &HttpRequest, state: &AppState, client: &awc::Client) -> Option<HttpResponse> {
    let path = req.path();
    let res = match crate::http::map_page::serve(req, state, path) {
        Some(res) => res,
        None => match crate::http::tilejson::serve(req, state, path) {
            Some(res) => res,
            None => crate::http::metadata::serve(req, state, client, path).await?,
        },
    };
    Some(state.compressor.encode_response(req, res))
}

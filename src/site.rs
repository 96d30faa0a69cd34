//! Everything a map developer reaches besides tiles, dispatched from the default service once
//! `routes::parse` has said "not a tile" (so tile requests pay nothing for it): the map page and
//! its assets ([`crate::map_page`]), TileJSON documents ([`crate::tilejson`]) and HERE's metadata
//! endpoints ([`crate::metadata`]). `None`: none of them; the caller answers 404.

use actix_web::{HttpRequest, HttpResponse};

use crate::service::TileService;

/// The answer for a non-tile GET/HEAD path, if one of the site's routes takes it.
pub async fn route(req: &HttpRequest, service: &TileService, client: &awc::Client) -> Option<HttpResponse> {
    let path = req.path();
    if let Some(res) = crate::map_page::serve(req, service.state(), path) {
        return Some(res);
    }
    if let Some(res) = crate::tilejson::serve(req, service.state(), path) {
        return Some(res);
    }
    crate::metadata::serve(req, service, client, path).await
}

//! HERE's metadata endpoints, proxied and cached. Being written.

use actix_web::{HttpRequest, HttpResponse};

use crate::service::TileService;

/// A metadata answer, when `path` is a metadata endpoint.
pub async fn serve(
    _req: &HttpRequest,
    _service: &TileService,
    _client: &awc::Client,
    _path: &str,
) -> Option<HttpResponse> {
    None
}

//! TileJSON 3.0.0 documents for raster styles and vector layers. Being written.

use actix_web::{HttpRequest, HttpResponse};

use crate::state::AppState;

/// A TileJSON document, when `path` names one.
pub fn serve(_req: &HttpRequest, _state: &AppState, _path: &str) -> Option<HttpResponse> {
    None
}

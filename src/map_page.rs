//! The built-in map page (`/`, `/map`) and its embedded assets. Being written.

use actix_web::{HttpRequest, HttpResponse};

use crate::state::AppState;

/// The page or one of its assets, when `path` is one of theirs and `map_page` is on.
pub fn serve(_req: &HttpRequest, _state: &AppState, _path: &str) -> Option<HttpResponse> {
    None
}

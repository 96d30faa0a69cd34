//! `GET /admin/stats` (admin token): the per-index statistics document of `service::stats`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::state::AppState;
use crate::service::stats::document;

/// `GET /admin/stats`.
pub async fn api(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = crate::http::admin::auth::admit(&req, state, None) {
        return e.response();
    }
    let doc = document(&state.core, state.redis.as_deref(), &state.pod_id).await;
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(doc)
}

//! `GET /admin/stats` (admin token): the per-index statistics document of `service::stats`, with
//! the month's HERE bill (`service::bill`) as `bill`; `?month=YYYY-MM` picks another UTC month's
//! bill (400 naming `month` when it is not one).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use crate::domain::bill::Month;
use crate::http::error::ProxyError;
use crate::http::state::State;
use crate::service::stats::document;

/// `GET /admin/stats`.
pub async fn api(req: HttpRequest, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = crate::http::admin::auth::admit(&req, state, None) {
        return e.response();
    }
    let month = match month_param(req.query_string()) {
        Ok(m) => m,
        Err(message) => return ProxyError::Invalid { field: Some("month"), message }.response(),
    };
    let mut doc = document(&state.core, state.redis.as_deref(), &state.pod_id).await;
    doc["bill"] = crate::service::bill::document(&state.core, month).await;
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(doc)
}

/// The `month` query parameter, if any.
fn month_param(query: &str) -> Result<Option<Month>, String> {
    let value = query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == "month").map(|(_, v)| v);
    match value {
        None => Ok(None),
        Some(v) => {
            Month::parse(v).map(Some).ok_or_else(|| format!("`{v}` is not a month: YYYY-MM (UTC), e.g. 2026-12"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_month_parameter() {
        assert_eq!(month_param(""), Ok(None));
        assert_eq!(month_param("x=1&month=2026-11"), Ok(Some(Month { year: 2026, month: 11 })));
        assert!(month_param("month=2026-13").unwrap_err().contains("YYYY-MM"));
        assert!(month_param("month=").is_err());
    }
}

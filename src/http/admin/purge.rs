//! The admin API: `POST /admin/purge` and `GET /admin/purges`.
//!
//! Every `/admin/*` route needs `Authorization: Bearer <admin_token>` (compared in constant
//! time); with no token configured they answer 404, as if they did not exist. A purge becomes a
//! rule ([`crate::domain::purge::Rule`]) applied on this pod at once, stored in Redis and published to
//! every pod (see [`crate::store::redis`]); without Redis the rules are this pod's own, kept in the
//! cache folder so a restart does not bring purged tiles back from the disk tier.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::domain::purge::{PurgeRequest, Rule};
use crate::domain::routes::{self, ParseOptions};
use crate::http::state::AppState;
use crate::service::tiles::TileService;
use crate::store::redis::{Deadline, Lua};

/// Largest accepted request body.
const MAX_BODY: usize = 16 << 10;

/// `KEYS`: rule hash. `ARGV`: id, JSON, hash lifetime ms, channel.
static PUBLISH_RULE: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new(PUBLISH_RULE_LUA));
const PUBLISH_RULE_LUA: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
";

/// A JSON error answer of the admin API (`no-store`).
pub fn error(status: actix_web::http::StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"error": code, "message": message.into()}))
}

/// Equal in constant time (over hashes, so the length leaks nothing either).
pub fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the request may use the admin API, else the answer to give it (every
/// `/admin/*` handler starts with it).
pub fn deny(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    use actix_web::http::StatusCode;
    let Some(expected) = state.settings.admin_token.as_deref() else {
        return Some(error(StatusCode::NOT_FOUND, "not_found", "no admin API on this server (admin_token is not set)"));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        Some(t) if token_matches(t, expected) => None,
        Some(_) => Some(unauthorized("wrong admin token")),
        None => Some(unauthorized("missing `Authorization: Bearer <admin token>`")),
    }
}

fn unauthorized(message: &str) -> HttpResponse {
    let mut res = error(actix_web::http::StatusCode::UNAUTHORIZED, "unauthorized", message);
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"tile-proxy admin\""));
    res
}

/// The cache key and index of a tile URL as clients send it (path and query; scheme and host,
/// if given, are ignored).
fn tile_of(url: &str, state: &AppState) -> Result<(String, String), String> {
    let rest = match url.split_once("://") {
        Some((_, after)) => after.find('/').map_or("/", |i| &after[i..]),
        None => url,
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let opts = ParseOptions { reject_unknown_params: state.settings.reject_unknown_params };
    match routes::parse(path, query, opts) {
        Ok(Some(t)) => Ok((state.upstream.cache_key(&t).as_str().to_string(), t.index)),
        Ok(None) => Err(format!("`{path}` is not a tile URL")),
        Err(e) => Err(format!("url: {}: {}", e.field, e.message)),
    }
}

/// `POST /admin/purge`.
pub async fn purge(req: HttpRequest, body: web::Bytes, service: web::Data<TileService>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let state = service.state();
    if let Some(denied) = deny(&req, state) {
        return denied;
    }
    if body.len() > MAX_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "the body is larger than 16 KiB");
    }
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("body: {e} (expected {{\"index\": ...}}, {{\"url\": ...}} or {{\"bbox\": [w, s, e, n], \"zoom\": [min, max], \"index\": ...}})"),
            )
        }
    };
    let key = match request.url.as_deref() {
        Some(url) => match tile_of(url, state) {
            Ok((key, _index)) => Some(key),
            Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
        },
        None => None,
    };
    let now = state.clock.now_ms();
    let rule = match request.into_rule(crate::store::redis::token()[..16].to_string(), now, key) {
        Ok(rule) => rule,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    state.purges.add(rule.clone(), now);
    state.metrics.purge_rules.set(state.purges.len() as i64);
    save_local(state);
    tracing::info!(rule = %serde_json::to_string(&rule).unwrap_or_default(), "purge rule added");
    let shared =
        match &state.redis {
            None => json!({"redis": false}),
            Some(_) => match share(state, &rule).await {
                Ok(()) => json!({"redis": true}),
                Err(e) => return HttpResponse::ServiceUnavailable()
                    .insert_header((header::CACHE_CONTROL, "no-store"))
                    .json(json!({
                        "error": "redis_unavailable",
                        "message": format!("the rule applies on this pod but could not reach the others: {e}; retry"),
                        "rule": rule,
                    })),
            },
        };
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({"rule": rule, "shared": shared}))
}

/// Stores the rule in Redis and tells every pod.
async fn share(state: &AppState, rule: &Rule) -> Result<(), String> {
    let Some(redis) = &state.redis else { return Ok(()) };
    let json = serde_json::to_string(rule).map_err(|e| e.to_string())?;
    let life = state.settings.max_entry_life().as_millis() as u64;
    let (hash, channel, life) = (redis.keys.purges(), redis.keys.purge_channel(), life.max(1).to_string());
    redis
        .eval::<i64>("purge_publish", Deadline::Write, &PUBLISH_RULE, &[&hash], &[&rule.id, &json, &life, &channel])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Keeps this pod's rules in the cache folder (best effort).
pub fn save_local(state: &AppState) {
    if let Some(path) = &state.purge_file {
        if let Err(e) = state.purges.save(path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot save purge rules");
        }
    }
}

/// `GET /admin/purges`.
pub async fn purges(req: HttpRequest, service: web::Data<TileService>) -> HttpResponse {
    let state = service.state();
    if let Some(denied) = deny(&req, state) {
        return denied;
    }
    state.purges.expire(state.clock.now_ms());
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "rules": state.purges.list(),
        "shared": state.redis.is_some(),
        "max_rule_age_seconds": state.settings.max_entry_life().as_secs(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare() {
        assert!(token_matches("s3cret-token-0123", "s3cret-token-0123"));
        assert!(!token_matches("s3cret-token-0124", "s3cret-token-0123"));
        assert!(!token_matches("", "s3cret-token-0123"));
        assert!(!token_matches("s3cret-token-01234", "s3cret-token-0123"));
    }
}

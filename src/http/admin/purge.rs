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

use crate::domain::purge::{PurgeRequest, Rule};
use crate::domain::routes::{self, ParseOptions};
use crate::http::admin::auth::admit;
use crate::http::error::ProxyError;
use crate::http::state::{AppState, State};
use crate::store::redis::{Deadline, Lua};

/// `KEYS`: rule hash. `ARGV`: id, JSON, hash lifetime ms, channel.
static PUBLISH_RULE: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new(PUBLISH_RULE_LUA));
const PUBLISH_RULE_LUA: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
";

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
pub async fn purge(req: HttpRequest, body: web::Bytes, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, Some(&body)) {
        return e.response();
    }
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ProxyError::Invalid {
                field: None,
                message: format!("body: {e} (expected {{\"index\": ...}}, {{\"url\": ...}}, {{\"bbox\": [w, s, e, n], \"zoom\": [min, max], \"index\": ...}}, {{\"geojson\": {{...}}, \"zoom\": [min, max]}} or {{\"tiles\": \"z/x/y\\nz/x/y\"}})"),
            }
            .response()
        }
    };
    let key = match request.url.as_deref() {
        Some(url) => match tile_of(url, state) {
            Ok((key, _index)) => Some(key),
            Err(message) => return ProxyError::Invalid { field: None, message }.response(),
        },
        None => None,
    };
    let now = state.clock.now_ms();
    let id = crate::store::redis::token()[..16].to_string();
    // Covering a large area takes a while: off the worker's thread.
    let rule = match web::block(move || request.into_rule(id, now, key)).await {
        Ok(Ok(rule)) => rule,
        Ok(Err(e)) => return ProxyError::Invalid { field: None, message: e.to_string() }.response(),
        Err(e) => return ProxyError::Invalid { field: None, message: format!("purge not computed: {e}") }.response(),
    };
    state.purges.add(rule.clone(), now);
    state.metrics.purge_rules.set(state.purges.len() as i64);
    save_local(state);
    tracing::info!(rule = %summary(&rule), "purge rule added");
    let shared = match &state.redis {
        None => json!({"redis": false}),
        Some(_) => match share(state, &rule).await {
            Ok(()) => json!({"redis": true}),
            Err(message) => return ProxyError::PurgeNotShared { message, rule: summary(&rule) }.response(),
        },
    };
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"rule": summary(&rule), "shared": shared}))
}

/// A rule as the admin API shows it: a tile set (thousands of runs) is summed up as its tile
/// and run counts and zooms.
pub fn summary(rule: &Rule) -> serde_json::Value {
    let mut v = serde_json::to_value(rule).unwrap_or_default();
    if let (Some(tiles), Some(o)) = (&rule.tiles, v.as_object_mut()) {
        o.insert("tiles".into(), json!({"count": tiles.len(), "runs": tiles.runs().len(), "zooms": tiles.zooms()}));
    }
    v
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
        if let Err(e) = crate::store::purge_file::save(&state.purges, path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot save purge rules");
        }
    }
}

/// `GET /admin/purges`.
pub async fn purges(req: HttpRequest, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, None) {
        return e.response();
    }
    state.purges.expire(state.clock.now_ms());
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "rules": state.purges.list().iter().map(summary).collect::<Vec<_>>(),
        "shared": state.redis.is_some(),
        "max_rule_age_seconds": state.settings.max_entry_life().as_secs(),
    }))
}

//! What a map developer reaches besides the v3/v2 tile routes, end to end: TileJSON documents
//! (checked against the official TileJSON 3.0.0 schema, and followed to real tiles), HERE's
//! metadata endpoints (cached, coalesced, key hidden, refreshed, stale on failure) and the legacy
//! Map Tile 2.1 URLs (the same tiles and cache entries as their v3 URLs).

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use serde_json::Value;
use tile_proxy::domain::routes::{LEGACY_FORMATS, LEGACY_RESOURCES, LEGACY_SCHEMES};

const CLIENT_KEY: &str = "CLIENTKEY-must-not-travel";

/// The official TileJSON 3.0.0 schema (tests/fixtures, see its LICENSE note).
fn tilejson_validator() -> jsonschema::Validator {
    let text = include_str!("fixtures/tilejson-3.0.0.schema.json");
    let schema: Value = serde_json::from_str(text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path())).collect()
}

/// Every header and the body of a response, as text, to look for secrets in.
fn everything(r: &Resp) -> String {
    let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))).collect();
    format!("{}\n{}", headers.join("\n"), String::from_utf8_lossy(r.body.as_deref().unwrap_or_default()))
}

#[actix_rt::test]
async fn tilejson_documents_validate_and_their_templates_serve_the_upstream_tiles() {
    let up = upstream(3_000);
    let p = Proxy::start(&up, |_| {}).await;
    let validator = tilejson_validator();
    // The validator itself rejects what the schema forbids.
    assert!(!validator.is_valid(&serde_json::json!({"tilejson": "3.0.0", "vector_layers": []})));
    let cases = [
        ("/v3/base/tilejson.json", "/v3/base/mc/3/2/1/png"),
        (
            "/v3/label/tilejson.json?style=explore.night&size=512&format=png8&indice=tj&lang=de&apiKey=CLIENTKEY-must-not-travel",
            "/v3/label/mc/3/2/1/png8?lang=de&size=512&style=explore.night",
        ),
        ("/v3/background/tilejson.json?format=jpeg&style=explore.day", "/v3/background/mc/3/2/1/jpeg"),
        (
            "/v2/vectortiles/core/tilejson.json?content=transit,default&indice=tj",
            "/v2/vectortiles/core/mc/3/2/1/omv?content=default,transit",
        ),
    ];
    for (path, upstream_tile) in cases {
        let r = p.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.header("cache-control"), Some("public, max-age=3600"), "{path}");
        assert!(!everything(&r).contains(CLIENT_KEY) && !everything(&r).contains(SERVER_KEY), "{path}");
        let doc = r.json();
        assert_eq!(schema_errors(&validator, &doc), Vec::<String>::new(), "{path}: {doc}");
        assert_eq!(doc["tilejson"], "3.0.0");
        assert_eq!(doc["scheme"], "xyz");
        assert!(doc["attribution"].as_str().unwrap().starts_with("© HERE 20"), "{doc}");
        let tiles = doc["tiles"].as_array().unwrap();
        assert_eq!(tiles.len(), 1);
        let template = tiles[0].as_str().unwrap();
        assert!(template.starts_with(&p.base), "{template} is served by this proxy");
        assert_eq!(template.contains("indice=tj"), path.contains("indice=tj"), "{template}");
        let tile = template.replace("{z}", "3").replace("{x}", "2").replace("{y}", "1");
        let t = p.get(&tile[p.base.len()..]).await;
        assert_eq!(t.status, 200, "{tile}");
        assert_eq!(t.bytes(), &up.tile_bytes(upstream_tile), "{tile}");
    }
    let vector = p.get("/v2/vectortiles/base/tilejson.json").await.json();
    assert_eq!((vector["minzoom"].as_u64(), vector["maxzoom"].as_u64()), (Some(0), Some(17)));
    let layers: Vec<&str> =
        vector["vector_layers"].as_array().unwrap().iter().filter_map(|l| l["id"].as_str()).collect();
    assert!(layers.contains(&"water") && layers.contains(&"roads"), "{layers:?}");
    let raster = p.get("/v3/base/tilejson.json").await.json();
    assert_eq!((raster["minzoom"].as_u64(), raster["maxzoom"].as_u64()), (Some(0), Some(20)));
    // Only the tiles reached the upstream; the documents are generated.
    assert_eq!(up.total(), 4);
    p.stop().await;
}

#[actix_rt::test]
async fn tilejson_templates_use_public_base_url_or_trusted_forwarded_headers_only() {
    let up = upstream(1_000);
    let forwarded = [("X-Forwarded-Host", "maps.example.net"), ("X-Forwarded-Proto", "https")];
    let template = |r: &Resp| r.json()["tiles"][0].as_str().unwrap().to_string();

    let p = Proxy::start(&up, |_| {}).await;
    let r = p.get_with("/v3/base/tilejson.json", &forwarded).await;
    assert_eq!(template(&r), format!("{}/v3/base/mc/{{z}}/{{x}}/{{y}}/png", p.base), "untrusted headers ignored");
    assert!(r.header("vary").is_some_and(|v| v.contains("X-Forwarded-Host")));
    p.stop().await;

    let p = Proxy::start(&up, |f| f.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let r = p.get_with("/v3/base/tilejson.json", &forwarded).await;
    assert_eq!(template(&r), "https://maps.example.net/v3/base/mc/{z}/{x}/{y}/png");
    p.stop().await;

    let p = Proxy::start(&up, |f| f.public_base_url = Some("https://tiles.example.com/here".into())).await;
    let r = p.get_with("/v2/vectortiles/base/tilejson.json?indice=web", &forwarded).await;
    assert_eq!(template(&r), "https://tiles.example.com/here/v2/vectortiles/base/mc/{z}/{x}/{y}/omv?indice=web");
    let vary: Vec<&str> = r.headers.get_all("vary").filter_map(|v| v.to_str().ok()).collect();
    assert!(!vary.iter().any(|v| v.contains("Host")), "the document no longer depends on the Host: Vary {vary:?}");
    p.stop().await;
    assert_eq!(up.total(), 0);
}

#[actix_rt::test]
async fn tilejson_parameters_follow_the_tile_rules() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    let cases = [
        ("/v3/base/tilejson.json?style=evil", "style"),
        ("/v3/base/tilejson.json?size=1024", "size"),
        ("/v3/base/tilejson.json?format=gif", "format"),
        ("/v3/base/tilejson.json?bust=1", "bust"),
        ("/v3/secret/tilejson.json", "resource"),
        ("/v2/vectortiles/roads/tilejson.json", "layer"),
        ("/v2/vectortiles/base/tilejson.json?content=everything", "content"),
    ];
    for (path, field) in cases {
        let r = p.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["field"], field, "{path}");
    }
    assert_eq!(up.total(), 0);
    p.stop().await;
}

const RASTER_META: &[&str] = &["/v3/info", "/v3/copyright", "/v3/languages", "/v3/features", "/v3/politicalViews"];
const VECTOR_META: &[&str] = &["/v2/vectortiles/copyright", "/v2/vectortiles/politicalViews"];

#[actix_rt::test]
async fn metadata_endpoints_are_cached_with_the_server_key_added_upstream_only() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    for path in RASTER_META.iter().chain(VECTOR_META) {
        let url = format!("{path}?apiKey={CLIENT_KEY}&indice=meta");
        let first = p.get(&url).await;
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(first.x_cache(), "MISS", "{path}");
        assert_eq!(first.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(first.bytes(), &up.tile_bytes(path), "{path}");
        assert!(first.header("etag").is_some() && first.header("age").is_some(), "{path}");
        let second = p.get(&url).await;
        assert_eq!(second.x_cache(), "HIT", "{path}");
        assert_eq!((second.bytes(), second.header("etag")), (first.bytes(), first.header("etag")), "{path}");
        let revalidated = p.get_with(&url, &[("If-None-Match", first.header("etag").unwrap())]).await;
        assert_eq!(revalidated.status, 304, "{path}");
        for r in [&first, &second] {
            assert!(!everything(r).contains(SERVER_KEY) && !everything(r).contains(CLIENT_KEY), "{path}");
        }
        assert_eq!(up.count(path), 1, "{path}: one upstream call");
    }
    for seen in up.requests() {
        let key = if seen.path.starts_with("/v2/") { "apikey" } else { "apiKey" };
        assert_eq!(seen.query_param(key).as_deref(), Some(SERVER_KEY), "{}", seen.path);
        assert!(!seen.query.contains(CLIENT_KEY) && !seen.query.contains("indice"), "{}?{}", seen.path, seen.query);
    }
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_upstream_requests_total", &["index=\"_metadata\"", "status=\"200\""]), 7.0);
    assert_eq!(metric(&m, "tile_proxy_metadata_requests_total", &["endpoint=\"info\"", "cache=\"hit\""]), 2.0);
    assert!(!m.contains(SERVER_KEY));
    p.stop().await;
}

#[actix_rt::test]
async fn an_upstream_echoing_the_key_is_scrubbed_or_refused() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    // A 200 page that echoes the request URL, key included: relayed scrubbed, no Location.
    up.fail("/v3/languages", Fault::Echo { code: 200 }, 1);
    let r = p.get("/v3/languages").await;
    assert_eq!(r.status, 200);
    let text = everything(&r);
    assert!(!text.contains(SERVER_KEY), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert_eq!(r.header("location"), None);
    // An error page that echoes it: our JSON error, nothing of the upstream's.
    up.fail("/v3/features", Fault::Echo { code: 500 }, 1);
    let r = p.get("/v3/features").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_error");
    assert!(!everything(&r).contains(SERVER_KEY));
    p.stop().await;
}

#[actix_rt::test]
async fn concurrent_metadata_requests_share_one_upstream_call() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    up.fail("/v3/info", Fault::Delay(Duration::from_millis(300)), 1);
    let answers = join_all((0..20).map(|_| p.get_owned("/v3/info".into()))).await;
    for r in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes(), &up.tile_bytes("/v3/info"));
    }
    assert_eq!(answers.iter().filter(|r| r.x_cache() == "MISS").count(), 1);
    assert_eq!(up.count("/v3/info"), 1);
    p.stop().await;
}

#[actix_rt::test]
async fn copyright_is_refetched_after_a_day_and_other_metadata_after_metadata_ttl() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| f.metadata_ttl = dur("7d")).await;
    for path in ["/v3/copyright", "/v2/vectortiles/copyright", "/v3/info"] {
        assert_eq!(p.get(path).await.x_cache(), "MISS", "{path}");
    }
    p.clock.advance_secs(86_399);
    for path in ["/v3/copyright", "/v2/vectortiles/copyright", "/v3/info"] {
        let r = p.get(path).await;
        assert_eq!(r.x_cache(), "HIT", "{path}");
        assert_eq!(r.header("age"), Some("86399"), "{path}");
    }
    assert_eq!(p.get("/v3/copyright").await.header("cache-control"), Some("public, max-age=86400"));
    p.clock.advance_secs(2);
    for (path, x_cache, calls) in
        [("/v3/copyright", "MISS", 2), ("/v2/vectortiles/copyright", "MISS", 2), ("/v3/info", "HIT", 1)]
    {
        assert_eq!(p.get(path).await.x_cache(), x_cache, "{path} after 1 day + 1 s");
        assert_eq!(up.count(path), calls, "{path}");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn metadata_parameters_are_validated_like_tile_parameters() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    for (path, field) in [
        ("/v3/info?lang=en", "lang"),
        ("/v3/copyright?indice=a/b", "indice"),
        ("/v2/vectortiles/politicalViews?style=x", "style"),
        ("/v3/features?indice=a&indice=b", "indice"),
    ] {
        let r = p.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["field"], field, "{path}");
    }
    assert_eq!(up.total(), 0);
    p.stop().await;

    let p = Proxy::start(&up, |f| f.reject_unknown_params = false).await;
    assert_eq!(p.get("/v3/info?lang=en").await.status, 200);
    assert_eq!(up.requests()[0].query_param("lang").as_deref(), Some("en"));
    p.stop().await;
}

#[actix_rt::test]
async fn a_failing_upstream_gets_the_last_good_copy_else_a_json_error() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    let good = p.get("/v3/politicalViews").await;
    assert_eq!(good.x_cache(), "MISS");
    p.clock.advance_secs(86_401);
    up.fail_always("/v3/politicalViews", Fault::Status { code: 500, retry_after: None });
    let stale = p.get("/v3/politicalViews").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(stale.header("x-cache-reason"), Some("upstream_error"));
    assert_eq!(stale.bytes(), good.bytes());

    up.fail_always("/v2/vectortiles/politicalViews", Fault::Status { code: 503, retry_after: None });
    let r = p.get("/v2/vectortiles/politicalViews").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.x_cache(), "ERROR");
    assert_eq!(r.json()["error"], "upstream_error");
    up.fail_always("/v3/info", Fault::Status { code: 401, retry_after: None });
    let r = p.get("/v3/info").await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (502, Some("upstream_auth")));

    // Once the upstream is back, a fresh copy replaces the stale one.
    up.clear_faults();
    assert_eq!(p.get("/v3/politicalViews").await.x_cache(), "MISS");
    assert_eq!(p.get("/v3/politicalViews").await.x_cache(), "HIT");
    p.stop().await;
}

/// The documented mapping (README, "Legacy Map Tile 2.1 URLs"), written out independently of
/// the code's tables so a wrong entry there fails here.
const SCHEMES: &[(&str, &str)] = &[
    ("normal.day", "explore.day"),
    ("normal.night", "explore.night"),
    ("reduced.day", "lite.day"),
    ("reduced.night", "lite.night"),
    ("hybrid.day", "explore.satellite.day"),
    ("satellite.day", "satellite.day"),
    ("terrain.day", "topo.day"),
];
const RESOURCES: &[(&str, &str)] = &[("maptile", "base"), ("basetile", "background"), ("labeltile", "label")];
const FORMATS: &[(&str, &str)] = &[("png", "png"), ("png8", "png8"), ("jpg", "jpeg")];

#[actix_rt::test]
async fn every_legacy_map_tile_url_returns_its_v3_tile_from_one_cache_entry() {
    assert_eq!(
        (LEGACY_SCHEMES, LEGACY_RESOURCES, LEGACY_FORMATS),
        (SCHEMES, RESOURCES, FORMATS),
        "the documented table"
    );
    let up = upstream(4_000);
    let p = Proxy::start(&up, |_| {}).await;
    let mut cases = Vec::new();
    for (i, (scheme, style)) in SCHEMES.iter().enumerate() {
        cases.push(("maptile", "base", *scheme, *style, if i % 2 == 0 { "256" } else { "512" }, "png8", "png8"));
    }
    for (resource, v3_resource) in RESOURCES {
        for (format, v3_format) in FORMATS {
            cases.push((*resource, *v3_resource, "normal.night", "explore.night", "256", *format, *v3_format));
        }
    }
    for (i, (resource, v3_resource, scheme, style, size, format, v3_format)) in cases.into_iter().enumerate() {
        let (z, x, y) = (9, 100 + i, 200);
        let map_id = if i % 3 == 0 { "be9b70fa2c" } else { "newest" };
        let legacy = format!("/maptile/2.1/{resource}/{map_id}/{scheme}/{z}/{x}/{y}/{size}/{format}?indice=legacy");
        let mut query = vec![];
        if size != "256" {
            query.push(format!("size={size}"));
        }
        if style != "explore.day" {
            query.push(format!("style={style}"));
        }
        let upstream_path = format!("/v3/{v3_resource}/mc/{z}/{x}/{y}/{v3_format}");
        let v3 = format!("{upstream_path}?{}", query.join("&"));
        // Half the pairs start with the legacy URL, half with the v3 one.
        let (a, b) = if i % 2 == 0 { (&legacy, &v3) } else { (&v3, &legacy) };
        let first = p.get(a).await;
        assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"), "{a}");
        let second = p.get(b).await;
        assert_eq!((second.status.as_u16(), second.x_cache()), (200, "HIT"), "{b} after {a}");
        assert_eq!(second.bytes(), first.bytes(), "{legacy}");
        assert_eq!(first.bytes(), &up.tile_bytes(&v3), "{legacy}");
        assert_eq!(up.count(&upstream_path), 1, "{legacy}: one upstream call for the pair");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn legacy_urls_without_a_v3_equivalent_answer_400_naming_the_part() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, |_| {}).await;
    for (path, field) in [
        ("/maptile/2.1/maptile/newest/normal.day.grey/1/0/0/256/png8", "scheme"),
        ("/maptile/2.1/maptile/newest/pedestrian.day/1/0/0/256/png8", "scheme"),
        ("/maptile/2.1/alabeltile/newest/normal.day/1/0/0/256/png8", "resource"),
        ("/maptile/2.1/maptile/newest/normal.day/1/0/0/128/png8", "size"),
        ("/maptile/2.1/maptile/newest/normal.day/1/0/0/256/gif", "format"),
    ] {
        let r = p.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["field"], field, "{path}");
    }
    assert_eq!(up.total(), 0);
    p.stop().await;
}

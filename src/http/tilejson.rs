//! TileJSON 3.0.0 documents for raster styles and vector layers, so MapLibre, Leaflet plugins and
//! other TileJSON readers take a HERE layer through this proxy as it is:
//!
//! - `/v3/{resource}/tilejson.json?style=..&size=..&format=..&indice=..&(any tile parameter)`
//! - `/v2/vectortiles/{layer}/tilejson.json?content=..&indice=..`
//! - traffic: `/v3/flow/tilejson.json?minTrafficCongestion=..&style=..&size=..&format=..` and
//!   `/v2/traffictiles/{layer}/tilejson.json?incidentType=..` (layers `traffic`, `flow`,
//!   `incident`), overlays to draw over a base map
//!
//! The query is validated by the tile rules themselves: the tile `0/0/0` the document describes
//! is parsed with [`routes::parse`] (so a style, size or layer the tiles would refuse is a 400
//! naming the field here too), and its normalised query, with `indice`, is the query of the one
//! tile template. The template points at this proxy: `public_base_url` when set, else the
//! request's scheme and `Host` (`X-Forwarded-Proto`/`X-Forwarded-Host` only from
//! `trusted_proxies`). Never a key: the client's `apiKey` is dropped by the parser.
//!
//! Documents are generated, not fetched: no upstream call, `Cache-Control: public, max-age=3600`.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::config::{Settings, UnknownIndices};
use crate::domain::routes::{self, Api, ParseOptions, RouteError, TileRequest};
use crate::http::error::ProxyError;
use crate::http::state::AppState;

/// How long clients may keep a document.
pub const MAX_AGE_SECS: u64 = 3600;
/// Web Mercator's extent, as TileJSON `bounds` (west, south, east, north).
pub const BOUNDS: [f64; 4] = [-180.0, -85.0511, 180.0, 85.0511];
/// Raster format when the query names none.
pub const DEFAULT_RASTER_FORMAT: &str = "png";

/// The layers of HERE's OMV tiles. HERE organises them after the Tilezen schema (its "Tile
/// layers" guide); these are the layers a style can draw. `contours` and `hillshade` are added
/// when `content` asks for them; `advanced_pois`/`advanced_roads` enrich `pois`/`roads`. (The
/// project's test upstream draws `grid`, `label` and `water`: it imitates the transport, not
/// HERE's map data.)
pub const HERE_VECTOR_LAYERS: &[(&str, &str)] = &[
    ("boundaries", "Country and region boundaries"),
    ("buildings", "Building footprints"),
    ("earth", "Land masses"),
    ("landuse", "Parks, forests, airports and other land use"),
    ("places", "Populated places (countries, cities, neighbourhoods)"),
    ("pois", "Points of interest"),
    ("roads", "Roads, paths, ferries and railways"),
    ("transit", "Public transit lines"),
    ("water", "Oceans, lakes, rivers"),
];

/// What a document describes: the API and the raster resource or vector layer named in the path.
fn target(path: &str) -> Option<(Api, &str)> {
    let mut segs = path.strip_prefix('/')?.split('/');
    match (segs.next(), segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some("v3"), Some("flow"), Some("tilejson.json"), None, None) => Some((Api::TrafficRaster, "flow")),
        (Some("v3"), Some(resource), Some("tilejson.json"), None, None) => Some((Api::Raster, resource)),
        (Some("v2"), Some("vectortiles"), Some(layer), Some("tilejson.json"), None) => Some((Api::Vector, layer)),
        (Some("v2"), Some("traffictiles"), Some(layer), Some("tilejson.json"), None) => {
            Some((Api::TrafficVector, layer))
        }
        _ => None,
    }
}

/// A TileJSON document, when `path` names one.
pub fn serve(req: &HttpRequest, state: &AppState, path: &str) -> Option<HttpResponse> {
    let (api, resource) = target(path)?;
    let s = &state.settings;
    let opts = ParseOptions { reject_unknown_params: s.reject_unknown_params };
    let (tile, format) = match tile_request(api, resource, req.query_string(), opts) {
        Ok(t) => t,
        Err(e) => return Some(ProxyError::BadRequest(e).response()),
    };
    if s.unknown_indices == UnknownIndices::Reject && !s.policies.contains_key(&tile.index) {
        return Some(ProxyError::UnknownIndex.response());
    }
    let (base, from_request) = request_base(req, s);
    let doc = document(&tile, format, &base, crate::base::clock::utc_year(state.clock.now_ms()));
    Some(respond(req, &doc, from_request))
}

/// The tile request a document describes (tile `0/0/0`, validated by the tile rules) and the
/// raster format it asked for (`format`, taken out of the query; [`DEFAULT_RASTER_FORMAT`]).
pub fn tile_request(
    api: Api,
    resource: &str,
    query: &str,
    opts: ParseOptions,
) -> Result<(TileRequest, &'static str), RouteError> {
    let mut format = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", v)) if matches!(api, Api::Raster | Api::TrafficRaster) => {
                let found = routes::RASTER_FORMATS.iter().copied().find(|f| *f == v);
                let f = found.ok_or_else(|| {
                    RouteError::new("format", format!("must be one of {}", routes::RASTER_FORMATS.join(", ")))
                })?;
                if format.replace(f).is_some() {
                    return Err(RouteError::new("format", "given more than once"));
                }
            }
            _ => rest.push(pair),
        }
    }
    let format = format.unwrap_or(DEFAULT_RASTER_FORMAT);
    // The lowest tile of the source (traffic vector tiles start at zoom 1).
    let path = match api {
        Api::Raster | Api::TrafficRaster => format!("/v3/{resource}/mc/0/0/0/{format}"),
        Api::Vector => format!("/v2/vectortiles/{resource}/mc/0/0/0/omv"),
        Api::TrafficVector => format!("/v2/traffictiles/{resource}/mc/1/0/0/omv"),
    };
    match routes::parse(&path, &rest.join("&"), opts)? {
        Some(t) if t.api == api => Ok((t, format)),
        _ => Err(RouteError::new(
            if matches!(api, Api::Raster | Api::TrafficRaster) { "resource" } else { "layer" },
            "not a tile source",
        )),
    }
}

/// This proxy's base URL as the client reached it, and whether it came from the request (the
/// answer then varies with its headers): `public_base_url`, else the scheme and `Host`, where a
/// trusted proxy's `X-Forwarded-Proto`/`X-Forwarded-Host` win.
fn request_base(req: &HttpRequest, s: &Settings) -> (String, bool) {
    if let Some(base) = &s.public_base_url {
        return (base.clone(), false);
    }
    let trusted = req.peer_addr().is_some_and(|p| s.trusted_proxies.iter().any(|n| n.contains(&p.ip())));
    let first = |name: &str| {
        req.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.split(',').next().unwrap_or("").trim())
    };
    let forwarded = |name: &str| if trusted { first(name) } else { None };
    let scheme = if req.app_config().secure() { "https" } else { "http" };
    let base = base_url(
        scheme,
        first("host"),
        forwarded("x-forwarded-proto"),
        forwarded("x-forwarded-host"),
        req.app_config().host(),
    );
    (base, true)
}

/// `scheme://host` from the connection's scheme, the `Host` header and the forwarded headers
/// (already filtered to trusted peers); invalid values are ignored; `fallback_host` (the
/// server's own name) when no host is usable.
pub fn base_url(
    scheme: &str,
    host: Option<&str>,
    forwarded_proto: Option<&str>,
    forwarded_host: Option<&str>,
    fallback_host: &str,
) -> String {
    let scheme = forwarded_proto.filter(|p| matches!(*p, "http" | "https")).unwrap_or(scheme);
    let host = forwarded_host.filter(|h| is_host(h)).or(host.filter(|h| is_host(h))).unwrap_or(fallback_host);
    format!("{scheme}://{host}")
}

/// `host[:port]` (names, IPv4, bracketed IPv6): nothing that could end the authority early.
fn is_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// The document for `tile` (its resource, style, size, content, index), tiles served from `base`.
pub fn document(tile: &TileRequest, format: &str, base: &str, year: i64) -> Value {
    let mut query = tile.query_string();
    if tile.index != routes::DEFAULT_INDEX {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("indice=");
        query.push_str(&tile.index);
    }
    let path = match tile.api {
        Api::Raster | Api::TrafficRaster => format!("/v3/{}/mc/{{z}}/{{x}}/{{y}}/{format}", tile.resource),
        Api::Vector => format!("/v2/vectortiles/{}/mc/{{z}}/{{x}}/{{y}}/omv", tile.resource),
        Api::TrafficVector => format!("/v2/traffictiles/{}/mc/{{z}}/{{x}}/{{y}}/omv", tile.resource),
    };
    let template = if query.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{query}") };
    let param = |k: &str, default: &str| tile.params.get(k).cloned().unwrap_or_else(|| default.to_string());
    let min_zoom = if tile.api == Api::TrafficVector { routes::TRAFFIC_VECTOR_ZOOMS.0 } else { 0 };
    let (name, description, max_zoom, format_name, layers) = match tile.api {
        Api::Raster => {
            let (style, size) = (param("style", "explore.day"), param("size", "256"));
            (
                format!("HERE {} {style}", tile.resource),
                format!("HERE Raster Tile API v3: resource {}, style {style}, {size} px {format} tiles", tile.resource),
                routes::RASTER_MAX_ZOOM,
                if format == "jpeg" { "jpg" } else { "png" },
                Vec::new(),
            )
        }
        Api::Vector => {
            let content = param("content", "default");
            (
                format!("HERE vector {}", tile.resource),
                format!(
                    "HERE Vector Tile API v2: layer {}, content {content}, OMV (Mapbox Vector Tile)",
                    tile.resource
                ),
                routes::VECTOR_MAX_ZOOM,
                "pbf",
                vector_layers(&content),
            )
        }
        Api::TrafficRaster => {
            let (congestion, size) = (param("minTrafficCongestion", "free"), param("size", "512"));
            (
                "HERE traffic flow".to_string(),
                format!(
                    "HERE Traffic Raster Tile API v3: flow lines on transparent {size} px {format} tiles, from \
                     congestion {congestion}; an overlay, refreshed about every minute"
                ),
                routes::RASTER_MAX_ZOOM,
                if format == "jpeg" { "jpg" } else { "png" },
                Vec::new(),
            )
        }
        Api::TrafficVector => (
            format!("HERE traffic {}", tile.resource),
            format!(
                "HERE Traffic Vector Tile API v2: layer {}, OMV (Mapbox Vector Tile); an overlay, refreshed \
                 about every minute",
                tile.resource
            ),
            routes::TRAFFIC_VECTOR_ZOOMS.1,
            "pbf",
            traffic_layers(tile.resource, min_zoom),
        ),
    };
    json!({
        "tilejson": "3.0.0",
        "name": name,
        "description": description,
        "attribution": format!("© HERE {year}"),
        "tiles": [template],
        "minzoom": min_zoom,
        "maxzoom": max_zoom,
        "bounds": BOUNDS,
        "center": [0.0, 0.0, 2],
        "scheme": "xyz",
        "format": format_name,
        // Required by the official 3.0.0 schema for every document; empty for raster tiles.
        "vector_layers": layers,
    })
}

/// `vector_layers` for a `content` list: HERE's layers, plus the optional ones it asks for.
fn vector_layers(content: &str) -> Vec<Value> {
    let extra: &[(&str, &str)] = &[("contours", "Elevation contour lines"), ("hillshade", "Hillshading")];
    let asked = |name: &str| content.split(',').any(|c| c == name);
    HERE_VECTOR_LAYERS
        .iter()
        .chain(extra.iter().filter(|(id, _)| asked(id)))
        .map(|(id, description)| {
            json!({
                "id": id,
                "description": description,
                "minzoom": 0,
                "maxzoom": routes::VECTOR_MAX_ZOOM,
                "fields": {"kind": "String: what the feature is (Tilezen kind)", "min_zoom": "Number: lowest zoom it is drawn at"},
            })
        })
        .collect()
}

/// `vector_layers` of a traffic vector layer: HERE's traffic tiles follow Tilezen's
/// `traffic_flow` and `traffic_incidents` layers (`traffic` holds both).
fn traffic_layers(layer: &str, min_zoom: u8) -> Vec<Value> {
    let flow = ("traffic_flow", "Traffic flow: speed and congestion along roads");
    let incidents = ("traffic_incidents", "Traffic incidents (accidents, closures, construction, ...)");
    let layers = match layer {
        "flow" => vec![flow],
        "incident" => vec![incidents],
        _ => vec![flow, incidents],
    };
    layers
        .into_iter()
        .map(|(id, description)| {
            json!({
                "id": id,
                "description": description,
                "minzoom": min_zoom,
                "maxzoom": routes::TRAFFIC_VECTOR_ZOOMS.1,
                "fields": {"kind": "String: what the feature is (Tilezen kind)"},
            })
        })
        .collect()
}

fn respond(req: &HttpRequest, doc: &Value, from_request: bool) -> HttpResponse {
    let body = doc.to_string();
    let etag = format!("\"tj-{}\"", crate::base::hashing::stable_hash(body.as_bytes(), 16));
    let mut b = HttpResponse::Ok();
    b.insert_header((header::CACHE_CONTROL, format!("public, max-age={MAX_AGE_SECS}")));
    b.insert_header((header::ETAG, etag.clone()));
    if from_request {
        b.insert_header((header::VARY, "Host, X-Forwarded-Host, X-Forwarded-Proto"));
    }
    let etag = header::HeaderValue::from_str(&etag).ok();
    if crate::http::conditional::not_modified(req, etag.as_ref()) {
        return b.status(StatusCode::NOT_MODIFIED).finish();
    }
    b.insert_header((header::CONTENT_TYPE, "application/json"));
    b.body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(api: Api, resource: &str, q: &str) -> Value {
        let (t, format) = tile_request(api, resource, q, ParseOptions::default()).unwrap();
        document(&t, format, "https://tiles.example.com", 2026)
    }

    #[test]
    fn paths() {
        assert_eq!(target("/v3/base/tilejson.json"), Some((Api::Raster, "base")));
        assert_eq!(target("/v2/vectortiles/core/tilejson.json"), Some((Api::Vector, "core")));
        assert_eq!(target("/v3/flow/tilejson.json"), Some((Api::TrafficRaster, "flow")));
        assert_eq!(target("/v2/traffictiles/incident/tilejson.json"), Some((Api::TrafficVector, "incident")));
        for p in ["/v3/tilejson.json", "/v3/base/tilejson.json/x", "/v2/vectortiles/tilejson.json", "/"] {
            assert_eq!(target(p), None, "{p}");
        }
    }

    #[test]
    fn templates_carry_the_normalised_query_and_index_but_no_key() {
        let cases = [
            (Api::Raster, "base", "", "https://tiles.example.com/v3/base/mc/{z}/{x}/{y}/png"),
            (
                Api::Raster,
                "label",
                "apiKey=SECRET&size=512&style=explore.night&format=png8&indice=web&lang=de",
                "https://tiles.example.com/v3/label/mc/{z}/{x}/{y}/png8?lang=de&size=512&style=explore.night&indice=web",
            ),
            (Api::Raster, "base", "style=explore.day&size=256", "https://tiles.example.com/v3/base/mc/{z}/{x}/{y}/png"),
            (
                Api::Vector,
                "core",
                "content=transit,default&apikey=SECRET",
                "https://tiles.example.com/v2/vectortiles/core/mc/{z}/{x}/{y}/omv?content=default,transit",
            ),
            (
                Api::Vector,
                "base",
                "content=advanced_pois,default",
                "https://tiles.example.com/v2/vectortiles/base/mc/{z}/{x}/{y}/omv?content=default,advanced_pois",
            ),
        ];
        for (api, resource, q, want) in cases {
            assert_eq!(doc(api, resource, q)["tiles"], json!([want]), "{q}");
        }
        let v = doc(Api::Vector, "base", "content=default,contours");
        let ids: Vec<&str> = v["vector_layers"].as_array().unwrap().iter().filter_map(|l| l["id"].as_str()).collect();
        assert!(ids.contains(&"water") && ids.contains(&"contours") && !ids.contains(&"hillshade"), "{ids:?}");
        assert_eq!((v["maxzoom"].as_u64(), v["format"].as_str()), (Some(17), Some("pbf")));
        let r = doc(Api::Raster, "base", "format=jpeg");
        assert_eq!((r["maxzoom"].as_u64(), r["format"].as_str()), (Some(20), Some("jpg")));
        assert_eq!(r["attribution"], "© HERE 2026");
    }

    #[test]
    fn traffic_documents() {
        let f = doc(Api::TrafficRaster, "flow", "minTrafficCongestion=heavy&size=512&indice=web");
        assert_eq!(
            f["tiles"],
            json!(["https://tiles.example.com/v3/flow/mc/{z}/{x}/{y}/png?minTrafficCongestion=heavy&indice=web"])
        );
        assert_eq!(
            (f["minzoom"].as_u64(), f["maxzoom"].as_u64(), f["format"].as_str()),
            (Some(0), Some(20), Some("png"))
        );
        assert!(f["description"].as_str().unwrap().contains("512 px"), "size defaults to 512: {f}");
        let v = doc(Api::TrafficVector, "traffic", "incidentType=road_closure,accident");
        assert_eq!(
            v["tiles"],
            json!(["https://tiles.example.com/v2/traffictiles/traffic/mc/{z}/{x}/{y}/omv?incidentType=accident,road_closure"])
        );
        assert_eq!((v["minzoom"].as_u64(), v["maxzoom"].as_u64()), (Some(1), Some(17)));
        let ids: Vec<&str> = v["vector_layers"].as_array().unwrap().iter().filter_map(|l| l["id"].as_str()).collect();
        assert_eq!(ids, ["traffic_flow", "traffic_incidents"]);
        let flow = doc(Api::TrafficVector, "flow", "");
        assert_eq!(flow["vector_layers"].as_array().map(Vec::len), Some(1));
        for (api, resource, q, field) in [
            (Api::TrafficVector, "roads", "", "layer"),
            (Api::TrafficVector, "flow", "content=default", "content"),
            (Api::TrafficRaster, "flow", "minTrafficCongestion=jammed", "minTrafficCongestion"),
        ] {
            let err = tile_request(api, resource, q, ParseOptions::default()).unwrap_err();
            assert_eq!(err.field, field, "{resource}?{q}: {err}");
        }
    }

    #[test]
    fn invalid_queries_name_the_field() {
        let cases = [
            (Api::Raster, "secret", "", "resource"),
            (Api::Raster, "base", "style=evil", "style"),
            (Api::Raster, "base", "format=gif", "format"),
            (Api::Raster, "base", "format=png&format=png8", "format"),
            (Api::Raster, "base", "bust=1", "bust"),
            (Api::Raster, "base", "indice=a/b", "indice"),
            (Api::Vector, "roads", "", "layer"),
            (Api::Vector, "base", "format=png", "format"),
            (Api::Vector, "base", "content=everything", "content"),
        ];
        for (api, resource, q, field) in cases {
            let err = tile_request(api, resource, q, ParseOptions::default()).unwrap_err();
            assert_eq!(err.field, field, "{resource}?{q}: {err}");
        }
    }

    #[test]
    fn base_urls_trust_forwarded_headers_only_when_given() {
        let cases = [
            (Some("proxy.test:8080"), None, None, "http://proxy.test:8080"),
            (Some("proxy.test"), Some("https"), Some("maps.example.com"), "https://maps.example.com"),
            (Some("proxy.test"), Some("ftp"), Some("bad/host"), "http://proxy.test"),
            (Some("a b"), None, None, "http://fallback:1"),
            (None, None, None, "http://fallback:1"),
            (Some("[::1]:9"), None, None, "http://[::1]:9"),
        ];
        for (host, proto, fwd_host, want) in cases {
            assert_eq!(base_url("http", host, proto, fwd_host, "fallback:1"), want);
        }
    }
}

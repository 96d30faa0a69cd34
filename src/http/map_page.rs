//! The built-in map page (`/`, `/map`) and its assets, embedded in the binary: nothing is read
//! from disk and nothing is fetched from the internet, by the server or by the page.
//!
//! The page (`assets/map/index.html`, `app.js`, `app.css`) shows the proxy's own tiles: a
//! Leaflet raster map that loads each tile with `fetch()` to count `X-Cache`/`X-Cache-Tier`/`Age`
//! and latencies, a MapLibre GL view of the vector tiles, a "cache" overlay of what this proxy
//! cached where (`/admin/cache-map`, with the admin token typed into the page), and copy-paste
//! URL templates. Leaflet
//! and MapLibre GL are vendored with their licences under `assets/vendor/` (see its README).
//!
//! Assets are served under [`ASSET_PREFIX`] with a strong ETag (SHA-256 of the content, computed
//! once). The page names each one with `?v=<that hash>`: a request carrying the current version
//! is `immutable` for a year, one without a version is cached for a day, and one with another
//! version (a page from an older binary) must revalidate. The page itself is `no-cache` (its
//! ETag makes revalidation cheap) and carries a Content-Security-Policy that allows this origin
//! only. Its icon (`assets/map/favicon.png`, 32 px PNG: four map tiles) is declared with
//! `<link rel="icon">` as a versioned asset and also answers `/favicon.ico` (unversioned: a day,
//! same ETag), where browsers look when a page declares none. Off when `map_page = false`: then
//! these paths are unknown (404), like any other.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use crate::base::hashing::stable_hash;
use crate::domain::routes;
use crate::http::state::AppState;

/// Where the assets are served: `/map/assets/<name>`.
pub const ASSET_PREFIX: &str = "/map/assets/";

/// The asset also served at `/favicon.ico` (a PNG: browsers go by the bytes, not the name).
pub const FAVICON: &str = "favicon.png";

/// `Cache-Control` of an asset asked for with its current `?v=`.
pub const CACHE_VERSIONED: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of an asset asked for without a version.
pub const CACHE_UNVERSIONED: &str = "public, max-age=86400";
/// `Cache-Control` of the page, and of an asset asked for with another version.
pub const CACHE_REVALIDATE: &str = "no-cache";

/// The page's Content-Security-Policy: this origin only (MapLibre runs its worker from a
/// `blob:` URL; tiles are shown from `blob:` URLs).
pub const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; \
                       child-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'self'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const MARKDOWN: &str = "text/markdown; charset=utf-8";
const PNG: &str = "image/png";

macro_rules! file {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path)).as_slice()
    };
}

/// Every asset: served name (under [`ASSET_PREFIX`]), Content-Type, content.
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, file!("map/app.js")),
    ("app.css", CSS, file!("map/app.css")),
    (FAVICON, PNG, file!("map/favicon.png")),
    ("vendor/README.md", MARKDOWN, file!("vendor/README.md")),
    ("vendor/leaflet/leaflet.js", JS, file!("vendor/leaflet/leaflet.js")),
    ("vendor/leaflet/leaflet.css", CSS, file!("vendor/leaflet/leaflet.css")),
    ("vendor/leaflet/LICENSE", TEXT, file!("vendor/leaflet/LICENSE")),
    ("vendor/leaflet/images/layers.png", PNG, file!("vendor/leaflet/images/layers.png")),
    ("vendor/leaflet/images/layers-2x.png", PNG, file!("vendor/leaflet/images/layers-2x.png")),
    ("vendor/leaflet/images/marker-icon.png", PNG, file!("vendor/leaflet/images/marker-icon.png")),
    ("vendor/leaflet/images/marker-icon-2x.png", PNG, file!("vendor/leaflet/images/marker-icon-2x.png")),
    ("vendor/leaflet/images/marker-shadow.png", PNG, file!("vendor/leaflet/images/marker-shadow.png")),
    ("vendor/maplibre-gl/maplibre-gl.js", JS, file!("vendor/maplibre-gl/maplibre-gl.js")),
    ("vendor/maplibre-gl/maplibre-gl.css", CSS, file!("vendor/maplibre-gl/maplibre-gl.css")),
    ("vendor/maplibre-gl/LICENSE.txt", TEXT, file!("vendor/maplibre-gl/LICENSE.txt")),
];

/// The page's template (placeholders: see [`render_static`] and [`page`]).
const TEMPLATE: &str = include_str!("../../assets/map/index.html");

/// One embedded asset and its version (the first 16 hex digits of its SHA-256).
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    pub version: String,
}

impl Asset {
    /// The strong ETag: its version, quoted.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// The assets, hashed once.
pub static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, content_type, body)| Asset { name, content_type, body, version: stable_hash(body, 16) })
        .collect()
});

/// The asset served as `name` (relative to [`ASSET_PREFIX`]).
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The page with everything but the base URL filled in (`{{base}}` is left for [`page`]).
static PAGE: LazyLock<String> = LazyLock::new(|| render_static(TEMPLATE));

/// Fills the template's fixed placeholders: `{{asset NAME}}` -> the asset's versioned URL,
/// relative to the page (it is served at `/` and at `/map`, both in the root folder);
/// `{{options resources|styles|formats|layers}}` -> `<option>`s from [`routes`]' lists;
/// `{{raster_max_zoom}}`, `{{vector_max_zoom}}`. `{{base}}` and anything unknown are left as
/// they are (the unit tests check that the page has no placeholder left).
pub fn render_static(template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let whole = &rest[start..start + len + 2];
        rest = &rest[start + len + 2..];
        let name = whole[2..whole.len() - 2].trim();
        let filled = match name.split_once(' ') {
            Some(("asset", file)) => asset(file).map(|a| format!("{}{}?v={}", &ASSET_PREFIX[1..], a.name, a.version)),
            Some(("options", list)) => match list {
                "resources" => Some(routes::RASTER_RESOURCES),
                "styles" => Some(routes::STYLES),
                "formats" => Some(routes::RASTER_FORMATS),
                "layers" => Some(routes::VECTOR_LAYERS),
                _ => None,
            }
            .map(|items| items.iter().map(|i| format!("<option>{i}</option>")).collect()),
            _ => match name {
                "raster_max_zoom" => Some(routes::RASTER_MAX_ZOOM.to_string()),
                "vector_max_zoom" => Some(routes::VECTOR_MAX_ZOOM.to_string()),
                _ => None,
            },
        };
        out.push_str(filled.as_deref().unwrap_or(whole));
    }
    out.push_str(rest);
    out
}

/// The page for a server whose public base URL is `base` (`None`: the page's own address).
pub fn page(base: Option<&str>) -> String {
    PAGE.replace("{{base}}", &escape_attr(base.unwrap_or("")))
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&#39;")
}

/// The page or one of its assets, when `path` is one of theirs and `map_page` is on.
pub fn serve(req: &HttpRequest, state: &AppState, path: &str) -> Option<HttpResponse> {
    if !state.settings.map_page {
        return None;
    }
    match path {
        "/" | "/map" => {
            let body = page(state.settings.public_base_url.as_deref());
            let etag = format!("\"{}\"", stable_hash(body.as_bytes(), 16));
            let mut res = respond(req, HTML, CACHE_REVALIDATE, etag, body.into_bytes());
            let h = res.headers_mut();
            h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            Some(res)
        }
        // The page's relative asset URLs only work from the root folder.
        "/map/" => Some(HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "../map")).finish()),
        "/favicon.ico" => {
            let a = asset(FAVICON)?;
            Some(respond(req, a.content_type, CACHE_UNVERSIONED, a.etag(), a.body.to_vec()))
        }
        _ => {
            let a = asset(path.strip_prefix(ASSET_PREFIX)?)?;
            let version = req.query_string().split('&').find_map(|kv| kv.strip_prefix("v="));
            let cache_control = match version {
                Some(v) if v == a.version => CACHE_VERSIONED,
                Some(_) => CACHE_REVALIDATE,
                None => CACHE_UNVERSIONED,
            };
            Some(respond(req, a.content_type, cache_control, a.etag(), a.body.to_vec()))
        }
    }
}

/// 200 with the body, or 304 when the client's `If-None-Match` names `etag`.
fn respond(
    req: &HttpRequest,
    content_type: &'static str,
    cache_control: &'static str,
    etag: String,
    body: Vec<u8>,
) -> HttpResponse {
    let etag = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let status = if crate::http::conditional::not_modified(req, Some(&etag)) {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut b = HttpResponse::build(status);
    b.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if status == StatusCode::NOT_MODIFIED {
        return b.finish();
    }
    b.insert_header((header::CONTENT_TYPE, content_type)).body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_every_placeholder() {
        let html = page(None);
        assert!(!html.contains("{{") && !html.contains("}}"), "placeholder left in the page");
        for a in ["app.js", "app.css", FAVICON, "vendor/leaflet/leaflet.js", "vendor/maplibre-gl/maplibre-gl.js"] {
            let a = asset(a).unwrap();
            assert!(html.contains(&format!("map/assets/{}?v={}", a.name, a.version)), "{} not linked", a.name);
        }
        assert!(html.contains("<option>explore.night</option>"));
        assert_eq!(render_static("a {{nope}} {{asset nope.js}} {{ b"), "a {{nope}} {{asset nope.js}} {{ b");
        assert!(page(Some("https://tiles.example.com/x?a=1&b=\"2\""))
            .contains("https://tiles.example.com/x?a=1&amp;b=&quot;2&quot;"));
    }

    #[test]
    fn assets_are_hashed_and_typed() {
        let a = asset("vendor/leaflet/leaflet.js").unwrap();
        assert_eq!(a.version, stable_hash(a.body, 16));
        assert_eq!(a.etag(), format!("\"{}\"", a.version));
        assert_eq!(a.content_type, JS);
        assert!(asset("vendor/leaflet/../leaflet/leaflet.js").is_none());
        let mut names: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        names.dedup();
        assert_eq!(names.len(), FILES.len());
    }
}

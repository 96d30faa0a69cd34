//! The built-in map page (`/`, `/map`) and its embedded assets, through the real server: what a
//! browser gets (types, ETags, caching, 304), that the page names only its own assets, its icon
//! (declared and at `/favicon.ico`), that the vendored libraries' licences are served, and that
//! `map_page = false` turns it all off.
//! The page in a real browser: tests/browser/map.test.mjs (scripts/check-browser.sh).

mod common;

use common::*;
use tile_proxy::http::map_page::{self, CACHE_REVALIDATE, CACHE_UNVERSIONED, CACHE_VERSIONED};

/// The `map/assets/NAME?v=VERSION` links of a page, as (name, version).
fn asset_links(html: &str) -> Vec<(String, String)> {
    html.split("\"map/assets/")
        .skip(1)
        .map(|rest| {
            let link = &rest[..rest.find('"').expect("closing quote")];
            let (name, v) = link.split_once("?v=").expect("a versioned link");
            (name.to_string(), v.to_string())
        })
        .collect()
}

fn text(r: &Resp) -> String {
    String::from_utf8(r.bytes().to_vec()).expect("utf-8")
}

#[actix_rt::test]
async fn page_and_assets_with_types_etags_and_caching() {
    let up = upstream(100);
    let p = Proxy::start(&up, |_| {}).await;
    for path in ["/", "/map"] {
        let r = p.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some(CACHE_REVALIDATE));
        assert_eq!(r.header("content-security-policy"), Some(map_page::CSP));
        let etag = r.header("etag").expect("etag").to_string();
        assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong etag: {etag}");
        let again = p.get_with(path, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.bytes().is_empty());
    }
    let html = text(&p.get("/").await);
    assert!(html.contains("data-base=\"\""), "no public_base_url: the page uses its own address");
    let links = asset_links(&html);
    for name in ["app.js", "app.css", "vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css"] {
        assert!(links.iter().any(|(n, _)| n == name), "the page links {name}");
    }
    // MapLibre GL is loaded on first use of the vector view, from a versioned URL in the page.
    assert!(links.iter().any(|(n, _)| n == "vendor/maplibre-gl/maplibre-gl.js"));
    assert_eq!(up.total(), 0, "the page asks the upstream nothing");

    for (name, v) in &links {
        let path = format!("/map/assets/{name}?v={v}");
        let r = p.get(&path).await;
        assert_eq!(r.status, 200, "{path}");
        let a = map_page::asset(name).expect("an embedded asset");
        assert_eq!(r.bytes().as_ref(), a.body, "{path}: the embedded bytes");
        assert_eq!(&a.version, v);
        assert_eq!(r.header("etag"), Some(format!("\"{v}\"").as_str()), "{path}: the content's hash");
        assert_eq!(r.header("cache-control"), Some(CACHE_VERSIONED), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let want = match name.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("md") => "text/markdown; charset=utf-8",
            Some("png") => "image/png",
            _ => "text/plain; charset=utf-8",
        };
        assert_eq!(r.header("content-type"), Some(want), "{path}");
        let cached = p.get_with(&path, &[("If-None-Match", &format!("\"{v}\""))]).await;
        assert_eq!(cached.status, 304, "{path}");
        assert!(cached.bytes().is_empty());
        assert_eq!(cached.header("etag"), Some(format!("\"{v}\"").as_str()));
    }
    // Without a version (leaflet.css' own image links), a day; another version, revalidate.
    let r = p.get("/map/assets/vendor/leaflet/images/layers.png").await;
    assert_eq!((r.status.as_u16(), r.header("content-type")), (200, Some("image/png")));
    assert_eq!(r.header("cache-control"), Some(CACHE_UNVERSIONED));
    assert_eq!(&r.bytes()[..8], b"\x89PNG\r\n\x1a\n");
    let r = p.get("/map/assets/app.js?v=0123456789abcdef").await;
    assert_eq!((r.status.as_u16(), r.header("cache-control")), (200, Some(CACHE_REVALIDATE)));

    // HEAD: the same head, no body.
    let mut res = p.client.head(p.url("/map/assets/app.js")).send().await.expect("head");
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("etag").is_some());
    assert!(res.body().await.expect("body").is_empty());

    // Not ours: unknown assets, other folders.
    for path in ["/map/assets/nope.js", "/map/assets/", "/map/assets/vendor/leaflet/../../app.js", "/mapx"] {
        let r = p.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found", "{path}");
    }
    // Relative, so that it works behind a path prefix (awc would follow it: not here).
    let client = awc::Client::builder().disable_redirects().finish();
    let r = client.get(p.url("/map/")).send().await.expect("sent");
    let location = r.headers().get("location").and_then(|v| v.to_str().ok());
    assert_eq!((r.status().as_u16(), location), (308, Some("../map")));
    p.stop().await;
}

#[actix_rt::test]
async fn the_pages_icon_and_favicon_ico_are_one_png() {
    let up = upstream(100);
    let p = Proxy::start(&up, |_| {}).await;
    let html = text(&p.get("/").await);
    // The page declares its icon, so a browser need not guess (and asks nothing else).
    let rest = html.split("<link rel=\"icon\"").nth(1).expect("the page declares an icon");
    let href = rest.split("href=\"").nth(1).and_then(|h| h.split('"').next()).expect("the icon's href");
    let declared = p.get(&format!("/{href}")).await;
    assert_eq!((declared.status.as_u16(), declared.header("content-type")), (200, Some("image/png")), "{href}");
    assert_eq!(declared.header("cache-control"), Some(CACHE_VERSIONED), "{href}");
    assert_eq!(&declared.bytes()[..8], b"\x89PNG\r\n\x1a\n", "{href}");
    // Where browsers look without a declaration (and for pages that are not the map page).
    let ico = p.get("/favicon.ico").await;
    assert_eq!((ico.status.as_u16(), ico.header("content-type")), (200, Some("image/png")));
    assert_eq!(ico.header("cache-control"), Some(CACHE_UNVERSIONED));
    assert_eq!(ico.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(ico.bytes(), declared.bytes(), "one icon");
    let etag = ico.header("etag").expect("etag");
    assert_eq!(Some(etag), declared.header("etag"));
    let again = p.get_with("/favicon.ico", &[("If-None-Match", etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.bytes().is_empty());
    assert_eq!(up.total(), 0, "the icon asks the upstream nothing");
    p.stop().await;
}

#[actix_rt::test]
async fn the_page_names_only_its_own_assets() {
    let up = upstream(100);
    let p = Proxy::start(&up, |_| {}).await;
    let html = text(&p.get("/").await);
    let js = text(&p.get("/map/assets/app.js").await);
    let css = text(&p.get("/map/assets/app.css").await);
    // URLs for other hosts appear only in the copy-paste snippets, built at run time from the
    // page's address (or public_base_url).
    for (what, s) in [("index.html", &html), ("app.js", &js), ("app.css", &css)] {
        assert!(!s.contains("http://") && !s.contains("https://") && !s.contains("//cdn"), "{what} names another host");
    }
    for attr in ["src=\"", "href=\""] {
        for rest in html.split(attr).skip(1) {
            assert!(rest.starts_with("map/assets/"), "{attr}{}", &rest[..rest.find('"').unwrap_or(0)]);
        }
    }
    assert!(!html.contains("{{"), "a placeholder left in the page");
    p.stop().await;
}

#[actix_rt::test]
async fn vendored_licences_are_served_and_linked() {
    let up = upstream(100);
    let p = Proxy::start(&up, |_| {}).await;
    let html = text(&p.get("/").await);
    for (name, needles) in [
        ("vendor/leaflet/LICENSE", ["Copyright (c)", "Agafonkin"]),
        ("vendor/maplibre-gl/LICENSE.txt", ["Copyright (c)", "MapLibre"]),
        ("vendor/README.md", ["leaflet", "maplibre-gl"]),
    ] {
        assert!(html.contains(&format!("\"map/assets/{name}?v=")), "the page links {name}");
        let r = p.get(&format!("/map/assets/{name}")).await;
        assert_eq!(r.status, 200, "{name}");
        let t = text(&r);
        for n in needles {
            assert!(t.contains(n), "{name} mentions {n}");
        }
    }
    // The licence files sit in the repository next to the libraries, too.
    let root = env!("CARGO_MANIFEST_DIR");
    for f in ["assets/vendor/leaflet/LICENSE", "assets/vendor/maplibre-gl/LICENSE.txt"] {
        assert!(std::path::Path::new(root).join(f).is_file(), "{f}");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn public_base_url_reaches_the_page() {
    let up = upstream(100);
    let p = Proxy::start(&up, |c| c.public_base_url = Some("https://tiles.example.com/here".into())).await;
    let html = text(&p.get("/map").await);
    assert!(html.contains("data-base=\"https://tiles.example.com/here\""));
    p.stop().await;
}

#[actix_rt::test]
async fn map_page_off_is_404_like_any_unknown_path() {
    let up = upstream(100);
    let p = Proxy::start(&up, |c| c.map_page = false).await;
    for path in ["/", "/map", "/map/", "/map/assets/app.js", "/map/assets/vendor/leaflet/LICENSE", "/favicon.ico"] {
        let r = p.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.json()["error"], "not_found", "{path}");
    }
    // Tiles are unaffected.
    assert_eq!(p.get("/v3/base/mc/1/0/0/png?indice=map-off").await.status, 200);
    p.stop().await;
}

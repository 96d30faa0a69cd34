//! The cache map: `GET /admin/cache-map` (GeoJSON) and `GET /admin/cache-map/{z}/{x}/{y}.png`
//! against the real proxy: tiles requested, seeded, purged and failed show as cached (with
//! their age on the injected clock), purged and requested; the PNG tile's pixels; bad
//! parameters; the token; the bound on the map's size.

mod common;

use std::collections::BTreeMap;

use common::{eventually, upstream, Fault, Proxy, Resp};
use serde_json::Value;
use tile_proxy::domain::geo::tile_bounds;
use tile_proxy::http::admin::cache_map::colour;
use tile_proxy::observe::cache_map::TileState;

const TOKEN: &str = "cache-map-admin-token-0123456789";

async fn admin_get(p: &Proxy, path: &str) -> Resp {
    p.get_with(path, &[("Authorization", &format!("Bearer {TOKEN}"))]).await
}

async fn post(p: &Proxy, path: &str, body: &str) -> Resp {
    common::post_json(&p.client, &p.url(path), Some(TOKEN), body).await
}

/// The map of `query` as `z/x/y -> properties`, and the whole answer.
async fn map(p: &Proxy, query: &str) -> (BTreeMap<String, Value>, Value) {
    let r = admin_get(p, &format!("/admin/cache-map?{query}")).await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/geo+json"));
    let doc = r.json();
    assert_eq!(doc["type"], "FeatureCollection");
    let tiles = doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let p = &f["properties"];
            let id = format!("{}/{}/{}", p["z"], p["x"], p["y"]);
            assert_eq!(f["id"], id.as_str());
            // The polygon is the tile's bounds.
            let [w, s, e, n] = tile_bounds(
                p["z"].as_u64().unwrap() as u8,
                p["x"].as_u64().unwrap() as u32,
                p["y"].as_u64().unwrap() as u32,
            );
            assert_eq!(f["geometry"]["coordinates"][0][0], serde_json::json!([w, s]));
            assert_eq!(f["geometry"]["coordinates"][0][2], serde_json::json!([e, n]));
            (id, p.clone())
        })
        .collect();
    (tiles, doc)
}

fn state(tiles: &BTreeMap<String, Value>, id: &str) -> (String, Value, Value) {
    let p = tiles.get(id).unwrap_or_else(|| panic!("{id} not on the map: {tiles:?}"));
    (p["state"].as_str().unwrap().to_string(), p["age_s"].clone(), p["last_request_s"].clone())
}

/// A bbox strictly inside tile `z/x/y`.
fn inside(z: u8, x: u32, y: u32) -> [f64; 4] {
    let [w, s, e, n] = tile_bounds(z, x, y);
    let (dx, dy) = ((e - w) / 4.0, (n - s) / 4.0);
    [w + dx, s + dy, e - dx, n - dy]
}

#[actix_rt::test]
async fn requested_hit_purged_and_failed_tiles_show_with_their_state_and_age() {
    let up = upstream(500);
    let p = Proxy::start(&up, |f| f.admin_token = Some(TOKEN.into())).await;
    let tile = |z: u8, x: u32, y: u32| format!("/v3/base/mc/{z}/{x}/{y}/png?indice=cmap1");

    let (tiles, doc) = map(&p, "index=cmap1&zoom=0,22").await;
    assert!(tiles.is_empty(), "nothing seen yet: {doc}");
    assert_eq!(doc["map_capacity"], 200_000, "the default bound");

    for (x, y) in [(10, 11), (11, 11)] {
        assert_eq!(p.get(&tile(5, x, y)).await.x_cache(), "MISS");
    }
    p.clock.advance_secs(120);
    let (tiles, doc) = map(&p, "index=cmap1&zoom=5,6").await;
    assert_eq!(tiles.len(), 2, "{doc}");
    assert_eq!(state(&tiles, "5/10/11"), ("cached".into(), 120.into(), 120.into()));
    assert_eq!(state(&tiles, "5/11/11"), ("cached".into(), 120.into(), 120.into()));
    assert_eq!(doc["counts"], serde_json::json!({"cached": 2, "purged": 0, "requested": 0}));
    // Another index, another zoom, another area: nothing.
    assert!(map(&p, "index=cmap2&zoom=5,6").await.0.is_empty());
    assert!(map(&p, "index=cmap1&zoom=6,8").await.0.is_empty());
    assert!(map(&p, "index=cmap1&zoom=5,5&bbox=100,-50,101,-49").await.0.is_empty());
    let [w, s, e, n] = inside(5, 10, 11);
    let (one, _) = map(&p, &format!("index=cmap1&zoom=5,5&bbox={w},{s},{e},{n}")).await;
    assert_eq!(one.keys().collect::<Vec<_>>(), ["5/10/11"]);

    // A hit: requested now, the copy as old as before.
    assert_eq!(p.get(&tile(5, 10, 11)).await.x_cache(), "HIT");
    let (tiles, _) = map(&p, "index=cmap1&zoom=5,5").await;
    assert_eq!(state(&tiles, "5/10/11"), ("cached".into(), 120.into(), 0.into()));

    // A purge of one tile's area: purged until refetched.
    let [w, s, e, n] = inside(5, 11, 11);
    let body = format!(r#"{{"index": "cmap1", "bbox": [{w}, {s}, {e}, {n}], "zoom": [5, 5]}}"#);
    assert_eq!(post(&p, "/admin/purge", &body).await.status.as_u16(), 200);
    p.clock.advance_secs(1);
    let (tiles, doc) = map(&p, "index=cmap1&zoom=5,5").await;
    assert_eq!(state(&tiles, "5/11/11").0, "purged", "{doc}");
    assert_eq!(state(&tiles, "5/10/11").0, "cached");
    assert_eq!(doc["counts"], serde_json::json!({"cached": 1, "purged": 1, "requested": 0}));
    // A purge of one URL (a key rule) on the other tile.
    let body = format!(r#"{{"url": "{}"}}"#, tile(5, 10, 11));
    assert_eq!(post(&p, "/admin/purge", &body).await.status.as_u16(), 200);
    p.clock.advance_secs(1);
    let (tiles, _) = map(&p, "index=cmap1&zoom=5,5").await;
    assert_eq!(state(&tiles, "5/10/11").0, "purged");
    // Refetched: cached again, new.
    assert_eq!(p.get(&tile(5, 11, 11)).await.x_cache(), "MISS");
    let (tiles, _) = map(&p, "index=cmap1&zoom=5,5").await;
    assert_eq!(state(&tiles, "5/11/11"), ("cached".into(), 0.into(), 0.into()));

    // A tile whose every fetch fails: requested, no copy, until the window has passed.
    up.fail("/mc/5/3/3/", Fault::Status { code: 503, retry_after: None }, 100);
    assert!(p.get(&tile(5, 3, 3)).await.status.is_server_error());
    let (tiles, _) = map(&p, "index=cmap1&zoom=5,5").await;
    assert_eq!(state(&tiles, "5/3/3"), ("requested".into(), Value::Null, 0.into()));
    p.clock.advance_secs(600);
    let (tiles, _) = map(&p, "index=cmap1&zoom=5,5&recent=300").await;
    assert!(!tiles.contains_key("5/3/3"), "requested longer ago than `recent`");
    p.clock.advance_secs(3_600);
    let (tiles, doc) = map(&p, "index=cmap1&zoom=5,5").await;
    assert!(!tiles.contains_key("5/3/3"), "an hour later: the default window");
    assert_eq!(state(&tiles, "5/11/11"), ("cached".into(), 4_200.into(), 4_200.into()));
    assert_eq!(doc["truncated"], false);

    // The limit.
    let (tiles, doc) = map(&p, "index=cmap1&zoom=5,5&limit=1").await;
    assert_eq!((tiles.len(), &doc["truncated"]), (1, &Value::Bool(true)));
    p.stop().await;
}

#[actix_rt::test]
async fn seeded_tiles_show_as_cached() {
    let up = upstream(300);
    let p = Proxy::start(&up, |f| f.admin_token = Some(TOKEN.into())).await;
    let body = r#"{"index": "cmap-seed", "bbox": [5.8, 45.8, 6.3, 46.3], "zoom": [7, 9], "concurrency": 4}"#;
    let started = post(&p, "/admin/seed", body).await;
    assert_eq!(started.status.as_u16(), 202);
    let started = started.json();
    let total = started["total"].as_u64().unwrap();
    let url = started["status_url"].as_str().unwrap().to_string();
    eventually("the seed job is over", async || admin_get(&p, &url).await.json()["state"] != "running").await;
    assert_eq!(up.total(), total);
    let (tiles, doc) = map(&p, "index=cmap-seed&zoom=7,9&bbox=5.8,45.8,6.3,46.3").await;
    assert_eq!(tiles.len() as u64, total, "{doc}");
    assert!(tiles.values().all(|t| t["state"] == "cached" && t["age_s"] == 0), "{doc}");
    p.stop().await;
}

fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!(info.color_type, png::ColorType::Rgba);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[actix_rt::test]
async fn the_png_tile_colours_the_tile_and_its_sub_tiles() {
    let up = upstream(500);
    let p = Proxy::start(&up, |f| f.admin_token = Some(TOKEN.into())).await;
    let tile = |z: u8, x: u32, y: u32| format!("/v3/base/mc/{z}/{x}/{y}/png?indice=cmap-png");
    // Tile 4/5/5 and three of its children: 5/10/11 (bottom left) cached, 5/11/11 (bottom
    // right) purged, 5/11/10 (top right) requested without a copy; 5/10/10 never seen.
    for t in [tile(4, 5, 5), tile(5, 10, 11), tile(5, 11, 11)] {
        assert_eq!(p.get(&t).await.x_cache(), "MISS");
    }
    up.fail("/mc/5/11/10/", Fault::Status { code: 503, retry_after: None }, 100);
    assert!(p.get(&tile(5, 11, 10)).await.status.is_server_error());
    // Rules purge entries stored strictly before them.
    p.clock.advance_secs(1);
    let body = format!(r#"{{"url": "{}"}}"#, tile(5, 11, 11));
    assert_eq!(post(&p, "/admin/purge", &body).await.status.as_u16(), 200);
    p.clock.advance_secs(7_200);
    assert!(p.get(&tile(5, 11, 10)).await.status.is_server_error(), "requested again, now");

    let r = admin_get(&p, "/admin/cache-map/4/5/5.png?index=cmap-png&depth=1").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    let (w, h, px) = decode(r.bytes());
    assert_eq!((w, h), (256, 256));
    let at = |x: usize, y: usize| <[u8; 4]>::try_from(&px[(y * 256 + x) * 4..][..4]).unwrap();
    let cached_2h = colour(Some(TileState::Cached), 7_200);
    assert_eq!(at(2, 2), cached_2h, "the frame: tile 4/5/5 itself, cached 2 h ago");
    assert_eq!(at(64, 192), cached_2h, "5/10/11");
    assert_eq!(at(192, 192), colour(Some(TileState::Purged), 0), "5/11/11");
    assert_eq!(at(192, 64), colour(Some(TileState::Requested), 0), "5/11/10");
    assert_eq!(at(64, 64), colour(None, 0), "5/10/10: never seen");
    assert_ne!(cached_2h, colour(Some(TileState::Cached), 0), "the age shows");

    // Depth 0: the tile alone; another index: never seen everywhere.
    let (_, _, px) = decode(admin_get(&p, "/admin/cache-map/4/5/5.png?index=cmap-png&depth=0").await.bytes());
    assert!(px.chunks(4).all(|c| c == cached_2h));
    let (_, _, px) = decode(admin_get(&p, "/admin/cache-map/4/5/5.png?index=nobody").await.bytes());
    assert!(px.chunks(4).all(|c| c == colour(None, 0)));

    for (path, field) in [
        ("/admin/cache-map/23/0/0.png?index=cmap-png", "z"),
        ("/admin/cache-map/4/16/0.png?index=cmap-png", "x"),
        ("/admin/cache-map/4/0/16.png?index=cmap-png", "y"),
        ("/admin/cache-map/4/0/1.jpg?index=cmap-png", "y"),
        ("/admin/cache-map/4/0/1.png", "index"),
        ("/admin/cache-map/4/0/1.png?index=cmap-png&depth=5", "depth"),
    ] {
        let r = admin_get(&p, path).await;
        assert_eq!((r.status.as_u16(), r.json()["field"].as_str()), (400, Some(field)), "{path}: {:?}", r.body);
    }
    assert_eq!(p.get("/admin/cache-map/4/5/5.png?index=cmap-png").await.status.as_u16(), 401);
    p.stop().await;
}

#[actix_rt::test]
async fn bad_parameters_answer_400_and_the_token_is_needed() {
    let up = upstream(100);
    let closed = Proxy::start(&up, |_| {}).await;
    assert_eq!(
        closed.get("/admin/cache-map?index=a&zoom=1").await.status.as_u16(),
        404,
        "no admin API without a token"
    );
    closed.stop().await;

    let p = Proxy::start(&up, |f| f.admin_token = Some(TOKEN.into())).await;
    let r = p.get("/admin/cache-map?index=a&zoom=1").await;
    assert_eq!(r.status.as_u16(), 401);
    let r = p.get_with("/admin/cache-map?index=a&zoom=1", &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(r.status.as_u16(), 401);
    for (query, field) in [
        ("zoom=1", Some("index")),
        ("index=a%20b&zoom=1", Some("index")),
        ("index=a", Some("zoom")),
        ("index=a&zoom=3,2", Some("zoom")),
        ("index=a&zoom=1,23", Some("zoom")),
        ("index=a&zoom=x", Some("zoom")),
        ("index=a&zoom=1&bbox=1,2,3", Some("bbox")),
        ("index=a&zoom=1&bbox=1,2,3,x", Some("bbox")),
        ("index=a&zoom=1&bbox=-200,2,3,4", Some("bbox")),
        ("index=a&zoom=1&bbox=1,50,3,40", Some("bbox")),
        ("index=a&zoom=1&limit=0", Some("limit")),
        ("index=a&zoom=1&limit=50001", Some("limit")),
        ("index=a&zoom=1&recent=-1", Some("recent")),
        ("index=a&zoom=1&colour=red", None),
    ] {
        let r = admin_get(&p, &format!("/admin/cache-map?{query}")).await;
        assert_eq!(r.status.as_u16(), 400, "{query}");
        let body = r.json();
        assert_eq!(body["field"].as_str(), field, "{query}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    // Commas percent-encoded (as URLSearchParams writes them) are fine.
    let r = admin_get(&p, "/admin/cache-map?index=a&zoom=1%2C3&bbox=-10%2C-10%2C10%2C10").await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    p.stop().await;
}

#[actix_rt::test]
async fn the_map_is_bounded_and_can_be_turned_off() {
    let up = upstream(100);
    let p = Proxy::start(&up, |f| {
        f.admin_token = Some(TOKEN.into());
        f.cache_map_tiles = 64;
    })
    .await;
    // 1,000 tiles into 64 slots (one per shard).
    for x in 0..1000u32 {
        assert_eq!(p.get(&format!("/v3/base/mc/12/{x}/77/png?indice=cmap-bound")).await.status.as_u16(), 200);
        p.clock.advance_ms(10);
    }
    let (tiles, doc) = map(&p, "index=cmap-bound&zoom=12").await;
    assert_eq!(doc["map_capacity"], 64);
    assert!(tiles.len() <= 64 && doc["map_tiles"].as_u64().unwrap() <= 64, "{}", tiles.len());
    assert!(tiles.len() >= 32, "a full map keeps most slots: {}", tiles.len());
    // The least recently requested went first: the last tiles requested are there.
    let newest = (990..1000).filter(|x| tiles.contains_key(&format!("12/{x}/77"))).count();
    let oldest = (0..10).filter(|x| tiles.contains_key(&format!("12/{x}/77"))).count();
    assert!(newest >= 5 && oldest == 0, "newest {newest}, oldest {oldest}");
    p.stop().await;

    let p = Proxy::start(&up, |f| {
        f.admin_token = Some(TOKEN.into());
        f.cache_map_tiles = 0;
    })
    .await;
    assert_eq!(p.get("/v3/base/mc/12/1/77/png?indice=cmap-off").await.status.as_u16(), 200);
    let (tiles, doc) = map(&p, "index=cmap-off&zoom=12").await;
    assert!(tiles.is_empty());
    assert_eq!((doc["map_capacity"].as_u64(), doc["map_tiles"].as_u64()), (Some(0), Some(0)));
    p.stop().await;
}

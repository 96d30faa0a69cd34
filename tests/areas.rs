//! Areas are polygons, changes are tile lists: seeding and purging a real GeoJSON shape (South
//! Africa, with Lesotho as a hole and the Prince Edward Islands 1,800 km away as more parts,
//! `tests/fixtures/south-africa.geojson`) and `z/x/y` tile lists, through the admin API, the
//! `tile-proxy seed` and `tile-proxy purge` commands, and across pods sharing a real Redis.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{run, BIN};
use common::redis_server::RedisServer;
use common::{eventually, upstream, Proxy, Resp, Upstream};
use tile_proxy::config::FileConfig;
use tile_proxy::domain::geo::{lat_to_v, lon_to_u, Shape};
use tile_proxy::domain::tileset::TileSet;

const TOKEN: &str = "areas-admin-token-0123456789";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/south-africa.geojson")
}

fn shape_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap()
}

/// The tile of zoom `z` holding a point.
fn tile_at(lon: f64, lat: f64, z: u8) -> (u8, u32, u32) {
    let n = 2f64.powi(i32::from(z));
    (z, (lon_to_u(lon) * n) as u32, (lat_to_v(lat) * n) as u32)
}

/// Places on both sides of the shape's edges, at zoom 10.
const JOHANNESBURG: (f64, f64) = (28.05, -26.2);
const CAPE_TOWN: (f64, f64) = (18.42, -33.92);
const MARION_ISLAND: (f64, f64) = (37.75, -46.9);
/// Inside Lesotho: the hole.
const LESOTHO: (f64, f64) = (27.9, -29.6);
/// Inside the shape's bounding box, in the ocean between the parts.
const OCEAN: (f64, f64) = (35.0, -40.0);

fn path_at((lon, lat): (f64, f64), z: u8, index: &str) -> String {
    let (z, x, y) = tile_at(lon, lat, z);
    format!("/v3/base/mc/{z}/{x}/{y}/png?indice={index}")
}

async fn post(p: &Proxy, path: &str, body: &str) -> Resp {
    common::post_json(&p.client, &p.url(path), Some(TOKEN), body).await
}

fn admin(c: &mut FileConfig) {
    c.admin_token = Some(TOKEN.into());
}

/// The z/x/y of every raster tile the upstream was asked for.
fn fetched(up: &Upstream) -> BTreeSet<(u8, u32, u32)> {
    common::fetched_raster(up).into_iter().collect()
}

#[actix_rt::test]
async fn a_geojson_seed_fetches_the_shapes_tiles_every_part_and_none_of_the_hole() {
    let up = upstream(300);
    let p = Proxy::start(&up, admin).await;
    let body = serde_json::json!({"index": "za", "geojson": shape_json(), "zoom": [9, 10], "concurrency": 8});
    let started = post(&p, "/admin/seed", &body.to_string()).await;
    assert_eq!(started.status, 202, "{:?}", started.body);
    let started = started.json();
    let cover = TileSet::cover(&Shape::from_geojson(shape_json()).unwrap(), (9, 10), u64::MAX).unwrap();
    assert_eq!(started["total"], cover.len(), "{started}");
    let status_url = started["status_url"].as_str().unwrap().to_string();
    let auth = format!("Bearer {TOKEN}");
    let mut job = serde_json::Value::Null;
    eventually("the seed job is over", async || {
        job = p.get_with(&status_url, &[("Authorization", &auth)]).await.json();
        job["state"] != "running"
    })
    .await;
    assert_eq!((&job["state"], &job["fetched"]), (&"done".into(), &cover.len().into()), "{job}");
    let got = fetched(&up);
    assert_eq!(got, cover.tiles().collect::<BTreeSet<_>>(), "exactly the cover, each once");
    assert_eq!(up.total(), cover.len());
    for (place, seeded) in
        [(JOHANNESBURG, true), (CAPE_TOWN, true), (MARION_ISLAND, true), (LESOTHO, false), (OCEAN, false)]
    {
        assert_eq!(got.contains(&tile_at(place.0, place.1, 10)), seeded, "{place:?}");
        let r = p.get(&path_at(place, 10, "za")).await;
        assert_eq!(r.x_cache(), if seeded { "HIT" } else { "MISS" }, "{place:?}");
    }
    // The bbox would have been several times more.
    let [w, s, e, n] = Shape::from_geojson(shape_json()).unwrap().bounds();
    let columns = (tile_at(e, n, 10).1 - tile_at(w, n, 10).1 + 1) as u64;
    let rows = (tile_at(w, s, 10).2 - tile_at(w, n, 10).2 + 1) as u64;
    assert!(cover.tiles_of(10).count() as u64 * 3 < columns * rows);
    p.stop().await;
}

#[actix_rt::test]
async fn a_geojson_purge_made_on_one_pod_purges_its_area_on_another_and_spares_the_hole() {
    let redis = RedisServer::start();
    let up = upstream(300);
    let share = |c: &mut FileConfig| {
        redis.share(c);
        admin(c);
    };
    let a = Proxy::start(&up, share).await;
    let b = Proxy::start(&up, share).await;
    let places = [JOHANNESBURG, CAPE_TOWN, MARION_ISLAND, LESOTHO, OCEAN];
    for place in places {
        assert_eq!(b.get(&path_at(place, 10, "za")).await.x_cache(), "MISS");
        assert_eq!(b.get(&path_at(place, 10, "za")).await.x_cache(), "HIT");
    }
    let before = up.total();
    for p in [&a, &b] {
        p.clock.advance_secs(1);
    }
    let body = serde_json::json!({"geojson": shape_json(), "zoom": [8, 12]});
    let r = post(&a, "/admin/purge", &body.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let answer = r.json();
    assert_eq!(answer["shared"]["redis"], true, "{answer}");
    let tiles = &answer["rule"]["tiles"];
    assert!(tiles["count"].as_u64().unwrap() > 10_000 && tiles["runs"].as_u64().unwrap() < 10_000, "{answer}");
    assert_eq!(answer["rule"]["zoom"], serde_json::json!([8, 12]));
    eventually("the rule reached B", async || b.state().purges.len() == 1).await;
    for p in [&a, &b] {
        p.clock.advance_secs(1);
    }
    for (place, purged) in
        [(JOHANNESBURG, true), (CAPE_TOWN, true), (MARION_ISLAND, true), (LESOTHO, false), (OCEAN, false)]
    {
        let r = b.get(&path_at(place, 10, "za")).await;
        assert_eq!(r.x_cache(), if purged { "MISS" } else { "HIT" }, "{place:?}");
    }
    assert_eq!(up.total(), before + 3, "the three tiles in the area, refetched once");
    // Outside the rule's zooms nothing is purged.
    assert_eq!(b.get(&path_at(JOHANNESBURG, 13, "za")).await.x_cache(), "MISS");
    b.clock.advance_secs(1);
    assert_eq!(b.get(&path_at(JOHANNESBURG, 13, "za")).await.x_cache(), "HIT");
    let list = b.get_with("/admin/purges", &[("Authorization", &format!("Bearer {TOKEN}"))]).await.json();
    assert_eq!(list["rules"][0]["tiles"], *tiles, "the list sums the rule up the same way: {list}");
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn a_tile_list_is_one_rule_and_bad_lists_are_refused_naming_the_line() {
    let up = upstream(200);
    let p = Proxy::start(&up, admin).await;
    let tiles = ["12/2200/1343", "12/2201/1343", "14/8800/5372", "12/2202/1343"];
    for t in tiles {
        assert_eq!(p.get(&format!("/v3/base/mc/{t}/png?indice=osm")).await.x_cache(), "MISS");
    }
    p.clock.advance_secs(1);
    // The expire-list format osm2pgsql writes: the first three, not the last.
    let list = tiles[..3].join("\n") + "\n";
    let r = post(&p, "/admin/purge", &serde_json::json!({"tiles": list, "index": "osm"}).to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["rule"]["tiles"]["count"], 3);
    assert_eq!(p.state().purges.len(), 1, "one rule");
    p.clock.advance_secs(1);
    // The cache map shows the listed tiles purged, the fourth still cached.
    let [w, s, e, n] = tile_proxy::domain::geo::tile_bounds(12, 2200, 1343);
    let [_, _, e2, _] = tile_proxy::domain::geo::tile_bounds(12, 2202, 1343);
    let (w, s, e, n) = (w + 1e-6, s + 1e-6, e2.max(e) - 1e-6, n - 1e-6);
    let map_url = format!("/admin/cache-map?index=osm&bbox={w},{s},{e},{n}&zoom=12,12");
    let map = p.get_with(&map_url, &[("Authorization", &format!("Bearer {TOKEN}"))]).await.json();
    let states: Vec<(u64, String)> = map["features"]
        .as_array()
        .unwrap_or_else(|| panic!("{map}"))
        .iter()
        .map(|f| (f["properties"]["x"].as_u64().unwrap(), f["properties"]["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        states.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        [(2200, "purged"), (2201, "purged"), (2202, "cached")].map(|(x, s)| (x, s.to_string())).into_iter().collect(),
        "{map}"
    );
    for (t, purged) in tiles.iter().zip([true, true, true, false]) {
        let r = p.get(&format!("/v3/base/mc/{t}/png?indice=osm")).await;
        assert_eq!(r.x_cache(), if purged { "MISS" } else { "HIT" }, "{t}");
    }
    for (body, says) in [
        (serde_json::json!({"tiles": "12/2200/1343\n12/9999/1343\n"}), "line 2: `12/9999/1343` is outside zoom 12"),
        (serde_json::json!({"tiles": "12/2200"}), "is not z/x/y"),
        (serde_json::json!({"tiles": "12/1/1", "zoom": [1, 2]}), "leave zoom out"),
        (serde_json::json!({"geojson": shape_json()}), "geojson needs zoom"),
        (serde_json::json!({"geojson": {"type": "Point", "coordinates": [1, 2]}, "zoom": [3, 4]}), "is a Point"),
        (serde_json::json!({"geojson": shape_json(), "zoom": [0, 22]}), "narrow the zoom range"),
        (serde_json::json!({"geojson": shape_json(), "bbox": [1, 2, 3, 4], "zoom": [3, 4]}), "only one of"),
    ] {
        let r = post(&p, "/admin/purge", &body.to_string()).await;
        assert_eq!(r.status, 400, "{body}");
        let j = r.json();
        assert!(j["message"].as_str().unwrap().contains(says), "{j}");
    }
    let many: String = (0..100_001).map(|i| format!("17/{i}/7\n")).collect();
    let r = post(&p, "/admin/purge", &serde_json::json!({ "tiles": many }).to_string()).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("more than 100000 tiles"), "{:?}", r.body);
    let most: String = (0..100_000).map(|i| format!("17/{i}/7\n")).collect();
    let r = post(&p, "/admin/purge", &serde_json::json!({ "tiles": most }).to_string()).await;
    assert_eq!(r.status, 200, "100,000 tiles in one call: {:?}", r.body);
    assert_eq!(r.json()["rule"]["tiles"]["runs"], 1, "a row of neighbours is one run");
    assert_eq!(p.state().purges.len(), 2);
    p.stop().await;
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[actix_rt::test]
async fn the_purge_command_uses_the_admin_api_with_the_token_from_the_environment() {
    let up = upstream(200);
    let p = Proxy::start(&up, admin).await;
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("expire.list");
    std::fs::write(&list, "10/600/300\n10/601/300\n").unwrap();
    for t in ["10/600/300", "10/601/300"] {
        assert_eq!(p.get(&format!("/v3/base/mc/{t}/png?indice=cli")).await.x_cache(), "MISS");
    }
    assert_eq!(p.get(&path_at(JOHANNESBURG, 10, "cli")).await.x_cache(), "MISS");
    p.clock.advance_secs(1);
    let env = [("TILE_PROXY_ADMIN_TOKEN", TOKEN), ("TILE_PROXY_ADMIN_URL", p.base.as_str())];

    let out = run(cli(&["purge", "--tiles", list.to_str().unwrap()], &env)).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("purged: rule ") && out.stdout.contains("2 tiles in 1 runs"), "{}", out.stdout);
    let out =
        run(cli(&["purge", "--geojson", fixture().to_str().unwrap(), "--zoom", "10", "--index", "cli"], &env)).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("index cli") && out.stdout.contains("zoom 10-10"), "{}", out.stdout);
    assert_eq!(p.state().purges.len(), 2);
    p.clock.advance_secs(1);
    for path in ["/v3/base/mc/10/600/300/png?indice=cli".to_string(), path_at(JOHANNESBURG, 10, "cli")] {
        assert_eq!(p.get(&path).await.x_cache(), "MISS", "{path}");
    }

    // Without the token, or with a wrong one: the proxy's 401, exit 1, nothing purged.
    let out = run(cli(&["purge", "--index", "cli"], &[("TILE_PROXY_ADMIN_URL", p.base.as_str())])).await;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    // The proxy's own checks, with its message.
    let out = run(cli(&["purge", "--bbox", "10,50,11,49"], &env)).await;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("south (50) must not be greater than north (49)"), "{}", out.stderr);
    // Usage problems never reach the proxy.
    let out = run(cli(&["purge", "--geojson", "/nonexistent.geojson", "--zoom", "3"], &env)).await;
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("/nonexistent.geojson"), "{}", out.stderr);
    let out = run(cli(&["purge", "--geojson", fixture().to_str().unwrap()], &env)).await;
    assert_eq!(out.code(), Some(2), "geojson without zoom: {}", out.stderr);
    assert_eq!(p.state().purges.len(), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn seed_geojson_counts_and_seeds_the_cover_through_a_proxy() {
    let up = upstream(200);
    let p = Proxy::start(&up, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let shape = fixture();
    let args = ["seed", "--index", "zaseed", "--geojson", shape.to_str().unwrap(), "--zoom", "7-9"];
    let cover = TileSet::cover(&Shape::from_geojson(shape_json()).unwrap(), (7, 9), u64::MAX).unwrap();
    let mut dry = cli(&[&args[..], &["--dry-run"]].concat(), &[]);
    dry.current_dir(work.path());
    let out = run(dry).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for z in 7..=9u8 {
        assert!(out.stdout.contains(&format!("zoom {z}: {} tiles", cover.tiles_of(z).count())), "{}", out.stdout);
    }
    assert!(out.stdout.contains(&format!("total: {} tiles", cover.len())), "{}", out.stdout);
    assert_eq!(up.total(), 0, "a dry run asks nothing");
    let mut cmd = cli(&[&args[..], &["--through", &p.base, "--quiet"]].concat(), &[]);
    cmd.current_dir(work.path());
    let out = run(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(fetched(&up), cover.tiles().collect::<BTreeSet<_>>());
    assert_eq!(up.total(), cover.len());
    // A shape that names no area is refused before anything starts.
    let point = work.path().join("point.geojson");
    std::fs::write(&point, r#"{"type": "Point", "coordinates": [28, -26]}"#).unwrap();
    let out = run(cli(&["seed", "--index", "x", "--geojson", point.to_str().unwrap(), "--zoom", "5"], &[])).await;
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("geojson") && out.stderr.contains("Point"), "{}", out.stderr);
    let out = run(cli(&["seed", "--index", "x", "--zoom", "5"], &[])).await;
    assert_eq!(out.code(), Some(2), "neither --bbox nor --geojson: {}", out.stderr);
    p.stop().await;
}

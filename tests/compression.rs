//! Compression: vector tiles (and JSON) go out br or gzip to clients that accept it, decoding to
//! exactly the upstream's bytes, on misses and hits; each encoded form is compressed once and
//! kept as a cache entry of its own (shared through Redis, dropped by a purge); rasters, small
//! bodies and bodies the upstream encoded itself go out as they are. ETags differ per encoding
//! and `If-None-Match` works per encoding. The test upstream's vector tiles are pseudo-random
//! bytes: they do not shrink, but they must round-trip exactly (savings are unit-tested on JSON).

mod common;

use std::io::Read;

use common::redis_server::RedisServer;
use common::*;
use tile_proxy::config::FileConfig;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Some("br") => brotli::Decompressor::new(body, 4096).read_to_end(&mut out).expect("valid br"),
        Some("gzip") => flate2::read::GzDecoder::new(body).read_to_end(&mut out).expect("valid gzip"),
        None => return body.to_vec(),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    };
    out
}

/// A GET asking for `accept` (none when empty).
async fn get_ae(p: &Proxy, path: &str, accept: &str) -> Resp {
    if accept.is_empty() {
        p.get(path).await
    } else {
        p.get_with(path, &[("Accept-Encoding", accept)]).await
    }
}

fn compressed(m: &str, encoding: &str, source: &str) -> f64 {
    metric(m, "tile_proxy_compressed_total", &[&format!("encoding=\"{encoding}\""), &format!("source=\"{source}\"")])
}

/// True once `path`'s `encoding` variant is in the proxy's memory tier (it is stored in the
/// background after the answer).
fn variant_in_memory(p: &Proxy, path: &str, encoding: &str) -> bool {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let tile = tile_proxy::domain::routes::parse(path, query, Default::default()).unwrap().unwrap();
    let key = p.state().upstream.cache_key(&tile);
    let Some((identity, _)) = p.state().cache.peek(&key) else { return false };
    p.state().cache.peek(&key.variant(encoding, identity.meta.version_ms)).is_some()
}

#[actix_rt::test]
async fn br_and_gzip_round_trip_to_the_upstream_bytes_on_misses_and_hits() {
    let up = upstream(20_000);
    let p = Proxy::start(&up, |_| {}).await;
    for (i, (accept, want)) in [("br", "br"), ("gzip", "gzip"), ("gzip, deflate, br", "br")].into_iter().enumerate() {
        let path = format!("/v2/vectortiles/base/mc/10/{i}/1/omv");
        let upstream_bytes = up.tile_bytes(&path);
        for x_cache in ["MISS", "HIT"] {
            let r = get_ae(&p, &path, accept).await;
            assert_eq!((r.status.as_u16(), r.x_cache()), (200, x_cache), "{accept}");
            assert_eq!(r.header("content-encoding"), Some(want), "{accept} {x_cache}");
            assert_eq!(r.header("vary"), Some("Accept-Encoding"));
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
            assert_eq!(r.header("content-length"), Some(r.bytes().len().to_string().as_str()));
            assert_eq!(
                decode(Some(want), r.bytes()),
                upstream_bytes,
                "{accept} {x_cache}: decodes to the upstream bytes"
            );
            eventually("the variant is stored", async || variant_in_memory(&p, &path, want)).await;
        }
        // The identity form of the same tile, from the same entry.
        let plain = p.get(&path).await;
        assert_eq!((plain.x_cache(), plain.header("content-encoding")), ("HIT", None));
        assert_eq!(plain.header("vary"), Some("Accept-Encoding"), "identity answers vary too");
        assert_eq!(plain.bytes(), &upstream_bytes);
    }
    assert_eq!(up.total(), 3, "one upstream request per tile");
    let m = p.metrics().await;
    // Compressed once per tile (the miss), then served from the stored variant (the hit).
    assert_eq!(compressed(&m, "br", "compressed"), 2.0);
    assert_eq!(compressed(&m, "br", "stored"), 2.0);
    assert_eq!(compressed(&m, "gzip", "compressed"), 1.0);
    assert_eq!(compressed(&m, "gzip", "stored"), 1.0);
    assert_eq!(metric(&m, "tile_proxy_compression_bytes_total", &["encoding=\"br\"", "body=\"identity\""]), 80_000.0);
    p.stop().await;
}

#[actix_rt::test]
async fn negotiation_honours_identity_and_q_zero() {
    let up = upstream(5_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v2/vectortiles/base/mc/11/1/1/omv";
    let cases = [
        ("", None),
        ("identity", None),
        ("br;q=0, gzip", Some("gzip")),
        ("br;q=0, gzip;q=0", None),
        ("*;q=0", None),
        ("br;q=0.5, gzip;q=0.9", Some("gzip")),
        ("gzip;q=0.5, identity", None),
        ("deflate, zstd", None),
        ("*", Some("br")),
    ];
    for (accept, want) in cases {
        let r = get_ae(&p, path, accept).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), want, "{accept:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        assert_eq!(decode(want, r.bytes()), up.tile_bytes(path), "{accept:?}");
    }
    p.stop().await;
}

#[actix_rt::test]
async fn etags_differ_per_encoding_and_if_none_match_answers_304_per_encoding() {
    let up = upstream(5_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v2/vectortiles/base/mc/11/2/1/omv";
    let plain = p.get(path).await;
    let br = get_ae(&p, path, "br").await;
    let gzip = get_ae(&p, path, "gzip").await;
    let tag = |r: &Resp| r.header("etag").expect("an ETag").to_string();
    let (t0, tb, tg) = (tag(&plain), tag(&br), tag(&gzip));
    assert!(t0 != tb && tb != tg && t0 != tg, "{t0} {tb} {tg}");
    assert_eq!(tb, format!("{}-br\"", t0.trim_end_matches('"')));
    for (accept, etag, want) in [
        ("br", &tb, 304),
        ("gzip", &tg, 304),
        ("", &t0, 304),
        ("gzip", &tb, 200), // the br form's tag does not validate the gzip form
        ("br", &t0, 200),
        ("", &tb, 200),
    ] {
        let mut headers = vec![("If-None-Match", etag.as_str())];
        if !accept.is_empty() {
            headers.push(("Accept-Encoding", accept));
        }
        let r = p.get_with(path, &headers).await;
        assert_eq!(r.status.as_u16(), want, "{accept:?} with {etag}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        if want == 304 {
            assert_eq!(r.header("etag"), Some(etag.as_str()));
            assert!(r.bytes().is_empty());
        } else {
            let enc = r.header("content-encoding");
            assert_eq!(decode(enc, r.bytes()), up.tile_bytes(path));
        }
    }
    // A 304 never needs the encoded body: nothing was compressed for it.
    let m = p.metrics().await;
    assert_eq!(compressed(&m, "br", "compressed") + compressed(&m, "br", "stored"), 2.0, "GET br twice with 200");
    p.stop().await;
}

#[actix_rt::test]
async fn head_gives_the_encoded_length() {
    let up = upstream(8_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v2/vectortiles/base/mc/11/3/1/omv";
    let head = p.client.head(p.url(path)).insert_header(("Accept-Encoding", "br")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers().get("content-encoding").unwrap(), "br");
    let len = head.headers().get("content-length").unwrap().to_str().unwrap().to_string();
    let get = get_ae(&p, path, "br").await;
    assert_eq!(get.header("content-length"), Some(len.as_str()));
    assert_eq!(get.header("etag"), head.headers().get("etag").and_then(|v| v.to_str().ok()));
    p.stop().await;
}

#[actix_rt::test]
async fn rasters_are_never_compressed() {
    let up = upstream(20_000);
    let p = Proxy::start(&up, |_| {}).await;
    for path in ["/v3/base/mc/10/1/1/png", "/v3/base/mc/10/1/2/jpeg", "/here-proxy/mc/10/1/3/png8"] {
        for x_cache in ["MISS", "HIT"] {
            let r = get_ae(&p, path, "br, gzip, *").await;
            assert_eq!((r.status.as_u16(), r.x_cache()), (200, x_cache), "{path}");
            assert_eq!(r.header("content-encoding"), None, "{path}");
            assert_eq!(r.header("vary"), None, "{path}: one representation");
            assert!(r.header("content-type").unwrap().starts_with("image/"), "{path}");
            assert_eq!(r.bytes().len(), 20_000);
        }
    }
    let m = p.metrics().await;
    assert_eq!(metric(&m, "tile_proxy_compressed_total", &[]), 0.0);
    p.stop().await;
}

#[actix_rt::test]
async fn rasters_are_byte_identical_to_the_upstream() {
    let up = upstream(20_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v3/base/mc/10/2/1/png";
    for _ in 0..2 {
        let r = get_ae(&p, path, "br").await;
        assert_eq!(r.header("content-encoding"), None);
        assert_eq!(r.bytes(), &up.tile_bytes(path));
    }
    p.stop().await;
}

#[actix_rt::test]
async fn small_bodies_are_sent_as_they_are() {
    let up = upstream(900);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v2/vectortiles/base/mc/11/4/1/omv";
    for _ in 0..2 {
        let r = get_ae(&p, path, "br, gzip").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), None, "below compress_min_size (1 KiB)");
        assert_eq!(r.bytes(), &up.tile_bytes(path));
    }
    // The threshold is the configured one.
    let p2 = Proxy::start(&up, |f: &mut FileConfig| f.compress_min_size = tile_proxy::config::ByteSize::b(512)).await;
    let r = get_ae(&p2, path, "br").await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(decode(Some("br"), r.bytes()), up.tile_bytes(path));
    // And compression can be turned off.
    let off = Proxy::start(&up, |f: &mut FileConfig| f.compression = false).await;
    let r = get_ae(&off, "/v2/vectortiles/base/mc/11/4/2/omv", "br").await;
    assert_eq!((r.header("content-encoding"), r.header("vary")), (None, None));
    p.stop().await;
    p2.stop().await;
    off.stop().await;
}

#[actix_rt::test]
async fn an_upstream_encoded_body_is_relayed_as_is_never_compressed_twice() {
    let up = upstream(5_000);
    let p = Proxy::start(&up, |_| {}).await;
    let path = "/v2/vectortiles/base/mc/11/5/1/omv";
    up.fail(path, Fault::Headers(vec![("Content-Encoding".into(), "gzip".into())]), 1);
    for (accept, want) in [("br", "MISS"), ("br", "HIT"), ("gzip", "HIT"), ("", "HIT")] {
        let r = get_ae(&p, path, accept).await;
        assert_eq!(r.x_cache(), want);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{accept:?} {want}: the upstream's, once");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert_eq!(r.bytes(), &up.tile_bytes(path), "{accept:?} {want}: the upstream's bytes");
    }
    assert_eq!(metric(&p.metrics().await, "tile_proxy_compressed_total", &[]), 0.0);
    p.stop().await;
}

#[actix_rt::test]
async fn a_purge_drops_the_variant_too() {
    let up = upstream(5_000);
    let p = Proxy::start(&up, |f: &mut FileConfig| f.admin_token = Some(ADMIN.into())).await;
    let path = "/v2/vectortiles/base/mc/11/6/1/omv";
    assert_eq!(get_ae(&p, path, "br").await.x_cache(), "MISS");
    eventually("the variant is stored", async || variant_in_memory(&p, path, "br")).await;
    assert_eq!(get_ae(&p, path, "br").await.x_cache(), "HIT");
    assert_eq!(compressed(&p.metrics().await, "br", "stored"), 1.0);
    p.clock.advance_secs(1);
    up.set_version(1);
    let r = p
        .client
        .post(p.url("/admin/purge"))
        .insert_header(("Authorization", format!("Bearer {ADMIN}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(format!(r#"{{"url": "{path}"}}"#))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    p.clock.advance_secs(1);
    let r = get_ae(&p, path, "br").await;
    assert_eq!(r.x_cache(), "MISS", "purged");
    assert_eq!(decode(Some("br"), r.bytes()), up.tile_bytes(path), "the new version, not the old variant");
    let m = p.metrics().await;
    assert_eq!(compressed(&m, "br", "stored"), 1.0, "the old variant was not used");
    assert_eq!(compressed(&m, "br", "compressed"), 2.0);
    assert_eq!(up.total(), 2);
    p.stop().await;
}

#[actix_rt::test]
async fn a_variant_compressed_on_one_pod_is_served_by_another_from_redis() {
    let redis = RedisServer::start();
    let up = upstream(20_000);
    let shared = |f: &mut FileConfig| redis.share(f);
    let a = Proxy::start(&up, shared).await;
    let b = Proxy::start(&up, shared).await;
    let path = "/v2/vectortiles/base/mc/12/7/1/omv";
    let first = get_ae(&a, path, "br").await;
    assert_eq!((first.x_cache(), first.header("content-encoding")), ("MISS", Some("br")));
    let entries = || redis.dump().iter().filter(|(k, _)| k.ends_with(":e")).count();
    eventually("the tile and its br variant reached redis", async || entries() == 2).await;
    let on_b = get_ae(&b, path, "br").await;
    assert_eq!((on_b.x_cache(), on_b.header("x-cache-tier")), ("HIT", Some("redis")));
    assert_eq!(on_b.header("content-encoding"), Some("br"));
    assert_eq!(on_b.header("etag"), first.header("etag"), "the same ETag on every pod");
    assert_eq!(decode(Some("br"), on_b.bytes()), up.tile_bytes(path));
    let m = b.metrics().await;
    assert_eq!(compressed(&m, "br", "stored"), 1.0, "B took A's variant");
    assert_eq!(compressed(&m, "br", "compressed"), 0.0, "B compressed nothing");
    assert_eq!(up.total(), 1);
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn whole_answers_besides_tiles_are_compressed_too() {
    let up = upstream(2_000);
    // The test upstream's /v3/info is a few hundred bytes (HERE's is larger).
    let p = Proxy::start(&up, |f| f.compress_min_size = tile_proxy::config::ByteSize::b(256)).await;
    // The map page's MapLibre GL (about 1 MB), a vector TileJSON document, HERE's /v3/info.
    let plain = p.get("/map/assets/vendor/maplibre-gl/maplibre-gl.js").await;
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert_eq!(plain.header("content-encoding"), None);
    for path in
        ["/map/assets/vendor/maplibre-gl/maplibre-gl.js", "/v2/vectortiles/base/tilejson.json?indice=z", "/v3/info"]
    {
        let identity = p.get(path).await;
        assert_eq!(identity.status, 200, "{path}");
        assert!(identity.bytes().len() >= 256, "{path} is {} bytes: under compress_min_size", identity.bytes().len());
        for encoding in ["br", "gzip"] {
            let r = get_ae(&p, path, encoding).await;
            assert_eq!(r.header("content-encoding"), Some(encoding), "{path}");
            let vary: Vec<&str> = r.headers.get_all("vary").filter_map(|v| v.to_str().ok()).collect();
            assert!(vary.iter().any(|v| v.contains("Accept-Encoding")), "{path}: Vary {vary:?}");
            let decoded = decode(Some(encoding), r.bytes());
            if path.starts_with("/v3/info") {
                // HERE's JSON as the proxy serves it (scrubbed, re-serialised): compare as JSON.
                let a: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
                assert_eq!(a, identity.json(), "{path}");
            } else {
                assert_eq!(decoded, identity.bytes().to_vec(), "{path} {encoding}");
            }
            assert!(r.bytes().len() < identity.bytes().len(), "{path} {encoding} saves bytes");
        }
    }
}

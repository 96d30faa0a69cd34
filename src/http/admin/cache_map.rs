//! The cache map over HTTP ([`crate::observe::cache_map`]): what this pod requested and cached
//! where, per index.
//!
//! * `GET /admin/cache-map?index=I&bbox=w,s,e,n&zoom=zmin,zmax[&limit=N][&recent=S]`: a GeoJSON
//!   `FeatureCollection`, one polygon per known tile of index `I` at zooms `zmin..=zmax`
//!   overlapping the bbox (default: the world), properties `{z, x, y, state, age_s,
//!   last_request_s}`; `state` is `cached`, `purged` or `requested` (tiles never seen, or only
//!   requested longer ago than `recent` seconds without a copy, are left out). At most `limit`
//!   features (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]; `truncated` says when more
//!   matched); `counts` per state.
//! * `GET /admin/cache-map/{z}/{x}/{y}.png?index=I[&depth=D][&recent=S]`: a 256 px RGBA tile
//!   colouring tile `z/x/y` and its sub-tiles of the next `D` zooms (default 2, at most 4) by
//!   state, nested: each tile's square keeps a frame of its own colour around its four
//!   children's. Colours: [`colour`].
//!
//! Both need the admin token; bad parameters answer 400 naming the field.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::base::names::is_valid_index;
use crate::domain::geo::{lat_to_v, lon_to_u, span, tile_bounds};
use crate::domain::purge::MAX_ZOOM;
use crate::http::admin::auth::admit;
use crate::http::error::ProxyError;
use crate::http::state::{AppState, State};
use crate::observe::cache_map::{TileSeen, TileState};

/// Features in one GeoJSON answer unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 5_000;
/// Most features in one GeoJSON answer.
pub const MAX_LIMIT: usize = 50_000;
/// The window of `requested`, seconds, unless `recent` says otherwise: an hour.
pub const DEFAULT_RECENT_S: u64 = 3_600;
/// Sub-zooms a PNG tile shows unless `depth` says otherwise, and at most.
pub const DEFAULT_DEPTH: u8 = 2;
pub const MAX_DEPTH: u8 = 4;
/// The PNG tiles' size in pixels.
pub const TILE_PX: usize = 256;

/// RGBA of a state in the PNG tiles (`None`: never seen). Cached tiles darken with freshness:
/// stored within the hour, within the day, older. The map page uses the same colours.
pub fn colour(state: Option<TileState>, age_s: u64) -> [u8; 4] {
    match state {
        Some(TileState::Cached) if age_s < 3_600 => [0x1a, 0x98, 0x50, 0xb4],
        Some(TileState::Cached) if age_s < 86_400 => [0x66, 0xbd, 0x63, 0xb4],
        Some(TileState::Cached) => [0xa6, 0xd9, 0x6a, 0xb4],
        Some(TileState::Purged) => [0xd7, 0x30, 0x27, 0xc8],
        Some(TileState::Requested) => [0x2c, 0x7b, 0xb6, 0xb4],
        None => [0x80, 0x80, 0x80, 0x3c],
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ProxyError {
    ProxyError::Invalid { field: Some(field), message: message.into() }
}

/// The query's parameters, percent-decoded; unknown ones refused.
fn params(req: &HttpRequest, known: &[&'static str]) -> Result<HashMap<String, String>, ProxyError> {
    let q = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| ProxyError::Invalid { field: None, message: format!("query: {e}") })?
        .into_inner();
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ProxyError::Invalid {
            field: None,
            message: format!("unknown parameter `{k}` (known: {})", known.join(", ")),
        });
    }
    Ok(q)
}

fn index(q: &HashMap<String, String>) -> Result<String, ProxyError> {
    match q.get("index") {
        Some(i) if is_valid_index(i) => Ok(i.clone()),
        Some(_) => Err(invalid("index", "must be 1-128 characters of A-Z a-z 0-9 _ . -")),
        None => Err(invalid("index", "missing: the index (indice) whose tiles to show")),
    }
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    q: &HashMap<String, String>,
    field: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ProxyError> {
    let Some(text) = q.get(field) else { return Ok(default) };
    match text.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(invalid(field, format!("must be a whole number from {min} to {max} (got `{text}`)"))),
    }
}

fn recent_ms(q: &HashMap<String, String>) -> Result<u64, ProxyError> {
    Ok(number(q, "recent", DEFAULT_RECENT_S, 0, 365 * 86_400)? * 1000)
}

/// `w,s,e,n` in degrees (west > east crosses the antimeridian).
fn bbox(q: &HashMap<String, String>) -> Result<[f64; 4], ProxyError> {
    let Some(text) = q.get("bbox") else { return Ok([-180.0, -90.0, 180.0, 90.0]) };
    let nums: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| invalid("bbox", format!("must be west,south,east,north in degrees (got `{text}`)")))?;
    let Ok([w, s, e, n]) = <[f64; 4]>::try_from(nums) else {
        return Err(invalid("bbox", format!("must be 4 numbers west,south,east,north (got `{text}`)")));
    };
    if ![w, s, e, n].iter().all(|v| v.is_finite()) {
        return Err(invalid("bbox", "values must be finite numbers"));
    }
    if !(-180.0..=180.0).contains(&w) || !(-180.0..=180.0).contains(&e) {
        return Err(invalid("bbox", "longitudes must be within [-180, 180]"));
    }
    if !(-90.0..=90.0).contains(&s) || !(-90.0..=90.0).contains(&n) {
        return Err(invalid("bbox", "latitudes must be within [-90, 90]"));
    }
    if s > n {
        return Err(invalid("bbox", format!("south ({s}) must not be greater than north ({n})")));
    }
    Ok([w, s, e, n])
}

fn zoom(q: &HashMap<String, String>) -> Result<(u8, u8), ProxyError> {
    let Some(text) = q.get("zoom") else {
        return Err(invalid("zoom", "missing: zmin,zmax (or one zoom)"));
    };
    let bad = || invalid("zoom", format!("must be zmin,zmax with 0 <= zmin <= zmax <= {MAX_ZOOM} (got `{text}`)"));
    let parts: Vec<u8> =
        text.split(',').map(|p| p.trim().parse::<u8>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    let (zmin, zmax) = match parts[..] {
        [z] => (z, z),
        [a, b] => (a, b),
        _ => return Err(bad()),
    };
    if zmin > zmax || zmax > MAX_ZOOM {
        return Err(bad());
    }
    Ok((zmin, zmax))
}

/// An inclusive range of tile columns or rows.
type Span = (u32, u32);

/// Per zoom `zmin..=zmax`: the x ranges (two across the antimeridian) and the y range a bbox
/// overlaps.
struct Area {
    zmin: u8,
    spans: Vec<(Vec<Span>, Option<Span>)>,
}

impl Area {
    fn new([w, s, e, n]: [f64; 4], zmin: u8, zmax: u8) -> Area {
        let spans = (zmin..=zmax)
            .map(|z| {
                let tiles = f64::from(1u32 << z);
                let (uw, ue) = (lon_to_u(w), lon_to_u(e));
                let xs =
                    if w <= e { vec![span(uw, ue, tiles)] } else { vec![span(uw, 1.0, tiles), span(0.0, ue, tiles)] };
                (xs.into_iter().flatten().collect(), span(lat_to_v(n), lat_to_v(s), tiles))
            })
            .collect();
        Area { zmin, spans }
    }

    fn contains(&self, z: u8, x: u32, y: u32) -> bool {
        let Some((xs, ys)) = z.checked_sub(self.zmin).and_then(|i| self.spans.get(usize::from(i))) else {
            return false;
        };
        ys.is_some_and(|(a, b)| (a..=b).contains(&y)) && xs.iter().any(|&(a, b)| (a..=b).contains(&x))
    }
}

/// What a handler needs to give each tile its state.
struct Judge {
    index: String,
    rules: Vec<crate::domain::purge::Rule>,
    now_ms: u64,
    recent_ms: u64,
}

impl Judge {
    fn new(state: &AppState, index: String, recent_ms: u64) -> Judge {
        let now_ms = state.clock.now_ms();
        state.purges.expire(now_ms);
        Judge { index, rules: state.purges.list(), now_ms, recent_ms }
    }

    fn state(&self, t: &TileSeen) -> Option<TileState> {
        t.state(&self.index, &self.rules, self.now_ms, self.recent_ms)
    }

    fn age_s(&self, t: &TileSeen) -> u64 {
        self.now_ms.saturating_sub(t.stored_ms) / 1000
    }
}

/// `GET /admin/cache-map`.
pub async fn geojson(req: HttpRequest, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, None) {
        return e.response();
    }
    match geojson_body(&req, state) {
        Ok(body) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("application/geo+json")
            .body(body.to_string()),
        Err(e) => e.response(),
    }
}

fn geojson_body(req: &HttpRequest, state: &AppState) -> Result<Value, ProxyError> {
    let q = params(req, &["index", "bbox", "zoom", "limit", "recent"])?;
    let (index, bbox, (zmin, zmax)) = (index(&q)?, bbox(&q)?, zoom(&q)?);
    let limit = number(&q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let judge = Judge::new(state, index, recent_ms(&q)?);
    let area = Area::new(bbox, zmin, zmax);
    let wanted = |t: &TileSeen| area.contains(t.z, t.x, t.y) && judge.state(t).is_some();
    let (mut tiles, truncated) = state.cache_map.tiles(&judge.index, wanted, limit);
    // Lower zooms first: drawn in this order, the smaller tiles end up on top.
    tiles.sort_unstable_by_key(|t| (t.z, t.x, t.y));
    let mut counts = [0usize; 3];
    let features: Vec<Value> = tiles
        .iter()
        .filter_map(|t| {
            let st = judge.state(t)?;
            counts[st as usize] += 1;
            let [w, s, e, n] = tile_bounds(t.z, t.x, t.y);
            let age = (t.stored_ms > 0).then(|| judge.age_s(t));
            Some(json!({
                "type": "Feature",
                "id": format!("{}/{}/{}", t.z, t.x, t.y),
                "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
                "properties": {
                    "z": t.z, "x": t.x, "y": t.y, "state": st.as_str(), "age_s": age,
                    "last_request_s": judge.now_ms.saturating_sub(t.requested_ms) / 1000,
                },
            }))
        })
        .collect();
    Ok(json!({
        "type": "FeatureCollection",
        "index": judge.index,
        "zoom": [zmin, zmax],
        "bbox": bbox,
        "counts": {"cached": counts[0], "purged": counts[1], "requested": counts[2]},
        "truncated": truncated,
        "limit": limit,
        "recent_s": judge.recent_ms / 1000,
        "map_tiles": state.cache_map.len(),
        "map_capacity": state.cache_map.capacity(),
        "features": features,
    }))
}

/// `GET /admin/cache-map/{z}/{x}/{y}.png`.
pub async fn png(req: HttpRequest, path: web::Path<(String, String, String)>, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, None) {
        return e.response();
    }
    match png_body(&req, &path, state) {
        Ok(body) => {
            HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).content_type("image/png").body(body)
        }
        Err(e) => e.response(),
    }
}

fn tile_address((z, x, y): &(String, String, String)) -> Result<(u8, u32, u32), ProxyError> {
    let z: u8 =
        z.parse().ok().filter(|z| *z <= MAX_ZOOM).ok_or_else(|| invalid("z", format!("must be 0-{MAX_ZOOM}")))?;
    let n = 1u32 << z;
    let x: u32 =
        x.parse().ok().filter(|x| *x < n).ok_or_else(|| invalid("x", format!("must be 0-{} at zoom {z}", n - 1)))?;
    let y = y.strip_suffix(".png").ok_or_else(|| invalid("y", "the tile is {z}/{x}/{y}.png"))?;
    let y: u32 =
        y.parse().ok().filter(|y| *y < n).ok_or_else(|| invalid("y", format!("must be 0-{} at zoom {z}", n - 1)))?;
    Ok((z, x, y))
}

fn png_body(req: &HttpRequest, path: &(String, String, String), state: &AppState) -> Result<Vec<u8>, ProxyError> {
    let (z, x, y) = tile_address(path)?;
    let q = params(req, &["index", "depth", "recent"])?;
    let index = index(&q)?;
    let depth = number(&q, "depth", DEFAULT_DEPTH, 0, MAX_DEPTH)?.min(MAX_ZOOM - z);
    let judge = Judge::new(state, index, recent_ms(&q)?);
    let under = |t: &TileSeen| {
        t.z >= z && t.z <= z + depth && (t.x >> (t.z - z)) == x && (t.y >> (t.z - z)) == y && judge.state(t).is_some()
    };
    // At most 1 + 4 + ... + 4^depth tiles: never truncated.
    let (tiles, _) = state.cache_map.tiles(&judge.index, under, usize::MAX);
    let known: HashMap<(u8, u32, u32), [u8; 4]> =
        tiles.iter().map(|t| ((t.z, t.x, t.y), colour(judge.state(t), judge.age_s(t)))).collect();
    let mut px = vec![0u8; TILE_PX * TILE_PX * 4];
    draw(&mut px, &known, (z, x, y), depth, (0, 0, TILE_PX));
    encode(&px).map_err(|e| ProxyError::Invalid { field: None, message: format!("cannot encode the tile: {e}") })
}

/// Fills `rect` (left, top, size) with tile `(z, x, y)`'s colour, then its children's squares
/// inside it, each inset so that the parent's colour stays as a frame, down `depth` zooms.
fn draw(
    px: &mut [u8],
    known: &HashMap<(u8, u32, u32), [u8; 4]>,
    t: (u8, u32, u32),
    depth: u8,
    rect: (usize, usize, usize),
) {
    let (left, top, size) = rect;
    let c = known.get(&t).copied().unwrap_or_else(|| colour(None, 0));
    for row in top..top + size {
        for col in left..left + size {
            px[(row * TILE_PX + col) * 4..][..4].copy_from_slice(&c);
        }
    }
    let half = size / 2;
    let pad = (half / 16).max(1);
    if depth == 0 || half <= 2 * pad + 1 {
        return;
    }
    let (z, x, y) = t;
    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let child = (z + 1, x * 2 + dx, y * 2 + dy);
        let r = (left + dx as usize * half + pad, top + dy as usize * half + pad, half - 2 * pad);
        draw(px, known, child, depth - 1, r);
    }
}

fn encode(rgba: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(4096);
    let mut enc = png::Encoder::new(&mut out, TILE_PX as u32, TILE_PX as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(rgba)?;
    w.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_of_a_bbox() {
        // Zoom 1, the east half of the north: tile 1/1/0 only.
        let a = Area::new([10.0, 10.0, 170.0, 80.0], 1, 2);
        assert!(a.contains(1, 1, 0) && !a.contains(1, 0, 0) && !a.contains(1, 1, 1));
        assert!(!a.contains(0, 0, 0) && !a.contains(3, 6, 1));
        // Across the antimeridian: both edges.
        let a = Area::new([170.0, -10.0, -170.0, 10.0], 3, 3);
        assert!(a.contains(3, 0, 3) && a.contains(3, 7, 4) && !a.contains(3, 3, 3));
    }

    #[test]
    fn nested_squares() {
        let mut known = HashMap::new();
        known.insert((3, 2, 2), colour(Some(TileState::Cached), 0));
        known.insert((4, 5, 4), colour(Some(TileState::Purged), 0));
        let mut px = vec![0u8; TILE_PX * TILE_PX * 4];
        draw(&mut px, &known, (3, 2, 2), 2, (0, 0, TILE_PX));
        let at = |col: usize, row: usize| <[u8; 4]>::try_from(&px[(row * TILE_PX + col) * 4..][..4]).unwrap();
        assert_eq!(at(0, 0), colour(Some(TileState::Cached), 0), "the frame: the tile itself");
        assert_eq!(at(192, 64), colour(Some(TileState::Purged), 0), "child 4/5/4: top right quarter");
        assert_eq!(at(64, 64), colour(None, 0), "child 4/4/4: never seen");
        assert_eq!(at(64, 192), colour(None, 0));
    }
}

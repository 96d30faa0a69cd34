//! Web-Mercator maths, the one place for it: longitude and latitude to the unit square and
//! back, the tiles of a zoom an interval overlaps ([`span`]), a tile's bounds
//! ([`tile_bounds`]), GeoJSON areas ([`Shape::from_geojson`]) and the tiles a shape covers
//! ([`cover`]). Purge rules (which tiles a bbox or a shape names), seed jobs (which tiles to
//! fetch) and the cache map use it.
//!
//! Geometry is the `geo` crate's: a shape is projected to the unit square once, where tile
//! borders are straight lines (as a map draws it), and clipped with `geo`'s boolean operations.

use ::geo::{Area, BooleanOps, BoundingRect, Coord, MapCoords, MultiPolygon, Polygon, Rect};

/// The Web-Mercator latitude limit: the world square ends there.
pub const MAX_LAT: f64 = 85.051_128_779_8;

/// Longitude to `u`, 0 (west, -180°) to 1 (east, 180°).
pub fn lon_to_u(lon: f64) -> f64 {
    (lon + 180.0) / 360.0
}

/// Latitude to `v`, 0 (north, the Mercator limit) to 1 (south), clamped: beyond
/// ±[`MAX_LAT`] exactly 0 or 1.
pub fn lat_to_v(lat: f64) -> f64 {
    if lat >= MAX_LAT {
        return 0.0;
    }
    if lat <= -MAX_LAT {
        return 1.0;
    }
    let v = (1.0 - lat.to_radians().tan().asinh() / std::f64::consts::PI) / 2.0;
    v.clamp(0.0, 1.0)
}

/// `v` back to latitude in degrees (`v` 0 is [`MAX_LAT`], 1 is its negative).
pub fn v_to_lat(v: f64) -> f64 {
    (std::f64::consts::PI * (1.0 - 2.0 * v)).sinh().atan().to_degrees()
}

/// `u` back to longitude in degrees.
pub fn u_to_lon(u: f64) -> f64 {
    u * 360.0 - 180.0
}

/// The side of a tile at zoom `z` in unit-square units: `2^-z`, exact.
pub fn tile_side(z: u8) -> f64 {
    1.0 / 2f64.powi(i32::from(z))
}

/// Tile `z/x/y`'s bounds `[west, south, east, north]` in degrees.
pub fn tile_bounds(z: u8, x: u32, y: u32) -> [f64; 4] {
    let side = tile_side(z);
    let (u0, v0) = (f64::from(x) * side, f64::from(y) * side);
    [u_to_lon(u0), v_to_lat(v0 + side), u_to_lon(u0 + side), v_to_lat(v0)]
}

/// The tiles `t` of a zoom with `n` tiles a side whose extent `[t, t+1] / n` overlaps `(lo, hi)`
/// (not just touching it), inclusive; `None` if none do. `lo` and `hi` are finite; an empty
/// interval (`lo == hi`) gives the tile it lies in, unless it lies on an edge.
pub fn span(lo: f64, hi: f64, n: f64) -> Option<(u32, u32)> {
    let first = (lo * n).floor().max(0.0);
    let last = ((hi * n).ceil() - 1.0).min(n - 1.0);
    // Both are integers in 0..n <= 2^22: the casts are exact.
    (first <= last).then_some((first as u32, last as u32))
}

/// Why a GeoJSON area was refused; the message says where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("geojson: {0}")]
pub struct ShapeError(pub String);

/// An area: the polygons (holes kept) of a GeoJSON `Polygon`, `MultiPolygon`, `Feature` or
/// `FeatureCollection` in WGS84 degrees, every part of every feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    degrees: MultiPolygon<f64>,
}

impl Shape {
    /// Reads a GeoJSON value. Geometries other than polygons (points, lines), coordinates out
    /// of [-180, 180] x [-90, 90] and an area without any polygon are refused, naming the part.
    pub fn from_geojson(value: serde_json::Value) -> Result<Shape, ShapeError> {
        let doc: geojson::GeoJson = serde_json::from_value(value).map_err(|e| ShapeError(e.to_string()))?;
        let mut polygons = Vec::new();
        match doc {
            geojson::GeoJson::Geometry(g) => add_geometry(&g, "the geometry", &mut polygons)?,
            geojson::GeoJson::Feature(f) => add_feature(&f, "the feature", &mut polygons)?,
            geojson::GeoJson::FeatureCollection(c) => {
                for (i, f) in c.features.iter().enumerate() {
                    add_feature(f, &format!("feature {i}"), &mut polygons)?;
                }
            }
        }
        if polygons.is_empty() {
            return Err(ShapeError("no Polygon or MultiPolygon in it".into()));
        }
        let degrees = MultiPolygon(polygons);
        if let Some(c) = degrees
            .0
            .iter()
            .flat_map(|p| p.exterior().0.iter().chain(p.interiors().iter().flat_map(|r| r.0.iter())))
            .find(|c| {
                !(c.x.is_finite()
                    && c.y.is_finite()
                    && (-180.0..=180.0).contains(&c.x)
                    && (-90.0..=90.0).contains(&c.y))
            })
        {
            return Err(ShapeError(format!(
                "coordinate [{}, {}] is not WGS84 [longitude, latitude] within [-180, 180] x [-90, 90]",
                c.x, c.y
            )));
        }
        Ok(Shape { degrees })
    }

    /// The polygons, in degrees.
    pub fn polygons(&self) -> &MultiPolygon<f64> {
        &self.degrees
    }

    /// Its bounding box `[west, south, east, north]` in degrees.
    pub fn bounds(&self) -> [f64; 4] {
        self.degrees.bounding_rect().map_or([0.0; 4], |r| [r.min().x, r.min().y, r.max().x, r.max().y])
    }

    /// The shape in the unit square, where tile borders are straight.
    fn projected(&self) -> MultiPolygon<f64> {
        self.degrees.map_coords(|c| Coord { x: lon_to_u(c.x), y: lat_to_v(c.y) })
    }

    /// How many tile rows of zoom `z` the shape's bounding box spans: a bound on the runs
    /// [`cover`] gives per part, known before computing it.
    pub fn rows(&self, z: u8) -> u64 {
        let n = 2f64.powi(i32::from(z));
        self.projected()
            .0
            .iter()
            .filter_map(BoundingRect::bounding_rect)
            .filter_map(|r| span(r.min().y, r.max().y, n))
            .map(|(a, b)| u64::from(b - a) + 1)
            .sum()
    }
}

fn add_feature(f: &geojson::Feature, what: &str, out: &mut Vec<Polygon<f64>>) -> Result<(), ShapeError> {
    match &f.geometry {
        Some(g) => add_geometry(g, what, out),
        None => Err(ShapeError(format!("{what} has no geometry"))),
    }
}

fn add_geometry(g: &geojson::Geometry, what: &str, out: &mut Vec<Polygon<f64>>) -> Result<(), ShapeError> {
    let shape = ::geo::Geometry::<f64>::try_from(&g.value).map_err(|e| ShapeError(format!("{what}: {e}")))?;
    add_shape(shape, what, out)
}

fn add_shape(shape: ::geo::Geometry<f64>, what: &str, out: &mut Vec<Polygon<f64>>) -> Result<(), ShapeError> {
    match shape {
        ::geo::Geometry::Polygon(p) => out.push(p),
        ::geo::Geometry::MultiPolygon(m) => out.extend(m.0),
        ::geo::Geometry::GeometryCollection(c) => {
            for (i, g) in c.0.into_iter().enumerate() {
                add_shape(g, &format!("{what}, geometry {i}"), out)?;
            }
        }
        other => {
            return Err(ShapeError(format!(
                "{what} is a {}: only Polygon and MultiPolygon name an area",
                geometry_name(&other)
            )))
        }
    }
    Ok(())
}

fn geometry_name(g: &::geo::Geometry<f64>) -> &'static str {
    match g {
        ::geo::Geometry::Point(_) => "Point",
        ::geo::Geometry::MultiPoint(_) => "MultiPoint",
        ::geo::Geometry::LineString(_) | ::geo::Geometry::Line(_) => "LineString",
        ::geo::Geometry::MultiLineString(_) => "MultiLineString",
        _ => "geometry without an area",
    }
}

/// One row's run of tiles: zoom `z`, row `y`, columns `x0..=x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Run {
    pub z: u8,
    pub y: u32,
    pub x0: u32,
    pub x1: u32,
}

/// The tiles of zoom `z` that `shape` covers with a positive area, as runs of columns per row
/// (runs of one row may overlap or touch; [`crate::domain::tileset::TileSet`] merges them).
///
/// A tile cover, not a walk over the bounding box: the projected shape is clipped into halves
/// of its row range, recursively, down to single rows (so each clip works on the part of the
/// shape that lies in its band); each part of a row's clip is connected, so the columns between
/// its west and east ends are exactly the tiles it overlaps. Holes split a row's clip where
/// they cross it, so tiles inside a hole are not covered. The work grows with the rows and the
/// shape's vertices, not with the tiles.
pub fn cover(shape: &Shape, z: u8, out: &mut Vec<Run>) {
    let projected = shape.projected();
    let n = 2f64.powi(i32::from(z));
    let Some(rows) = projected.bounding_rect().and_then(|r| span(r.min().y, r.max().y, n)) else { return };
    cover_rows(projected, z, rows, out);
}

fn cover_rows(part: MultiPolygon<f64>, z: u8, (first, last): (u32, u32), out: &mut Vec<Run>) {
    if part.0.is_empty() {
        return;
    }
    let n = 2f64.powi(i32::from(z));
    if first == last {
        for polygon in &part.0 {
            let columns = polygon.bounding_rect().filter(|_| polygon.unsigned_area() > 0.0).and_then(|r| {
                let (lo, hi) = (r.min().x, r.max().x);
                (hi > lo).then(|| span(lo, hi, n)).flatten()
            });
            if let Some((x0, x1)) = columns {
                out.push(Run { z, y: first, x0, x1 });
            }
        }
        return;
    }
    let mid = first + (last - first) / 2;
    let band = |top: u32, bottom: u32| {
        Rect::new(Coord { x: -1.0, y: f64::from(top) / n }, Coord { x: 2.0, y: f64::from(bottom + 1) / n }).to_polygon()
    };
    let upper = part.intersection(&MultiPolygon(vec![band(first, mid)]));
    let lower = part.intersection(&MultiPolygon(vec![band(mid + 1, last)]));
    drop(part);
    cover_rows(upper, z, (first, mid), out);
    cover_rows(lower, z, (mid + 1, last), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_square_and_its_tiles() {
        assert_eq!(lon_to_u(-180.0), 0.0);
        assert_eq!(lon_to_u(180.0), 1.0);
        assert_eq!(lat_to_v(0.0), 0.5);
        assert_eq!((lat_to_v(90.0), lat_to_v(-90.0)), (0.0, 1.0));
        assert!(lat_to_v(MAX_LAT - 1e-9) > 0.0 && lat_to_v(MAX_LAT - 1e-9) < 1e-9);
        // Zoom 1: two tiles a side; the east half, and only touching the middle is not overlapping.
        assert_eq!(span(0.5, 1.0, 2.0), Some((1, 1)));
        assert_eq!(span(0.25, 0.75, 2.0), Some((0, 1)));
        assert_eq!(span(0.3, 0.3, 2.0), Some((0, 0)));
        assert_eq!(span(0.5, 0.5, 2.0), None);
    }

    fn south_africa() -> Shape {
        let text = include_str!("../../tests/fixtures/south-africa.geojson");
        Shape::from_geojson(serde_json::from_str(text).unwrap()).unwrap()
    }

    /// Every tile of zoom `z` in the shape's bounding box whose square shares a positive area
    /// with the projected shape, one clip per tile (slow, independent of [`cover`]'s banding).
    fn brute_force(shape: &Shape, z: u8) -> Vec<(u8, u32, u32)> {
        let projected = shape.projected();
        let n = 2f64.powi(i32::from(z));
        let r = projected.bounding_rect().unwrap();
        let (xs, ys) = (span(r.min().x, r.max().x, n).unwrap(), span(r.min().y, r.max().y, n).unwrap());
        let mut out = Vec::new();
        for y in ys.0..=ys.1 {
            for x in xs.0..=xs.1 {
                let side = tile_side(z);
                let tile = Rect::new(
                    Coord { x: f64::from(x) * side, y: f64::from(y) * side },
                    Coord { x: f64::from(x + 1) * side, y: f64::from(y + 1) * side },
                );
                if projected.intersection(&MultiPolygon(vec![tile.to_polygon()])).unsigned_area() > 0.0 {
                    out.push((z, x, y));
                }
            }
        }
        out
    }

    fn covered(shape: &Shape, z: u8) -> Vec<(u8, u32, u32)> {
        let mut runs = Vec::new();
        cover(shape, z, &mut runs);
        let mut tiles: Vec<_> = runs.iter().flat_map(|r| (r.x0..=r.x1).map(move |x| (r.z, x, r.y))).collect();
        tiles.sort_unstable_by_key(|&(z, x, y)| (z, y, x));
        tiles.dedup();
        tiles
    }

    /// The tile of zoom `z` holding a point.
    fn tile_at(lon: f64, lat: f64, z: u8) -> (u8, u32, u32) {
        let n = 2f64.powi(i32::from(z));
        (z, (lon_to_u(lon) * n) as u32, (lat_to_v(lat) * n) as u32)
    }

    #[test]
    fn the_cover_is_the_tiles_a_real_shape_overlaps_holes_and_islands_included() {
        let shape = south_africa();
        assert_eq!(shape.polygons().0.len(), 3, "mainland and two islands");
        for z in 0..=9 {
            let mut expected = brute_force(&shape, z);
            expected.sort_unstable_by_key(|&(z, x, y)| (z, y, x));
            assert_eq!(covered(&shape, z), expected, "zoom {z}");
        }
        let z10 = covered(&shape, 10);
        // Maseru, inside Lesotho (the hole): its tile is not covered; Johannesburg's is.
        assert!(!z10.contains(&tile_at(27.9, -29.6, 10)), "a tile inside the hole");
        assert!(z10.contains(&tile_at(28.05, -26.2, 10)), "Johannesburg");
        // Both islands, 1,800 km away, are covered; the ocean between is not.
        assert!(z10.contains(&tile_at(37.75, -46.9, 10)), "Marion Island");
        assert!(z10.contains(&tile_at(37.95, -46.63, 10)), "Prince Edward Island");
        assert!(!z10.contains(&tile_at(35.0, -40.0, 10)), "the ocean between");
        let bbox_tiles = {
            let r = shape.projected().bounding_rect().unwrap();
            let (xs, ys) = (span(r.min().x, r.max().x, 1024.0).unwrap(), span(r.min().y, r.max().y, 1024.0).unwrap());
            u64::from(xs.1 - xs.0 + 1) * u64::from(ys.1 - ys.0 + 1)
        };
        assert!((z10.len() as u64) * 3 < bbox_tiles, "{} tiles of a bbox of {bbox_tiles}", z10.len());
    }

    #[test]
    fn shapes_are_read_from_every_geojson_form_and_bad_ones_say_why() {
        let square = serde_json::json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]});
        let feature = serde_json::json!({"type": "Feature", "properties": {}, "geometry": square});
        let multi = serde_json::json!({"type": "MultiPolygon", "coordinates": [square["coordinates"], [[[5, 5], [6, 5], [6, 6], [5, 5]]]]});
        let collection = serde_json::json!({"type": "FeatureCollection", "features": [feature, {"type": "Feature", "properties": null, "geometry": multi}]});
        assert_eq!(Shape::from_geojson(square.clone()).unwrap().polygons().0.len(), 1);
        assert_eq!(Shape::from_geojson(feature.clone()).unwrap().polygons().0.len(), 1);
        assert_eq!(Shape::from_geojson(multi).unwrap().polygons().0.len(), 2);
        assert_eq!(Shape::from_geojson(collection).unwrap().polygons().0.len(), 3);
        let err = |v: serde_json::Value| Shape::from_geojson(v).unwrap_err().0;
        assert!(err(serde_json::json!({"type": "Point", "coordinates": [1, 2]})).contains("is a Point"));
        assert!(err(serde_json::json!({"type": "FeatureCollection", "features": [feature, {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]})).starts_with("feature 1 is a LineString"));
        assert!(err(serde_json::json!({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [1, 1], [0, 0]]]}))
            .contains("[200, 0]"));
        assert!(
            err(serde_json::json!({"type": "Polygon"})).contains("coordinates"),
            "{}",
            err(serde_json::json!({"type": "Polygon"}))
        );
        assert!(err(serde_json::json!({"type": "FeatureCollection", "features": []})).contains("no Polygon"));
        let not_geojson = Shape::from_geojson(serde_json::json!([1, 2])).unwrap_err();
        assert!(not_geojson.to_string().starts_with("geojson: "), "{not_geojson}");
    }

    #[test]
    fn tile_bounds_invert_the_projection() {
        let [w, s, e, n] = tile_bounds(1, 1, 0);
        assert_eq!((w, e), (0.0, 180.0));
        assert!((n - MAX_LAT).abs() < 1e-9 && s.abs() < 1e-9, "{s} {n}");
        for lat in [-80.0, -33.9, 0.0, 52.5, 85.0] {
            assert!((v_to_lat(lat_to_v(lat)) - lat).abs() < 1e-9);
        }
    }
}

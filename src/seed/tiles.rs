//! What a seed job covers: its parameters checked ([`Job::new`]), the Web-Mercator tiles of its
//! bbox per zoom ([`ZoomSpan`]) or of its GeoJSON area (the area's tile cover, a [`TileSet`]),
//! enumerated in one fixed order (zoom, then row, then column) so a tile's position in that
//! order names it in the resume state, and each tile's URL.
//!
//! Pure functions only. A tile belongs to the job when it and the bbox overlap with a positive
//! area: a bbox edge exactly on a tile border does not pull in the neighbour tile. Latitudes are
//! clamped to the Mercator limit (±85.0511287798°); `west > east` crosses the antimeridian.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::domain::geo::{self, lat_to_v, lon_to_u, Shape};
use crate::domain::routes::{self, Api, ParseOptions, RASTER_MAX_ZOOM, VECTOR_MAX_ZOOM};
use crate::domain::tileset::TileSet;

pub use crate::domain::geo::MAX_LAT;

/// Largest job accepted unless raised (`--max-tiles`).
pub const DEFAULT_MAX_TILES: u64 = 10_000_000;

/// Most tile rows a GeoJSON job may span over its zooms (a bound on its cover's size).
pub const MAX_AREA_ROWS: u64 = 4_000_000;

/// A bad job parameter: names the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub field: &'static str,
    pub message: String,
}

impl JobError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for JobError {}

/// `[west, south, east, north]` in WGS84 degrees.
pub type Bbox = [f64; 4];

/// Which tiles: a raster resource in a format, or a vector layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Raster { resource: String, format: String },
    Vector { layer: String },
}

/// A seed job's parameters, as the CLI flags and the admin API's JSON give them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    pub index: String,
    /// The area; with `shape`, the shape's bounding box (shown, not seeded).
    pub bbox: Bbox,
    /// A GeoJSON area: only the tiles it covers are seeded, not its bounding box.
    pub shape: Option<Shape>,
    /// First and last zoom, inclusive.
    pub zoom: (u8, u8),
    pub kind: Kind,
    /// Query parameters besides `indice` (`style`, `size`, ...), as HERE names them.
    pub params: BTreeMap<String, String>,
}

/// The tiles of one zoom: one column range (two across the antimeridian) times one row range,
/// inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoomSpan {
    pub z: u8,
    pub xs: [Option<(u32, u32)>; 2],
    pub ys: Option<(u32, u32)>,
}

impl ZoomSpan {
    /// The tiles of zoom `z` that overlap `bbox` (already validated).
    pub fn of(bbox: Bbox, z: u8) -> ZoomSpan {
        let [west, south, east, north] = bbox;
        let n = 2f64.powi(i32::from(z));
        let (u0, u1) = (lon_to_u(west), lon_to_u(east));
        let xs = if west > east { [span(u0, 1.0, n), span(0.0, u1, n)] } else { [span(u0, u1, n), None] };
        ZoomSpan { z, xs, ys: span(lat_to_v(north), lat_to_v(south), n) }
    }

    fn width(&self) -> u64 {
        self.xs.iter().flatten().map(|(a, b)| u64::from(b - a) + 1).sum()
    }

    /// How many tiles.
    pub fn count(&self) -> u64 {
        self.ys.map_or(0, |(a, b)| (u64::from(b - a) + 1) * self.width())
    }

    /// Its tiles in the job's order: row by row, west to east (across the antimeridian: the
    /// western part first).
    pub fn tiles(self) -> impl Iterator<Item = (u8, u32, u32)> {
        self.ys.into_iter().flat_map(|(a, b)| a..=b).flat_map(move |y| {
            self.xs.into_iter().flatten().flat_map(move |(a, b)| (a..=b).map(move |x| (self.z, x, y)))
        })
    }
}

/// The tile indices `[first, last]` at scale `n` whose interval overlaps `(lo, hi)` with a
/// positive length; `None` when none does.
fn span(lo: f64, hi: f64, n: f64) -> Option<(u32, u32)> {
    if hi > lo {
        geo::span(lo, hi, n)
    } else {
        None
    }
}

/// A checked job: its parameters, its tiles per zoom and a sample of its URLs parsed by the
/// proxy's own parser.
#[derive(Debug, Clone)]
pub struct Job {
    pub params: JobParams,
    /// The tiles of a bbox job, per zoom (empty for a GeoJSON job).
    pub zooms: Vec<ZoomSpan>,
    /// The tiles of a GeoJSON job.
    pub cover: Option<TileSet>,
    pub total: u64,
}

impl Job {
    /// Checks `params` (ranges, the tile count against `max_tiles`, and one tile URL through
    /// [`routes::parse`] so a bad resource, style or parameter fails before anything starts).
    pub fn new(params: JobParams, max_tiles: u64) -> Result<Job, JobError> {
        if params.shape.is_none() {
            check_bbox(params.bbox)?;
        }
        let max_zoom = match params.kind {
            Kind::Raster { .. } => RASTER_MAX_ZOOM,
            Kind::Vector { .. } => VECTOR_MAX_ZOOM,
        };
        let (zmin, zmax) = params.zoom;
        if zmin > zmax {
            return Err(JobError::new("zoom", format!("the first zoom ({zmin}) is above the last ({zmax})")));
        }
        if zmax > max_zoom {
            return Err(JobError::new("zoom", format!("zoom {zmax} is above this API's highest zoom ({max_zoom})")));
        }
        if !crate::base::names::is_valid_index(&params.index) {
            return Err(JobError::new("index", "must be 1-64 characters of A-Z a-z 0-9 _ . -"));
        }
        let (zooms, cover) = match &params.shape {
            Some(shape) => {
                let cover =
                    TileSet::cover(shape, (zmin, zmax), MAX_AREA_ROWS).map_err(|e| JobError::new("geojson", e.0))?;
                (Vec::new(), Some(cover))
            }
            None => ((zmin..=zmax).map(|z| ZoomSpan::of(params.bbox, z)).collect(), None),
        };
        let total = cover.as_ref().map_or_else(|| zooms.iter().map(ZoomSpan::count).sum(), TileSet::len);
        if total > max_tiles {
            let field = if cover.is_some() { "geojson" } else { "bbox" };
            return Err(JobError::new(
                field,
                format!("the job has {total} tiles, more than the limit of {max_tiles} (raise it with --max-tiles)"),
            ));
        }
        let job = Job { params, zooms, cover, total };
        job.check_sample()?;
        Ok(job)
    }

    /// Parses the URL of the job's first tile as the proxy would.
    fn check_sample(&self) -> Result<(), JobError> {
        let (z, x, y) = self.tiles().next().unwrap_or((self.params.zoom.0, 0, 0));
        let url = self.url(z, x, y);
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        match routes::parse(path, query, ParseOptions { reject_unknown_params: true }) {
            Ok(Some(t)) if t.api.is_traffic() => Err(JobError::new(
                "resource",
                "traffic tiles are not seeded: they are outdated within minutes (traffic_ttl)",
            )),
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(JobError::new("resource", format!("`{path}` is not a tile route"))),
            Err(e) => Err(JobError::new(field_of(&e.field), e.message)),
        }
    }

    /// Every tile in the job's order (its position there is its index in the resume state).
    pub fn tiles(&self) -> Box<dyn Iterator<Item = (u8, u32, u32)> + '_> {
        match &self.cover {
            Some(cover) => Box::new(cover.tiles()),
            None => Box::new(self.zooms.iter().flat_map(|s| s.tiles())),
        }
    }

    /// How many tiles each zoom has.
    pub fn per_zoom(&self) -> Vec<(u8, u64)> {
        let (zmin, zmax) = self.params.zoom;
        match &self.cover {
            Some(cover) => (zmin..=zmax)
                .map(|z| (z, cover.runs().iter().filter(|r| r.z == z).map(|r| u64::from(r.x1 - r.x0) + 1).sum()))
                .collect(),
            None => self.zooms.iter().map(|s| (s.z, s.count())).collect(),
        }
    }

    /// The API the tiles belong to.
    pub fn api(&self) -> Api {
        match self.params.kind {
            Kind::Raster { .. } => Api::Raster,
            Kind::Vector { .. } => Api::Vector,
        }
    }

    /// The path and query a client would GET for tile `z/x/y`.
    pub fn url(&self, z: u8, x: u32, y: u32) -> String {
        let p = &self.params;
        let mut url = match &p.kind {
            Kind::Raster { resource, format } => format!("/v3/{resource}/mc/{z}/{x}/{y}/{format}?"),
            Kind::Vector { layer } => format!("/v2/vectortiles/{layer}/mc/{z}/{x}/{y}/omv?"),
        };
        for (k, v) in &p.params {
            url.push_str(&encode(k));
            url.push('=');
            url.push_str(&encode(v));
            url.push('&');
        }
        url.push_str("indice=");
        url.push_str(&encode(&p.index));
        url
    }

    /// A short stable name of the job (hex of a SHA-256 over its parameters): the same
    /// command gives the same name on every machine, so it names the resume state.
    pub fn hash(&self) -> String {
        let p = &self.params;
        let mut h = Sha256::new();
        let kind = match &p.kind {
            Kind::Raster { resource, format } => format!("raster/{resource}/{format}"),
            Kind::Vector { layer } => format!("vector/{layer}"),
        };
        let area = match &self.cover {
            // The area is the tiles it covers (the same shape, however written, is the same job).
            Some(cover) => {
                format!("geojson:{}", hex::encode(Sha256::digest(serde_json::to_vec(cover).unwrap_or_default())))
            }
            None => {
                let [w, s, e, n] = p.bbox;
                format!("{w},{s},{e},{n}")
            }
        };
        h.update(format!("seed-v1|{}|{kind}|{area}|{}-{}|", p.index, p.zoom.0, p.zoom.1));
        for (k, v) in &p.params {
            h.update(format!("{k}={v}&"));
        }
        hex::encode(&h.finalize()[..6])
    }
}

/// The job field a parse error of the sample URL is about.
fn field_of(route_field: &str) -> &'static str {
    match route_field {
        "resource" => "resource",
        "layer" => "layer",
        "format" => "format",
        "indice" => "index",
        "z" => "zoom",
        "style" => "style",
        "size" => "size",
        _ => "params",
    }
}

fn check_bbox(bbox: Bbox) -> Result<(), JobError> {
    let [west, south, east, north] = bbox;
    if !bbox.iter().all(|v| v.is_finite()) {
        return Err(JobError::new("bbox", "values must be finite numbers"));
    }
    if let Some(lon) = [west, east].into_iter().find(|lon| !(-180.0..=180.0).contains(lon)) {
        return Err(JobError::new("bbox", format!("longitude {lon} is outside [-180, 180]")));
    }
    if let Some(lat) = [south, north].into_iter().find(|lat| !(-90.0..=90.0).contains(lat)) {
        return Err(JobError::new("bbox", format!("latitude {lat} is outside [-90, 90]")));
    }
    if south >= north {
        return Err(JobError::new("bbox", format!("south ({south}) must be below north ({north})")));
    }
    if west == east {
        return Err(JobError::new("bbox", "west and east are equal: the box has no width"));
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters (the proxy decodes it back).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `12` or `10-14` (the CLI's `--zoom`).
pub fn parse_zoom(s: &str) -> Result<(u8, u8), JobError> {
    let bad = || JobError::new("zoom", format!("`{s}` is not a zoom (12) or a zoom range (10-14)"));
    let num = |t: &str| t.trim().parse::<u8>().map_err(|_| bad());
    match s.split_once('-') {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => num(s).map(|z| (z, z)),
    }
}

/// Parses `west,south,east,north` (the CLI's `--bbox`).
pub fn parse_bbox(s: &str) -> Result<Bbox, JobError> {
    let values: Vec<f64> = s
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| JobError::new("bbox", format!("`{s}` is not four numbers west,south,east,north")))?;
    <Bbox>::try_from(values).map_err(|v| JobError::new("bbox", format!("expected 4 numbers, got {}", v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raster(bbox: Bbox, zoom: (u8, u8)) -> JobParams {
        JobParams {
            index: "test".into(),
            bbox,
            shape: None,
            zoom,
            kind: Kind::Raster { resource: "base".into(), format: "png".into() },
            params: BTreeMap::new(),
        }
    }

    /// West edge of column `x` at scale `n`, in degrees (the inverse projection: independent of
    /// the forward one the code above uses).
    fn tile_lon(x: u32, n: u32) -> f64 {
        geo::u_to_lon(f64::from(x) / f64::from(n))
    }

    /// North edge of row `y` at scale `n`, in degrees.
    fn tile_lat(y: u32, n: u32) -> f64 {
        geo::v_to_lat(f64::from(y) / f64::from(n))
    }

    /// Every tile of zoom `z` whose lon/lat bounds overlap the bbox with a positive area.
    fn brute_force(bbox: Bbox, z: u8) -> Vec<(u8, u32, u32)> {
        let [w, s, e, n] = bbox;
        let limit = tile_lat(0, 1);
        let (s, n) = (s.clamp(-limit, limit), n.clamp(-limit, limit));
        let lons: Vec<(f64, f64)> = if w > e { vec![(w, 180.0), (-180.0, e)] } else { vec![(w, e)] };
        let size = 1u32 << z;
        let mut out = Vec::new();
        for y in 0..size {
            let (top, bottom) = (tile_lat(y, size), tile_lat(y + 1, size));
            if !(bottom < n && s < top) {
                continue;
            }
            for (lo, hi) in &lons {
                for x in 0..size {
                    let (left, right) = (tile_lon(x, size), tile_lon(x + 1, size));
                    if left < *hi && *lo < right {
                        out.push((z, x, y));
                    }
                }
            }
        }
        out
    }

    fn enumerated(bbox: Bbox, z: u8) -> Vec<(u8, u32, u32)> {
        ZoomSpan::of(bbox, z).tiles().collect()
    }

    #[test]
    fn tiles_match_a_brute_force_overlap_test_at_low_zooms() {
        let boxes: &[Bbox] = &[
            [13.1, 52.3, 13.7, 52.7],      // Berlin
            [-74.3, 40.5, -73.7, 40.9],    // New York
            [-10.3, -33.3, 47.7, 37.3],    // Africa
            [170.3, -47.3, -175.7, -34.1], // across the antimeridian
            [-179.9, -89.9, 179.9, 89.9],  // nearly the world, beyond the Mercator limit
            [100.7, 86.1, 120.3, 89.0],    // north of the Mercator limit: nothing
            [-20.2, -88.0, 20.2, -84.9],   // reaching the south limit
        ];
        for &bbox in boxes {
            for z in 0..=7 {
                let expected = brute_force(bbox, z);
                let mut got = enumerated(bbox, z);
                assert_eq!(got.len() as u64, ZoomSpan::of(bbox, z).count(), "{bbox:?} z{z}");
                got.sort_unstable();
                let mut expected = expected;
                expected.sort_unstable();
                assert_eq!(got, expected, "{bbox:?} z{z}");
            }
        }
    }

    #[test]
    fn an_edge_on_a_tile_border_does_not_pull_in_the_neighbour() {
        // At zoom 2 the columns are 90° wide and the equator is a row border.
        assert_eq!(enumerated([0.0, 0.0, 90.0, 10.0], 2), vec![(2, 2, 1)]);
        assert_eq!(enumerated([-90.0, -10.0, 0.0, 0.0], 2), vec![(2, 1, 2)]);
        // Just across the border: the neighbour is in.
        assert_eq!(enumerated([0.0, 0.0, 90.1, 10.0], 2), vec![(2, 2, 1), (2, 3, 1)]);
    }

    #[test]
    fn the_antimeridian_gives_two_column_ranges_west_part_first() {
        let span = ZoomSpan::of([170.0, -10.0, -170.0, 10.0], 3);
        assert_eq!(span.xs, [Some((7, 7)), Some((0, 0))]);
        assert_eq!(span.count(), 4);
        let tiles: Vec<_> = span.tiles().collect();
        assert_eq!(tiles, vec![(3, 7, 3), (3, 0, 3), (3, 7, 4), (3, 0, 4)]);
        // The whole world, given as -180..180 or as a box crossing at 180.
        assert_eq!(ZoomSpan::of([-180.0, -90.0, 180.0, 90.0], 4).count(), 256);
    }

    #[test]
    fn poles_are_clamped_to_the_mercator_limit() {
        let all = ZoomSpan::of([-180.0, -90.0, 180.0, 90.0], 5);
        assert_eq!(all.ys, Some((0, 31)));
        assert_eq!(ZoomSpan::of([0.0, 86.0, 10.0, 90.0], 5).count(), 0);
        assert_eq!(ZoomSpan::of([0.0, 80.0, 10.0, 90.0], 5).ys.map(|y| y.0), Some(0));
    }

    #[test]
    fn the_job_counts_every_zoom_and_orders_by_zoom() {
        let job = Job::new(raster([13.1, 52.3, 13.7, 52.7], (10, 12)), DEFAULT_MAX_TILES).unwrap();
        let per_zoom: Vec<u64> = (10..=12).map(|z| brute_force(job.params.bbox, z).len() as u64).collect();
        assert_eq!(job.total, per_zoom.iter().sum::<u64>());
        let tiles: Vec<_> = job.tiles().collect();
        assert_eq!(tiles.len() as u64, job.total);
        assert!(tiles.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn bad_input_names_the_field() {
        let bad = |params: JobParams| Job::new(params, DEFAULT_MAX_TILES).unwrap_err();
        assert_eq!(bad(raster([-181.0, 0.0, 10.0, 10.0], (1, 2))).field, "bbox");
        assert_eq!(bad(raster([0.0, -91.0, 10.0, 10.0], (1, 2))).field, "bbox");
        assert_eq!(bad(raster([0.0, 10.0, 10.0, 10.0], (1, 2))).field, "bbox");
        assert_eq!(bad(raster([0.0, 20.0, 10.0, 10.0], (1, 2))).field, "bbox");
        assert_eq!(bad(raster([0.0, f64::NAN, 10.0, 10.0], (1, 2))).field, "bbox");
        assert_eq!(bad(raster([0.0, 0.0, 10.0, 10.0], (3, 2))).field, "zoom");
        assert_eq!(bad(raster([0.0, 0.0, 10.0, 10.0], (1, 21))).field, "zoom");
        let mut vector = raster([0.0, 0.0, 0.1, 0.1], (1, 18));
        vector.kind = Kind::Vector { layer: "base".into() };
        assert_eq!(bad(vector.clone()).field, "zoom");
        vector.zoom = (1, 17);
        assert!(Job::new(vector, DEFAULT_MAX_TILES).is_ok());
        let mut p = raster([0.0, 0.0, 10.0, 10.0], (1, 2));
        p.kind = Kind::Raster { resource: "roads".into(), format: "png".into() };
        assert_eq!(bad(p).field, "resource");
        let mut p = raster([0.0, 0.0, 10.0, 10.0], (1, 2));
        p.kind = Kind::Raster { resource: "flow".into(), format: "png".into() };
        let e = bad(p);
        assert_eq!(e.field, "resource");
        assert!(e.message.contains("traffic"), "{}", e.message);
        let mut p = raster([0.0, 0.0, 10.0, 10.0], (1, 2));
        p.params.insert("style".into(), "neon".into());
        assert_eq!(bad(p).field, "style");
        let mut p = raster([0.0, 0.0, 10.0, 10.0], (1, 2));
        p.params.insert("colour".into(), "red".into());
        assert_eq!(bad(p).field, "params");
        let mut p = raster([0.0, 0.0, 10.0, 10.0], (1, 2));
        p.index = "no spaces".into();
        assert_eq!(bad(p).field, "index");
        let e = Job::new(raster([-180.0, -85.0, 180.0, 85.0], (0, 12)), 1000).unwrap_err();
        assert!(e.message.contains("--max-tiles"), "{e}");
    }

    #[test]
    fn a_geojson_job_seeds_the_cover_not_the_bbox() {
        let text = include_str!("../../tests/fixtures/south-africa.geojson");
        let shape = Shape::from_geojson(serde_json::from_str(text).unwrap()).unwrap();
        let mut p = raster(shape.bounds(), (5, 9));
        p.shape = Some(shape.clone());
        let job = Job::new(p.clone(), DEFAULT_MAX_TILES).unwrap();
        let cover = TileSet::cover(&shape, (5, 9), MAX_AREA_ROWS).unwrap();
        assert_eq!(job.total, cover.len());
        assert_eq!(job.tiles().collect::<Vec<_>>(), cover.tiles().collect::<Vec<_>>());
        let bbox_job = Job::new(raster(shape.bounds(), (5, 9)), DEFAULT_MAX_TILES).unwrap();
        assert!(job.total * 3 < bbox_job.total, "{} of the bbox's {}", job.total, bbox_job.total);
        assert_eq!(job.per_zoom().iter().map(|(_, n)| n).sum::<u64>(), job.total);
        assert_eq!(job.per_zoom()[0].0, 5);
        assert_ne!(job.hash(), bbox_job.hash(), "the area names the job");
        assert_eq!(job.hash(), Job::new(p.clone(), DEFAULT_MAX_TILES).unwrap().hash());
        let e = Job::new(p, 10).unwrap_err();
        assert_eq!(e.field, "geojson");
        assert!(e.message.contains("--max-tiles"), "{e}");
    }

    #[test]
    fn cli_spellings_parse() {
        assert_eq!(parse_zoom("12"), Ok((12, 12)));
        assert_eq!(parse_zoom("10-14"), Ok((10, 14)));
        assert!(parse_zoom("ten").is_err());
        assert_eq!(parse_bbox("1,2,3,4"), Ok([1.0, 2.0, 3.0, 4.0]));
        assert!(parse_bbox("1,2,3").is_err());
        assert!(parse_bbox("1,2,x,4").is_err());
    }

    #[test]
    fn urls_are_what_the_proxy_parses_and_the_hash_names_the_parameters() {
        let mut p = raster([0.0, 0.0, 10.0, 10.0], (1, 2));
        p.params.insert("style".into(), "lite.day".into());
        p.params.insert("features".into(), "pois:all".into());
        let job = Job::new(p.clone(), DEFAULT_MAX_TILES).unwrap();
        let url = job.url(5, 16, 15);
        assert_eq!(url, "/v3/base/mc/5/16/15/png?features=pois%3Aall&style=lite.day&indice=test");
        let (path, query) = url.split_once('?').unwrap();
        let tile = routes::parse(path, query, ParseOptions::default()).unwrap().unwrap();
        assert_eq!((tile.z, tile.x, tile.y, tile.index.as_str()), (5, 16, 15, "test"));
        let same = Job::new(p.clone(), DEFAULT_MAX_TILES).unwrap();
        assert_eq!(job.hash(), same.hash());
        p.zoom = (1, 3);
        assert_ne!(job.hash(), Job::new(p, DEFAULT_MAX_TILES).unwrap().hash());
    }
}

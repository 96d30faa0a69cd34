//! Purges: a Varnish-style ban list checked on every cache hit.
//!
//! A purge is a [`Rule`] with its creation time `at_ms`: a cached entry stored strictly before a
//! matching rule is treated as missing (and refetched), so nothing is deleted from the cache
//! tiers. A rule names tiles by criteria, all of which must hold: an `index`, a `zoom` range, a
//! `bbox` (WGS84 degrees, matched against the tiles' Web-Mercator bounds), a set of `tiles`
//! (the cover of a GeoJSON area or a `z/x/y` tile list, kept as runs of columns per row: one
//! binary search per check) and/or the exact cache `key` of one tile. Rules are shared between pods by the caller (as JSON, see
//! [`Rule`]'s serde form); this module only holds the active set ([`PurgeRules`]).
//!
//! A rule can only match entries younger than the longest entry life, so rules older than that
//! are dropped ([`Rule::live`], [`PurgeRules::expire`]).
//!
//! The hot path ([`PurgeRules::is_purged`]) costs one atomic load when the entry is newer than
//! every rule, which is nearly always; otherwise it walks, under a read lock, only the rules
//! newer than the entry, with bounding boxes pre-projected to Mercator and `key` rules found by
//! hash. Nothing is allocated per check.
//!
//! [`surrogate_keys`] and [`block_keys_for_bbox`] name the same sets for a CDN in front of the
//! proxy (Fastly `Surrogate-Key`, Cloudflare `Cache-Tag`).

use crate::base::hashing::Fnv;
use crate::base::names::{is_index_byte, is_valid_index};
use crate::domain::geo::{self, lon_to_u, span, Shape};
use crate::domain::tileset::TileSet;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Highest zoom a purge may name.
pub const MAX_ZOOM: u8 = 22;

pub use crate::base::names::MAX_INDEX_LEN;

/// One purge rule, as shared between pods (JSON in Redis) and shown by the admin API.
///
/// Every criterion that is `Some` must match; a rule without any (`index`, `zoom`, `bbox`,
/// `key`) is invalid ([`Rule::validate`]) and never added to a [`PurgeRules`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// Unique id, made by the caller (e.g. hex of `at_ms` and random bits).
    pub id: String,
    /// Unix ms when the rule was made: entries stored strictly before it are purged.
    pub at_ms: u64,
    /// Only requests of this index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Only tiles of zooms `zmin..=zmax`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<[u8; 2]>,
    /// Only tiles whose bounds intersect `[west, south, east, north]` (degrees, WGS84; `west >
    /// east` crosses the antimeridian). Tiles merely touching it are not matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// Only these tiles (a GeoJSON area's cover or a tile list), as `[z, y, x0, x1]` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<TileSet>,
    /// Only the tile stored under this exact cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The URL the operator gave, for display only (never used for matching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The body of `POST /admin/purge`. Unknown fields are rejected.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Purge only this index's requests.
    pub index: Option<String>,
    /// Purge one tile, named by a proxy URL (the caller turns it into a cache key).
    pub url: Option<String>,
    /// `[west, south, east, north]` in degrees.
    pub bbox: Option<Vec<f64>>,
    /// `[zmin, zmax]`, inclusive.
    pub zoom: Option<Vec<u8>>,
    /// A GeoJSON `Polygon`, `MultiPolygon`, `Feature` or `FeatureCollection` (WGS84): the tiles
    /// of `zoom` it covers. Needs `zoom`.
    pub geojson: Option<serde_json::Value>,
    /// A tile list: `z/x/y` lines, at most [`MAX_LIST_TILES`].
    pub tiles: Option<String>,
}

/// Most tiles one tile list may name.
pub const MAX_LIST_TILES: usize = 100_000;

/// Most tile rows (a bound on the runs) a GeoJSON purge may cover, over all its zooms: a
/// country at zooms 0-16, not the world at 20.
pub const MAX_AREA_ROWS: u64 = 250_000;

/// Why a purge request or a rule is invalid. Messages name the field, for a 400 body.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("purge needs at least one of index, url, bbox, geojson, tiles, zoom")]
    Empty,
    #[error("only one of bbox, geojson and tiles names the area")]
    TwoAreas,
    #[error("geojson needs zoom: [zmin, zmax]")]
    GeojsonWithoutZoom,
    #[error("a tile list names its zooms: leave zoom out")]
    TilesWithZoom,
    #[error("{0}")]
    Geojson(String),
    #[error("tiles: {0}")]
    Tiles(String),
    #[error("rule id must not be empty")]
    EmptyId,
    #[error("url cannot be combined with bbox, geojson, tiles or zoom (a url names one tile already)")]
    UrlWithArea,
    #[error("url was given but no cache key was derived from it")]
    UrlWithoutKey,
    #[error("index must be 1-{MAX_INDEX_LEN} characters of A-Z a-z 0-9 _ . -")]
    Index,
    #[error("bbox must be [west, south, east, north] (got {0} numbers)")]
    BboxLength(usize),
    #[error("bbox values must be finite numbers")]
    BboxNotFinite,
    #[error("bbox longitude {0} out of range [-180, 180]")]
    BboxLongitude(f64),
    #[error("bbox latitude {0} out of range [-90, 90]")]
    BboxLatitude(f64),
    #[error("bbox south ({south}) must not be greater than north ({north})")]
    BboxSouthNorth { south: f64, north: f64 },
    #[error("zoom must be [zmin, zmax] (got {0} values)")]
    ZoomLength(usize),
    #[error("zoom min ({zmin}) must not be greater than zoom max ({zmax})")]
    ZoomOrder { zmin: u8, zmax: u8 },
    #[error("zoom {0} above the maximum {MAX_ZOOM}")]
    ZoomTooHigh(u8),
}

impl PurgeRequest {
    /// Validates the request and makes the rule `id`, made at `at_ms`.
    ///
    /// `url` itself is not checked here: the caller parses it into a cache key (and takes the
    /// index from it) and passes `key`, which is required when `url` is given. Errors: no
    /// criterion, `url` with `bbox`/`zoom`, a bad index (1-128 of `A-Z a-z 0-9 _ . -`), a bbox
    /// that is not 4 finite numbers with longitudes in [-180, 180], latitudes in [-90, 90] and
    /// south <= north, a zoom that is not `[zmin, zmax]` with `zmin <= zmax <=` [`MAX_ZOOM`].
    pub fn into_rule(self, id: String, at_ms: u64, key: Option<String>) -> Result<Rule, RuleError> {
        let areas = [self.bbox.is_some(), self.geojson.is_some(), self.tiles.is_some()].iter().filter(|a| **a).count();
        if self.index.is_none() && self.url.is_none() && areas == 0 && self.zoom.is_none() && key.is_none() {
            return Err(RuleError::Empty);
        }
        if self.url.is_some() && (areas > 0 || self.zoom.is_some()) {
            return Err(RuleError::UrlWithArea);
        }
        if self.url.is_some() && key.is_none() {
            return Err(RuleError::UrlWithoutKey);
        }
        if areas > 1 {
            return Err(RuleError::TwoAreas);
        }
        let bbox =
            self.bbox.map(|b| <[f64; 4]>::try_from(b).map_err(|b| RuleError::BboxLength(b.len()))).transpose()?;
        let mut zoom =
            self.zoom.map(|z| <[u8; 2]>::try_from(z).map_err(|z| RuleError::ZoomLength(z.len()))).transpose()?;
        if let Some(z) = zoom {
            validate_zoom(z)?;
        }
        if let Some(index) = &self.index {
            validate_index(index)?;
        }
        let tiles = match (self.geojson, self.tiles) {
            (Some(geojson), _) => {
                let [zmin, zmax] = zoom.ok_or(RuleError::GeojsonWithoutZoom)?;
                let shape = Shape::from_geojson(geojson).map_err(|e| RuleError::Geojson(e.to_string()))?;
                let set = TileSet::cover(&shape, (zmin, zmax), MAX_AREA_ROWS)
                    .map_err(|e| RuleError::Geojson(format!("geojson: {e}")))?;
                Some(set)
            }
            (None, Some(list)) => {
                if zoom.is_some() {
                    return Err(RuleError::TilesWithZoom);
                }
                let set = TileSet::parse_list(&list, MAX_LIST_TILES).map_err(|e| RuleError::Tiles(e.0))?;
                zoom = set.zooms().map(|(a, b)| [a, b]);
                Some(set)
            }
            (None, None) => None,
        };
        let rule = Rule { id, at_ms, index: self.index, zoom, bbox, tiles, key, url: self.url };
        rule.validate()?;
        Ok(rule)
    }
}

impl Rule {
    /// Checks what [`PurgeRequest::into_rule`] checks, for rules read from a shared store or a
    /// file: a non-empty id, at least one criterion, and valid index, bbox and zoom.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.id.is_empty() {
            return Err(RuleError::EmptyId);
        }
        if self.index.is_none()
            && self.zoom.is_none()
            && self.bbox.is_none()
            && self.tiles.is_none()
            && self.key.is_none()
        {
            return Err(RuleError::Empty);
        }
        if self.bbox.is_some() && self.tiles.is_some() {
            return Err(RuleError::TwoAreas);
        }
        if let Some(index) = &self.index {
            validate_index(index)?;
        }
        if let Some(bbox) = self.bbox {
            validate_bbox(bbox)?;
        }
        if let Some(zoom) = self.zoom {
            validate_zoom(zoom)?;
        }
        Ok(())
    }

    /// True when the rule applies to a request of `index` for tile `z/x/y` whose cache key is
    /// `key`, ignoring time. Projects the bbox on each call; [`PurgeRules`] keeps it projected.
    pub fn matches(&self, index: &str, z: u8, x: u32, y: u32, key: &str) -> bool {
        self.matches_with(self.bbox.map(Area::new).as_ref(), index, z, x, y, key)
    }

    /// True when the rule may still match a live entry at `now_ms`, entries living at most
    /// `max_life_ms`: `at_ms + max_life_ms > now_ms`.
    pub fn live(&self, now_ms: u64, max_life_ms: u64) -> bool {
        self.at_ms.saturating_add(max_life_ms) > now_ms
    }

    /// [`Rule::matches`] with the bbox already projected (`area`), cheapest criteria first.
    fn matches_with(&self, area: Option<&Area>, index: &str, z: u8, x: u32, y: u32, key: &str) -> bool {
        if let Some([zmin, zmax]) = self.zoom {
            if z < zmin || z > zmax {
                return false;
            }
        }
        if self.index.as_deref().is_some_and(|i| i != index) || self.key.as_deref().is_some_and(|k| k != key) {
            return false;
        }
        area.is_none_or(|a| a.intersects(z, x, y)) && self.tiles.as_ref().is_none_or(|t| t.contains(z, x, y))
    }
}

fn validate_index(index: &str) -> Result<(), RuleError> {
    if !is_valid_index(index) {
        return Err(RuleError::Index);
    }
    Ok(())
}

fn validate_bbox(bbox: [f64; 4]) -> Result<(), RuleError> {
    let [west, south, east, north] = bbox;
    if !bbox.iter().all(|v| v.is_finite()) {
        return Err(RuleError::BboxNotFinite);
    }
    if let Some(&lon) = [west, east].iter().find(|lon| !(-180.0..=180.0).contains(*lon)) {
        return Err(RuleError::BboxLongitude(lon));
    }
    if let Some(&lat) = [south, north].iter().find(|lat| !(-90.0..=90.0).contains(*lat)) {
        return Err(RuleError::BboxLatitude(lat));
    }
    if south > north {
        return Err(RuleError::BboxSouthNorth { south, north });
    }
    Ok(())
}

fn validate_zoom([zmin, zmax]: [u8; 2]) -> Result<(), RuleError> {
    if zmin > zmax {
        return Err(RuleError::ZoomOrder { zmin, zmax });
    }
    if zmax > MAX_ZOOM {
        return Err(RuleError::ZoomTooHigh(zmax));
    }
    Ok(())
}

/// Inset keeping clamped latitudes inside the first/last tile row at every zoom up to
/// [`MAX_ZOOM`] (a row there is 2^-22 high), so a bbox beyond ±85.0511° still matches that row.
const POLE_INSET: f64 = 1.0 / (1u64 << 40) as f64;

/// A bbox in normalised Web-Mercator units: `u` 0..1 west to east, `v` 0..1 north to south,
/// where tile `z/x/y` covers `u` in `[x, x+1] / 2^z` and `v` in `[y, y+1] / 2^z`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Area {
    /// West edge.
    u0: f64,
    /// East edge; less than `u0` when crossing the antimeridian.
    u1: f64,
    /// North edge.
    v0: f64,
    /// South edge.
    v1: f64,
}

impl Area {
    fn new([west, south, east, north]: [f64; 4]) -> Area {
        Area { u0: lon_to_u(west), u1: lon_to_u(east), v0: lat_to_v(north), v1: lat_to_v(south) }
    }

    fn crosses_antimeridian(&self) -> bool {
        self.u0 > self.u1
    }

    /// True when tile `z/x/y` and the area overlap (sharing only an edge is not overlapping).
    fn intersects(&self, z: u8, x: u32, y: u32) -> bool {
        let scale = geo::tile_side(z);
        let (tu0, tu1) = (f64::from(x) * scale, (f64::from(x) + 1.0) * scale);
        let (tv0, tv1) = (f64::from(y) * scale, (f64::from(y) + 1.0) * scale);
        if !(tv0 < self.v1 && self.v0 < tv1) {
            return false;
        }
        if self.crosses_antimeridian() {
            (tu0 < 1.0 && self.u0 < tu1) || (tu0 < self.u1 && 0.0 < tu1)
        } else {
            tu0 < self.u1 && self.u0 < tu1
        }
    }
}

/// [`geo::lat_to_v`] kept off the poles' exact edges.
fn lat_to_v(lat: f64) -> f64 {
    geo::lat_to_v(lat).clamp(POLE_INSET, 1.0 - POLE_INSET)
}

/// A rule with its bbox projected once, and turned into tile ranges for every zoom.
#[derive(Debug)]
struct Compiled {
    rule: Rule,
    area: Option<Area>,
    /// Per zoom 0..=[`MAX_ZOOM`]: the tile columns (two ranges across the antimeridian) and
    /// rows the bbox overlaps, so the hot path compares integers instead of projecting.
    spans: Option<Box<[TileSpans]>>,
}

/// The tiles of one zoom a bbox overlaps (as [`Area::intersects`] decides, exactly).
#[derive(Debug, Clone, Copy)]
struct TileSpans {
    xs: [Span; 2],
    ys: Span,
}

impl TileSpans {
    fn of(area: &Area, z: u8) -> TileSpans {
        let n = 2f64.powi(i32::from(z));
        let xs = if area.crosses_antimeridian() {
            [span(area.u0, 1.0, n), span(0.0, area.u1, n)]
        } else {
            [span(area.u0, area.u1, n), None]
        };
        TileSpans { xs, ys: span(area.v0, area.v1, n) }
    }

    fn contains(&self, x: u32, y: u32) -> bool {
        let within = |s: Span, t: u32| s.is_some_and(|(first, last)| first <= t && t <= last);
        within(self.ys, y) && (within(self.xs[0], x) || within(self.xs[1], x))
    }
}

impl Compiled {
    fn new(rule: Rule) -> Compiled {
        let area = rule.bbox.map(Area::new);
        let spans = area.map(|a| (0..=MAX_ZOOM).map(|z| TileSpans::of(&a, z)).collect());
        Compiled { rule, area, spans }
    }

    fn matches(&self, index: &str, z: u8, x: u32, y: u32, key: &str) -> bool {
        match self.spans.as_ref().and_then(|s| s.get(usize::from(z))) {
            // The bbox by integer ranges; the other criteria as the rule itself checks them.
            Some(spans) => spans.contains(x, y) && self.rule.matches_with(None, index, z, x, y, key),
            None => self.rule.matches_with(self.area.as_ref(), index, z, x, y, key),
        }
    }
}

/// The rules, indexed for the hot path so a hit looks only at rules that can concern it. Every
/// list is sorted oldest first.
#[derive(Debug, Default)]
struct Inner {
    /// Rules with neither `key` nor `index` (zoom and/or bbox for every index).
    general: Vec<Compiled>,
    /// Which tiles some `general` rule can match, coarsely: a hit outside it skips the list.
    general_cells: Cells,
    /// Rules with an `index` and no `key`, by that index.
    by_index: HashMap<String, Vec<Compiled>, Fnv>,
    /// Rules with a `key`, by that key.
    by_key: HashMap<String, Vec<Compiled>, Fnv>,
    /// Ids of all rules, for duplicates.
    ids: HashSet<String>,
}

/// Cells per side of the [`Cells`] grid (a power of two, at most 64: one `u64` a row).
const GRID: u64 = 64;
const GRID_BITS: u32 = GRID.trailing_zeros();

/// A coarse map, per zoom, of where rules can match: each zoom's tiles are grouped into a
/// 64 x 64 grid of cells, and a cell is set when a rule covers any of its tiles. A request whose
/// cell is clear cannot match any of the rules: one bit test instead of a walk.
#[derive(Debug, Clone)]
struct Cells {
    rows: Box<[[u64; GRID as usize]]>,
}

impl Default for Cells {
    fn default() -> Cells {
        Cells { rows: vec![[0u64; GRID as usize]; usize::from(MAX_ZOOM) + 1].into_boxed_slice() }
    }
}

impl Cells {
    /// The cell of tile `x` (or `y`) at zoom `z`.
    fn cell(z: u8, t: u32) -> u64 {
        (u64::from(t) << GRID_BITS) >> z
    }

    /// The cells tiles `first..=last` of zoom `z` cover (below zoom 6 a tile spans several).
    fn cells(z: u8, (first, last): (u32, u32)) -> (u64, u64) {
        let end = (((u64::from(last) + 1) << GRID_BITS) - 1) >> z;
        (Self::cell(z, first), end.min(GRID - 1))
    }

    fn mark(&mut self, c: &Compiled) {
        if let Some(tiles) = &c.rule.tiles {
            let zoom = c.rule.zoom.unwrap_or([0, MAX_ZOOM]);
            for r in tiles.runs().iter().filter(|r| zoom[0] <= r.z && r.z <= zoom[1]) {
                self.mark_block(r.z, (r.y, r.y), (r.x0, r.x1));
            }
            return;
        }
        let [zmin, zmax] = c.rule.zoom.unwrap_or([0, MAX_ZOOM]);
        for z in zmin..=zmax.min(MAX_ZOOM) {
            let n = 1u32 << z;
            let (xs, ys) = match c.spans.as_ref().map(|s| s[usize::from(z)]) {
                Some(s) => (s.xs, s.ys),
                None => ([Some((0, n - 1)), None], Some((0, n - 1))),
            };
            let Some(ys) = ys else { continue };
            for x in xs.into_iter().flatten() {
                self.mark_block(z, ys, x);
            }
        }
    }

    /// Marks the cells of tiles `xs` x `ys` (inclusive ranges) of zoom `z`.
    fn mark_block(&mut self, z: u8, ys: (u32, u32), xs: (u32, u32)) {
        let Some(rows) = self.rows.get_mut(usize::from(z)) else { return };
        let (r0, r1) = Self::cells(z, ys);
        let (c0, c1) = Self::cells(z, xs);
        let bits = (u64::MAX >> (GRID - 1 - (c1 - c0))) << c0;
        for row in &mut rows[r0 as usize..=r1 as usize] {
            *row |= bits;
        }
    }

    /// False when no marked rule can match tile `z/x/y`.
    fn may_match(&self, z: u8, x: u32, y: u32) -> bool {
        match self.rows.get(usize::from(z)) {
            Some(rows) => rows[Self::cell(z, y) as usize] >> Self::cell(z, x) & 1 == 1,
            None => true,
        }
    }

    fn of(list: &[Compiled]) -> Cells {
        let mut cells = Cells::default();
        list.iter().for_each(|c| cells.mark(c));
        cells
    }
}

impl Inner {
    /// Adds a valid, live rule not already present; returns true if added.
    fn insert(&mut self, rule: Rule, now_ms: u64, max_life_ms: u64) -> bool {
        if !rule.live(now_ms, max_life_ms) || self.ids.contains(&rule.id) {
            return false;
        }
        if let Err(error) = rule.validate() {
            tracing::warn!(id = %rule.id, %error, "ignoring invalid purge rule");
            return false;
        }
        self.ids.insert(rule.id.clone());
        let list = match (&rule.key, &rule.index) {
            (Some(key), _) => self.by_key.entry(key.clone()).or_default(),
            (None, Some(index)) => self.by_index.entry(index.clone()).or_default(),
            (None, None) => &mut self.general,
        };
        let at = rule.at_ms;
        let pos = list.partition_point(|c| c.rule.at_ms <= at);
        let general = rule.key.is_none() && rule.index.is_none();
        list.insert(pos, Compiled::new(rule));
        if general {
            self.general_cells.mark(&self.general[pos]);
        }
        true
    }

    /// Drops the rules no longer live.
    fn expire(&mut self, now_ms: u64, max_life_ms: u64) {
        let ids = &mut self.ids;
        let mut keep = |c: &Compiled| {
            let live = c.rule.live(now_ms, max_life_ms);
            if !live {
                ids.remove(&c.rule.id);
            }
            live
        };
        self.general.retain(&mut keep);
        self.general_cells = Cells::of(&self.general);
        for map in [&mut self.by_index, &mut self.by_key] {
            map.retain(|_, list| {
                list.retain(&mut keep);
                !list.is_empty()
            });
        }
    }

    /// The newest rule's `at_ms`, 0 without rules.
    fn newest(&self) -> u64 {
        let last = |list: &Vec<Compiled>| list.last().map_or(0, |c| c.rule.at_ms);
        self.by_index.values().chain(self.by_key.values()).map(last).fold(last(&self.general), u64::max)
    }

    /// True when a rule of `list` newer than `stored_at_ms` matches.
    fn any_newer_matches(list: &[Compiled], index: &str, z: u8, x: u32, y: u32, key: &str, stored_at_ms: u64) -> bool {
        list.iter().rev().take_while(|c| c.rule.at_ms > stored_at_ms).any(|c| c.matches(index, z, x, y, key))
    }
}

/// The active rules, shared by all workers.
///
/// Holds only valid rules live at the time they were added (see [`Rule::live`]); callers run
/// [`PurgeRules::expire`] now and then to drop the ones that aged out since.
#[derive(Debug)]
pub struct PurgeRules {
    inner: RwLock<Inner>,
    /// The newest rule's `at_ms` (0 without rules): entries stored at or after it are never
    /// purged, which the hot path checks without taking the lock.
    newest_at_ms: AtomicU64,
    max_life_ms: u64,
}

impl PurgeRules {
    /// An empty set for entries that live at most `max_life` (rules older than that are dropped).
    pub fn new(max_life: Duration) -> Self {
        let max_life_ms = u64::try_from(max_life.as_millis()).unwrap_or(u64::MAX);
        PurgeRules { inner: RwLock::new(Inner::default()), newest_at_ms: AtomicU64::new(0), max_life_ms }
    }

    /// The longest an entry lives: rules older than this are dropped.
    pub fn max_life_ms(&self) -> u64 {
        self.max_life_ms
    }

    /// Adds `rule`, unless one with its id is present, it is no longer live at `now_ms`, or it
    /// is invalid (logged). Returns true if added.
    pub fn add(&self, rule: Rule, now_ms: u64) -> bool {
        let at = rule.at_ms;
        let mut inner = self.write();
        let added = inner.insert(rule, now_ms, self.max_life_ms);
        if added {
            self.newest_at_ms.fetch_max(at, Ordering::Release);
        }
        added
    }

    /// Replaces the whole set with the live, valid `rules` (e.g. after loading the shared store
    /// on (re)connect).
    pub fn replace(&self, rules: Vec<Rule>, now_ms: u64) {
        let mut fresh = Inner::default();
        for rule in rules {
            fresh.insert(rule, now_ms, self.max_life_ms);
        }
        let mut inner = self.write();
        *inner = fresh;
        self.newest_at_ms.store(inner.newest(), Ordering::Release);
    }

    /// Adds the live, valid `rules` not present yet (e.g. when the shared store is read again).
    pub fn merge(&self, rules: Vec<Rule>, now_ms: u64) {
        self.merge_counted(rules, now_ms);
    }

    /// [`PurgeRules::merge`], returning how many rules were added.
    /// [`PurgeRules::merge`], and how many rules it added.
    pub fn merge_counted(&self, rules: Vec<Rule>, now_ms: u64) -> usize {
        let mut inner = self.write();
        let added = rules.into_iter().filter(|r| inner.insert(r.clone(), now_ms, self.max_life_ms)).count();
        self.newest_at_ms.store(inner.newest(), Ordering::Release);
        added
    }

    /// Drops the rules no longer live at `now_ms`.
    pub fn expire(&self, now_ms: u64) {
        let mut inner = self.write();
        inner.expire(now_ms, self.max_life_ms);
        self.newest_at_ms.store(inner.newest(), Ordering::Release);
    }

    /// The active rules, oldest first (ties by id).
    pub fn list(&self) -> Vec<Rule> {
        let inner = self.read();
        let mut rules: Vec<Rule> = inner
            .general
            .iter()
            .chain(inner.by_index.values().flatten())
            .chain(inner.by_key.values().flatten())
            .map(|c| c.rule.clone())
            .collect();
        rules.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.id.cmp(&b.id)));
        rules
    }

    /// How many rules are active.
    pub fn len(&self) -> usize {
        self.read().ids.len()
    }

    /// True without active rules.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hot path: is the entry for tile `z/x/y` under `key`, stored at `stored_at_ms`,
    /// purged for a request of `index`?
    ///
    /// One atomic load when the entry is at least as new as every rule (or there are none);
    /// otherwise walks, under the read lock, the rules newer than the entry.
    pub fn is_purged(&self, index: &str, z: u8, x: u32, y: u32, key: &str, stored_at_ms: u64) -> bool {
        if stored_at_ms >= self.newest_at_ms.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.read();
        let newer = |list: &Vec<Compiled>| Inner::any_newer_matches(list, index, z, x, y, key, stored_at_ms);
        // Only the lists that can concern this request; an empty map is not even hashed into.
        (inner.general_cells.may_match(z, x, y) && newer(&inner.general))
            || (!inner.by_index.is_empty() && inner.by_index.get(index).is_some_and(newer))
            || (!inner.by_key.is_empty() && inner.by_key.get(key).is_some_and(newer))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Surrogate keys for a tile, for a CDN in front of the proxy: `tp-i-<index>`, `tp-z<z>` and
/// `tp-b<z>-<x/16>-<y/16>` (the 16x16 block of tiles holding it, so a bbox purge maps to a
/// bounded number of keys, see [`block_keys_for_bbox`]). Bytes of `index` outside
/// `A-Z a-z 0-9 _ . -` become `_`. The caller joins them (space for Fastly, comma for Cloudflare).
pub fn surrogate_keys(index: &str, z: u8, x: u32, y: u32) -> Vec<String> {
    let index: String = index.bytes().map(|b| if is_index_byte(b) { char::from(b) } else { '_' }).collect();
    vec![format!("tp-i-{index}"), format!("tp-z{z}"), block_key(z, x >> 4, y >> 4)]
}

fn block_key(z: u8, bx: u32, by: u32) -> String {
    format!("tp-b{z}-{bx}-{by}")
}

/// The block keys (as in [`surrogate_keys`]) of every tile of zooms `zmin..=zmax` that a rule
/// with `bbox` matches, ordered by zoom, then x, then y; `None` when there are more than `limit`.
///
/// `bbox` is expected valid (as [`PurgeRequest::into_rule`] checks); a non-finite one yields no
/// keys. Zooms above [`MAX_ZOOM`] are ignored.
pub fn block_keys_for_bbox(bbox: [f64; 4], zmin: u8, zmax: u8, limit: usize) -> Option<Vec<String>> {
    if !bbox.iter().all(|v| v.is_finite()) {
        return Some(Vec::new());
    }
    let area = Area::new(bbox);
    let zooms = zmin..=zmax.min(MAX_ZOOM);
    let mut total = 0usize;
    for z in zooms.clone() {
        let (xs, ys) = block_spans(&area, z);
        let columns: usize = xs.iter().flatten().map(|&(x0, x1)| span_len(x0, x1)).sum();
        total = total.saturating_add(columns.saturating_mul(ys.map_or(0, |(y0, y1)| span_len(y0, y1))));
        if total > limit {
            return None;
        }
    }
    let mut keys = Vec::with_capacity(total);
    for z in zooms {
        if let (xs, Some((y0, y1))) = block_spans(&area, z) {
            for bx in xs.iter().flatten().flat_map(|&(x0, x1)| x0..=x1) {
                keys.extend((y0..=y1).map(|by| block_key(z, bx, by)));
            }
        }
    }
    Some(keys)
}

/// An inclusive range of tile or block numbers; `None` when empty.
type Span = Option<(u32, u32)>;

fn span_len(first: u32, last: u32) -> usize {
    (last - first) as usize + 1
}

/// The 16x16 blocks of zoom `z` holding tiles that `area` intersects: up to two disjoint x
/// ranges (two when crossing the antimeridian), west first, and one y range, inclusive; `None`
/// where empty.
fn block_spans(area: &Area, z: u8) -> ([Span; 2], Span) {
    let n = 2f64.powi(i32::from(z));
    let to_blocks = |(first, last): (u32, u32)| (first >> 4, last >> 4);
    let ys = span(area.v0, area.v1, n).map(to_blocks);
    if !area.crosses_antimeridian() {
        return ([span(area.u0, area.u1, n).map(to_blocks), None], ys);
    }
    let xs = match (span(0.0, area.u1, n).map(to_blocks), span(area.u0, 1.0, n).map(to_blocks)) {
        (Some((w0, w1)), Some((e0, e1))) if w1 >= e0 => [Some((w0, e1.max(w1))), None],
        (west, east) => [west, east],
    };
    (xs, ys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERLIN: [f64; 4] = [13.09, 52.34, 13.76, 52.68];

    #[test]
    fn the_grid_skips_the_walk_far_from_every_rule() {
        let berlin = Compiled::new(Rule { bbox: Some(BERLIN), zoom: Some([10, 14]), ..rule("b", 1) });
        let cells = Cells::of(std::slice::from_ref(&berlin));
        assert!(cells.may_match(12, 2200, 1343), "Berlin");
        assert!(!cells.may_match(12, 2074, 1409), "Paris is in another cell");
        assert!(!cells.may_match(9, 275, 167), "outside the zoom range");
        let zoom_only = Compiled::new(Rule { zoom: Some([3, 3]), ..rule("z", 1) });
        let cells = Cells::of(std::slice::from_ref(&zoom_only));
        assert!((0..8).all(|x| (0..8).all(|y| cells.may_match(3, x, y))), "every tile of zoom 3");
        assert!(!cells.may_match(4, 0, 0));
        assert!(Cells::default().may_match(23, 0, 0), "beyond the grid's zooms: walk");
    }

    #[test]
    fn the_tile_ranges_decide_exactly_as_the_projected_bbox() {
        let boxes = [
            BERLIN,
            [170.0, -10.0, -170.0, 10.0],
            [-180.0, -90.0, 180.0, 90.0],
            [0.0, 0.0, 22.5, 21.94],
            [100.0, -50.0, 101.0, -49.0],
        ];
        for bbox in boxes {
            let c = Compiled::new(Rule { bbox: Some(bbox), ..rule("b", 1) });
            let cells = Cells::of(std::slice::from_ref(&c));
            let area = Area::new(bbox);
            for z in [0u8, 1, 3, 4, 7, 12, 18, 22] {
                let n = 1u64 << z;
                // Every tile at low zooms; at high ones, around the bbox's edges and corners.
                let mut xs: Vec<u64> = if n <= 256 { (0..n).collect() } else { Vec::new() };
                let mut ys = xs.clone();
                for (u, v) in [(area.u0, area.v0), (area.u1, area.v1)] {
                    for d in [-2i64, -1, 0, 1, 2] {
                        let clamp = |t: f64| ((t * n as f64).floor() as i64 + d).clamp(0, n as i64 - 1) as u64;
                        xs.push(clamp(u));
                        ys.push(clamp(v));
                    }
                }
                for &x in &xs {
                    for &y in &ys {
                        let (x, y) = (x as u32, y as u32);
                        let hit = c.matches("i", z, x, y, "k");
                        assert_eq!(hit, area.intersects(z, x, y), "{bbox:?} z{z} {x}/{y}");
                        assert!(!hit || cells.may_match(z, x, y), "the grid rejects a match: {bbox:?} z{z} {x}/{y}");
                    }
                }
            }
        }
    }

    fn rule(id: &str, at_ms: u64) -> Rule {
        Rule { id: id.to_string(), at_ms, index: None, zoom: None, bbox: None, tiles: None, key: None, url: None }
    }

    fn bbox_rule(bbox: [f64; 4]) -> Rule {
        Rule { bbox: Some(bbox), ..rule("b", 1) }
    }

    fn req(index: Option<&str>, url: Option<&str>, bbox: Option<Vec<f64>>, zoom: Option<Vec<u8>>) -> PurgeRequest {
        PurgeRequest {
            index: index.map(str::to_string),
            url: url.map(str::to_string),
            bbox,
            zoom,
            ..Default::default()
        }
    }

    fn set() -> PurgeRules {
        PurgeRules::new(Duration::from_secs(100))
    }

    #[test]
    fn bbox_matches_the_tiles_it_covers() {
        let berlin = bbox_rule(BERLIN);
        assert!(berlin.matches("i", 12, 2200, 1343, "k"), "tile holding Berlin");
        assert!(!berlin.matches("i", 12, 2074, 1409, "k"), "tile holding Paris");
        assert!(berlin.matches("i", 0, 0, 0, "k"), "the world tile");
        assert!(!berlin.matches("i", 12, 2200, 1300, "k"), "same column, further north");
    }

    #[test]
    fn bbox_touching_a_tile_edge_does_not_match_it() {
        // z4 x=8 spans lon 0..22.5 and y=7 spans lat 0..~21.9 (y=8 starts at the equator).
        let east_of_it = bbox_rule([22.5, 5.0, 30.0, 10.0]);
        assert!(!east_of_it.matches("i", 4, 8, 7, "k"));
        assert!(east_of_it.matches("i", 4, 9, 7, "k"));
        let south_of_it = bbox_rule([5.0, -10.0, 10.0, 0.0]);
        assert!(!south_of_it.matches("i", 4, 8, 7, "k"));
        assert!(south_of_it.matches("i", 4, 8, 8, "k"));
    }

    #[test]
    fn bbox_across_the_antimeridian_matches_both_ends() {
        let r = bbox_rule([170.0, -10.0, -170.0, 10.0]);
        for y in [7, 8] {
            assert!(r.matches("i", 4, 0, y, "k"), "x=0 y={y}");
            assert!(r.matches("i", 4, 15, y, "k"), "x=15 y={y}");
            assert!(!r.matches("i", 4, 8, y, "k"), "x=8 y={y}");
            assert!(!r.matches("i", 4, 1, y, "k"), "x=1 y={y}");
        }
        assert!(!r.matches("i", 4, 0, 3, "k"), "far north");
    }

    #[test]
    fn bbox_beyond_mercator_latitudes_matches_the_edge_rows() {
        let north = bbox_rule([0.0, 86.0, 10.0, 89.0]);
        assert!(north.matches("i", 10, 512, 0, "k"));
        assert!(north.matches("i", MAX_ZOOM, 1 << 21, 0, "k"));
        assert!(!north.matches("i", 10, 512, 1, "k"));
        let south = bbox_rule([0.0, -90.0, 10.0, -86.0]);
        assert!(south.matches("i", 10, 512, 1023, "k"));
        assert!(!south.matches("i", 10, 512, 1022, "k"));
    }

    #[test]
    fn zoom_range_is_inclusive() {
        let r = Rule { zoom: Some([3, 5]), ..rule("z", 1) };
        let hits: Vec<u8> = (0..=8).filter(|&z| r.matches("i", z, 0, 0, "k")).collect();
        assert_eq!(hits, [3, 4, 5]);
    }

    #[test]
    fn index_and_key_rules_match_only_their_own() {
        let by_index = Rule { index: Some("a".into()), ..rule("i", 1) };
        assert!(by_index.matches("a", 3, 1, 2, "k1"));
        assert!(by_index.matches("a", 15, 100, 200, "k2"));
        assert!(!by_index.matches("b", 3, 1, 2, "k1"));
        let by_key = Rule { key: Some("k1".into()), ..rule("k", 1) };
        assert!(by_key.matches("a", 3, 1, 2, "k1"));
        assert!(by_key.matches("b", 3, 1, 2, "k1"));
        assert!(!by_key.matches("a", 3, 1, 2, "k2"));
    }

    #[test]
    fn every_criterion_must_match() {
        let r = Rule { index: Some("a".into()), zoom: Some([12, 12]), bbox: Some(BERLIN), ..rule("and", 1) };
        assert!(r.matches("a", 12, 2200, 1343, "k"));
        assert!(!r.matches("b", 12, 2200, 1343, "k"), "other index");
        assert!(!r.matches("a", 13, 4400, 2686, "k"), "other zoom, same place");
        assert!(!r.matches("a", 12, 2074, 1409, "k"), "other place");
        let with_key = Rule { key: Some("k".into()), ..r };
        assert!(with_key.matches("a", 12, 2200, 1343, "k"));
        assert!(!with_key.matches("a", 12, 2200, 1343, "other"));
    }

    #[test]
    fn only_entries_stored_before_the_rule_are_purged() {
        let rules = set();
        assert!(rules.add(Rule { index: Some("a".into()), ..rule("r", 1_000) }, 1_000));
        assert!(rules.is_purged("a", 1, 0, 0, "k", 999));
        assert!(!rules.is_purged("a", 1, 0, 0, "k", 1_000), "stored at the rule's time");
        assert!(!rules.is_purged("a", 1, 0, 0, "k", 1_001));
        assert!(!rules.is_purged("b", 1, 0, 0, "k", 999), "other index");
    }

    #[test]
    fn key_rules_are_found_by_key_among_others() {
        let rules = set();
        for i in 0..50u64 {
            rules.add(Rule { key: Some(format!("key{i}")), ..rule(&format!("k{i}"), 1_000 + i) }, 1_000);
        }
        rules.add(Rule { zoom: Some([20, 20]), ..rule("z", 2_000) }, 1_000);
        assert!(rules.is_purged("a", 1, 0, 0, "key7", 1_006));
        assert!(!rules.is_purged("a", 1, 0, 0, "key7", 1_007), "key7's rule is at 1007");
        assert!(!rules.is_purged("a", 1, 0, 0, "key70", 0), "no rule for that key");
        assert!(rules.is_purged("a", 20, 0, 0, "key70", 1_999), "the zoom rule");
    }

    #[test]
    fn entries_newer_than_every_rule_skip_the_lock() {
        let rules = std::sync::Arc::new(set());
        for i in 0..100u64 {
            assert!(rules.add(Rule { index: Some("a".into()), ..rule(&format!("r{i}"), 1_000 + i) }, 1_000));
        }
        assert!(rules.is_purged("a", 1, 0, 0, "k", 1_098));
        assert!(!rules.is_purged("a", 1, 0, 0, "k", 1_099));
        // With the lock held by a writer, only the lock-free path can answer.
        let guard = rules.write();
        let (tx, rx) = std::sync::mpsc::channel();
        let checker = std::sync::Arc::clone(&rules);
        std::thread::spawn(move || {
            let _ = tx.send(checker.is_purged("a", 1, 0, 0, "k", 1_100));
        });
        let answer = rx.recv_timeout(Duration::from_secs(10));
        drop(guard);
        assert_eq!(answer, Ok(false), "is_purged took the lock for an entry newer than every rule");
    }

    #[test]
    fn no_rules_purge_nothing() {
        let rules = set();
        assert!(rules.is_empty());
        assert!(!rules.is_purged("a", 0, 0, 0, "k", 0));
    }

    #[test]
    fn rules_expire_after_the_longest_entry_life() {
        let r = rule("r", 1_000);
        assert!(r.live(1_000, 100));
        assert!(r.live(1_099, 100));
        assert!(!r.live(1_100, 100));
        assert!(r.live(u64::MAX - 1, u64::MAX), "no overflow");

        let rules = PurgeRules::new(Duration::from_millis(100));
        assert!(!rules.add(Rule { index: Some("a".into()), ..rule("old", 1_000) }, 1_100), "dead on arrival");
        assert!(rules.add(Rule { index: Some("a".into()), ..rule("r1", 1_000) }, 1_000));
        assert!(rules.add(Rule { key: Some("k".into()), ..rule("r2", 1_050) }, 1_000));
        rules.expire(1_099);
        assert_eq!(rules.len(), 2);
        rules.expire(1_100);
        assert_eq!(rules.list().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r2"]);
        assert!(rules.is_purged("a", 0, 0, 0, "k", 1_049), "r2 still purges");
        assert!(!rules.is_purged("a", 0, 0, 0, "other", 999), "r1 gone");
        rules.expire(1_150);
        assert!(rules.is_empty());
        assert_eq!(rules.newest_at_ms.load(Ordering::Relaxed), 0);
        assert!(!rules.is_purged("a", 0, 0, 0, "k", 0));
    }

    #[test]
    fn add_replace_merge_and_list() {
        let rules = set();
        let a = Rule { index: Some("a".into()), ..rule("a", 30) };
        let b = Rule { index: Some("b".into()), ..rule("b", 10) };
        let c = Rule { key: Some("c".into()), ..rule("c", 20) };
        assert!(rules.add(a.clone(), 0));
        assert!(!rules.add(Rule { index: Some("other".into()), ..a.clone() }, 0), "duplicate id");
        assert!(!rules.add(rule("empty", 40), 0), "no criterion");
        rules.merge(vec![b.clone(), a.clone(), c.clone()], 0);
        assert_eq!(rules.list(), [b.clone(), c.clone(), a.clone()], "oldest first");
        rules.replace(vec![c.clone(), c.clone()], 0);
        assert_eq!(rules.list(), std::slice::from_ref(&c));
        assert!(!rules.is_purged("a", 0, 0, 0, "k", 0), "a was replaced away");
        rules.replace(vec![a.clone(), b], 200_000);
        assert!(rules.is_empty(), "rules not live are dropped");
    }

    #[test]
    fn requests_become_rules() {
        let r = req(Some("idx"), None, Some(BERLIN.to_vec()), Some(vec![10, 14])).into_rule("id1".into(), 5, None);
        let want = Rule { index: Some("idx".into()), zoom: Some([10, 14]), bbox: Some(BERLIN), ..rule("id1", 5) };
        assert_eq!(r, Ok(want));
        let by_url =
            req(Some("idx"), Some("/v3/base/mc/1/0/0/png"), None, None).into_rule("u".into(), 5, Some("key".into()));
        let want = Rule {
            index: Some("idx".into()),
            key: Some("key".into()),
            url: Some("/v3/base/mc/1/0/0/png".into()),
            ..rule("u", 5)
        };
        assert_eq!(by_url, Ok(want));
        let max = req(None, None, Some(vec![-180.0, -90.0, 180.0, 90.0]), Some(vec![0, MAX_ZOOM])).into_rule(
            "m".into(),
            5,
            None,
        );
        assert!(max.is_ok(), "{max:?}");
    }

    #[test]
    fn bad_requests_are_rejected_with_the_reason() {
        use RuleError::*;
        let bbox = |b: &[f64]| req(None, None, Some(b.to_vec()), None);
        let zoom = |z: &[u8]| req(None, None, None, Some(z.to_vec()));
        let index = |i: &str| req(Some(i), None, None, None);
        let cases: Vec<(PurgeRequest, RuleError)> = vec![
            (PurgeRequest::default(), Empty),
            (bbox(&[1.0, 2.0, 3.0]), BboxLength(3)),
            (bbox(&[1.0, 2.0, 3.0, 4.0, 5.0]), BboxLength(5)),
            (bbox(&[1.0, f64::NAN, 3.0, 4.0]), BboxNotFinite),
            (bbox(&[1.0, 2.0, f64::INFINITY, 4.0]), BboxNotFinite),
            (bbox(&[-181.0, 2.0, 3.0, 4.0]), BboxLongitude(-181.0)),
            (bbox(&[1.0, 2.0, 180.5, 4.0]), BboxLongitude(180.5)),
            (bbox(&[1.0, -91.0, 3.0, 4.0]), BboxLatitude(-91.0)),
            (bbox(&[1.0, 2.0, 3.0, 90.1]), BboxLatitude(90.1)),
            (bbox(&[1.0, 5.0, 3.0, 4.0]), BboxSouthNorth { south: 5.0, north: 4.0 }),
            (zoom(&[5]), ZoomLength(1)),
            (zoom(&[5, 4]), ZoomOrder { zmin: 5, zmax: 4 }),
            (zoom(&[5, 23]), ZoomTooHigh(23)),
            (req(None, Some("/u"), Some(BERLIN.to_vec()), None), UrlWithArea),
            (req(None, Some("/u"), None, Some(vec![1, 2])), UrlWithArea),
            (req(None, Some("/u"), None, None), UrlWithoutKey),
            (index(""), Index),
            (index("a/b"), Index),
            (index("a b"), Index),
            (index("é"), Index),
            (index(&"a".repeat(MAX_INDEX_LEN + 1)), Index),
        ];
        for (request, want) in cases {
            let shown = format!("{request:?}");
            assert_eq!(request.into_rule("id".into(), 1, None), Err(want), "{shown}");
        }
        assert!(index(&"a".repeat(MAX_INDEX_LEN)).into_rule("id".into(), 1, None).is_ok());
        assert_eq!(index("a").into_rule(String::new(), 1, None), Err(EmptyId));
        assert_eq!(BboxLength(3).to_string(), "bbox must be [west, south, east, north] (got 3 numbers)");
        assert_eq!(BboxLatitude(-91.0).to_string(), "bbox latitude -91 out of range [-90, 90]");
    }

    #[test]
    fn rules_round_trip_through_json() {
        let full = Rule {
            index: Some("a".into()),
            zoom: Some([1, 2]),
            bbox: Some([170.0, -10.5, -170.0, 10.25]),
            key: Some("tp2|x|y".into()),
            url: Some("/v3/base/mc/1/0/0/png".into()),
            ..rule("id", 1_700_000_000_000)
        };
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), full);
        let bare = Rule { index: Some("a".into()), ..rule("id", 7) };
        let json = serde_json::to_string(&bare).unwrap();
        assert_eq!(json, r#"{"id":"id","at_ms":7,"index":"a"}"#, "absent criteria are left out");
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), bare);
    }

    fn tile_of(lon: f64, lat: f64, z: u8) -> (u32, u32) {
        let n = 2f64.powi(i32::from(z));
        ((lon_to_u(lon) * n) as u32, (geo::lat_to_v(lat) * n) as u32)
    }

    #[test]
    fn a_geojson_purge_matches_the_tiles_of_every_part_and_not_the_hole() {
        let shape: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/south-africa.geojson")).unwrap();
        let request = PurgeRequest { geojson: Some(shape), zoom: Some(vec![6, 12]), ..Default::default() };
        let rule = request.into_rule("sa".into(), 5, None).unwrap();
        assert_eq!(rule.zoom, Some([6, 12]));
        let set = set();
        assert!(set.add(rule.clone(), 5));
        let purged = |lon, lat, z| {
            let (x, y) = tile_of(lon, lat, z);
            set.is_purged("any", z, x, y, "k", 1)
        };
        assert!(purged(28.05, -26.2, 12), "Johannesburg");
        assert!(purged(18.42, -33.92, 9), "Cape Town");
        assert!(purged(37.75, -46.9, 12), "Marion Island, the second part");
        assert!(purged(37.95, -46.63, 11), "Prince Edward Island, the third part");
        assert!(!purged(27.9, -29.6, 12), "Maseru, in the hole (Lesotho)");
        assert!(!purged(35.0, -40.0, 8), "the ocean inside the bounding box");
        assert!(!purged(28.05, -26.2, 13), "outside the zoom range");
        assert!(!purged(28.05, -26.2, 5), "outside the zoom range");
        // The rule's JSON is its runs, and reads back the same.
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
        let runs = rule.tiles.as_ref().unwrap().runs().len();
        assert!(runs < 3_000, "{runs} runs for zooms 6-12");
    }

    #[test]
    fn a_tile_list_is_one_rule_matching_exactly_its_tiles() {
        let list = "12/2200/1343\n12/2201/1343\n14/8800/5372\n";
        let request = PurgeRequest { tiles: Some(list.into()), index: Some("a".into()), ..Default::default() };
        let rule = request.into_rule("t".into(), 5, None).unwrap();
        assert_eq!(rule.zoom, Some([12, 14]), "the list's zooms");
        let set = set();
        assert!(set.add(rule, 5));
        assert!(set.is_purged("a", 12, 2200, 1343, "k", 1));
        assert!(set.is_purged("a", 12, 2201, 1343, "k", 1));
        assert!(set.is_purged("a", 14, 8800, 5372, "k", 1));
        assert!(!set.is_purged("a", 12, 2202, 1343, "k", 1));
        assert!(!set.is_purged("a", 13, 4400, 2686, "k", 1));
        assert!(!set.is_purged("b", 12, 2200, 1343, "k", 1), "another index");
        // Without an index the rule is general: the grid knows its few cells.
        let general = Compiled::new(
            PurgeRequest { tiles: Some(list.into()), ..Default::default() }.into_rule("g".into(), 5, None).unwrap(),
        );
        let cells = Cells::of(std::slice::from_ref(&general));
        assert!(cells.may_match(12, 2200, 1343));
        assert!(!cells.may_match(12, 100, 100), "far away: skipped without a walk");
        let many: String = (0..=MAX_LIST_TILES).map(|i| format!("17/{i}/0\n")).collect();
        let err = PurgeRequest { tiles: Some(many), ..Default::default() }.into_rule("m".into(), 5, None).unwrap_err();
        assert_eq!(err.to_string(), "tiles: more than 100000 tiles: split the list");
    }

    #[test]
    fn area_requests_are_checked() {
        let square = serde_json::json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]});
        let geojson =
            |zoom: Option<Vec<u8>>| PurgeRequest { geojson: Some(square.clone()), zoom, ..Default::default() };
        let err = |r: PurgeRequest| r.into_rule("x".into(), 1, None).unwrap_err();
        assert_eq!(err(geojson(None)), RuleError::GeojsonWithoutZoom);
        assert_eq!(err(PurgeRequest { bbox: Some(BERLIN.to_vec()), ..geojson(Some(vec![1, 2])) }), RuleError::TwoAreas);
        assert_eq!(err(geojson(Some(vec![1, 23]))), RuleError::ZoomTooHigh(23));
        assert_eq!(
            err(PurgeRequest { tiles: Some("1/0/0".into()), zoom: Some(vec![1, 1]), ..Default::default() }),
            RuleError::TilesWithZoom
        );
        assert!(err(PurgeRequest { tiles: Some("1/2/0".into()), ..Default::default() })
            .to_string()
            .starts_with("tiles: line 1"));
        let point = PurgeRequest {
            geojson: Some(serde_json::json!({"type": "Point", "coordinates": [1, 2]})),
            zoom: Some(vec![1, 2]),
            ..Default::default()
        };
        assert!(err(point).to_string().contains("is a Point"));
        let world = serde_json::json!({"type": "Polygon", "coordinates": [[[-180, -85], [180, -85], [180, 85], [-180, 85], [-180, -85]]]});
        let too_big = err(PurgeRequest { geojson: Some(world), zoom: Some(vec![0, 20]), ..Default::default() });
        assert!(too_big.to_string().contains("narrow the zoom range"), "{too_big}");
        assert!(geojson(Some(vec![3, 9])).into_rule("x".into(), 1, None).is_ok());
    }

    #[test]
    fn purge_requests_reject_unknown_fields() {
        let ok: PurgeRequest = serde_json::from_str(r#"{"index":"a","zoom":[1,2]}"#).unwrap();
        assert_eq!((ok.index.as_deref(), ok.zoom), (Some("a"), Some(vec![1, 2])));
        let err = serde_json::from_str::<PurgeRequest>(r#"{"index":"a","zooms":[1,2]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `zooms`"), "{err}");
    }

    #[test]
    fn surrogate_keys_name_index_zoom_and_block() {
        assert_eq!(surrogate_keys("acme.web-1", 12, 2200, 1343), ["tp-i-acme.web-1", "tp-z12", "tp-b12-137-83"]);
        assert_eq!(surrogate_keys("a b,c", 0, 0, 0), ["tp-i-a_b_c", "tp-z0", "tp-b0-0-0"]);
        assert_eq!(surrogate_keys("x", 4, 15, 16)[2], "tp-b4-0-1");
    }

    #[test]
    fn block_keys_cover_exactly_the_matched_tiles() {
        for bbox in [BERLIN, [170.0, -10.0, -170.0, 10.0], [-180.0, -90.0, 180.0, 90.0], [22.5, 0.0, 45.0, 10.0]] {
            let r = bbox_rule(bbox);
            let keys = block_keys_for_bbox(bbox, 0, 7, usize::MAX).unwrap();
            let mut want = Vec::new();
            for z in 0..=7u8 {
                for x in 0..1u32 << z {
                    for y in 0..1u32 << z {
                        let key = surrogate_keys("i", z, x, y).swap_remove(2);
                        if r.matches("i", z, x, y, "k") && !want.contains(&key) {
                            want.push(key);
                        }
                    }
                }
            }
            let (mut got, count) = (keys.clone(), keys.len());
            got.sort();
            got.dedup();
            want.sort();
            assert_eq!(got.len(), count, "{bbox:?}: duplicates");
            assert_eq!(got, want, "{bbox:?}");
        }
        // Berlin at z12 is tiles x 2196..=2204, y 1340..=1346: block column 137, rows 83 and 84.
        let berlin = block_keys_for_bbox(BERLIN, 12, 12, 10).unwrap();
        assert_eq!(berlin, ["tp-b12-137-83", "tp-b12-137-84"]);
    }

    #[test]
    fn block_keys_respect_the_limit() {
        let world = [-180.0, -90.0, 180.0, 90.0];
        // z0-4 have one block each; z5 has 2x2, z6 4x4.
        assert_eq!(block_keys_for_bbox(world, 0, 6, 25).map(|k| k.len()), Some(25));
        assert_eq!(block_keys_for_bbox(world, 0, 6, 24), None);
        assert_eq!(block_keys_for_bbox(world, 0, MAX_ZOOM, 1_000), None);
        assert_eq!(block_keys_for_bbox([f64::NAN, 0.0, 1.0, 1.0], 0, 3, 10), Some(vec![]));
    }

    #[test]
    fn rules_are_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<PurgeRules>();
    }
}

//! HERE path shapes -> a validated, typed [`TileRequest`].
//!
//! Pure functions only: everything a client sends is checked here, before any cache or upstream
//! work, against HERE's documented ranges and allow-lists (see `shared/here-api.md`). What comes out
//! is safe to put in a cache key and an upstream URL: no client input can reach the upstream host,
//! scheme or path prefix, and the client's `apiKey` never leaves this module.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Which HERE API a tile belongs to. Each is its own upstream (base URL, credential origin),
/// rate cap, breaker, health entry and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Raster Tile API v3: `/v3/{resource}/mc/{z}/{x}/{y}/{format}`.
    Raster,
    /// Vector Tile API v2: `/v2/vectortiles/{layer}/mc/{z}/{x}/{y}/omv`.
    Vector,
    /// Traffic Raster Tile API v3: `/v3/flow/mc/{z}/{x}/{y}/{format}` (traffic.maps.hereapi.com).
    TrafficRaster,
    /// Traffic Vector Tile API v2: `/v2/traffictiles/{layer}/mc/{z}/{x}/{y}/omv`
    /// (traffic.vector.hereapi.com).
    TrafficVector,
}

impl Api {
    /// Every API, in [`Api::index`] order.
    pub const ALL: [Api; 4] = [Api::Raster, Api::Vector, Api::TrafficRaster, Api::TrafficVector];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Raster => "raster",
            Api::Vector => "vector",
            Api::TrafficRaster => "traffic_raster",
            Api::TrafficVector => "traffic_vector",
        }
    }

    /// Position in [`Api::ALL`]: for per-API arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Live traffic (flow and incidents): its own freshness (`traffic_ttl`) and budget.
    pub fn is_traffic(self) -> bool {
        matches!(self, Api::TrafficRaster | Api::TrafficVector)
    }

    /// The query parameter HERE reads the key from on this API.
    pub fn key_param(self) -> &'static str {
        match self {
            Api::Raster | Api::TrafficRaster => "apiKey",
            Api::Vector | Api::TrafficVector => "apikey",
        }
    }
}

/// Index used when a request carries no `indice`.
pub const DEFAULT_INDEX: &str = "default";

/// Raster resources HERE serves (`/v3/info`).
pub const RASTER_RESOURCES: &[&str] = &["base", "background", "label"];
/// Raster formats.
pub const RASTER_FORMATS: &[&str] = &["png", "png8", "jpeg"];
/// Vector layers.
pub const VECTOR_LAYERS: &[&str] = &["base", "core"];
/// Raster styles.
pub const STYLES: &[&str] = &[
    "explore.day",
    "explore.night",
    "explore.satellite.day",
    "lite.day",
    "lite.night",
    "lite.satellite.day",
    "logistics.day",
    "logistics.night",
    "logistics.satellite.day",
    "satellite.day",
    "topo.day",
    "topo.night",
];
/// Vector `content` values.
pub const VECTOR_CONTENT: &[&str] = &["default", "advanced_pois", "advanced_roads", "contours", "hillshade", "transit"];
/// Highest raster zoom (`/v3/info` zoomLevels.max).
pub const RASTER_MAX_ZOOM: u8 = 20;
/// Highest vector zoom.
pub const VECTOR_MAX_ZOOM: u8 = 17;
/// Traffic raster resources (HERE's Traffic Raster Tile API v3 `ResourceSchema`).
pub const TRAFFIC_RASTER_RESOURCES: &[&str] = &["flow"];
/// Traffic vector layers (Traffic Vector Tile API v2 `LayerParameter`): flow and incidents,
/// flow only, incidents only.
pub const TRAFFIC_VECTOR_LAYERS: &[&str] = &["traffic", "flow", "incident"];
/// `minTrafficCongestion` values (default `free`).
pub const TRAFFIC_CONGESTION: &[&str] = &["free", "heavy", "queuing", "blocked"];
/// `incidentType` values (Traffic Vector Tile API v2 `IncidentType`).
pub const INCIDENT_TYPES: &[&str] = &[
    "accident",
    "congestion",
    "construction",
    "disabled_vehicle",
    "lane_restriction",
    "mass_transit",
    "planned_event",
    "road_hazard",
    "road_closure",
    "weather",
    "other",
];
/// Traffic vector zooms (`ZParameter`: 1 to 17).
pub const TRAFFIC_VECTOR_ZOOMS: (u8, u8) = (1, 17);

/// A validated tile request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileRequest {
    /// The `indice` (customer, layer or app); [`DEFAULT_INDEX`] when absent.
    pub index: String,
    pub api: Api,
    /// Raster resource (`base`, ...) or vector layer (`base`, `core`).
    pub resource: &'static str,
    pub z: u8,
    pub x: u32,
    pub y: u32,
    /// `png`, `png8`, `jpeg` or `omv`.
    pub format: &'static str,
    /// Remaining query parameters, validated and normalised (defaults dropped), sorted by name.
    /// Never holds `apiKey` or `indice`.
    pub params: BTreeMap<String, String>,
}

impl TileRequest {
    /// `z/x/y` for logs and keys.
    pub fn zxy(&self) -> String {
        format!("{}/{}/{}", self.z, self.x, self.y)
    }

    /// The normalised query as `a=1&b=2` (sorted; values are from safe charsets).
    pub fn query_string(&self) -> String {
        let mut s = String::new();
        self.write_query(&mut s);
        s
    }

    /// Appends the normalised query to `s`.
    pub fn write_query(&self, s: &mut String) {
        for (i, (k, v)) in self.params.iter().enumerate() {
            if i > 0 {
                s.push('&');
            }
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
    }

    /// The path HERE serves this tile under, e.g. `/v3/base/mc/5/15/13/png`.
    pub fn upstream_path(&self) -> String {
        match self.api {
            Api::Raster => format!("/v3/{}/mc/{}/{}/{}/{}", self.resource, self.z, self.x, self.y, self.format),
            Api::Vector => format!("/v2/vectortiles/{}/mc/{}/{}/{}/omv", self.resource, self.z, self.x, self.y),
            Api::TrafficRaster => {
                format!("/v3/{}/mc/{}/{}/{}/{}", self.resource, self.z, self.x, self.y, self.format)
            }
            Api::TrafficVector => {
                format!("/v2/traffictiles/{}/mc/{}/{}/{}/omv", self.resource, self.z, self.x, self.y)
            }
        }
    }

    /// MIME type of the tile format.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            "jpeg" => "image/jpeg",
            "omv" => "application/x-protobuf",
            _ => "image/png",
        }
    }
}

/// A request that is not a valid tile: names the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub field: String,
    pub message: String,
}

impl RouteError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Options that change what is accepted.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Reject query parameters HERE does not document (default). When false they are kept
    /// (and so become part of the cache key and the upstream query) if they look harmless.
    pub reject_unknown_params: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self { reject_unknown_params: true }
    }
}

/// Parses a request path (without query) and raw query string.
///
/// Returns `Ok(None)` when the path is not one of our tile routes (a 404), `Err` when it is a
/// tile route with something invalid in it (a 400 naming the field).
pub fn parse(path: &str, query: &str, opts: ParseOptions) -> Result<Option<TileRequest>, RouteError> {
    // At most 10 segments are meaningful; more is no tile route. No allocation on the hot path.
    let mut buf = [""; 10];
    let mut n = 0;
    for seg in path.trim_start_matches('/').split('/') {
        if n == buf.len() {
            return Ok(None);
        }
        buf[n] = seg;
        n += 1;
    }
    let (api, resource, rest): (Api, &str, &[&str]) = match &buf[..n] {
        // The service we replace: /here-proxy/[mc/]{z}/{x}/{y}/{format}, raster `base`.
        // Its traffic equivalent: /here-proxy/flow/[mc/]{z}/{x}/{y}/{format}, traffic raster `flow`.
        ["here-proxy", "flow", "mc", rest @ ..] => (Api::TrafficRaster, "flow", rest),
        ["here-proxy", "flow", rest @ ..] => (Api::TrafficRaster, "flow", rest),
        ["here-proxy", "mc", rest @ ..] => (Api::Raster, "base", rest),
        ["here-proxy", rest @ ..] => (Api::Raster, "base", rest),
        ["v3", "flow", "mc", rest @ ..] => (Api::TrafficRaster, "flow", rest),
        ["v3", resource, "mc", rest @ ..] => (Api::Raster, resource, rest),
        ["v2", "vectortiles", layer, "mc", rest @ ..] => (Api::Vector, layer, rest),
        ["v2", "traffictiles", layer, "mc", rest @ ..] => (Api::TrafficVector, layer, rest),
        ["maptile", "2.1", resource, map_id, scheme, rest @ ..] => {
            return legacy(resource, map_id, scheme, rest, query, opts).map(Some);
        }
        _ => return Ok(None),
    };
    let [z, x, y, format] = rest else {
        return Err(RouteError::new("path", "expected {z}/{x}/{y}/{format}"));
    };
    let (resources, formats, (min_zoom, max_zoom)) = match api {
        Api::Raster => (RASTER_RESOURCES, RASTER_FORMATS, (0, RASTER_MAX_ZOOM)),
        Api::Vector => (VECTOR_LAYERS, &["omv"][..], (0, VECTOR_MAX_ZOOM)),
        Api::TrafficRaster => (TRAFFIC_RASTER_RESOURCES, RASTER_FORMATS, (0, RASTER_MAX_ZOOM)),
        Api::TrafficVector => (TRAFFIC_VECTOR_LAYERS, &["omv"][..], TRAFFIC_VECTOR_ZOOMS),
    };
    let resource_field = if matches!(api, Api::Raster | Api::TrafficRaster) { "resource" } else { "layer" };
    let Some(resource) = resources.iter().copied().find(|r| *r == resource) else {
        return Err(RouteError::new(resource_field, format!("must be one of {}", resources.join(", "))));
    };
    let (z, x, y) = parse_zxy(z, x, y, max_zoom)?;
    if z < min_zoom {
        return Err(RouteError::new("z", format!("zoom must be an integer from {min_zoom} to {max_zoom}")));
    }
    let Some(format) = formats.iter().copied().find(|f| f == format) else {
        return Err(RouteError::new("format", format!("must be one of {}", formats.join(", "))));
    };
    let (index, params) = parse_query(Some(api), query, opts)?;
    Ok(Some(TileRequest { index, api, resource, z, x, y, format, params }))
}

/// Validates a tile address: zoom within `0..=max_zoom`, column and row within the zoom's grid.
fn parse_zxy(z: &str, x: &str, y: &str, max_zoom: u8) -> Result<(u8, u32, u32), RouteError> {
    let z: u8 = parse_int(z)
        .filter(|z| *z <= u32::from(max_zoom))
        .and_then(|z| u8::try_from(z).ok())
        .ok_or_else(|| RouteError::new("z", format!("zoom must be an integer from 0 to {max_zoom}")))?;
    let max_xy = (1u64 << z) - 1;
    let x = parse_int(x)
        .filter(|v| u64::from(*v) <= max_xy)
        .ok_or_else(|| RouteError::new("x", format!("column must be an integer from 0 to {max_xy} at zoom {z}")))?;
    let y = parse_int(y)
        .filter(|v| u64::from(*v) <= max_xy)
        .ok_or_else(|| RouteError::new("y", format!("row must be an integer from 0 to {max_xy} at zoom {z}")))?;
    Ok((z, x, y))
}

/// Legacy Map Tile API 2.1 resources and their Raster Tile API v3 resource. Others
/// (`alabeltile`, `xbasetile`, `streettile`, `trucktile`, `traffictile`, ...) have no v3 equivalent.
pub const LEGACY_RESOURCES: &[(&str, &str)] =
    &[("maptile", "base"), ("basetile", "background"), ("labeltile", "label")];

/// Legacy Map Tile API 2.1 schemes and the v3 `style` that replaces them (HERE's v3 migration
/// guide: normal -> explore, reduced -> lite, hybrid -> explore.satellite, terrain -> topo).
/// Others (`normal.day.grey`, `pedestrian.day`, `normal.day.transit`, `*.mobile`, traffic and
/// truck schemes, ...) have no v3 style that looks the same: they answer 400 naming `scheme`.
pub const LEGACY_SCHEMES: &[(&str, &str)] = &[
    ("normal.day", "explore.day"),
    ("normal.night", "explore.night"),
    ("reduced.day", "lite.day"),
    ("reduced.night", "lite.night"),
    ("hybrid.day", "explore.satellite.day"),
    ("satellite.day", "satellite.day"),
    ("terrain.day", "topo.day"),
];

/// Legacy formats and their v3 format.
pub const LEGACY_FORMATS: &[(&str, &str)] = &[("png", "png"), ("png8", "png8"), ("jpg", "jpeg")];

/// `/maptile/2.1/{resource}/{mapId}/{scheme}/{z}/{x}/{y}/{size}/{format}` as the v3 request that
/// HERE serves the same map for: resource, style (from the scheme), size and format mapped by the
/// tables above, so the legacy URL and its v3 URL are one request (one cache key, one upstream
/// call). `mapId` is `newest` or a map-version hash; v3 has no such hashes (HERE's own hashes
/// change with software updates), so either gets the newest map. The query follows the v3 rules
/// (`indice`, `lang`, `ppi`, ...), except `style` and `size`, which the path already gives.
fn legacy(
    resource: &str,
    map_id: &str,
    scheme: &str,
    rest: &[&str],
    query: &str,
    opts: ParseOptions,
) -> Result<TileRequest, RouteError> {
    let [z, x, y, size, format] = rest else {
        return Err(RouteError::new("path", "expected {z}/{x}/{y}/{size}/{format} after the scheme"));
    };
    let mapped = |table: &[(&'static str, &'static str)], v: &str| table.iter().find(|(k, _)| *k == v).map(|(_, m)| *m);
    let names = |table: &[(&str, &str)]| table.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    let resource = mapped(LEGACY_RESOURCES, resource).ok_or_else(|| {
        RouteError::new("resource", format!("no Raster Tile API v3 equivalent; use one of {}", names(LEGACY_RESOURCES)))
    })?;
    let is_hash = !map_id.is_empty() && map_id.len() <= 64 && map_id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !is_hash {
        return Err(RouteError::new("mapId", "must be newest or a map version hash"));
    }
    let style = mapped(LEGACY_SCHEMES, scheme).ok_or_else(|| {
        RouteError::new("scheme", format!("no Raster Tile API v3 equivalent; use one of {}", names(LEGACY_SCHEMES)))
    })?;
    let (z, x, y) = parse_zxy(z, x, y, RASTER_MAX_ZOOM)?;
    if !matches!(*size, "256" | "512") {
        return Err(RouteError::new("size", "must be 256 or 512"));
    }
    let format = mapped(LEGACY_FORMATS, format)
        .ok_or_else(|| RouteError::new("format", format!("must be one of {}", names(LEGACY_FORMATS))))?;
    for given in ["style", "size"] {
        if query_names(query).any(|k| k == given) {
            return Err(RouteError::new(given, "given by the legacy path; leave it out of the query"));
        }
    }
    let (index, mut params) = parse_query(Some(Api::Raster), query, opts)?;
    for (k, v) in [("style", style), ("size", *size)] {
        if !is_default(Some(Api::Raster), k, v) {
            params.insert(k.to_string(), v.to_string());
        }
    }
    Ok(TileRequest { index, api: Api::Raster, resource, z, x, y, format, params })
}

/// The decoded parameter names of a raw query (undecodable ones skipped).
fn query_names(query: &str) -> impl Iterator<Item = String> + '_ {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| percent_decode(p.split_once('=').map_or(p, |(k, _)| k)).map(Cow::into_owned))
}

/// Validates the query of one of HERE's metadata endpoints, which take no parameter of their own
/// (HERE's OpenAPI declares none): the client's `apiKey` is dropped, `indice` is read, anything
/// else is unknown (400 with `reject_unknown_params`, else kept when it is a safe token).
pub fn parse_metadata_query(query: &str, opts: ParseOptions) -> Result<(String, BTreeMap<String, String>), RouteError> {
    parse_query(None, query, opts)
}

/// Decimal digits only (no sign, no leading `+`), at most 9 of them.
fn parse_int(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

use crate::base::names::is_valid_index;

/// `api`: the tile API whose parameters are known; `None` for metadata (none known).
fn parse_query(
    api: Option<Api>,
    query: &str,
    opts: ParseOptions,
) -> Result<(String, BTreeMap<String, String>), RouteError> {
    let mut index: Option<Cow<'_, str>> = None;
    let mut params = BTreeMap::new();
    // Names seen so far, decoded (a default value is dropped from `params` but still counts).
    let mut seen: BTreeSet<Cow<'_, str>> = BTreeSet::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_k, raw_v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(raw_k).ok_or_else(|| RouteError::new("query", "malformed percent-encoding"))?;
        // The client's key is dropped whatever its case; the server adds its own.
        if k.eq_ignore_ascii_case("apikey") {
            continue;
        }
        let v = percent_decode(raw_v).ok_or_else(|| RouteError::new(k.to_string(), "malformed percent-encoding"))?;
        if k == "indice" {
            if index.is_some() {
                return Err(RouteError::new("indice", "given more than once"));
            }
            if !is_valid_index(&v) {
                return Err(RouteError::new("indice", "must be 1-64 characters of A-Z a-z 0-9 _ . -"));
            }
            index = Some(v);
            continue;
        }
        if seen.contains(&k) {
            let field = if is_safe_token(&k) { k.into_owned() } else { "query".into() };
            return Err(RouteError::new(field, "given more than once"));
        }
        seen.insert(k.clone());
        match check_param(api, &k, &v) {
            Check::Ok => {
                let v = normalise(api, &k, v.into_owned()).map_err(|msg| RouteError::new(k.to_string(), msg))?;
                if !is_default(api, &k, &v) {
                    params.insert(k.into_owned(), v);
                }
            }
            Check::Bad(msg) => return Err(RouteError::new(k.into_owned(), msg)),
            Check::Unknown if opts.reject_unknown_params => {
                let field = if is_safe_token(&k) { k.into_owned() } else { "query".into() };
                return Err(RouteError::new(field, "unknown query parameter"));
            }
            Check::Unknown => {
                if !is_safe_token(&k) || !is_safe_token(&v) {
                    return Err(RouteError::new("query", "parameter name or value has unsafe characters"));
                }
                params.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    Ok((index.map_or_else(|| DEFAULT_INDEX.to_string(), Cow::into_owned), params))
}

enum Check {
    Ok,
    Bad(String),
    Unknown,
}

fn check_param(api: Option<Api>, k: &str, v: &str) -> Check {
    let ok = |b: bool, msg: &str| if b { Check::Ok } else { Check::Bad(msg.to_string()) };
    let Some(api) = api else { return Check::Unknown };
    match (api, k) {
        (Api::Raster, "style") => ok(STYLES.contains(&v), "unknown style"),
        (Api::Raster, "size") => ok(matches!(v, "256" | "512"), "must be 256 or 512"),
        (Api::Raster, "ppi") => ok(matches!(v, "100" | "200" | "400"), "must be 100, 200 or 400"),
        (Api::Raster, "scale") => ok(matches!(v, "1" | "2"), "must be 1 or 2"),
        (Api::Raster, "lang" | "lang2") => ok(is_lang(v), "must look like en or en-US"),
        (Api::Raster, "pview") => {
            ok((2..=3).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_uppercase()), "must be 2-3 capital letters")
        }
        (Api::Raster, "mv") => ok(is_map_version(v), "must match ^([a-z]{2,3}[0-9]+)+$ (e.g. ds1, gbr23)"),
        (Api::Raster, "features") => ok(is_features(v), "must be a comma list of name:mode"),
        (Api::Raster, "startTime" | "endTime") => ok(is_time(v), "must be YYYY-MM-DDTHH:mm"),
        (Api::Vector, "content") => ok(
            !v.is_empty() && v.split(',').all(|c| VECTOR_CONTENT.contains(&c)),
            "must be a comma list of default, advanced_pois, advanced_roads, contours, hillshade, transit",
        ),
        // Traffic Raster Tile API v3: style, minTrafficCongestion, ppi, size (default 512).
        (Api::TrafficRaster, "style") => ok(STYLES.contains(&v), "unknown style"),
        (Api::TrafficRaster, "size") => ok(matches!(v, "256" | "512"), "must be 256 or 512"),
        (Api::TrafficRaster, "ppi") => ok(matches!(v, "100" | "200" | "400"), "must be 100, 200 or 400"),
        (Api::TrafficRaster, "minTrafficCongestion") => {
            ok(TRAFFIC_CONGESTION.contains(&v), "must be one of free, heavy, queuing, blocked")
        }
        // Traffic Vector Tile API v2: features (premium), incidentType (a comma list).
        (Api::TrafficVector, "features") => ok(v == "premium", "must be premium"),
        (Api::TrafficVector, "incidentType") => ok(
            !v.is_empty() && v.split(',').all(|c| INCIDENT_TYPES.contains(&c)),
            "must be a comma list of accident, congestion, construction, disabled_vehicle, lane_restriction, \
             mass_transit, planned_event, road_hazard, road_closure, weather, other",
        ),
        _ => Check::Unknown,
    }
}

/// HERE's documented defaults: the same tile with or without them shares one cache entry.
fn is_default(api: Option<Api>, k: &str, v: &str) -> bool {
    matches!(
        (api, k, v),
        (Some(Api::Raster), "style", "explore.day")
            | (Some(Api::Raster), "size", "256")
            | (Some(Api::Vector), "content", "default")
            | (Some(Api::TrafficRaster), "size", "512")
            | (Some(Api::TrafficRaster), "ppi", "100")
            | (Some(Api::TrafficRaster), "minTrafficCongestion", "free")
    )
}

/// Puts comma lists in one canonical order so equal requests share a key: `content` with
/// `default` first (HERE: the order matters and `default` comes first), the rest sorted, a
/// repeat dropped; `features` sorted by name, an exact repeat dropped, two modes for one feature
/// refused.
fn normalise(api: Option<Api>, k: &str, v: String) -> Result<String, String> {
    match k {
        "content" => {
            let mut items: Vec<&str> = v.split(',').collect();
            items.sort_unstable_by_key(|c| (*c != "default", *c));
            items.dedup();
            Ok(items.join(","))
        }
        // A filter: its order means nothing.
        "incidentType" => {
            let mut items: Vec<&str> = v.split(',').collect();
            items.sort_unstable();
            items.dedup();
            Ok(items.join(","))
        }
        "features" if api == Some(Api::Raster) => {
            let mut items: Vec<(&str, &str)> = v.split(',').filter_map(|f| f.split_once(':')).collect();
            items.sort_unstable();
            items.dedup();
            if items.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err("names a feature twice with different modes".into());
            }
            Ok(items.iter().map(|(n, m)| format!("{n}:{m}")).collect::<Vec<_>>().join(","))
        }
        _ => Ok(v),
    }
}

/// HERE's pattern for `mv`: `^([a-z]{2,3}[0-9]+)+$`, at most 64 characters.
fn is_map_version(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 64 {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let letters = b[i..].iter().take_while(|c| c.is_ascii_lowercase()).count();
        if !(2..=3).contains(&letters) {
            return false;
        }
        i += letters;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        i += digits;
    }
    true
}

fn is_lang(v: &str) -> bool {
    let (main, sub) = v.split_once('-').unwrap_or((v, ""));
    main.len() == 2
        && main.bytes().all(|b| b.is_ascii_lowercase())
        && (!v.contains('-') || ((1..=4).contains(&sub.len()) && sub.bytes().all(|b| b.is_ascii_alphabetic())))
}

fn is_features(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.split(',').all(|f| match f.split_once(':') {
            Some((n, m)) => is_word(n) && is_word(m),
            None => false,
        })
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 48 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `YYYY-MM-DDTHH:mm` naming a real minute (month 1-12, a day that month has, hour 0-23).
fn is_time(v: &str) -> bool {
    let b = v.as_bytes();
    let shape = b.len() == 16
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return false;
    }
    let num = |r: std::ops::Range<usize>| v[r].parse::<u32>().unwrap_or(u32::MAX);
    let (year, month, day, hour, minute) = (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16));
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day) && hour < 24 && minute < 60
}

fn is_safe_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-,:".contains(&b))
}

/// Percent-decodes a query component (`+` is a space). `None` on bad escapes or non-UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    let b = s.as_bytes();
    // Most names and values have nothing to decode: borrowed, no allocation.
    if !b.iter().any(|c| matches!(c, b'%' | b'+')) {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str, q: &str) -> Result<Option<TileRequest>, RouteError> {
        parse(path, q, ParseOptions::default())
    }

    #[test]
    fn accepted_shapes() {
        let cases = [
            (
                "/here-proxy/mc/5/15/13/png",
                "indice=123&style=explore.day&size=512",
                "123",
                Api::Raster,
                "base",
                "size=512",
            ),
            ("/here-proxy/5/15/13/png", "", "default", Api::Raster, "base", ""),
            ("/v3/label/mc/0/0/0/png8", "apiKey=x&indice=a.b-c_d", "a.b-c_d", Api::Raster, "label", ""),
            (
                "/v3/base/mc/20/1048575/0/jpeg",
                "lang=en-US&pview=ARG",
                "default",
                Api::Raster,
                "base",
                "lang=en-US&pview=ARG",
            ),
            (
                "/v2/vectortiles/core/mc/17/0/131071/omv",
                "apikey=x&content=default,transit",
                "default",
                Api::Vector,
                "core",
                "content=default,transit",
            ),
            (
                "/v3/base/mc/3/1/2/png",
                "features=pois:all,congestion_zones:disabled&startTime=2024-01-02T03:04",
                "default",
                Api::Raster,
                "base",
                "features=congestion_zones:disabled,pois:all&startTime=2024-01-02T03:04",
            ),
        ];
        for (path, q, index, api, resource, query) in cases {
            let t = p(path, q).unwrap().unwrap();
            assert_eq!(t.index, index, "{path}?{q}");
            assert_eq!(t.api, api);
            assert_eq!(t.resource, resource);
            assert_eq!(t.query_string(), query, "{path}?{q}");
        }
    }

    #[test]
    fn rejected_fields() {
        let cases = [
            ("/here-proxy/mc/21/0/0/png", "", "z"),
            ("/here-proxy/mc/-1/0/0/png", "", "z"),
            ("/here-proxy/mc/5/32/0/png", "", "x"),
            ("/here-proxy/mc/5/0/32/png", "", "y"),
            ("/here-proxy/mc/5/0/+1/png", "", "y"),
            ("/here-proxy/mc/5/0/0/gif", "", "format"),
            ("/here-proxy/mc/5/0/0", "", "path"),
            ("/v3/secret/mc/5/0/0/png", "", "resource"),
            ("/v2/vectortiles/base/mc/18/0/0/omv", "", "z"),
            ("/v2/vectortiles/roads/mc/1/0/0/omv", "", "layer"),
            ("/v2/vectortiles/base/mc/1/0/0/png", "", "format"),
            ("/here-proxy/mc/1/0/0/png", "style=evil", "style"),
            ("/here-proxy/mc/1/0/0/png", "size=1024", "size"),
            ("/here-proxy/mc/1/0/0/png", "lang=english", "lang"),
            ("/here-proxy/mc/1/0/0/png", "pview=arg", "pview"),
            ("/here-proxy/mc/1/0/0/png", "startTime=2024-01-02", "startTime"),
            ("/here-proxy/mc/1/0/0/png", "features=pois", "features"),
            ("/here-proxy/mc/1/0/0/png", "bust=1", "bust"),
            ("/here-proxy/mc/1/0/0/png", "size=512&size=256", "size"),
            ("/here-proxy/mc/1/0/0/png", "indice=a/b", "indice"),
            ("/here-proxy/mc/1/0/0/png", "indice=", "indice"),
            ("/here-proxy/mc/1/0/0/png", "indice=a&indice=b", "indice"),
            ("/here-proxy/mc/1/0/0/png", "style=%zz", "style"),
            ("/v2/vectortiles/base/mc/1/0/0/omv", "content=everything", "content"),
            ("/v2/vectortiles/base/mc/1/0/0/omv", "style=explore.day", "style"),
            ("/here-proxy/mc/1/0/0/png", "mv=a1", "mv"),
            ("/here-proxy/mc/1/0/0/png", "mv=abcd1", "mv"),
            ("/here-proxy/mc/1/0/0/png", "mv=ds1x", "mv"),
            ("/here-proxy/mc/1/0/0/png", "mv=DS1", "mv"),
            ("/here-proxy/mc/1/0/0/png", "startTime=2024-13-01T00:00", "startTime"),
            ("/here-proxy/mc/1/0/0/png", "startTime=2023-02-29T00:00", "startTime"),
            ("/here-proxy/mc/1/0/0/png", "endTime=2024-04-31T10:00", "endTime"),
            ("/here-proxy/mc/1/0/0/png", "endTime=2024-04-30T24:00", "endTime"),
            ("/here-proxy/mc/1/0/0/png", "endTime=2024-04-30T23:60", "endTime"),
            ("/here-proxy/mc/1/0/0/png", "features=pois:all,pois:disabled", "features"),
        ];
        for (path, q, field) in cases {
            let err = p(path, q).unwrap_err();
            assert_eq!(err.field, field, "{path}?{q}: {err}");
        }
    }

    #[test]
    fn not_ours() {
        for path in ["/", "/v3/info", "/v1/base/mc/1/0/0/png", "/here-proxyx/1/0/0/png", "/v2/other/base/mc/1/0/0/omv"]
        {
            assert_eq!(p(path, ""), Ok(None), "{path}");
        }
    }

    #[test]
    fn api_key_in_any_case_is_dropped_and_defaults_normalised() {
        let a =
            p("/here-proxy/mc/5/15/13/png", "APIKEY=a&ApiKey=b&apiKey=c&style=explore.day&size=256").unwrap().unwrap();
        let b = p("/here-proxy/5/15/13/png", "").unwrap().unwrap();
        assert_eq!(a, b);
        assert!(a.params.is_empty());
    }

    #[test]
    fn equal_requests_normalise_to_one_query() {
        let q = |path: &str, query: &str| p(path, query).unwrap().unwrap().query_string();
        let v = "/v2/vectortiles/base/mc/1/0/0/omv";
        assert_eq!(q(v, "content=transit,default"), q(v, "content=default,transit"));
        assert_eq!(q(v, "content=transit,default,transit"), "content=default,transit");
        assert_eq!(q(v, "content=default"), "");
        assert_eq!(q(v, "content=default,default"), "");
        // HERE reads `content` in order, `default` first: it stays first, the rest sorted.
        let content = [
            ("advanced_pois,default", "content=default,advanced_pois"),
            ("default,advanced_pois", "content=default,advanced_pois"),
            ("transit,default,contours", "content=default,contours,transit"),
            ("contours,default,transit,default", "content=default,contours,transit"),
            ("transit,advanced_roads,hillshade", "content=advanced_roads,hillshade,transit"),
            ("transit,transit", "content=transit"),
        ];
        for (given, want) in content {
            assert_eq!(q(v, &format!("content={given}")), want, "{given}");
        }
        let r = "/here-proxy/1/0/0/png";
        assert_eq!(
            q(r, "features=pois:all,congestion_zones:disabled"),
            q(r, "features=congestion_zones:disabled,pois:all")
        );
        assert_eq!(q(r, "features=pois:all,pois:all"), "features=pois:all");
        assert_eq!(q(r, "style=explore.day&size=256"), "");
        for ok in ["ds1", "gbr23", "ds1gbr23", "abc123de4"] {
            assert_eq!(q(r, &format!("mv={ok}")), format!("mv={ok}"));
        }
        assert_eq!(q(r, "startTime=2024-02-29T23:59"), "startTime=2024-02-29T23:59");
    }

    #[test]
    fn unknown_params_can_be_allowed() {
        let opts = ParseOptions { reject_unknown_params: false };
        let t = parse("/here-proxy/1/0/0/png", "foo=bar", opts).unwrap().unwrap();
        assert_eq!(t.query_string(), "foo=bar");
        assert!(parse("/here-proxy/1/0/0/png", "foo=a%2Fb", opts).is_err());
    }

    #[test]
    fn legacy_urls_are_their_v3_requests() {
        let cases = [
            (
                "/maptile/2.1/maptile/newest/normal.day/5/15/13/256/png8",
                "indice=a",
                "/v3/base/mc/5/15/13/png8",
                "indice=a",
            ),
            (
                "/maptile/2.1/basetile/be9b70fa2c/normal.night/5/15/13/512/png",
                "",
                "/v3/background/mc/5/15/13/png",
                "style=explore.night&size=512",
            ),
            (
                "/maptile/2.1/labeltile/newest/reduced.day/1/0/1/256/jpg",
                "lang=de&apiKey=CLIENT",
                "/v3/label/mc/1/0/1/jpeg",
                "style=lite.day&lang=de",
            ),
            (
                "/maptile/2.1/maptile/newest/reduced.night/2/3/1/256/png",
                "",
                "/v3/base/mc/2/3/1/png",
                "style=lite.night",
            ),
            (
                "/maptile/2.1/maptile/newest/hybrid.day/20/1048575/0/256/jpg",
                "",
                "/v3/base/mc/20/1048575/0/jpeg",
                "style=explore.satellite.day",
            ),
            (
                "/maptile/2.1/maptile/newest/satellite.day/3/1/2/512/jpg",
                "",
                "/v3/base/mc/3/1/2/jpeg",
                "style=satellite.day&size=512",
            ),
            ("/maptile/2.1/maptile/newest/terrain.day/3/1/2/256/png8", "", "/v3/base/mc/3/1/2/png8", "style=topo.day"),
        ];
        for (legacy, q, v3, v3q) in cases {
            let a = p(legacy, q).unwrap().unwrap();
            assert_eq!(Some(a), p(v3, v3q).unwrap(), "{legacy}?{q}");
        }
        // Every scheme of the table is covered above.
        for (scheme, _) in LEGACY_SCHEMES {
            assert!(cases.iter().any(|c| c.0.contains(&format!("/{scheme}/"))), "{scheme} untested");
        }
    }

    #[test]
    fn legacy_rejections_name_the_field() {
        let cases = [
            ("/maptile/2.1/maptile/newest/normal.day.grey/1/0/0/256/png", "", "scheme"),
            ("/maptile/2.1/maptile/newest/pedestrian.day/1/0/0/256/png", "", "scheme"),
            ("/maptile/2.1/alabeltile/newest/normal.day/1/0/0/256/png", "", "resource"),
            ("/maptile/2.1/maptile/new-est/normal.day/1/0/0/256/png", "", "mapId"),
            ("/maptile/2.1/maptile/newest/normal.day/21/0/0/256/png", "", "z"),
            ("/maptile/2.1/maptile/newest/normal.day/1/2/0/256/png", "", "x"),
            ("/maptile/2.1/maptile/newest/normal.day/1/0/0/128/png", "", "size"),
            ("/maptile/2.1/maptile/newest/normal.day/1/0/0/256/gif", "", "format"),
            ("/maptile/2.1/maptile/newest/normal.day/1/0/0/256", "", "path"),
            ("/maptile/2.1/maptile/newest/normal.day/1/0/0/256/png", "style=topo.day", "style"),
            ("/maptile/2.1/maptile/newest/normal.day/1/0/0/256/png", "size=256", "size"),
            ("/maptile/2.1/maptile/newest/normal.day/1/0/0/256/png", "lg=eng", "lg"),
        ];
        for (path, q, field) in cases {
            let err = p(path, q).unwrap_err();
            assert_eq!(err.field, field, "{path}?{q}: {err}");
        }
    }

    #[test]
    fn metadata_queries_know_only_indice() {
        let opts = ParseOptions::default();
        let (index, params) = parse_metadata_query("apiKey=CLIENT&indice=web", opts).unwrap();
        assert_eq!((index.as_str(), params.len()), ("web", 0));
        assert_eq!(parse_metadata_query("lang=en", opts).unwrap_err().field, "lang");
        assert_eq!(parse_metadata_query("indice=a/b", opts).unwrap_err().field, "indice");
        let lax = ParseOptions { reject_unknown_params: false };
        assert_eq!(parse_metadata_query("lang=en", lax).unwrap().1.get("lang").map(String::as_str), Some("en"));
    }

    #[test]
    fn traffic_routes() {
        let cases = [
            ("/v3/flow/mc/12/2200/1343/png", "", Api::TrafficRaster, "flow", "", "/v3/flow/mc/12/2200/1343/png"),
            (
                "/v3/flow/mc/3/1/2/png8",
                "size=512&ppi=100&minTrafficCongestion=free&style=lite.night",
                Api::TrafficRaster,
                "flow",
                "style=lite.night",
                "/v3/flow/mc/3/1/2/png8",
            ),
            // size defaults to 512 here: 256 is the one kept.
            ("/v3/flow/mc/3/1/2/png", "size=256", Api::TrafficRaster, "flow", "size=256", "/v3/flow/mc/3/1/2/png"),
            ("/here-proxy/flow/mc/3/1/2/png", "indice=x", Api::TrafficRaster, "flow", "", "/v3/flow/mc/3/1/2/png"),
            ("/here-proxy/flow/3/1/2/png", "", Api::TrafficRaster, "flow", "", "/v3/flow/mc/3/1/2/png"),
            (
                "/v2/traffictiles/flow/mc/11/1100/671/omv",
                "apikey=CLIENT",
                Api::TrafficVector,
                "flow",
                "",
                "/v2/traffictiles/flow/mc/11/1100/671/omv",
            ),
            (
                "/v2/traffictiles/incident/mc/17/0/131071/omv",
                "incidentType=road_closure,accident,accident&features=premium",
                Api::TrafficVector,
                "incident",
                "features=premium&incidentType=accident,road_closure",
                "/v2/traffictiles/incident/mc/17/0/131071/omv",
            ),
            ("/v2/traffictiles/traffic/mc/1/1/1/omv", "", Api::TrafficVector, "traffic", "", ""),
        ];
        for (path, q, api, resource, query, upstream) in cases {
            let t = p(path, q).unwrap().unwrap_or_else(|| panic!("{path} is a tile"));
            assert_eq!((t.api, t.resource, t.query_string().as_str()), (api, resource, query), "{path}?{q}");
            if !upstream.is_empty() {
                assert_eq!(t.upstream_path(), upstream);
            }
        }
        assert_eq!(
            p("/v2/traffictiles/flow/mc/1/0/0/omv", "").unwrap().unwrap().content_type(),
            "application/x-protobuf"
        );
        let rejected = [
            ("/v2/traffictiles/flow/mc/0/0/0/omv", "", "z"), // traffic vector zooms are 1 to 17
            ("/v2/traffictiles/flow/mc/18/0/0/omv", "", "z"),
            ("/v2/traffictiles/roads/mc/1/0/0/omv", "", "layer"),
            ("/v2/traffictiles/flow/mc/1/0/0/png", "", "format"),
            ("/v2/traffictiles/flow/mc/1/0/0/omv", "features=basic", "features"),
            ("/v2/traffictiles/flow/mc/1/0/0/omv", "incidentType=alien", "incidentType"),
            ("/v2/traffictiles/flow/mc/1/0/0/omv", "content=default", "content"),
            ("/v3/flow/mc/21/0/0/png", "", "z"),
            ("/v3/flow/mc/1/0/0/gif", "", "format"),
            ("/v3/flow/mc/1/0/0/png", "minTrafficCongestion=jammed", "minTrafficCongestion"),
            ("/v3/flow/mc/1/0/0/png", "ppi=300", "ppi"),
            ("/v3/flow/mc/1/0/0/png", "size=1024", "size"),
            ("/v3/flow/mc/1/0/0/png", "lang=en", "lang"),
        ];
        for (path, q, field) in rejected {
            let err = p(path, q).unwrap_err();
            assert_eq!(err.field, field, "{path}?{q}: {err}");
        }
        // One cache key whatever the order of a filter list.
        let q = |query: &str| p("/v2/traffictiles/incident/mc/3/1/1/omv", query).unwrap().unwrap().query_string();
        assert_eq!(q("incidentType=weather,accident"), q("incidentType=accident,weather"));
    }

    #[test]
    fn upstream_paths() {
        let t = p("/here-proxy/mc/5/15/13/png", "").unwrap().unwrap();
        assert_eq!(t.upstream_path(), "/v3/base/mc/5/15/13/png");
        let v = p("/v2/vectortiles/base/mc/5/15/13/omv", "").unwrap().unwrap();
        assert_eq!(v.upstream_path(), "/v2/vectortiles/base/mc/5/15/13/omv");
        assert_eq!(v.content_type(), "application/x-protobuf");
    }
}

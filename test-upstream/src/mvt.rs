//! Real vector tiles: Mapbox Vector Tiles (MVT spec 2.1, protobuf), served for
//! `/v2/vectortiles/{layer}/mc/{z}/{x}/{y}/omv` when [`crate::Options::mvt`] or
//! [`crate::Options::images`] is on.
//!
//! Every tile has extent [`EXTENT`] (4096) and the same three layers (`version = 2`); a map
//! style can rely on exactly these names and properties:
//!
//! | layer | features | properties |
//! |---|---|---|
//! | `grid` | LineStrings: the tile's border, a closed square [`BORDER_INSET`] units inside the extent, then the 3 vertical and 3 horizontal quarter lines from edge to edge | `kind` (string): `border` or `line` |
//! | `label` | one Point at the tile centre (2048, 2048); its feature `id` is the tile seed (53 bits) | `z`, `x`, `y` (uint), `name` (string `"z/x/y"`), `version` (uint, the upstream's content version) |
//! | `water` | one Polygon: a diamond in the top-left quarter, exterior ring clockwise on screen (positive area in tile coordinates, y down; spec §4.3.4.4) | `kind` (string): `water` |
//!
//! The bytes depend only on version, path and query (through the seed in the label's `id`),
//! so ETags behave like those of the other bodies. The size is whatever the encoding needs
//! (about 300 bytes); `min_size`/`max_size` do not apply.
//!
//! The protobuf encoder is hand-written: the schema is three small messages (`Tile`,
//! `Layer`, `Feature`, plus `Value`) and only varint and length-delimited fields are used.

/// Tile extent in tile coordinates (MVT's default).
pub(crate) const EXTENT: u32 = 4096;
/// Distance of the border square from the tile's edges, in tile coordinates (2 px on a
/// 512 px tile), so the border of every tile stays inside its own tile.
pub(crate) const BORDER_INSET: i32 = 16;
/// Bits of the tile seed kept in the label's feature id (exact as a JavaScript number).
const ID_BITS: u32 = 53;

// Protobuf field numbers (vector_tile.proto, MVT 2.1).
const TILE_LAYERS: u32 = 3;
const LAYER_NAME: u32 = 1;
const LAYER_FEATURES: u32 = 2;
const LAYER_KEYS: u32 = 3;
const LAYER_VALUES: u32 = 4;
const LAYER_EXTENT: u32 = 5;
const LAYER_VERSION: u32 = 15;
const FEATURE_ID: u32 = 1;
const FEATURE_TAGS: u32 = 2;
const FEATURE_TYPE: u32 = 3;
const FEATURE_GEOMETRY: u32 = 4;
const VALUE_STRING: u32 = 1;
const VALUE_UINT: u32 = 5;

// Wire types.
const VARINT: u32 = 0;
const LEN: u32 = 2;

// Geometry types and commands (§4.3).
const POINT: u64 = 1;
const LINESTRING: u64 = 2;
const POLYGON: u64 = 3;
const MOVE_TO: u32 = 1;
const LINE_TO: u32 = 2;
const CLOSE_PATH: u32 = 7;

/// What one vector tile shows. Build it with [`Spec::from_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) z: u32,
    pub(crate) x: u64,
    pub(crate) y: u64,
    pub(crate) version: u64,
    /// Hash of version, path and canonical query; the label's feature id.
    pub(crate) seed: u64,
}

impl Spec {
    /// Parses a v2 vector path (`/v2/vectortiles/{layer}/mc/{z}/{x}/{y}/omv`, already
    /// validated by the router). `None` for anything else.
    pub(crate) fn from_request(path: &str, version: u64, seed: u64) -> Option<Spec> {
        let segs: Vec<&str> = path.split('/').collect();
        let ["", "v2", "vectortiles", _layer, "mc", z, x, y, "omv"] = segs.as_slice() else {
            return None;
        };
        Some(Spec { z: z.parse().ok()?, x: x.parse().ok()?, y: y.parse().ok()?, version, seed })
    }
}

// ---- protobuf wire format ------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, VARINT);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A packed repeated `uint32` field.
fn put_packed(out: &mut Vec<u8>, field: u32, values: &[u32]) {
    let mut packed = Vec::with_capacity(values.len() * 2);
    for &v in values {
        put_varint(&mut packed, u64::from(v));
    }
    put_bytes(out, field, &packed);
}

// ---- geometry ------------------------------------------------------------------------------

fn command(id: u32, count: usize) -> u32 {
    id | (count as u32) << 3
}

fn zigzag(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

/// Encodes geometry commands with a cursor that starts at (0, 0) and carries over between
/// parts (§4.3.2).
#[derive(Default)]
struct Geometry {
    cmds: Vec<u32>,
    cursor: (i32, i32),
}

impl Geometry {
    fn points(&mut self, points: &[(i32, i32)]) {
        for &(x, y) in points {
            self.cmds.push(zigzag(x - self.cursor.0));
            self.cmds.push(zigzag(y - self.cursor.1));
            self.cursor = (x, y);
        }
    }

    fn move_to(&mut self, p: (i32, i32)) {
        self.cmds.push(command(MOVE_TO, 1));
        self.points(&[p]);
    }

    fn line_to(&mut self, points: &[(i32, i32)]) {
        self.cmds.push(command(LINE_TO, points.len()));
        self.points(points);
    }

    /// A LineString (at least two points).
    fn line(mut self, points: &[(i32, i32)]) -> Vec<u32> {
        self.move_to(points[0]);
        self.line_to(&points[1..]);
        self.cmds
    }

    /// A polygon ring (at least three points, the first not repeated at the end).
    fn ring(mut self, points: &[(i32, i32)]) -> Vec<u32> {
        self.move_to(points[0]);
        self.line_to(&points[1..]);
        self.cmds.push(command(CLOSE_PATH, 1));
        self.cmds
    }
}

// ---- layers --------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Uint(u64),
}

impl Value {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Value::Str(s) => put_bytes(&mut out, VALUE_STRING, s.as_bytes()),
            Value::Uint(n) => put_uint(&mut out, VALUE_UINT, *n),
        }
        out
    }
}

/// One layer being built: features plus its keys and values tables (entries shared by
/// every feature that uses them).
struct Layer {
    name: &'static str,
    keys: Vec<&'static str>,
    values: Vec<Value>,
    features: Vec<Vec<u8>>,
}

impl Layer {
    fn new(name: &'static str) -> Layer {
        Layer { name, keys: Vec::new(), values: Vec::new(), features: Vec::new() }
    }

    fn tag(&mut self, key: &'static str, value: Value) -> [u32; 2] {
        let k = self.keys.iter().position(|&k| k == key).unwrap_or_else(|| {
            self.keys.push(key);
            self.keys.len() - 1
        });
        let v = self.values.iter().position(|v| *v == value).unwrap_or_else(|| {
            self.values.push(value);
            self.values.len() - 1
        });
        [k as u32, v as u32]
    }

    fn feature(&mut self, id: Option<u64>, kind: u64, geometry: &[u32], props: Vec<(&'static str, Value)>) {
        let tags: Vec<u32> = props.into_iter().flat_map(|(k, v)| self.tag(k, v)).collect();
        let mut f = Vec::new();
        if let Some(id) = id {
            put_uint(&mut f, FEATURE_ID, id);
        }
        put_packed(&mut f, FEATURE_TAGS, &tags);
        put_uint(&mut f, FEATURE_TYPE, kind);
        put_packed(&mut f, FEATURE_GEOMETRY, geometry);
        self.features.push(f);
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, LAYER_NAME, self.name.as_bytes());
        for f in &self.features {
            put_bytes(&mut out, LAYER_FEATURES, f);
        }
        for k in &self.keys {
            put_bytes(&mut out, LAYER_KEYS, k.as_bytes());
        }
        for v in &self.values {
            put_bytes(&mut out, LAYER_VALUES, &v.encode());
        }
        put_uint(&mut out, LAYER_EXTENT, u64::from(EXTENT));
        put_uint(&mut out, LAYER_VERSION, 2);
        out
    }
}

fn grid_layer() -> Layer {
    let mut layer = Layer::new("grid");
    let (lo, hi) = (BORDER_INSET, EXTENT as i32 - BORDER_INSET);
    let border = Geometry::default().line(&[(lo, lo), (hi, lo), (hi, hi), (lo, hi), (lo, lo)]);
    layer.feature(None, LINESTRING, &border, vec![("kind", Value::Str("border".into()))]);
    let extent = EXTENT as i32;
    for q in 1..4 {
        let at = extent * q / 4;
        for line in [[(at, 0), (at, extent)], [(0, at), (extent, at)]] {
            layer.feature(
                None,
                LINESTRING,
                &Geometry::default().line(&line),
                vec![("kind", Value::Str("line".into()))],
            );
        }
    }
    layer
}

fn label_layer(spec: &Spec) -> Layer {
    let mut layer = Layer::new("label");
    let mut geometry = Geometry::default();
    let centre = EXTENT as i32 / 2;
    geometry.move_to((centre, centre));
    let props = vec![
        ("z", Value::Uint(u64::from(spec.z))),
        ("x", Value::Uint(spec.x)),
        ("y", Value::Uint(spec.y)),
        ("name", Value::Str(format!("{}/{}/{}", spec.z, spec.x, spec.y))),
        ("version", Value::Uint(spec.version)),
    ];
    layer.feature(Some(spec.seed & ((1 << ID_BITS) - 1)), POINT, &geometry.cmds, props);
    layer
}

fn water_layer() -> Layer {
    let mut layer = Layer::new("water");
    let (c, r) = (EXTENT as i32 / 4, EXTENT as i32 / 8);
    // Top, right, bottom, left: clockwise on screen (y grows downwards).
    let ring = Geometry::default().ring(&[(c, c - r), (c + r, c), (c, c + r), (c - r, c)]);
    layer.feature(None, POLYGON, &ring, vec![("kind", Value::Str("water".into()))]);
    layer
}

/// Encodes the tile: layers `grid`, `label`, `water` in that order.
pub(crate) fn render(spec: &Spec) -> Vec<u8> {
    let mut out = Vec::new();
    for layer in [grid_layer(), label_layer(spec), water_layer()] {
        put_bytes(&mut out, TILE_LAYERS, &layer.encode());
    }
    out
}

/// One road of a traffic tile: its line (tile coordinates), `kind` and `jam_factor`.
pub(crate) type Road = (Vec<(i32, i32)>, &'static str, u64);

/// A traffic tile: layer `traffic_flow` (a LineString per road with `kind` and `jam_factor`),
/// then, when given, `traffic_incidents` (one Point with `kind`). An empty `flow` and no
/// incident gives a tile with no layers.
pub(crate) fn render_traffic(flow: &[Road], incident: Option<((i32, i32), &'static str)>) -> Vec<u8> {
    let mut out = Vec::new();
    if !flow.is_empty() {
        let mut layer = Layer::new("traffic_flow");
        for (line, kind, jam) in flow {
            let props = vec![("kind", Value::Str((*kind).into())), ("jam_factor", Value::Uint(*jam))];
            layer.feature(None, LINESTRING, &Geometry::default().line(line), props);
        }
        put_bytes(&mut out, TILE_LAYERS, &layer.encode());
    }
    if let Some((at, kind)) = incident {
        let mut layer = Layer::new("traffic_incidents");
        let mut geometry = Geometry::default();
        geometry.move_to(at);
        layer.feature(None, POINT, &geometry.cmds, vec![("kind", Value::Str(kind.into()))]);
        put_bytes(&mut out, TILE_LAYERS, &layer.encode());
    }
    out
}

/// The independent decoder of `tests/support/mvt_decode.rs` (shared with the HTTP tests).
#[cfg(test)]
#[path = "../tests/support/mvt_decode.rs"]
mod decode;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvt::decode::{self, Geom, Prop};

    fn spec(path: &str) -> Spec {
        Spec::from_request(path, 0, 0xabcd).unwrap()
    }

    #[test]
    fn parses_paths() {
        let s = spec("/v2/vectortiles/base/mc/12/2200/1343/omv");
        assert_eq!((s.z, s.x, s.y, s.version, s.seed), (12, 2200, 1343, 0, 0xabcd));
        assert!(Spec::from_request("/v3/base/mc/1/0/0/png", 0, 0).is_none());
        assert!(Spec::from_request("/v2/vectortiles/core/mc/1/0/0/mvt", 0, 0).is_none());
    }

    #[test]
    fn wire_basics() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!([zigzag(0), zigzag(-1), zigzag(1), zigzag(-2), zigzag(2047)], [0, 1, 2, 3, 4094]);
        assert_eq!(command(MOVE_TO, 1), 9);
        assert_eq!(command(LINE_TO, 3), 26);
        assert_eq!(command(CLOSE_PATH, 1), 15);
        // The spec's example (§4.3.5.1): a point at (25, 17).
        let mut g = Geometry::default();
        g.move_to((25, 17));
        assert_eq!(g.cmds, [9, 50, 34]);
    }

    #[test]
    fn decodes_with_independent_decoder() {
        let body = render(&Spec { z: 12, x: 2200, y: 1343, version: 7, seed: u64::MAX });
        let tile = decode::tile(&body).unwrap();
        let names: Vec<&str> = tile.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["grid", "label", "water"]);
        for l in &tile {
            assert_eq!((l.version, l.extent), (2, 4096), "{}", l.name);
        }

        let grid = &tile[0];
        assert_eq!(grid.features.len(), 7);
        let kinds: Vec<&Prop> = grid.features.iter().map(|f| &f.props["kind"]).collect();
        assert_eq!(kinds[0], &Prop::Str("border".into()));
        assert!(kinds[1..].iter().all(|k| **k == Prop::Str("line".into())));
        let border = &grid.features[0];
        assert_eq!(
            border.geometry,
            Geom::LineStrings(vec![vec![(16, 16), (4080, 16), (4080, 4080), (16, 4080), (16, 16)]])
        );
        let mut lines: Vec<_> = grid.features[1..].iter().map(|f| f.geometry.clone()).collect();
        lines.sort_by_key(|g| format!("{g:?}"));
        assert!(lines.contains(&Geom::LineStrings(vec![vec![(1024, 0), (1024, 4096)]])));
        assert!(lines.contains(&Geom::LineStrings(vec![vec![(0, 3072), (4096, 3072)]])));
        assert!(grid.features.iter().all(|f| f.id.is_none()));

        let label = &tile[1];
        assert_eq!(label.features.len(), 1);
        let f = &label.features[0];
        assert_eq!(f.geometry, Geom::Points(vec![(2048, 2048)]));
        assert_eq!(f.id, Some((1 << 53) - 1), "the seed, cut to 53 bits");
        assert_eq!(f.props["name"], Prop::Str("12/2200/1343".into()));
        assert_eq!(f.props["z"], Prop::Uint(12));
        assert_eq!(f.props["x"], Prop::Uint(2200));
        assert_eq!(f.props["y"], Prop::Uint(1343));
        assert_eq!(f.props["version"], Prop::Uint(7));

        let water = &tile[2];
        assert_eq!(water.features.len(), 1);
        assert_eq!(water.features[0].props["kind"], Prop::Str("water".into()));
        let Geom::Polygons(rings) = &water.features[0].geometry else { panic!("not a polygon") };
        assert_eq!(rings.len(), 1, "one exterior ring");
        let ring = &rings[0];
        assert_eq!(ring.first(), ring.last(), "ClosePath closes the ring");
        assert_eq!(ring.len(), 5);
        // Exterior rings have positive area in tile coordinates (clockwise with y down).
        assert!(decode::signed_area(ring) > 0.0, "{}", decode::signed_area(ring));
        assert!(ring.iter().all(|&(x, y)| (0..4096).contains(&x) && (0..4096).contains(&y)));
    }

    #[test]
    fn tables_are_shared_and_bytes_deterministic() {
        let s = spec("/v2/vectortiles/core/mc/3/1/2/omv");
        assert_eq!(render(&s), render(&s.clone()));
        let grid = grid_layer();
        assert_eq!(grid.keys, ["kind"]);
        assert_eq!(grid.values.len(), 2, "border and line, each once");
        assert_ne!(render(&s), render(&Spec { version: 1, ..s.clone() }));
        assert_ne!(render(&s), render(&Spec { seed: 1, ..s.clone() }));
        assert_ne!(render(&s), render(&Spec { x: 0, ..s.clone() }));
        let top = render(&Spec { z: 17, x: (1 << 17) - 1, y: (1 << 17) - 1, version: u64::MAX, seed: u64::MAX });
        assert!(top.len() < 1024, "{}", top.len());
        assert_eq!(decode::tile(&top).unwrap()[1].features[0].props["name"], Prop::Str("17/131071/131071".into()));
    }

    #[test]
    fn decoder_rejects_garbage() {
        assert!(decode::tile(&[0x1a, 0x05, 0x0a]).is_err(), "truncated layer");
        assert!(decode::tile(&[0xff]).is_err(), "truncated varint");
    }
}

//! A minimal, independent Mapbox Vector Tile decoder for tests: reads the protobuf wire
//! format from scratch (nothing shared with the encoder in `src/mvt.rs`) and turns layers,
//! keys/values tables, tags and geometry commands into plain values with absolute
//! coordinates. Strict: malformed input is an error, not a partial result.
//!
//! Used by the unit tests of `src/mvt.rs` and by `tests/upstream.rs`.
#![allow(dead_code)] // each user needs a different part

use std::collections::HashMap;

/// A property value (`Value` message: exactly one field set).
#[derive(Clone, Debug, PartialEq)]
pub enum Prop {
    Str(String),
    Float(f32),
    Double(f64),
    Int(i64),
    Uint(u64),
    Sint(i64),
    Bool(bool),
}

/// Decoded geometry in absolute tile coordinates. Polygon rings end with their first point
/// repeated (the ClosePath).
#[derive(Clone, Debug, PartialEq)]
pub enum Geom {
    Points(Vec<(i64, i64)>),
    LineStrings(Vec<Vec<(i64, i64)>>),
    Polygons(Vec<Vec<(i64, i64)>>),
}

#[derive(Debug)]
pub struct Feature {
    pub id: Option<u64>,
    pub props: HashMap<String, Prop>,
    pub geometry: Geom,
}

#[derive(Debug)]
pub struct Layer {
    pub name: String,
    /// Defaults to 1 when absent (proto2 default).
    pub version: u32,
    /// Defaults to 4096 when absent.
    pub extent: u32,
    pub features: Vec<Feature>,
}

enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or("field runs past the end")?;
    let out = &buf[*pos..end];
    *pos = end;
    Ok(out)
}

/// Every (field number, value) of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err("field number 0".into());
        }
        let field = match wire {
            0 => Field::Varint(varint(buf, &mut pos)?),
            1 => Field::Fixed64(take(buf, &mut pos, 8)?.try_into().map_err(|_| "fixed64")?),
            2 => {
                let n = usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length")?;
                Field::Bytes(take(buf, &mut pos, n)?)
            }
            5 => Field::Fixed32(take(buf, &mut pos, 4)?.try_into().map_err(|_| "fixed32")?),
            w => return Err(format!("unsupported wire type {w}")),
        };
        out.push((number, field));
    }
    Ok(out)
}

fn packed(buf: &[u8]) -> Result<Vec<u64>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        out.push(varint(buf, &mut pos)?);
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

fn value(buf: &[u8]) -> Result<Prop, String> {
    let fs = fields(buf)?;
    if fs.len() != 1 {
        return Err(format!("a value has {} fields, wants exactly 1", fs.len()));
    }
    Ok(match &fs[0] {
        (1, Field::Bytes(b)) => Prop::Str(string(b)?),
        (2, Field::Fixed32(b)) => Prop::Float(f32::from_le_bytes(*b)),
        (3, Field::Fixed64(b)) => Prop::Double(f64::from_le_bytes(*b)),
        (4, Field::Varint(v)) => Prop::Int(*v as i64),
        (5, Field::Varint(v)) => Prop::Uint(*v),
        (6, Field::Varint(v)) => Prop::Sint(unzigzag(*v)),
        (7, Field::Varint(v)) => Prop::Bool(*v != 0),
        (n, _) => return Err(format!("bad value field {n}")),
    })
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Runs the command stream: returns the parts (each MoveTo starts one) with absolute
/// coordinates, rings closed when `ClosePath` is seen.
fn geometry(kind: u64, cmds: &[u64]) -> Result<Geom, String> {
    let (mut x, mut y) = (0i64, 0i64);
    let mut parts: Vec<Vec<(i64, i64)>> = Vec::new();
    let mut i = 0;
    while i < cmds.len() {
        let (id, count) = (cmds[i] & 7, (cmds[i] >> 3) as usize);
        i += 1;
        match id {
            1 | 2 => {
                if count == 0 {
                    return Err("command with count 0".into());
                }
                if id == 1 && kind != 1 && count != 1 {
                    return Err("MoveTo with count != 1 in a line or polygon".into());
                }
                if id == 2 && kind == 1 {
                    return Err("LineTo in a point geometry".into());
                }
                for _ in 0..count {
                    let (dx, dy) = (cmds.get(i).ok_or("missing dx")?, cmds.get(i + 1).ok_or("missing dy")?);
                    x += unzigzag(*dx);
                    y += unzigzag(*dy);
                    i += 2;
                    if id == 1 {
                        parts.push(vec![(x, y)]);
                    } else {
                        parts.last_mut().ok_or("LineTo before MoveTo")?.push((x, y));
                    }
                }
            }
            7 => {
                if count != 1 || kind != 3 {
                    return Err("ClosePath outside a polygon or with count != 1".into());
                }
                let ring = parts.last_mut().ok_or("ClosePath before MoveTo")?;
                let first = ring[0];
                ring.push(first);
            }
            other => return Err(format!("unknown command {other}")),
        }
    }
    match kind {
        1 => Ok(Geom::Points(parts.into_iter().flatten().collect())),
        2 if parts.iter().all(|p| p.len() >= 2) => Ok(Geom::LineStrings(parts)),
        3 if parts.iter().all(|r| r.len() >= 4 && r.first() == r.last()) => Ok(Geom::Polygons(parts)),
        k => Err(format!("geometry type {k} with parts {parts:?}")),
    }
}

fn layer(buf: &[u8]) -> Result<Layer, String> {
    let (mut name, mut version, mut extent) = (None, 1, 4096);
    let (mut keys, mut values, mut raw_features) = (Vec::new(), Vec::new(), Vec::new());
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => name = Some(string(b)?),
            (2, Field::Bytes(b)) => raw_features.push(b),
            (3, Field::Bytes(b)) => keys.push(string(b)?),
            (4, Field::Bytes(b)) => values.push(value(b)?),
            (5, Field::Varint(v)) => extent = u32::try_from(v).map_err(|_| "extent")?,
            (15, Field::Varint(v)) => version = u32::try_from(v).map_err(|_| "version")?,
            (n, _) => return Err(format!("unexpected layer field {n}")),
        }
    }
    let mut features = Vec::new();
    for raw in raw_features {
        let (mut id, mut tags, mut kind, mut cmds) = (None, Vec::new(), 0, Vec::new());
        for (n, f) in fields(raw)? {
            match (n, f) {
                (1, Field::Varint(v)) => id = Some(v),
                (2, Field::Bytes(b)) => tags = packed(b)?,
                (3, Field::Varint(v)) => kind = v,
                (4, Field::Bytes(b)) => cmds = packed(b)?,
                (n, _) => return Err(format!("unexpected feature field {n}")),
            }
        }
        if tags.len() % 2 != 0 {
            return Err("odd number of tags".into());
        }
        let mut props = HashMap::new();
        for pair in tags.chunks(2) {
            let k = keys.get(pair[0] as usize).ok_or("tag key out of range")?;
            let v = values.get(pair[1] as usize).ok_or("tag value out of range")?;
            props.insert(k.clone(), v.clone());
        }
        features.push(Feature { id, props, geometry: geometry(kind, &cmds)? });
    }
    Ok(Layer { name: name.ok_or("layer without a name")?, version, extent, features })
}

/// Decodes a whole tile (field 3 = layers).
pub fn tile(buf: &[u8]) -> Result<Vec<Layer>, String> {
    fields(buf)?
        .into_iter()
        .map(|(n, f)| match (n, f) {
            (3, Field::Bytes(b)) => layer(b),
            (n, _) => Err(format!("unexpected tile field {n}")),
        })
        .collect()
}

/// The signed area of a closed ring by the surveyor's formula, in tile
/// coordinates (y down). Positive = exterior ring in MVT 2.1 (clockwise on screen).
pub fn signed_area(ring: &[(i64, i64)]) -> f64 {
    let twice: i64 = ring.windows(2).map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1).sum();
    twice as f64 / 2.0
}

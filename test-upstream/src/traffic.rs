//! HERE's traffic tiles, imitated: the Traffic Raster Tile API v3 (`/v3/flow/mc/{z}/{x}/{y}/{format}`:
//! flow lines on a transparent PNG) and the Traffic Vector Tile API v2
//! (`/v2/traffictiles/{traffic|flow|incident}/mc/{z}/{x}/{y}/omv`: Mapbox Vector Tiles with
//! Tilezen's `traffic_flow` and `traffic_incidents` layers).
//!
//! Traffic changes every minute of the server's clock ([`crate::Upstream::set_clock_ms`] makes
//! it an injected one): the minute is part of every traffic tile's bytes and ETag, and its start
//! is the tile's `Last-Modified`. A tile where [`has_traffic`] is false has no traffic: the
//! vector API answers `204 No Content`, the raster API a transparent tile without lines.

use crate::body::{fnv1a, mix64};
use crate::mvt;

/// Whether a tile has traffic: every tile but those with `(x + y) % 5 == 0` (so `1/0/0`,
/// `2/1/4`, ... are empty). Tests use it to pick a tile of either kind.
pub fn has_traffic(_z: u32, x: u64, y: u64) -> bool {
    !(x + y).is_multiple_of(5)
}

/// Flow colours, free to blocked (RGB), as HERE draws them.
const FLOW: [[u8; 3]; 4] = [[0x2e, 0xa0, 0x43], [0xf2, 0xc2, 0x1b], [0xe0, 0x3b, 0x24], [0x1f, 0x1f, 0x1f]];

/// The jam level (0 free .. 3 blocked) of road `i` of a tile in `minute`.
fn level(seed: u64, minute: u64, i: u64) -> usize {
    (mix64(seed ^ minute.wrapping_mul(0x9e37_79b9) ^ i) % 4) as usize
}

/// A seed for a traffic tile from its path and canonical query.
pub(crate) fn seed(path: &str, canonical: &str) -> u64 {
    mix64(fnv1a(fnv1a(0xcbf2_9ce4_8422_2325, path.as_bytes()), canonical.as_bytes()))
}

/// A flow tile: `size` px square RGBA PNG, transparent but for three horizontal and three
/// vertical roads coloured by their jam level this minute (none when `empty`). `jpeg` draws
/// the same on white (HERE allows it; a map shows it only as a base).
pub(crate) fn flow_image(size: u32, seed: u64, minute: u64, empty: bool, jpeg: bool) -> Vec<u8> {
    let side = size as usize;
    let mut px = vec![0u8; side * side * 4];
    if !empty {
        let width = (side / 64).max(2);
        for i in 0..6u64 {
            let at = (side / 8) + (mix64(seed.wrapping_add(i)) as usize % (side * 3 / 4));
            let [r, g, b] = FLOW[level(seed, minute, i)];
            for along in 0..side {
                for across in at..(at + width).min(side) {
                    let (x, y) = if i < 3 { (along, across) } else { (across, along) };
                    px[(y * side + x) * 4..][..4].copy_from_slice(&[r, g, b, 0xff]);
                }
            }
        }
    }
    if jpeg {
        let rgb: Vec<u8> =
            px.chunks_exact(4).flat_map(|p| if p[3] == 0 { [0xff, 0xff, 0xff] } else { [p[0], p[1], p[2]] }).collect();
        let mut out = Vec::new();
        let enc = jpeg_encoder::Encoder::new(&mut out, 85);
        let side16 = u16::try_from(side).unwrap_or(u16::MAX);
        if enc.encode(&rgb, side16, side16, jpeg_encoder::ColorType::Rgb).is_ok() {
            return out;
        }
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, size, size);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let written = enc.write_header().and_then(|mut w| {
        w.write_image_data(&px)?;
        w.finish()
    });
    if written.is_err() {
        return Vec::new();
    }
    out
}

/// A traffic vector tile: `traffic_flow` lines with a `jam_factor` (0-10) and `kind`
/// (`free`, `heavy`, `queuing`, `blocked`) per road, and, for the `traffic` and `incident`
/// layers, a `traffic_incidents` point (`kind` one of HERE's incident types).
pub(crate) fn vector_tile(layer: &str, seed: u64, minute: u64) -> Vec<u8> {
    let kinds = ["free", "heavy", "queuing", "blocked"];
    let roads: Vec<mvt::Road> = (0..6u64)
        .map(|i| {
            let at = 512 + (mix64(seed.wrapping_add(i)) % 3072) as i32;
            let line = if i < 3 { vec![(0, at), (4096, at)] } else { vec![(at, 0), (at, 4096)] };
            let l = level(seed, minute, i);
            (line, kinds[l], (l as u64) * 3 + 1)
        })
        .collect();
    let incident = match layer {
        "flow" => None,
        _ => {
            let types = ["accident", "construction", "road_closure", "congestion"];
            let kind = types[(mix64(seed ^ minute) % 4) as usize];
            Some(((2048, 2048), kind))
        }
    };
    let flow = if layer == "incident" { Vec::new() } else { roads };
    mvt::render_traffic(&flow, incident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_tiles_are_transparent_pngs_that_change_each_minute() {
        let a = flow_image(256, 7, 100, false, false);
        assert_eq!(&a[..8], &crate::body::PNG_SIGNATURE);
        let decoder = png::Decoder::new(std::io::Cursor::new(a.clone()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.color_type), (256, png::ColorType::Rgba));
        let transparent = buf.chunks_exact(4).filter(|p| p[3] == 0).count();
        let drawn = buf.len() / 4 - transparent;
        assert!(transparent > drawn && drawn > 0, "{transparent} transparent, {drawn} drawn");
        assert_eq!(flow_image(256, 7, 100, false, false), a, "deterministic");
        let changes = (101..110).filter(|m| flow_image(256, 7, *m, false, false) != a).count();
        assert!(changes >= 5, "flow changes from minute to minute ({changes} of 9 differ)");
        let empty = flow_image(512, 7, 100, true, false);
        assert_ne!(empty, a);
        assert_eq!(&flow_image(256, 7, 100, false, true)[..3], &crate::body::JPEG_SOI);
    }

    #[test]
    fn empty_tiles_follow_the_rule() {
        assert!(!has_traffic(1, 0, 0));
        assert!(has_traffic(1, 1, 0));
        assert!(!has_traffic(3, 2, 3));
    }
}

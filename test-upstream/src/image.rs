//! Real raster tile images, served when [`crate::Options::images`] is on.
//!
//! A tile is drawn on a square canvas of palette indices: a background colour picked from
//! the style (day, night, satellite schemes) and the resource, shaded in a checkerboard so
//! neighbouring tiles are told apart, light grid lines every eighth of the tile, a darker
//! border on the left and top edges (so every tile boundary shows exactly one line), the
//! tile's `z/x/y` in a built-in 5x7 bitmap font on a label box in the middle, and a small
//! 16-bit mark in the bottom-right corner derived from the tile seed (so different queries of
//! the same tile differ). Content versions other than 0 tint every colour.
//!
//! Encodings: `png` as 8-bit RGB PNG, `png8` as an 8-bit palette PNG (like HERE's), `jpeg` as
//! a baseline JPEG (quality 85). Output depends only on the inputs (and the encoder crates'
//! versions), so ETags are stable across requests and servers.

use crate::body::{fnv1a, mix64};

/// Image formats of the v3 raster API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `png`: RGB, 8 bits per channel.
    Png,
    /// `png8`: palette PNG.
    Png8,
    /// `jpeg`.
    Jpeg,
}

/// Side of a tile in pixels for the `size` query parameter: 512 for `size=512`, else 256.
pub(crate) fn tile_size(size_param: Option<&str>) -> u32 {
    match size_param {
        Some("512") => 512,
        _ => 256,
    }
}

/// What one tile image shows. Build it with [`Spec::from_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) resource: String,
    pub(crate) style: String,
    pub(crate) z: u32,
    pub(crate) x: u64,
    pub(crate) y: u64,
    pub(crate) format: Format,
    pub(crate) size: u32,
    pub(crate) version: u64,
    /// Hash of version, path and canonical query; drawn as the corner mark.
    pub(crate) seed: u64,
}

impl Spec {
    /// Parses a v3 raster path (`/v3/{resource}/mc/{z}/{x}/{y}/{format}`, already validated
    /// by the router) and the decoded query pairs. `None` for anything else.
    pub(crate) fn from_request(path: &str, query: &[(String, String)], version: u64, seed: u64) -> Option<Spec> {
        let segs: Vec<&str> = path.split('/').collect();
        let ["", "v3", resource, "mc", z, x, y, format] = segs.as_slice() else {
            return None;
        };
        let format = match *format {
            "png" => Format::Png,
            "png8" => Format::Png8,
            "jpeg" => Format::Jpeg,
            _ => return None,
        };
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        Some(Spec {
            resource: resource.to_string(),
            style: param("style").unwrap_or("explore.day").to_string(),
            z: z.parse().ok()?,
            x: x.parse().ok()?,
            y: y.parse().ok()?,
            format,
            size: tile_size(param("size")),
            version,
            seed,
        })
    }
}

// ---- colours -------------------------------------------------------------------------------

type Rgb = [u8; 3];

const DAY: [Rgb; 6] =
    [[242, 239, 233], [226, 238, 220], [232, 234, 244], [246, 236, 218], [222, 238, 240], [242, 230, 234]];
const NIGHT: [Rgb; 6] = [[36, 46, 64], [28, 52, 56], [50, 40, 64], [40, 50, 40], [58, 44, 44], [34, 40, 54]];
const SATELLITE: [Rgb; 6] = [[70, 88, 62], [94, 96, 70], [58, 80, 76], [88, 78, 58], [66, 94, 82], [80, 86, 66]];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];

/// `a` moved towards `b` by `t` (0 = `a`, 1 = `b`).
fn blend(a: Rgb, b: Rgb, t: f32) -> Rgb {
    let mix = |x: u8, y: u8| (f32::from(x) + (f32::from(y) - f32::from(x)) * t).round().clamp(0.0, 255.0) as u8;
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

/// Palette slots used on the canvas.
const BG: u8 = 0;
const GRID: u8 = 1;
const BORDER: u8 = 2;
const LABEL: u8 = 3;
const TEXT: u8 = 4;
const MARK: u8 = 5;

/// The six palette colours (indexed by the slot constants) for a tile.
fn palette(spec: &Spec) -> [Rgb; 6] {
    let dark = spec.style.contains("night") || spec.style.contains("satellite");
    let scheme = if spec.style.contains("satellite") {
        &SATELLITE
    } else if dark {
        &NIGHT
    } else {
        &DAY
    };
    // The style picks a colour; each resource is a fixed step away, so base, background and
    // label tiles of one style always differ.
    let step = match spec.resource.as_str() {
        "base" => 0,
        "background" => 2,
        _ => 4,
    };
    let style_hash = mix64(fnv1a(0xcbf2_9ce4_8422_2325, spec.style.as_bytes()));
    let mut bg = scheme[((style_hash % 6) as usize + step) % 6];
    if spec.version != 0 {
        let h = mix64(spec.version ^ 0x7469_6e74_7469_6e74);
        bg = blend(bg, [h as u8, (h >> 8) as u8, (h >> 16) as u8], 0.3);
    }
    // Checkerboard so the tiling is visible even without the border.
    if (spec.x + spec.y) % 2 == 1 {
        bg = blend(bg, if dark { WHITE } else { BLACK }, 0.05);
    }
    let ink = if dark { WHITE } else { BLACK };
    [
        bg,
        blend(bg, ink, 0.12),
        blend(bg, ink, 0.35),
        if dark { blend(bg, BLACK, 0.55) } else { blend(bg, WHITE, 0.75) },
        if dark { [236, 236, 242] } else { [40, 42, 52] },
        blend(bg, ink, 0.45),
    ]
}

// ---- drawing -------------------------------------------------------------------------------

/// 5x7 glyphs for `0`-`9` and `/`, one row per byte, bit 4 = leftmost column.
const FONT: [[u8; 7]; 11] = [
    [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110], // 0
    [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // 1
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111], // 2
    [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110], // 3
    [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010], // 4
    [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110], // 5
    [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110], // 6
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000], // 7
    [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110], // 8
    [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100], // 9
    [0b00001, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b10000], // /
];
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;
/// Horizontal advance per character (glyph plus one column of spacing), in font pixels.
const ADVANCE: usize = GLYPH_W + 1;

fn glyph(c: char) -> Option<&'static [u8; 7]> {
    match c {
        '0'..='9' => FONT.get(c as usize - '0' as usize),
        '/' => FONT.get(10),
        _ => None,
    }
}

/// A square image of palette slots.
struct Canvas {
    size: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(size: usize) -> Canvas {
        Canvas { size, px: vec![BG; size * size] }
    }

    /// Fills a rectangle, clipped to the canvas.
    fn rect(&mut self, x0: usize, y0: usize, w: usize, h: usize, slot: u8) {
        let x1 = (x0 + w).min(self.size);
        let y1 = (y0 + h).min(self.size);
        for y in y0.min(y1)..y1 {
            self.px[y * self.size + x0.min(x1)..y * self.size + x1].fill(slot);
        }
    }

    /// Draws `text` with its top-left corner at (`x0`, `y0`), each font pixel `scale` wide.
    fn text(&mut self, x0: usize, y0: usize, text: &str, scale: usize, slot: u8) {
        for (i, c) in text.chars().enumerate() {
            let Some(rows) = glyph(c) else { continue };
            let cx = x0 + i * ADVANCE * scale;
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (0b10000 >> col) != 0 {
                        self.rect(cx + col * scale, y0 + row * scale, scale, scale, slot);
                    }
                }
            }
        }
    }
}

/// Width in pixels of `chars` characters at `scale` (no trailing spacing).
fn text_width(chars: usize, scale: usize) -> usize {
    (chars * ADVANCE).saturating_sub(1) * scale
}

fn draw(spec: &Spec) -> Canvas {
    let size = spec.size as usize;
    let mut c = Canvas::new(size);
    let line = (size / 256).max(1);
    let cell = size / 8;
    for i in 1..8 {
        c.rect(i * cell, 0, line, size, GRID);
        c.rect(0, i * cell, size, line, GRID);
    }
    c.rect(0, 0, size, 2 * line, BORDER);
    c.rect(0, 0, 2 * line, size, BORDER);

    let label = format!("{}/{}/{}", spec.z, spec.x, spec.y);
    let chars = label.chars().count();
    // As large as fits in 7/8 of the tile, at most size/64 (4 at 256 px, 8 at 512 px).
    let max_scale = (size / 64).max(1);
    let fit = (size * 7 / 8) / (chars * ADVANCE).max(1);
    let scale = fit.clamp(1, max_scale);
    let (tw, th) = (text_width(chars, scale), GLYPH_H * scale);
    let pad = 3 * scale;
    let (bw, bh) = (tw + 2 * pad, th + 2 * pad);
    let (bx, by) = (size.saturating_sub(bw) / 2, size.saturating_sub(bh) / 2);
    c.rect(bx, by, bw, bh, LABEL);
    c.text(bx + pad, by + pad, &label, scale, TEXT);

    // 16-bit seed mark, bottom right.
    let dot = (size / 128).max(2);
    let mark_x = size.saturating_sub(18 * dot);
    let mark_y = size.saturating_sub(3 * dot);
    for bit in 0..16 {
        if spec.seed >> bit & 1 == 1 {
            c.rect(mark_x + bit * dot, mark_y, dot, dot, MARK);
        }
    }
    c
}

// ---- encoding ------------------------------------------------------------------------------

fn rgb(canvas: &Canvas, palette: &[Rgb; 6]) -> Vec<u8> {
    canvas.px.iter().flat_map(|&slot| palette[usize::from(slot)]).collect()
}

fn encode_png(canvas: &Canvas, palette: &[Rgb; 6], indexed: bool) -> Result<Vec<u8>, String> {
    let side = canvas.size as u32;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, side, side);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let data = if indexed {
        enc.set_color(png::ColorType::Indexed);
        enc.set_palette(palette.concat());
        canvas.px.clone()
    } else {
        enc.set_color(png::ColorType::Rgb);
        rgb(canvas, palette)
    };
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&data).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

fn encode_jpeg(canvas: &Canvas, palette: &[Rgb; 6]) -> Result<Vec<u8>, String> {
    let side = u16::try_from(canvas.size).map_err(|_| "tile too large for JPEG".to_string())?;
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 85);
    enc.encode(&rgb(canvas, palette), side, side, jpeg_encoder::ColorType::Rgb).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Draws and encodes one tile. Errors only if an encoder fails (not expected).
pub(crate) fn render(spec: &Spec) -> Result<Vec<u8>, String> {
    let canvas = draw(spec);
    let palette = palette(spec);
    match spec.format {
        Format::Png => encode_png(&canvas, &palette, false),
        Format::Png8 => encode_png(&canvas, &palette, true),
        Format::Jpeg => encode_jpeg(&canvas, &palette),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, query: &[(&str, &str)]) -> Spec {
        let q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Spec::from_request(path, &q, 0, 0xabcd).unwrap()
    }

    #[test]
    fn parses_paths_and_sizes() {
        let s = spec("/v3/background/mc/3/5/7/png8", &[("size", "512"), ("style", "explore.night")]);
        assert_eq!((s.z, s.x, s.y, s.size, s.format), (3, 5, 7, 512, Format::Png8));
        assert_eq!((s.resource.as_str(), s.style.as_str()), ("background", "explore.night"));
        assert_eq!(spec("/v3/base/mc/0/0/0/jpeg", &[("size", "256")]).size, 256);
        assert_eq!(spec("/v3/base/mc/0/0/0/jpeg", &[]).style, "explore.day");
        assert!(Spec::from_request("/v2/vectortiles/core/mc/1/0/0/omv", &[], 0, 0).is_none());
        assert!(Spec::from_request("/v3/base/mc/1/0/0/gif", &[], 0, 0).is_none());
    }

    #[test]
    fn colours_vary_by_style_resource_and_version() {
        let base = spec("/v3/base/mc/1/0/0/png", &[]);
        let bg = |s: &Spec| palette(s)[0];
        assert_ne!(bg(&base), bg(&spec("/v3/background/mc/1/0/0/png", &[])));
        assert_ne!(bg(&base), bg(&spec("/v3/label/mc/1/0/0/png", &[])));
        let night = spec("/v3/base/mc/1/0/0/png", &[("style", "explore.night")]);
        assert!(bg(&night).iter().map(|&c| u32::from(c)).sum::<u32>() < 300, "night is dark");
        assert_ne!(bg(&base), bg(&Spec { version: 1, ..base.clone() }));
        assert_ne!(bg(&base), bg(&Spec { x: 1, ..base.clone() }), "checkerboard");
    }

    #[test]
    fn text_fits_and_is_drawn() {
        for path in ["/v3/base/mc/20/1048575/1048575/png", "/v3/base/mc/0/0/0/png"] {
            for size in ["256", "512"] {
                let s = spec(path, &[("size", size)]);
                let c = draw(&s);
                assert_eq!(c.px.len(), (s.size * s.size) as usize);
                assert!(c.px.contains(&TEXT), "{path} {size}");
                assert!(c.px.contains(&GRID) && c.px.contains(&BORDER) && c.px.contains(&LABEL));
            }
        }
        // Every glyph exists; others are skipped.
        assert!("0123456789/".chars().all(|c| glyph(c).is_some()));
        assert!(glyph('a').is_none());
    }
}

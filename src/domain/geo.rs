//! Web-Mercator maths shared by purge rules (which tiles a bbox covers) and seed jobs (which
//! tiles to fetch): longitude and latitude to the unit square, and the tiles of a zoom an
//! interval of it overlaps.

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

/// The tiles `t` of a zoom with `n` tiles a side whose extent `[t, t+1] / n` overlaps `(lo, hi)`
/// (not just touching it), inclusive; `None` if none do. `lo` and `hi` are finite; an empty
/// interval (`lo == hi`) gives the tile it lies in, unless it lies on an edge.
pub fn span(lo: f64, hi: f64, n: f64) -> Option<(u32, u32)> {
    let first = (lo * n).floor().max(0.0);
    let last = ((hi * n).ceil() - 1.0).min(n - 1.0);
    // Both are integers in 0..n <= 2^22: the casts are exact.
    (first <= last).then_some((first as u32, last as u32))
}

/// `u` (0 west to 1 east) back to longitude in degrees: the inverse of [`lon_to_u`].
pub fn u_to_lon(u: f64) -> f64 {
    u * 360.0 - 180.0
}

/// `v` (0 north to 1 south) back to latitude in degrees: the inverse of [`lat_to_v`] within
/// the Mercator square (0 gives [`MAX_LAT`], 1 gives -[`MAX_LAT`]).
pub fn v_to_lat(v: f64) -> f64 {
    (std::f64::consts::PI * (1.0 - 2.0 * v)).sinh().atan().to_degrees()
}

/// The bounds of tile `z/x/y` as `[west, south, east, north]` in degrees.
pub fn tile_bounds(z: u8, x: u32, y: u32) -> [f64; 4] {
    let n = f64::from(1u32 << z.min(31));
    let (x, y) = (f64::from(x), f64::from(y));
    [u_to_lon(x / n), v_to_lat((y + 1.0) / n), u_to_lon((x + 1.0) / n), v_to_lat(y / n)]
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

    #[test]
    fn tile_bounds_invert_the_projection() {
        let [w, s, e, n] = tile_bounds(0, 0, 0);
        assert_eq!((w, e), (-180.0, 180.0));
        assert!((n - MAX_LAT).abs() < 1e-9 && (s + MAX_LAT).abs() < 1e-9);
        // Zoom 1, tile 1/1: the south-east quarter.
        let [w, s, e, n] = tile_bounds(1, 1, 1);
        assert_eq!((w, e), (0.0, 180.0));
        assert!(n.abs() < 1e-9 && (s + MAX_LAT).abs() < 1e-9);
        for lat in [-80.0, -33.3, 0.0, 12.5, 60.0] {
            assert!((v_to_lat(lat_to_v(lat)) - lat).abs() < 1e-9, "{lat}");
        }
        // The tile a bounds' centre falls in is the tile itself.
        let [w, s, e, n] = tile_bounds(12, 2200, 1343);
        let (u, v) = (lon_to_u((w + e) / 2.0), lat_to_v((s + n) / 2.0));
        assert_eq!(span(u, u, 4096.0), Some((2200, 2200)));
        assert_eq!(span(v, v, 4096.0), Some((1343, 1343)));
    }
}

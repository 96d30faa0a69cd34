//! A set of tiles over several zooms, stored compactly as runs of columns per row, and checked
//! with one binary search ([`TileSet::contains`]).
//!
//! Purge rules keep the tiles a GeoJSON area covers ([`crate::domain::geo::cover`]) or a tile
//! list names ([`TileSet::parse_list`], the `z/x/y` "expire list" that osm2pgsql, imposm and
//! t-rex write) as one of these; seed jobs enumerate one ([`TileSet::tiles`]). Its JSON form,
//! shared between pods, is a list of `[z, y, x0, x1]` runs.

use crate::domain::geo::{self, Run, Shape};

/// Highest zoom a tile set may hold.
pub const MAX_ZOOM: u8 = 22;

/// Runs sorted by zoom, row and first column; the runs of one row are disjoint and not
/// adjacent (merged when built).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<[u32; 4]>", into = "Vec<[u32; 4]>")]
pub struct TileSet {
    runs: Vec<Run>,
}

/// Why a tile list, a run list or an area was refused; the message names the line or the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TileSetError(pub String);

impl TileSet {
    /// The set of `runs` (any order; overlapping and adjacent runs of a row are merged).
    pub fn from_runs(mut runs: Vec<Run>) -> TileSet {
        runs.sort_unstable();
        let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
        for r in runs {
            match merged.last_mut() {
                Some(last) if last.z == r.z && last.y == r.y && r.x0 <= last.x1.saturating_add(1) => {
                    last.x1 = last.x1.max(r.x1);
                }
                _ => merged.push(r),
            }
        }
        merged.shrink_to_fit();
        TileSet { runs: merged }
    }

    /// The tiles of zooms `zmin..=zmax` that `shape` covers, unless that takes more than
    /// `max_runs` runs (known from the rows before any clipping is done).
    pub fn cover(shape: &Shape, (zmin, zmax): (u8, u8), max_runs: u64) -> Result<TileSet, TileSetError> {
        let rows: u64 = (zmin..=zmax).map(|z| shape.rows(z)).sum();
        if rows > max_runs {
            return Err(TileSetError(format!(
                "the area spans {rows} tile rows over zooms {zmin}-{zmax}, more than the limit of {max_runs}: \
                 narrow the zoom range or split the area"
            )));
        }
        let mut runs = Vec::new();
        for z in zmin..=zmax {
            geo::cover(shape, z, &mut runs);
        }
        Ok(TileSet::from_runs(runs))
    }

    /// Reads a tile list: one `z/x/y` a line (blank lines and `#` comments skipped), at most
    /// `max_tiles` tiles. A bad line is named by its number.
    pub fn parse_list(text: &str, max_tiles: usize) -> Result<TileSet, TileSetError> {
        let mut runs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if runs.len() == max_tiles {
                return Err(TileSetError(format!("more than {max_tiles} tiles: split the list")));
            }
            let bad = |why: &str| TileSetError(format!("line {}: `{line}` {why}", n + 1));
            let mut parts = line.split('/');
            let mut next = || parts.next().map(str::trim).and_then(|p| p.parse::<u32>().ok());
            let (Some(z), Some(x), Some(y), None) = (next(), next(), next(), next()) else {
                return Err(bad("is not z/x/y"));
            };
            let z = u8::try_from(z).ok().filter(|z| *z <= MAX_ZOOM).ok_or_else(|| bad("has a zoom above 22"))?;
            if x >= 1 << z || y >= 1 << z {
                return Err(bad(&format!("is outside zoom {z} (x and y below {})", 1u32 << z)));
            }
            runs.push(Run { z, y, x0: x, x1: x });
        }
        if runs.is_empty() {
            return Err(TileSetError("the tile list names no tile".into()));
        }
        Ok(TileSet::from_runs(runs))
    }

    /// True when tile `z/x/y` is in the set: one binary search.
    pub fn contains(&self, z: u8, x: u32, y: u32) -> bool {
        let i = self.runs.partition_point(|r| (r.z, r.y, r.x0) <= (z, y, x));
        i > 0 && {
            let r = &self.runs[i - 1];
            r.z == z && r.y == y && x <= r.x1
        }
    }

    /// The runs, sorted.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// How many tiles.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.x1 - r.x0) + 1).sum()
    }

    /// True without tiles.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The lowest and highest zoom it holds.
    pub fn zooms(&self) -> Option<(u8, u8)> {
        Some((self.runs.first()?.z, self.runs.last()?.z))
    }

    /// Its tiles by zoom, then row, then column.
    pub fn tiles(&self) -> impl Iterator<Item = (u8, u32, u32)> + '_ {
        self.runs.iter().flat_map(|r| (r.x0..=r.x1).map(move |x| (r.z, x, r.y)))
    }

    /// Its tiles of zoom `z`.
    pub fn tiles_of(&self, z: u8) -> impl Iterator<Item = (u8, u32, u32)> + '_ {
        let start = self.runs.partition_point(|r| r.z < z);
        self.runs[start..].iter().take_while(move |r| r.z == z).flat_map(|r| (r.x0..=r.x1).map(move |x| (r.z, x, r.y)))
    }
}

impl From<TileSet> for Vec<[u32; 4]> {
    fn from(set: TileSet) -> Self {
        set.runs.into_iter().map(|r| [u32::from(r.z), r.y, r.x0, r.x1]).collect()
    }
}

impl TryFrom<Vec<[u32; 4]>> for TileSet {
    type Error = TileSetError;

    /// Checks every run (zoom at most [`MAX_ZOOM`], `x0 <= x1`, row and columns inside the zoom).
    fn try_from(runs: Vec<[u32; 4]>) -> Result<Self, Self::Error> {
        let runs = runs
            .into_iter()
            .map(|[z, y, x0, x1]| {
                let bad = || TileSetError(format!("run [{z}, {y}, {x0}, {x1}] is not [z, y, x0, x1] inside its zoom"));
                let z = u8::try_from(z).ok().filter(|z| *z <= MAX_ZOOM).ok_or_else(bad)?;
                let n = 1u32 << z;
                (x0 <= x1 && x1 < n && y < n).then_some(Run { z, y, x0, x1 }).ok_or_else(bad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TileSet::from_runs(runs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_becomes_merged_runs_and_membership_is_exact() {
        let set =
            TileSet::parse_list("# changed\n12/2200/1343\n12/2201/1343\n\n12/2203/1343\n 3/1/2 \n12/2202/1343\n", 10)
                .unwrap();
        assert_eq!(
            set.runs(),
            [Run { z: 3, y: 2, x0: 1, x1: 1 }, Run { z: 12, y: 1343, x0: 2200, x1: 2203 }],
            "four neighbours in a row are one run"
        );
        assert_eq!(set.len(), 5);
        assert_eq!(set.zooms(), Some((3, 12)));
        for (z, x, y, inside) in [
            (12, 2200, 1343, true),
            (12, 2203, 1343, true),
            (12, 2199, 1343, false),
            (12, 2204, 1343, false),
            (12, 2201, 1344, false),
            (3, 1, 2, true),
            (3, 2, 2, false),
            (4, 1, 2, false),
            (0, 0, 0, false),
        ] {
            assert_eq!(set.contains(z, x, y), inside, "{z}/{x}/{y}");
        }
        assert_eq!(set.tiles().count() as u64, set.len());
        assert_eq!(set.tiles_of(12).count(), 4);
        assert_eq!(set.tiles_of(5).count(), 0);
    }

    #[test]
    fn bad_lists_name_the_line() {
        let err = |text: &str| TileSet::parse_list(text, 3).unwrap_err().0;
        assert!(err("1/0/0\n2/4/0").starts_with("line 2: `2/4/0` is outside zoom 2"), "{}", err("1/0/0\n2/4/0"));
        assert!(err("12/1/2/3").contains("is not z/x/y"));
        assert!(err("12/a/2").contains("line 1"));
        assert!(err("23/0/0").contains("zoom above 22"));
        assert!(err("1/0/0\n1/0/1\n1/1/0\n1/1/1").contains("more than 3 tiles"));
        assert!(err("\n# nothing\n").contains("no tile"));
    }

    #[test]
    fn json_is_runs_and_round_trips_checked() {
        let set = TileSet::parse_list("5/3/4\n5/4/4\n6/0/63", 10).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "[[5,4,3,4],[6,63,0,0]]");
        assert_eq!(serde_json::from_str::<TileSet>(&json).unwrap(), set);
        assert!(serde_json::from_str::<TileSet>("[[5,4,4,3]]").is_err(), "x0 > x1");
        assert!(serde_json::from_str::<TileSet>("[[5,32,0,0]]").is_err(), "row outside zoom 5");
        assert!(serde_json::from_str::<TileSet>("[[23,0,0,0]]").is_err());
    }
}

//! The resume state of a seed job: which tiles are done, by their position in the job's fixed
//! order ([`super::tiles::Job::tiles`]). Kept as sorted, disjoint ranges: tiles finish roughly in
//! order, so a run is one range (a low-water mark) plus a few beyond it; a failed tile splits a
//! range, and is tried again on the next run.
//!
//! Saved as JSON, atomically (a temporary file renamed over the old one), so a crash leaves
//! either the previous state or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Tile positions done: `start -> end` (end exclusive), sorted and disjoint, never adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    ranges: BTreeMap<u64, u64>,
    count: u64,
}

impl Done {
    /// Marks position `i` done (again is harmless).
    pub fn insert(&mut self, i: u64) {
        if self.contains(i) {
            return;
        }
        self.count += 1;
        let before = self.ranges.range(..=i).next_back().map(|(s, e)| (*s, *e)).filter(|(_, e)| *e == i);
        let after = self.ranges.remove(&(i + 1));
        match (before, after) {
            (Some((s, _)), Some(e)) => self.ranges.insert(s, e),
            (Some((s, _)), None) => self.ranges.insert(s, i + 1),
            (None, Some(e)) => self.ranges.insert(i, e),
            (None, None) => self.ranges.insert(i, i + 1),
        };
    }

    pub fn contains(&self, i: u64) -> bool {
        self.ranges.range(..=i).next_back().is_some_and(|(_, e)| i < *e)
    }

    /// How many positions are done.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Every position below this one is done.
    pub fn low_water(&self) -> u64 {
        self.ranges.get(&0).copied().unwrap_or(0)
    }

    /// The set from `[start, end)` ranges, sorted and disjoint; `None` when they are not.
    pub fn from_ranges(list: &[[u64; 2]]) -> Option<Done> {
        let mut done = Done::default();
        for &[start, end] in list {
            if start >= end || done.ranges.last_key_value().is_some_and(|(_, e)| *e >= start) {
                return None;
            }
            done.ranges.insert(start, end);
            done.count += end - start;
        }
        Some(done)
    }

    /// The set as sorted `[start, end)` ranges.
    pub fn to_ranges(&self) -> Vec<[u64; 2]> {
        self.ranges.iter().map(|(s, e)| [*s, *e]).collect()
    }
}

/// The file as written.
#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    /// [`super::tiles::Job::hash`]: a state is only resumed by the same job.
    job: String,
    total: u64,
    done_count: u64,
    /// `[start, end)` positions done, sorted.
    done: Vec<[u64; 2]>,
}

/// Why a state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the seed state {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the seed state {path} is not valid ({reason}); delete it to start over")]
    Invalid { path: PathBuf, reason: String },
    #[error("the seed state {path} belongs to another job; delete it or pass another --state")]
    OtherJob { path: PathBuf },
    #[error("cannot write the seed state {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The default state file of a job: `./.tile-proxy-seed-<hash>.json`.
pub fn default_path(job_hash: &str) -> PathBuf {
    PathBuf::from(format!(".tile-proxy-seed-{job_hash}.json"))
}

/// Loads the done set for job `job_hash` of `total` tiles; a missing file is a fresh start.
pub fn load(path: &Path, job_hash: &str, total: u64) -> Result<Done, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Done::default()),
        Err(source) => return Err(StateError::Read { path: path.into(), source }),
    };
    let invalid = |reason: String| StateError::Invalid { path: path.into(), reason };
    let file: File = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if file.job != job_hash || file.total != total {
        return Err(StateError::OtherJob { path: path.into() });
    }
    let done = Done::from_ranges(&file.done).ok_or_else(|| invalid("ranges overlap or are out of order".into()))?;
    if done.ranges.last_key_value().is_some_and(|(_, e)| *e > total) {
        return Err(invalid("a range goes past the last tile".into()));
    }
    Ok(done)
}

/// Writes the state atomically: a temporary file beside it, then renamed over it.
pub fn save(path: &Path, job_hash: &str, total: u64, done: &Done) -> Result<(), StateError> {
    let file = File { version: 1, job: job_hash.to_string(), total, done_count: done.count(), done: done.to_ranges() };
    let write_err = |source| StateError::Write { path: path.into(), source };
    let json = serde_json::to_vec(&file).map_err(|e| write_err(std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// Removes the state (the job finished); a missing file is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Write { path: path.into(), source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_positions_merge_into_ranges() {
        let mut d = Done::default();
        for i in [0, 2, 1, 5, 4, 9, 3] {
            d.insert(i);
        }
        d.insert(4);
        assert_eq!(d.to_ranges(), vec![[0, 6], [9, 10]]);
        assert_eq!(d.count(), 7);
        assert_eq!(d.low_water(), 6);
        assert!(d.contains(5) && d.contains(9) && !d.contains(6) && !d.contains(10));
    }

    #[test]
    fn a_saved_state_loads_back_and_refuses_another_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert_eq!(load(&path, "abc", 10).unwrap(), Done::default());
        let mut d = Done::default();
        for i in [0, 1, 2, 7] {
            d.insert(i);
        }
        save(&path, "abc", 10, &d).unwrap();
        assert_eq!(load(&path, "abc", 10).unwrap(), d);
        assert!(matches!(load(&path, "abd", 10), Err(StateError::OtherJob { .. })));
        assert!(matches!(load(&path, "abc", 11), Err(StateError::OtherJob { .. })));
        std::fs::write(&path, r#"{"version":1,"job":"abc","total":10,"done_count":2,"done":[[3,5],[4,6]]}"#).unwrap();
        assert!(matches!(load(&path, "abc", 10), Err(StateError::Invalid { .. })));
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}

//! A pod's purge rules on disk (`cache_dir/purges.json`): saved atomically after every change
//! when the disk tier is on, and read at start, so a restart does not serve purged tiles from
//! the disk tier.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::purge::{PurgeRules, Rule};

/// Writes the active rules to `path` as a JSON array, atomically (a temporary file in the
/// same directory, synced, then renamed over `path`).
pub fn save(rules: &PurgeRules, path: &Path) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let json = serde_json::to_vec_pretty(&rules.list()).map_err(io::Error::other)?;
    let name = path.file_name().ok_or_else(|| io::Error::other("purge file path has no file name"))?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{seq}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = write_synced(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Adds the live, valid rules saved at `path` by [`save`] (merging with those
/// present) and returns how many were added. A missing file adds nothing; an unreadable or
/// corrupt one is an error (`InvalidData` when not a JSON array of rules).
pub fn load(rules: &PurgeRules, path: &Path, now_ms: u64) -> io::Result<usize> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let saved: Vec<Rule> = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("purge file {}: {e}", path.display())))?;
    Ok(rules.merge_counted(saved, now_ms))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BERLIN: [f64; 4] = [13.09, 52.34, 13.76, 52.68];

    fn rule(id: &str, at_ms: u64) -> Rule {
        Rule { id: id.to_string(), at_ms, index: None, zoom: None, bbox: None, tiles: None, key: None, url: None }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.json");
        let set = || PurgeRules::new(Duration::from_millis(100));
        let rules = set();
        assert_eq!(load(&rules, &path, 0).unwrap(), 0, "missing file");
        let a = Rule { bbox: Some(BERLIN), zoom: Some([3, 9]), ..rule("a", 10) };
        let b = Rule { key: Some("k".into()), url: Some("/u".into()), ..rule("b", 20) };
        rules.add(a.clone(), 0);
        rules.add(b.clone(), 0);
        save(&rules, &path).unwrap();
        save(&rules, &path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["purges.json"], "no temporary file left");

        let restored = set();
        assert_eq!(load(&restored, &path, 0).unwrap(), 2);
        assert_eq!(restored.list(), [a.clone(), b]);
        assert!(restored.is_purged("i", 0, 0, 0, "k", 19), "b purges by key");
        assert!(restored.is_purged("i", 9, 275, 167, "x", 9), "a purges Berlin at z9");
        assert_eq!(load(&set(), &path, 115).unwrap(), 1, "a no longer live");

        std::fs::write(&path, b"{not json").unwrap();
        let err = load(&set(), &path, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

//! The repository as a newcomer gets it: no tracked file names a path of one machine (a
//! checkout's absolute path, a home folder), so scripts and docs work wherever it is cloned.

use std::process::Command;

#[test]
fn no_tracked_file_names_a_machine_path() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("git").args(["-C", root, "ls-files", "-z"]).output().expect("git runs");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    // This checkout's own path, and the paths checkouts of this project had on the machines it
    // was developed on.
    let needles = [format!("{root}/"), "/work/main/".to_string(), "/root/tile-proxy".to_string()];
    let mut found = Vec::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let Ok(text) = std::fs::read_to_string(format!("{root}/{name}")) else { continue };
        for (i, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) && !name.ends_with("tests/repository.rs") {
                found.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "machine paths in tracked files:\n{}", found.join("\n"));
}

/// The experiment patches in `bench/` (a setting measured without shipping it) still apply, so
/// the numbers bench/README.md gives for them can be made again; a patch for an older tree says
/// so in its first line ("Applies to <commit>") and is not checked.
#[test]
fn the_bench_experiment_patches_apply_to_this_tree() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(format!("{root}/bench")).expect("bench/ is there") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "patch") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("the patch reads");
        if text.starts_with("Applies to ") {
            continue;
        }
        let out = Command::new("git").args(["-C", root, "apply", "--check"]).arg(&path).output().expect("git runs");
        assert!(
            out.status.success(),
            "{} no longer applies (refresh it, or mark it \"Applies to <commit>\"): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(path);
    }
    assert!(checked.len() >= 2, "the experiment patches are missing: {checked:?}");
}

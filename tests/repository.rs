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

//! Replays every seed of every fuzz target through its target function, on stable Rust: the
//! inputs the fuzzers found interesting (and any crash, once fixed) stay fixed in CI.

use std::path::{Path, PathBuf};

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

fn seeds_of(target: &str) -> Vec<PathBuf> {
    let dir = seeds_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = flowctl_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    let files = seeds_of(target);
    assert!(
        !files.is_empty(),
        "{} has no seeds: the test would pass without checking anything",
        seeds_dir(target).display()
    );
    for file in files {
        let data = std::fs::read(&file).expect("a readable seed");
        // A panic names the seed, so a failure says which input to look at.
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} panicked", file.display());
    }
}

#[test]
fn spec_seeds_do_not_panic() {
    replay("spec");
}

#[test]
fn state_codec_seeds_do_not_panic() {
    replay("state_codec");
}

#[test]
fn command_seeds_do_not_panic() {
    replay("command");
}

#[test]
fn schema_seeds_do_not_panic() {
    replay("schema");
}

#[test]
fn requests_seeds_do_not_panic() {
    replay("requests");
}

/// Every target has a test above and a seeds directory, and every seeds directory belongs to
/// a target, so that a new target cannot be added without seeds that run.
#[test]
fn every_target_has_seeds_and_every_seed_dir_a_target() {
    let names: Vec<&str> = flowctl_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["spec", "state_codec", "command", "schema", "requests"]
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(dirs, expected);
}

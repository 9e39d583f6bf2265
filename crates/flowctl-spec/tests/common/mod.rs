//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// The crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml` file in the repository's `examples/` directory, sorted.
#[allow(dead_code)] // Not every test file uses every helper.
pub fn examples() -> Vec<PathBuf> {
    let dir = crate_dir().join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

/// Compares `actual` with the golden file at `path`, or rewrites the file when the
/// `UPDATE_GOLDEN` environment variable is set. Returns a description of a mismatch.
#[allow(dead_code)]
pub fn check_golden(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(());
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => Ok(()),
        Ok(expected) => Err(format!(
            "{} differs (UPDATE_GOLDEN=1 to accept)\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        )),
        Err(_) => Err(format!(
            "{} is missing (UPDATE_GOLDEN=1 to create)\n--- actual\n{actual}",
            path.display()
        )),
    }
}

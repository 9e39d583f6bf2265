//! Golden diagnostics: each `diagnostics/NAME.yaml` is an invalid pipeline, and
//! `diagnostics/NAME.expected` holds every problem that full validation reports for it, one per
//! line as `NAME.yaml:line:col: path: message`.
//!
//! After an intended change of messages, regenerate the expected files with
//! `UPDATE_GOLDEN=1 cargo test -p flowctl-spec --test diagnostics` and review the diff.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_invalid_spec_reports_the_expected_problems() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(case).unwrap();
        let err = match flowctl_spec::validate_pipeline(name, &text) {
            Ok(_) => {
                failures.push(format!("{name}: validated, but every case must be invalid"));
                continue;
            }
            Err(e) => e,
        };
        for p in &err.problems {
            if p.line == 0 || p.column == 0 {
                failures.push(format!("{name}: problem without a location: {p:?}"));
            }
        }
        let actual = err.lines().join("\n") + "\n";
        let expected_path = case.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs (UPDATE_GOLDEN=1 to accept)\n--- expected\n{expected}--- actual\n{actual}"
            )),
            Err(_) => failures.push(format!(
                "{name}: no {} (UPDATE_GOLDEN=1 to create)\n--- actual\n{actual}",
                expected_path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn every_expected_file_has_its_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("expected") {
            assert!(
                path.with_extension("yaml").exists(),
                "{} has no case",
                path.display()
            );
        }
    }
}

//! Helpers shared by the unit tests: proto text in, compiled subjects out.

use std::path::PathBuf;

use crate::{compile, subjects, Compiled, Error, SubjectSchema};

/// Writes `files` (proto path, text) into a fresh temp dir and compiles them all, with the
/// temp dir as the only include directory.
pub(crate) fn compile_files(files: &[(&str, &str)]) -> Result<Compiled, Error> {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    compile(&paths, &[dir.path().to_path_buf()])
}

/// The subject `t.M` of `body`, compiled as a proto3 file `t.proto` of package `t`.
pub(crate) fn m(body: &str) -> SubjectSchema {
    subject(
        &format!("syntax = \"proto3\";\npackage t;\n{body}\n"),
        "t.M",
    )
}

/// The subject `name` of the single file `t.proto` with the given full text.
pub(crate) fn subject(text: &str, name: &str) -> SubjectSchema {
    let compiled = compile_files(&[("t.proto", text)]).unwrap();
    let package = name.rsplit_once('.').map(|(package, _)| package).unwrap();
    subjects(&compiled, package)
        .unwrap()
        .into_iter()
        .find(|schema| schema.subject == name)
        .unwrap()
}

/// `examples/protos`, from the crate directory.
pub(crate) fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/protos")
}

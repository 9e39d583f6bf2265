//! The `schema` target: the schema registry's compiler and everything a push runs after it.

use flowctl_schema::{
    check, check_deleted_references, check_size, compile, decode_json, descriptor_json, diff,
    fingerprint, subjects, CompatibilityMode, Compiled, SubjectSchema,
};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many `.proto` files per input (separated by NUL bytes).
const MAX_FILES: usize = 4;
/// At most this many packages of one input are split into subjects.
const MAX_PACKAGES: usize = 4;
/// At most this many subjects of a package are checked: every check links the subject's
/// descriptors again, and a few subjects reach every path while keeping a run fast.
const MAX_SUBJECTS: usize = 4;

/// The first byte picks the mode; the rest is the payload.
///
/// - `0`: `.proto` text, as `flowctl schemas push` compiles it with [`compile`]. NUL bytes
///   separate up to four files, written as `f0.proto`, `f1.proto`, ... into a scratch
///   directory that is also the include path, so that the files can import each other.
/// - `1`: an encoded `FileDescriptorSet` as a client pushes it, rebuilt by
///   [`Compiled::from_parts`] without source text.
/// - `2`: the same, with (empty) source text for every file, so that source info is kept.
///
/// Whatever compiles is split into subjects, fingerprinted, compared with itself and its
/// neighbours, and rebuilt from its encoding, as the server does with a push.
pub fn schema(data: &[u8]) {
    let Some((mode, payload)) = crate::select(data, 3) else {
        return;
    };
    match mode {
        0 => from_source(payload),
        _ => from_descriptors(payload, mode == 2),
    }
}

fn from_source(payload: &[u8]) {
    let scratch = Scratch::new();
    let mut paths = Vec::new();
    for (i, text) in payload.split(|b| *b == 0).take(MAX_FILES).enumerate() {
        let path = scratch.dir.join(format!("f{i}.proto"));
        if std::fs::write(&path, text).is_err() {
            return;
        }
        paths.push(path);
    }
    let Ok(compiled) = compile(&paths, std::slice::from_ref(&scratch.dir)) else {
        return;
    };
    let inputs: BTreeSet<&str> = compiled.inputs().iter().map(String::as_str).collect();
    let packages = packages(&compiled, |name| inputs.contains(name));
    let rebuilt = Compiled::from_parts(compiled.encoded().to_vec(), compiled.sources().clone())
        .expect("what the compiler produced rebuilds");
    for package in &packages {
        let found = subjects(&compiled, package);
        let again = subjects(&rebuilt, package);
        match (&found, &again) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "a push splits differently from the compile"),
            (Err(_), Err(_)) => {}
            _ => panic!("compile and push disagree on package {package:?}: {found:?} / {again:?}"),
        }
        if let Ok(found) = found {
            exercise(&found);
        }
    }
}

fn from_descriptors(payload: &[u8], with_sources: bool) {
    let mut sources = BTreeMap::new();
    if with_sources {
        if let Ok(set) = prost_types::FileDescriptorSet::decode(payload) {
            for file in set.file {
                sources.insert(file.name().to_owned(), String::new());
            }
        }
    }
    let Ok(compiled) = Compiled::from_parts(payload.to_vec(), sources) else {
        return;
    };
    for package in packages(&compiled, |_| true) {
        if let Ok(found) = subjects(&compiled, &package) {
            exercise(&found);
        }
    }
}

/// The packages of the compiled files that `wanted` names, the first [`MAX_PACKAGES`] of them.
fn packages(compiled: &Compiled, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let set: BTreeSet<String> = compiled
        .descriptor_set()
        .file
        .iter()
        .filter(|f| wanted(f.name()))
        .map(|f| f.package().to_owned())
        .collect();
    set.into_iter().take(MAX_PACKAGES).collect()
}

/// What the registry does with a push's subjects: size and fingerprint checks, compatibility
/// against itself (which must find nothing), diffs, rendering and decoding.
fn exercise(found: &[SubjectSchema]) {
    let found = &found[..found.len().min(MAX_SUBJECTS)];
    for s in found {
        let _ = check_size(s);
        let fp = fingerprint(s);
        if let (Ok(a), Ok(b)) = (&fp, &fingerprint(s)) {
            assert_eq!(a, b, "fingerprint is not deterministic");
        }
        let _ = descriptor_json(s);
        let _ = decode_json(s, &[0x08, 0x96, 0x01, 0x12, 0x01, b'x']);
        if let Ok(changes) = diff(s, s) {
            assert!(
                changes.is_empty(),
                "{} differs from itself: {changes:?}",
                s.subject
            );
        }
        // FULL applies every rule in both directions.
        if let Ok(v) = check(CompatibilityMode::Full, s, &[(1, s)]) {
            assert!(
                v.is_empty(),
                "{} is incompatible with itself: {v:?}",
                s.subject
            );
        }
    }
    for pair in found.windows(2) {
        let _ = diff(&pair[0], &pair[1]);
        let _ = check(
            CompatibilityMode::FullTransitive,
            &pair[1],
            &[(1, &pair[0]), (2, &pair[1])],
        );
    }
    let _ = check_deleted_references(found, &found[..found.len().min(1)], found);
}

/// A scratch directory for one call, unique per process and thread, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let slot = SLOT.with(|s| *s);
        let dir =
            std::env::temp_dir().join(format!("flowctl-fuzz-schema-{}-{slot}", std::process::id()));
        // A directory left by an earlier call that panicked holds stale files.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

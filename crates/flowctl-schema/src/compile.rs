//! Compiling `.proto` files into a descriptor set with protox.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorSet;

use crate::{Error, MAX_SCHEMA_BYTES};

/// The result of compiling a set of `.proto` files: a linked descriptor set (with
/// `source_code_info`, so that violations can point at lines) and the source text of the files.
///
/// Invariant: `descriptor_set`, `encoded` and the internal descriptor pool describe the same
/// files, and every import of every file is in the set.
#[derive(Debug, Clone)]
pub struct Compiled {
    descriptor_set: FileDescriptorSet,
    encoded: Vec<u8>,
    sources: BTreeMap<String, String>,
    inputs: Vec<String>,
    pool: DescriptorPool,
}

impl Compiled {
    /// Rebuilds a [`Compiled`] from what a client sends: an encoded `FileDescriptorSet` that
    /// holds every file and import, and the source text of the files keyed by proto path.
    /// The input files are taken to be the ones that have source text.
    ///
    /// This is how a server turns a push back into subjects without a compiler.
    pub fn from_parts(encoded: Vec<u8>, sources: BTreeMap<String, String>) -> Result<Self, Error> {
        let source_bytes: usize = sources.values().map(String::len).sum();
        check_len(
            "the pushed descriptor set and sources",
            encoded.len() + source_bytes,
        )?;
        let what = "push".to_owned();
        let descriptor_set =
            FileDescriptorSet::decode(encoded.as_slice()).map_err(|source| Error::Decode {
                what: what.clone(),
                source,
            })?;
        let pool = pool_of(descriptor_set.clone(), &what)?;
        let inputs = descriptor_set
            .file
            .iter()
            .map(|file| file.name().to_owned())
            .filter(|name| sources.contains_key(name))
            .collect();
        Ok(Compiled {
            descriptor_set,
            encoded,
            sources,
            inputs,
            pool,
        })
    }

    /// Every compiled file, dependencies (including well-known types) before their importers.
    pub fn descriptor_set(&self) -> &FileDescriptorSet {
        &self.descriptor_set
    }

    /// [`Self::descriptor_set`], encoded: what a client sends.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// Source text of every file that was read from disk (the inputs and the user files they
    /// import), keyed by proto path (the name an `import` would use).
    pub fn sources(&self) -> &BTreeMap<String, String> {
        &self.sources
    }

    /// Proto paths of the files named on the command line, in the compiler's order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    pub(crate) fn pool(&self) -> &DescriptorPool {
        &self.pool
    }
}

/// Compiles `files` with protox, resolving imports from `include_dirs` and the built-in
/// well-known types (`google/protobuf/*.proto`).
///
/// With no include directory, the directory of each file is used, so `compile(&["a/x.proto"], &[])`
/// gives `x.proto` the proto path `x.proto`. Every input file is rejected before parsing if it
/// is larger than [`MAX_SCHEMA_BYTES`]. Like `protoc`, a relative input that does not exist
/// as given is looked up in the include directories (`push x.proto -I protos`).
pub fn compile(files: &[PathBuf], include_dirs: &[PathBuf]) -> Result<Compiled, Error> {
    for file in files {
        let meta = std::fs::metadata(file).or_else(|err| {
            include_dirs
                .iter()
                .filter(|_| file.is_relative())
                .find_map(|dir| std::fs::metadata(dir.join(file)).ok())
                .ok_or(Error::Read {
                    path: file.clone(),
                    source: err,
                })
        })?;
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        check_len(&format!("'{}'", file.display()), len)?;
    }

    let includes = if include_dirs.is_empty() {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in files {
            let dir = match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    } else {
        include_dirs.to_vec()
    };

    let mut compiler = protox::Compiler::new(&includes).map_err(|err| from_protox(&err))?;
    compiler.include_source_info(true).include_imports(true);
    compiler
        .open_files(files)
        .map_err(|err| not_included(&err, files).unwrap_or_else(|| from_protox(&err)))?;

    // The compiler's own encoding keeps custom options that prost_types would drop.
    let encoded = compiler.encode_file_descriptor_set();
    let descriptor_set = compiler.file_descriptor_set();
    let mut sources = BTreeMap::new();
    let mut inputs = Vec::new();
    for meta in compiler.files() {
        if !meta.is_import() {
            inputs.push(meta.name().to_owned());
        }
        if let Some(path) = meta.path() {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })?;
            sources.insert(meta.name().to_owned(), text);
        }
    }
    Ok(Compiled {
        descriptor_set,
        encoded,
        sources,
        inputs,
        pool: compiler.descriptor_pool(),
    })
}

/// Links a decoded descriptor set into a pool, or says why it cannot be linked.
///
/// prost-reflect 0.16 panics (indexing a file it has not stored yet) when it reports a file
/// whose `syntax` is neither `proto2` nor `proto3`, so such a file is refused here first, as
/// prost-reflect would have refused it.
pub(crate) fn pool_of(set: FileDescriptorSet, what: &str) -> Result<DescriptorPool, Error> {
    if let Some(file) = set
        .file
        .iter()
        .find(|f| !matches!(f.syntax.as_deref(), None | Some("proto2") | Some("proto3")))
    {
        return Err(Error::Descriptor {
            what: what.to_owned(),
            message: format!(
                "{}: unknown syntax {:?} (expected \"proto2\" or \"proto3\")",
                file.name(),
                file.syntax()
            ),
        });
    }
    DescriptorPool::from_file_descriptor_set(set).map_err(|err| Error::Descriptor {
        what: what.to_owned(),
        message: err.to_string(),
    })
}

pub(crate) fn check_len(what: &str, size: usize) -> Result<(), Error> {
    if size > MAX_SCHEMA_BYTES {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size,
            limit: MAX_SCHEMA_BYTES,
        });
    }
    Ok(())
}

/// protox reports an input outside the include paths as "not found"; name the input instead.
fn not_included(err: &protox::Error, files: &[PathBuf]) -> Option<Error> {
    if !err.is_file_not_found() || err.file().is_some() {
        return None;
    }
    let text = err.to_string();
    files
        .iter()
        .find(|file| text.contains(&*file.to_string_lossy()))
        .map(|path| Error::NotIncluded { path: path.clone() })
}

/// Maps protox's error to ours, keeping the file and the first labelled position.
fn from_protox(err: &protox::Error) -> Error {
    let file = err.file().unwrap_or_default().to_owned();
    let (line, column) = first_position(err).unwrap_or((0, 0));
    let message = one_line(&err.to_string());
    if err.is_parse() {
        return Error::Syntax {
            file,
            line,
            column,
            message,
        };
    }
    if err.is_file_not_found() {
        if let Some(import) = quoted_after(&message, "import '") {
            return Error::ImportNotFound {
                file,
                line,
                column,
                import,
            };
        }
    }
    Error::Invalid {
        file,
        line,
        column,
        message,
    }
}

/// Line and column (1-based) of the first labelled span of a diagnostic, if it has one.
fn first_position(diagnostic: &dyn miette::Diagnostic) -> Option<(u32, u32)> {
    let label = diagnostic.labels()?.next()?;
    let source = diagnostic.source_code()?;
    let contents = source.read_span(label.inner(), 0, 0).ok()?;
    let line = u32::try_from(contents.line() + 1).ok()?;
    let column = u32::try_from(contents.column() + 1).ok()?;
    Some((line, column))
}

fn quoted_after(text: &str, prefix: &str) -> Option<String> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('\'')?].to_owned())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::compile_files;

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let text = "syntax = \"proto3\";\npackage t;\n\nmessage M {\n  int32 a = ;\n}\n";
        let err = compile_files(&[("broken.proto", text)]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Syntax {
                    line: 5,
                    column: 13,
                    ..
                }
            ),
            "{err:?}"
        );
        let rendered = err.to_string();
        assert!(rendered.starts_with("broken.proto:5:13: "), "{rendered}");
        assert!(!rendered.contains('\n'), "{rendered}");
    }

    #[test]
    fn missing_import_is_named_with_its_importer() {
        let text =
            "syntax = \"proto3\";\npackage t;\nimport \"nowhere/missing.proto\";\nmessage M {}\n";
        let err = compile_files(&[("t.proto", text)]).unwrap_err();
        match &err {
            Error::ImportNotFound {
                file, line, import, ..
            } => {
                assert_eq!(
                    (file.as_str(), *line, import.as_str()),
                    ("t.proto", 3, "nowhere/missing.proto")
                );
            }
            other => panic!("expected ImportNotFound, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "t.proto:3:1: import 'nowhere/missing.proto' not found"
        );
    }

    #[test]
    fn unknown_type_is_invalid_with_a_position() {
        let text = "syntax = \"proto3\";\npackage t;\nmessage M {\n  Nope n = 1;\n}\n";
        let err = compile_files(&[("t.proto", text)]).unwrap_err();
        assert!(matches!(err, Error::Invalid { line: 4, .. }), "{err:?}");
        assert!(err.to_string().starts_with("t.proto:4:"), "{err}");
    }

    #[test]
    fn well_known_types_are_built_in() {
        let text = "syntax = \"proto3\";\npackage t;\nimport \"google/protobuf/timestamp.proto\";\nmessage M { google.protobuf.Timestamp at = 1; }\n";
        let compiled = compile_files(&[("t.proto", text)]).unwrap();
        assert_eq!(compiled.inputs(), ["t.proto"]);
        assert_eq!(compiled.sources().keys().collect::<Vec<_>>(), ["t.proto"]);
        let names: Vec<&str> = compiled
            .descriptor_set()
            .file
            .iter()
            .map(|f| f.name())
            .collect();
        assert_eq!(names, ["google/protobuf/timestamp.proto", "t.proto"]);
    }

    #[test]
    fn without_include_dirs_each_files_directory_is_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        let path = dir.path().join("nested/x.proto");
        std::fs::write(&path, "syntax = \"proto3\"; package x; message X {}").unwrap();
        let compiled = compile(&[path], &[]).unwrap();
        assert_eq!(compiled.inputs(), ["x.proto"]);
    }

    #[test]
    fn file_outside_the_include_dirs_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.proto");
        std::fs::write(&path, "syntax = \"proto3\"; package x; message X {}").unwrap();
        let err = compile(std::slice::from_ref(&path), &[other.path().to_path_buf()]).unwrap_err();
        assert!(
            matches!(&err, Error::NotIncluded { path: p } if *p == path),
            "{err:?}"
        );
    }

    #[test]
    fn relative_input_is_found_in_the_include_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.proto"),
            "syntax = \"proto3\"; package x; message X {}",
        )
        .unwrap();
        let compiled = compile(&[PathBuf::from("x.proto")], &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(compiled.inputs(), ["x.proto"]);
    }

    #[test]
    fn missing_input_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = compile(&[dir.path().join("absent.proto")], &[]).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.proto"));
    }

    #[test]
    fn oversize_input_is_rejected_before_parsing() {
        let mut text = String::from("syntax = \"proto3\";\npackage t;\n");
        while text.len() <= MAX_SCHEMA_BYTES {
            text.push_str("// padding padding padding padding padding padding padding padding\n");
        }
        text.push_str("message M {}\n");
        let err = compile_files(&[("big.proto", &text)]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    limit: MAX_SCHEMA_BYTES,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("big.proto"), "{err}");
    }

    #[test]
    fn from_parts_rebuilds_what_the_client_compiled() {
        let text = "syntax = \"proto3\";\npackage t;\nimport \"google/protobuf/timestamp.proto\";\nmessage M { google.protobuf.Timestamp at = 1; }\n";
        let compiled = compile_files(&[("t.proto", text)]).unwrap();
        let rebuilt =
            Compiled::from_parts(compiled.encoded().to_vec(), compiled.sources().clone()).unwrap();
        assert_eq!(rebuilt.inputs(), ["t.proto"]);
        assert_eq!(
            crate::subjects(&rebuilt, "t").unwrap(),
            crate::subjects(&compiled, "t").unwrap()
        );
    }

    #[test]
    fn from_parts_rejects_an_unknown_syntax_without_panicking() {
        // Found by fuzzing (crates/flowctl-fuzz): prost-reflect panicked on this.
        let set = FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some("x.proto".into()),
                syntax: Some("proto4".into()),
                ..Default::default()
            }],
        };
        let err = Compiled::from_parts(set.encode_to_vec(), BTreeMap::new()).unwrap_err();
        assert!(matches!(err, Error::Descriptor { .. }), "{err:?}");
        assert!(err.to_string().contains("push"), "{err}");
    }

    #[test]
    fn from_parts_rejects_garbage_and_oversize() {
        let err = Compiled::from_parts(vec![0xff, 0xff, 0xff], BTreeMap::new()).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        let err = Compiled::from_parts(vec![0; MAX_SCHEMA_BYTES + 1], BTreeMap::new()).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    }
}

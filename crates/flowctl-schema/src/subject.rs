//! Subjects: one self-contained schema per top-level message of a package, and the
//! normalized fingerprint that gives equal schemas equal ids.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    ReflectMessage,
};
use prost_types::FileDescriptorSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compile::{check_len, Compiled};
use crate::Error;

/// The package of the well-known types. They are part of every descriptor set that imports
/// them, but they are nobody's subject and never change, so the compatibility checks and the
/// diff skip them.
const WELL_KNOWN_PACKAGE: &str = "google.protobuf";

/// One version's worth of schema for one subject, self-contained: `descriptor_set` holds the
/// defining file and every file it imports, transitively, so it can be decoded on its own.
///
/// The subject is the full name of a top-level message (`token_transfer.TokenTransferEvent`);
/// the messages and enums nested in it belong to it. Files that came with source text keep
/// their `source_code_info`, so that violations can name lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSchema {
    /// Full name of the top-level message, without a leading dot.
    pub subject: String,
    /// The proto package that declares it.
    pub package: String,
    /// Proto path of the defining file (`token_transfer.proto`).
    pub file: String,
    /// Source text of the defining file; empty if the client sent none.
    pub source: String,
    /// An encoded `google.protobuf.FileDescriptorSet`, dependencies first. Base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub descriptor_set: Vec<u8>,
}

impl SubjectSchema {
    /// Bytes that count against [`crate::MAX_SCHEMA_BYTES`]: descriptors plus source text.
    pub fn size(&self) -> usize {
        self.descriptor_set.len() + self.source.len()
    }

    /// Decodes the descriptor set and finds the subject's message in it.
    pub(crate) fn load(&self) -> Result<MessageDescriptor, Error> {
        let set = FileDescriptorSet::decode(self.descriptor_set.as_slice()).map_err(|source| {
            Error::Decode {
                what: self.subject.clone(),
                source,
            }
        })?;
        let pool = crate::compile::pool_of(set, &self.subject)?;
        pool.get_message_by_name(&self.subject)
            .filter(|message| message.parent_message().is_none())
            .ok_or_else(|| Error::MissingMessage {
                subject: self.subject.clone(),
            })
    }
}

/// Splits a compiled package into its subjects, one per top-level message, in file order.
///
/// Fails if no compiled file declares `package`, if the package has no top-level message, or
/// if a subject is over [`crate::MAX_SCHEMA_BYTES`].
pub fn subjects(compiled: &Compiled, package: &str) -> Result<Vec<SubjectSchema>, Error> {
    let pool = compiled.pool();
    let files: Vec<FileDescriptor> = pool
        .files()
        .filter(|file| file.package_name() == package)
        .collect();
    if files.is_empty() {
        let found: BTreeSet<String> = pool
            .files()
            .filter(|file| compiled.inputs().iter().any(|name| name == file.name()))
            .map(|file| file.package_name().to_owned())
            .collect();
        return Err(Error::UnknownPackage {
            package: package.to_owned(),
            found: found.into_iter().collect(),
        });
    }

    let mut out = Vec::new();
    for file in &files {
        if file.messages().len() == 0 {
            continue;
        }
        let descriptor_set = self_contained_set(pool, file, compiled).encode_to_vec();
        for message in file.messages() {
            let schema = SubjectSchema {
                subject: message.full_name().to_owned(),
                package: package.to_owned(),
                file: file.name().to_owned(),
                source: compiled
                    .sources()
                    .get(file.name())
                    .cloned()
                    .unwrap_or_default(),
                descriptor_set: descriptor_set.clone(),
            };
            check_size(&schema)?;
            out.push(schema);
        }
    }
    if out.is_empty() {
        return Err(Error::NoMessages {
            package: package.to_owned(),
        });
    }
    Ok(out)
}

/// The defining file and its transitive imports, in the pool's (topological) order. Source
/// info is kept only where there is source text to point into.
fn self_contained_set(
    pool: &DescriptorPool,
    file: &FileDescriptor,
    compiled: &Compiled,
) -> FileDescriptorSet {
    let mut needed = BTreeSet::new();
    let mut stack = vec![file.clone()];
    while let Some(next) = stack.pop() {
        if needed.insert(next.name().to_owned()) {
            stack.extend(next.dependencies());
        }
    }
    let file = pool
        .files()
        .filter(|candidate| needed.contains(candidate.name()))
        .map(|candidate| {
            let mut proto = candidate.file_descriptor_proto().clone();
            if !compiled.sources().contains_key(candidate.name()) {
                proto.source_code_info = None;
            }
            proto
        })
        .collect();
    FileDescriptorSet { file }
}

/// Rejects a schema whose descriptors plus source exceed [`crate::MAX_SCHEMA_BYTES`].
pub fn check_size(schema: &SubjectSchema) -> Result<(), Error> {
    check_len(&format!("schema '{}'", schema.subject), schema.size())
}

/// A stable hex SHA-256 of the subject's normalized schema.
///
/// The normalized form covers the subject's message, everything nested in it, and every
/// message and enum it references, transitively, each identified by its full name and
/// listed in name order. Within each: fields sorted by number, reserved ranges and names
/// sorted, `json_name` dropped, nested declarations listed separately, plus the file's syntax.
/// Comments, whitespace, declaration order, file names and imports do not count, so
/// re-pushing an edited-but-equivalent file maps to the same global id.
pub fn fingerprint(schema: &SubjectSchema) -> Result<String, Error> {
    let root = schema.load()?;
    let scope = Scope::collect(&root, |_| true);
    let mut hasher = Sha256::new();
    hash_part(&mut hasher, b"flowctl-schema fingerprint v1");
    hash_part(&mut hasher, schema.subject.as_bytes());
    for (name, message) in &scope.messages {
        let mut proto = message.descriptor_proto().clone();
        proto.nested_type.clear();
        proto.enum_type.clear();
        for field in &mut proto.field {
            field.json_name = None;
        }
        proto.field.sort_by_key(|field| field.number());
        proto
            .reserved_range
            .sort_by_key(|range| (range.start(), range.end()));
        proto.reserved_name.sort();
        hash_part(&mut hasher, b"message");
        hash_part(&mut hasher, name.as_bytes());
        hash_part(&mut hasher, syntax(&message.parent_file()).as_bytes());
        hash_part(&mut hasher, &proto.encode_to_vec());
    }
    for (name, enumeration) in &scope.enums {
        let mut proto = enumeration.enum_descriptor_proto().clone();
        proto
            .value
            .sort_by(|a, b| (a.number(), a.name()).cmp(&(b.number(), b.name())));
        proto
            .reserved_range
            .sort_by_key(|range| (range.start(), range.end()));
        proto.reserved_name.sort();
        hash_part(&mut hasher, b"enum");
        hash_part(&mut hasher, name.as_bytes());
        hash_part(&mut hasher, syntax(&enumeration.parent_file()).as_bytes());
        hash_part(&mut hasher, &proto.encode_to_vec());
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Length-prefixed, so that no two different sequences of parts hash the same input.
fn hash_part(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

fn syntax(file: &FileDescriptor) -> String {
    file.file_descriptor_proto().syntax().to_owned()
}

/// The schema's descriptor set as protobuf JSON (camelCase field names, enums by name), for
/// `schemas get -o json`. Source locations are left out: they are offsets into the source
/// text, which `-o proto` shows better.
pub fn descriptor_json(schema: &SubjectSchema) -> Result<serde_json::Value, Error> {
    let mut set =
        FileDescriptorSet::decode(schema.descriptor_set.as_slice()).map_err(|source| {
            Error::Decode {
                what: schema.subject.clone(),
                source,
            }
        })?;
    for file in &mut set.file {
        file.source_code_info = None;
    }
    serde_json::to_value(set.transcode_to_dynamic()).map_err(|err| Error::Descriptor {
        what: schema.subject.clone(),
        message: err.to_string(),
    })
}

/// Decodes `payload`, a message of the subject, into protobuf JSON (for `dlq show`). Unknown
/// fields are dropped; a payload that is not a valid encoding is an error naming the subject.
pub fn decode_json(schema: &SubjectSchema, payload: &[u8]) -> Result<serde_json::Value, Error> {
    let desc = schema.load()?;
    let msg =
        prost_reflect::DynamicMessage::decode(desc, payload).map_err(|source| Error::Decode {
            what: format!("a {} payload", schema.subject),
            source,
        })?;
    serde_json::to_value(&msg).map_err(|err| Error::Descriptor {
        what: schema.subject.clone(),
        message: err.to_string(),
    })
}

/// The messages and enums that a check looks at for one subject, keyed by full name so that
/// iteration is deterministic.
#[derive(Default)]
pub(crate) struct Scope {
    pub(crate) messages: BTreeMap<String, MessageDescriptor>,
    pub(crate) enums: BTreeMap<String, EnumDescriptor>,
}

impl Scope {
    /// The root message, everything nested in it, and the types its fields reference,
    /// transitively, where `follow(referenced package)` allows. Nested types are always in.
    pub(crate) fn collect(root: &MessageDescriptor, follow: impl Fn(&str) -> bool) -> Self {
        let mut scope = Scope::default();
        let mut stack = vec![root.clone()];
        while let Some(message) = stack.pop() {
            if scope.messages.contains_key(message.full_name()) {
                continue;
            }
            stack.extend(message.child_messages());
            for enumeration in message.child_enums() {
                scope
                    .enums
                    .insert(enumeration.full_name().to_owned(), enumeration);
            }
            for field in message.fields() {
                match field.kind() {
                    Kind::Message(target) if follow(target.package_name()) => stack.push(target),
                    Kind::Enum(target) if follow(target.package_name()) => {
                        scope.enums.insert(target.full_name().to_owned(), target);
                    }
                    _ => {}
                }
            }
            scope
                .messages
                .insert(message.full_name().to_owned(), message);
        }
        scope
    }

    /// The scope of the compatibility checks and the diff: the subject's own types plus
    /// referenced types of other packages (other subjects of the same package are checked
    /// as themselves), never the well-known types.
    pub(crate) fn for_checks(root: &MessageDescriptor) -> Self {
        let package = root.package_name().to_owned();
        Scope::collect(root, |other| {
            other != package && other != WELL_KNOWN_PACKAGE
        })
    }
}

/// 1-based line and column of the declaration at `path` in `file`, or (0, 0) without source info.
pub(crate) fn location(file: &FileDescriptor, path: &[i32]) -> (u32, u32) {
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|location| location.path == path))
        .and_then(|location| {
            let line = u32::try_from(*location.span.first()?).ok()?;
            let column = u32::try_from(*location.span.get(1)?).ok()?;
            Some((line + 1, column + 1))
        })
        .unwrap_or((0, 0))
}

/// `full_name` without the `package.` prefix, for messages meant for people.
pub(crate) fn relative<'a>(full_name: &'a str, package: &str) -> &'a str {
    full_name
        .strip_prefix(package)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(full_name)
}

/// The field's type as written in a `.proto` file, with message and enum names in full.
pub(crate) fn type_text(field: &FieldDescriptor) -> String {
    if field.is_map() {
        if let Kind::Message(entry) = field.kind() {
            let key = entry.map_entry_key_field();
            let value = entry.map_entry_value_field();
            return format!(
                "map<{}, {}>",
                kind_text(&key.kind()),
                kind_text(&value.kind())
            );
        }
    }
    let kind = kind_text(&field.kind());
    if field.is_list() {
        format!("repeated {kind}")
    } else if field.is_group() {
        format!("group {kind}")
    } else {
        kind
    }
}

pub(crate) fn kind_text(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".to_owned(),
        Kind::Float => "float".to_owned(),
        Kind::Int32 => "int32".to_owned(),
        Kind::Int64 => "int64".to_owned(),
        Kind::Uint32 => "uint32".to_owned(),
        Kind::Uint64 => "uint64".to_owned(),
        Kind::Sint32 => "sint32".to_owned(),
        Kind::Sint64 => "sint64".to_owned(),
        Kind::Fixed32 => "fixed32".to_owned(),
        Kind::Fixed64 => "fixed64".to_owned(),
        Kind::Sfixed32 => "sfixed32".to_owned(),
        Kind::Sfixed64 => "sfixed64".to_owned(),
        Kind::Bool => "bool".to_owned(),
        Kind::String => "string".to_owned(),
        Kind::Bytes => "bytes".to_owned(),
        Kind::Message(message) => message.full_name().to_owned(),
        Kind::Enum(enumeration) => enumeration.full_name().to_owned(),
    }
}

/// Descriptor bytes as base64 in JSON: a third of the size of a JSON array of numbers.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{compile_files, examples_dir, m, subject};
    use crate::{compile, MAX_SCHEMA_BYTES};

    #[test]
    fn one_subject_per_top_level_message_with_nested_types_inside() {
        let text = "syntax = \"proto3\";\npackage t;\nmessage A { message Inner {} Inner i = 1; }\nmessage B {}\nenum Loose { LOOSE_0 = 0; }\n";
        let compiled = compile_files(&[("t.proto", text)]).unwrap();
        let found = subjects(&compiled, "t").unwrap();
        let names: Vec<&str> = found.iter().map(|s| s.subject.as_str()).collect();
        assert_eq!(names, ["t.A", "t.B"]);
        assert!(found
            .iter()
            .all(|s| s.package == "t" && s.file == "t.proto" && s.source == text));
    }

    #[test]
    fn unknown_package_lists_the_packages_found() {
        let compiled =
            compile_files(&[("t.proto", "syntax = \"proto3\"; package t; message M {}")]).unwrap();
        let err = subjects(&compiled, "nope").unwrap_err();
        assert!(
            matches!(&err, Error::UnknownPackage { found, .. } if found == &["t"]),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "package 'nope' is not declared by any compiled file (found: t)"
        );
    }

    #[test]
    fn package_without_messages_is_an_error() {
        let text = "syntax = \"proto3\"; package t; enum E { E_0 = 0; }";
        let compiled = compile_files(&[("t.proto", text)]).unwrap();
        let err = subjects(&compiled, "t").unwrap_err();
        assert!(matches!(err, Error::NoMessages { .. }), "{err:?}");
        assert_eq!(err.to_string(), "package 't' defines no messages");
    }

    #[test]
    fn subject_schemas_are_self_contained_and_round_trip_through_json() {
        let text = "syntax = \"proto3\";\npackage t;\nimport \"google/protobuf/timestamp.proto\";\nmessage M { google.protobuf.Timestamp at = 1; }\n";
        let schema = subject(text, "t.M");
        let json = serde_json::to_string(&schema).unwrap();
        assert!(
            json.contains("\"descriptor_set\":\""),
            "bytes are base64: {json}"
        );
        let back: SubjectSchema = serde_json::from_str(&json).unwrap();
        assert_eq!(back, schema);
        let message = back.load().unwrap();
        assert_eq!(message.full_name(), "t.M");
        // The well-known dependency is inside, without source info; the defining file keeps it.
        let set = FileDescriptorSet::decode(back.descriptor_set.as_slice()).unwrap();
        assert_eq!(set.file.len(), 2);
        assert!(set.file[0].source_code_info.is_none());
        assert!(set.file[1].source_code_info.is_some());
    }

    #[test]
    fn load_rejects_a_subject_its_descriptors_do_not_define() {
        let mut schema = m("message M {}");
        schema.subject = "t.Other".to_owned();
        assert!(matches!(schema.load(), Err(Error::MissingMessage { .. })));
        schema.descriptor_set = vec![0xff];
        assert!(matches!(schema.load(), Err(Error::Decode { .. })));
    }

    #[test]
    fn same_text_twice_gives_the_same_fingerprint() {
        let body = "message M { int32 a = 1; string b = 2; }";
        let first = fingerprint(&m(body)).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fingerprint(&m(body)).unwrap(), first);
    }

    #[test]
    fn comments_whitespace_and_order_do_not_change_the_fingerprint() {
        let plain =
            m("message M { int32 a = 1; string b = 2; enum E { E_0 = 0; E_1 = 1; E_2 = 2; } }");
        let edited = m("// A comment.\n\n/* Another. */\nmessage M {\n  enum E {\n    E_0 = 0;\n    E_2 = 2;\n    E_1 = 1;\n  }\n  string b = 2;   // trailing\n\n  int32 a = 1;\n}\n");
        assert_eq!(fingerprint(&plain).unwrap(), fingerprint(&edited).unwrap());
    }

    #[test]
    fn schema_changes_change_the_fingerprint() {
        let base = fingerprint(&m("message M { int32 a = 1; }")).unwrap();
        for changed in [
            "message M { int64 a = 1; }",
            "message M { int32 renamed = 1; }",
            "message M { int32 a = 2; }",
            "message M { repeated int32 a = 1; }",
            "message M { int32 a = 1; reserved 2; }",
            "message M { int32 a = 1; message N {} }",
            "message M { oneof o { int32 a = 1; } }",
        ] {
            assert_ne!(fingerprint(&m(changed)).unwrap(), base, "{changed}");
        }
    }

    #[test]
    fn a_referenced_type_is_part_of_the_fingerprint() {
        let before = m("message Other { int32 x = 1; } message M { Other o = 1; }");
        let after = m("message Other { int32 x = 1; string y = 2; } message M { Other o = 1; }");
        let unrelated = m("message Other { int32 x = 1; } message M { Other o = 1; } message Z {}");
        assert_ne!(fingerprint(&before).unwrap(), fingerprint(&after).unwrap());
        assert_eq!(
            fingerprint(&before).unwrap(),
            fingerprint(&unrelated).unwrap()
        );
    }

    #[test]
    fn oversize_subject_is_rejected() {
        let mut schema = m("message M {}");
        assert!(check_size(&schema).is_ok());
        schema.source = "x".repeat(MAX_SCHEMA_BYTES);
        let err = check_size(&schema).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("schema 't.M'"), "{err}");
    }

    #[test]
    fn descriptor_json_renders_the_descriptor_set() {
        let schema = m("message M { int32 amount = 1; }");
        let json = descriptor_json(&schema).unwrap();
        let file = &json["file"][0];
        assert_eq!(file["name"], "t.proto");
        assert_eq!(file["messageType"][0]["name"], "M");
        assert_eq!(file["messageType"][0]["field"][0]["name"], "amount");
        assert_eq!(file["messageType"][0]["field"][0]["type"], "TYPE_INT32");
        assert!(file.get("sourceCodeInfo").is_none());
    }

    #[test]
    fn example_protos_compile_into_the_documented_subjects() {
        let dir = examples_dir();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            2,
            "every example proto is covered here: {files:?}"
        );

        let expected: [(&str, &[&str]); 2] = [
            (
                "raw_ledger_service",
                &[
                    "raw_ledger_service.RawLedgerChunk",
                    "raw_ledger_service.StreamRawLedgersRequest",
                ],
            ),
            (
                "token_transfer",
                &[
                    "token_transfer.TokenTransferEvent",
                    "token_transfer.EventMeta",
                    "token_transfer.Transfer",
                    "token_transfer.Mint",
                    "token_transfer.Burn",
                    "token_transfer.Clawback",
                    "token_transfer.Fee",
                ],
            ),
        ];
        let compiled = compile(&files, &[]).unwrap();
        for (package, names) in expected {
            let found = subjects(&compiled, package).unwrap();
            let found_names: Vec<&str> = found.iter().map(|s| s.subject.as_str()).collect();
            assert_eq!(found_names, names);
            // The header comment of each file lists exactly its subjects.
            let source = &found[0].source;
            for name in names {
                assert!(
                    source.contains(&format!("//   {name}")),
                    "{name} not listed in {package}'s header"
                );
            }
            for schema in &found {
                fingerprint(schema).unwrap();
                descriptor_json(schema).unwrap();
            }
        }

        let event = subjects(&compiled, "token_transfer")
            .unwrap()
            .into_iter()
            .find(|s| s.subject == "token_transfer.TokenTransferEvent")
            .unwrap();
        let message = event.load().unwrap();
        let oneof = message.oneofs().next().unwrap();
        let members: Vec<String> = oneof.fields().map(|f| f.name().to_owned()).collect();
        assert_eq!(
            (oneof.name(), members.as_slice()),
            (
                "event",
                ["transfer", "mint", "burn", "clawback", "fee"]
                    .map(String::from)
                    .as_slice()
            )
        );
    }
}

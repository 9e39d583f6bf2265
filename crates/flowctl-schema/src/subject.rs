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
        let pool =
            DescriptorPool::from_file_descriptor_set(set).map_err(|err| Error::Descriptor {
                what: self.subject.clone(),
                message: err.to_string(),
            })?;
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
    let mut set = FileDescriptorSet::decode(schema.descriptor_set.as_slice()).map_err(|source| {
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
            return format!("map<{}, {}>", kind_text(&key.kind()), kind_text(&value.kind()));
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

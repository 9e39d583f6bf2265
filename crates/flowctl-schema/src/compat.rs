//! Compatibility modes and the wire-compatibility rules.
//!
//! Two kinds of rule:
//!
//! * **Structural** rules compare versions in time order (old → new) and apply in every mode
//!   but `NONE`: deleting a field or enum value without reserving its number, dropping a
//!   reservation, moving a field into or out of a oneof, and changing a field's type to one
//!   with another wire encoding or another message/enum type. These break in both directions,
//!   or make a later number reuse possible, so no mode may allow them.
//! * **Directional** rules ask whether a *reader* can decode, without losing values, what a
//!   *writer* encoded: widening `int32` → `int64`, `string` ↔ `bytes`, singular ↔ repeated.
//!   BACKWARD takes the new schema as reader of data written with the old one; FORWARD takes
//!   the old schema as reader of data written with the new one; FULL checks both.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor};
use serde::{Deserialize, Serialize};

use crate::subject::{kind_text, location, relative, type_text, Scope, SubjectSchema};
use crate::Error;

/// How a new version of a subject must relate to the versions before it (Confluent's names).
///
/// Non-transitive modes compare the candidate with the latest version only; transitive ones
/// with every live version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityMode {
    /// No check at all.
    None,
    /// The new schema reads data written with the latest version.
    #[default]
    Backward,
    /// The new schema reads data written with every version.
    BackwardTransitive,
    /// The latest version reads data written with the new schema.
    Forward,
    /// Every version reads data written with the new schema.
    ForwardTransitive,
    /// Backward and forward, against the latest version.
    Full,
    /// Backward and forward, against every version.
    FullTransitive,
}

impl CompatibilityMode {
    /// Every mode, in documentation order.
    pub const ALL: [CompatibilityMode; 7] = [
        CompatibilityMode::None,
        CompatibilityMode::Backward,
        CompatibilityMode::BackwardTransitive,
        CompatibilityMode::Forward,
        CompatibilityMode::ForwardTransitive,
        CompatibilityMode::Full,
        CompatibilityMode::FullTransitive,
    ];

    /// The name used in the CLI, in JSON and in [`fmt::Display`].
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityMode::None => "NONE",
            CompatibilityMode::Backward => "BACKWARD",
            CompatibilityMode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityMode::Forward => "FORWARD",
            CompatibilityMode::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityMode::Full => "FULL",
            CompatibilityMode::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the candidate is compared with every live version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityMode::BackwardTransitive
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether the new schema must read old data.
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Backward
                | CompatibilityMode::BackwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether old schemas must read new data.
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Forward
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityMode {
    type Err = Error;

    /// Accepts the SCREAMING names in any case, with `-` for `_` (`backward-transitive`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_uppercase().replace('-', "_");
        CompatibilityMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == wanted)
            .ok_or_else(|| Error::UnknownMode {
                text: text.to_owned(),
            })
    }
}

/// A compatibility rule. [`fmt::Display`] and serde give its stable SCREAMING_SNAKE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Rule {
    /// Structural: a field number in use disappeared and is not reserved.
    FieldNoDeleteUnlessNumberReserved,
    /// Structural: an enum value number disappeared and is not reserved.
    EnumValueNoDeleteUnlessNumberReserved,
    /// Structural: a reserved field or enum number is no longer reserved.
    ReservedNumberNoDelete,
    /// Structural: a field moved into, out of, or between oneofs.
    FieldSameOneof,
    /// Structural: a field's type changed to another wire encoding, another message or enum
    /// type, or between map and non-map.
    FieldWireCompatibleType,
    /// Directional: the reader's type cannot hold every value of the writer's type
    /// (`int64` read as `int32`, `bytes` read as `string`, ...).
    FieldWireLosslessType,
    /// Directional: a singular reader reads a field that the writer repeats.
    FieldWireCompatibleCardinality,
    /// Across subjects: a subject's message was deleted while another subject references it.
    MessageNoDeleteWhileReferenced,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 8] = [
        Rule::FieldNoDeleteUnlessNumberReserved,
        Rule::EnumValueNoDeleteUnlessNumberReserved,
        Rule::ReservedNumberNoDelete,
        Rule::FieldSameOneof,
        Rule::FieldWireCompatibleType,
        Rule::FieldWireLosslessType,
        Rule::FieldWireCompatibleCardinality,
        Rule::MessageNoDeleteWhileReferenced,
    ];

    /// The stable code, e.g. `FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED`.
    pub fn code(self) -> &'static str {
        match self {
            Rule::FieldNoDeleteUnlessNumberReserved => "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
            Rule::EnumValueNoDeleteUnlessNumberReserved => {
                "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"
            }
            Rule::ReservedNumberNoDelete => "RESERVED_NUMBER_NO_DELETE",
            Rule::FieldSameOneof => "FIELD_SAME_ONEOF",
            Rule::FieldWireCompatibleType => "FIELD_WIRE_COMPATIBLE_TYPE",
            Rule::FieldWireLosslessType => "FIELD_WIRE_LOSSLESS_TYPE",
            Rule::FieldWireCompatibleCardinality => "FIELD_WIRE_COMPATIBLE_CARDINALITY",
            Rule::MessageNoDeleteWhileReferenced => "MESSAGE_NO_DELETE_WHILE_REFERENCED",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One broken rule, located in the candidate's source.
///
/// `line` and `column` are 1-based and point at the changed declaration in the candidate; for
/// a deletion, at the message or enum that lost it. 0 means the candidate has no source info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    /// The subject whose push is rejected.
    pub subject: String,
    /// Proto path of the file the position is in.
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// The element, relative to the subject's package (`TokenTransferEvent.amount`).
    pub path: String,
    pub message: String,
    /// The existing version the candidate was compared with, if the rule compares versions.
    pub against_version: Option<u32>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.rule, self.message
        )?;
        if let Some(version) = self.against_version {
            write!(f, " (against version {version})")?;
        }
        Ok(())
    }
}

/// Checks `candidate` against the live versions of its subject under `mode`.
///
/// `history` is `(version, schema)`, oldest first. Non-transitive modes use its last entry
/// only. A rule broken against several versions is reported once, against the latest of them.
/// Violations come sorted by file, line, column and rule.
pub fn check(
    mode: CompatibilityMode,
    candidate: &SubjectSchema,
    history: &[(u32, &SubjectSchema)],
) -> Result<Vec<Violation>, Error> {
    if mode == CompatibilityMode::None {
        return Ok(Vec::new());
    }
    let against = if mode.is_transitive() {
        history
    } else {
        history
            .get(history.len().saturating_sub(1)..)
            .unwrap_or_default()
    };
    let new_root = candidate.load()?;
    let scope = Scope::for_checks(&new_root);
    let mut out: Vec<Violation> = Vec::new();
    for (version, old) in against.iter().rev() {
        let old_root = old.load()?;
        let old_pool = old_root.parent_pool();
        let mut checker = Checker {
            mode,
            subject: &candidate.subject,
            package: &candidate.package,
            version: *version,
            found: Vec::new(),
        };
        for (name, new_message) in &scope.messages {
            if new_message.is_map_entry() {
                continue;
            }
            if let Some(old_message) = old_pool.get_message_by_name(name) {
                checker.message(&old_message, new_message);
            }
        }
        for (name, new_enum) in &scope.enums {
            if let Some(old_enum) = old_pool.get_enum_by_name(name) {
                checker.enumeration(&old_enum, new_enum);
            }
        }
        for violation in checker.found {
            let seen = out.iter().any(|earlier| {
                earlier.rule == violation.rule
                    && earlier.path == violation.path
                    && earlier.message == violation.message
            });
            if !seen {
                out.push(violation);
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.rule, &a.path)
            .cmp(&(&b.file, b.line, b.column, b.rule, &b.path))
    });
    Ok(out)
}

/// Finds subjects deleted by a push that other subjects still reference.
///
/// `previous` holds the latest version of every subject the package had; `current` the
/// subjects of the push; `others` the latest version of every subject of other packages. A
/// subject of `previous` missing from `current` is deleted; each field of `current` or
/// `others` whose type is that message (or a type nested in it) is a violation located at the
/// referencing field.
pub fn check_deleted_references(
    previous: &[SubjectSchema],
    current: &[SubjectSchema],
    others: &[SubjectSchema],
) -> Result<Vec<Violation>, Error> {
    let deleted: Vec<&SubjectSchema> = previous
        .iter()
        .filter(|old| !current.iter().any(|new| new.subject == old.subject))
        .collect();
    let mut out: Vec<Violation> = Vec::new();
    if deleted.is_empty() {
        return Ok(out);
    }
    for referrer in current.iter().chain(others) {
        let root = referrer.load()?;
        let scope = Scope::collect(&root, |_| true);
        for message in scope.messages.values() {
            for field in message.fields() {
                let target = match field.kind() {
                    Kind::Message(target) => target.full_name().to_owned(),
                    Kind::Enum(target) => target.full_name().to_owned(),
                    _ => continue,
                };
                for gone in &deleted {
                    let nested_prefix = format!("{}.", gone.subject);
                    if target != gone.subject && !target.starts_with(&nested_prefix) {
                        continue;
                    }
                    let file = field.parent_file();
                    let (line, column) = location(&file, field.path());
                    let violation = Violation {
                        rule: Rule::MessageNoDeleteWhileReferenced,
                        subject: gone.subject.clone(),
                        file: file.name().to_owned(),
                        line,
                        column,
                        path: field.full_name().to_owned(),
                        message: format!(
                            "message {} is deleted, but field {} of subject {} references it",
                            gone.subject,
                            field.full_name(),
                            referrer.subject
                        ),
                        against_version: None,
                    };
                    if !out
                        .iter()
                        .any(|v| v.subject == violation.subject && v.path == violation.path)
                    {
                        out.push(violation);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Which schema reads and which wrote, for a directional rule.
#[derive(Clone, Copy)]
enum Direction {
    /// BACKWARD: the new schema reads old data.
    NewReadsOld,
    /// FORWARD: the old schema reads new data.
    OldReadsNew,
}

impl Direction {
    fn describe(self) -> &'static str {
        match self {
            Direction::NewReadsOld => "the new schema reading old data",
            Direction::OldReadsNew => "the old schema reading new data",
        }
    }
}

/// Compares one old version with the candidate, collecting violations.
struct Checker<'a> {
    mode: CompatibilityMode,
    subject: &'a str,
    package: &'a str,
    version: u32,
    found: Vec<Violation>,
}

impl Checker<'_> {
    fn directions(&self) -> Vec<Direction> {
        let mut directions = Vec::new();
        if self.mode.checks_backward() {
            directions.push(Direction::NewReadsOld);
        }
        if self.mode.checks_forward() {
            directions.push(Direction::OldReadsNew);
        }
        directions
    }

    fn report(
        &mut self,
        rule: Rule,
        at: (&prost_reflect::FileDescriptor, &[i32]),
        path: &str,
        message: String,
    ) {
        let (line, column) = location(at.0, at.1);
        self.found.push(Violation {
            rule,
            subject: self.subject.to_owned(),
            file: at.0.name().to_owned(),
            line,
            column,
            path: relative(path, self.package).to_owned(),
            message,
            against_version: Some(self.version),
        });
    }

    fn message(&mut self, old: &MessageDescriptor, new: &MessageDescriptor) {
        let new_file = new.parent_file();
        let reserved: Vec<(i64, i64)> = new
            .reserved_ranges()
            .map(|range| (i64::from(range.start), i64::from(range.end)))
            .collect();
        for old_field in old.fields() {
            match new.get_field(old_field.number()) {
                Some(new_field) => self.field(old, new, &old_field, &new_field),
                None => {
                    if !covers(&reserved, i64::from(old_field.number())) {
                        self.report(
                            Rule::FieldNoDeleteUnlessNumberReserved,
                            (&new_file, new.path()),
                            old_field.full_name(),
                            format!(
                                "field {} `{}` ({}) was deleted from {} without reserving its number; add `reserved {};`",
                                old_field.number(),
                                old_field.name(),
                                type_text(&old_field),
                                relative(new.full_name(), self.package),
                                old_field.number()
                            ),
                        );
                    }
                }
            }
        }
        for range in old.reserved_ranges() {
            let old_range = (i64::from(range.start), i64::from(range.end));
            if let Some(number) = first_uncovered(old_range, &reserved) {
                let reuse = u32::try_from(number)
                    .ok()
                    .and_then(|number| new.get_field(number))
                    .map(|field| format!(", and field `{}` now uses it", field.name()))
                    .unwrap_or_default();
                self.report(
                    Rule::ReservedNumberNoDelete,
                    (&new_file, new.path()),
                    new.full_name(),
                    format!(
                        "field number {number} was reserved in {} and no longer is{reuse}",
                        relative(new.full_name(), self.package)
                    ),
                );
            }
        }
    }

    fn field(
        &mut self,
        old_message: &MessageDescriptor,
        new_message: &MessageDescriptor,
        old: &FieldDescriptor,
        new: &FieldDescriptor,
    ) {
        let new_file = new.parent_file();
        let at = (&new_file, new.path());
        let name = new.full_name();
        let label = if old.name() == new.name() {
            format!("field {} `{}`", new.number(), new.name())
        } else {
            format!(
                "field {} (`{}`, formerly `{}`)",
                new.number(),
                new.name(),
                old.name()
            )
        };

        if let Some(problem) = oneof_change(old_message, new_message, old, new) {
            self.report(Rule::FieldSameOneof, at, name, format!("{label} {problem}"));
        }

        if old.is_map() || new.is_map() {
            match (map_parts(old), map_parts(new)) {
                (Some((old_key, old_value)), Some((new_key, new_value))) => {
                    self.kinds(at, name, &format!("{label} key"), &old_key, &new_key);
                    self.kinds(at, name, &format!("{label} value"), &old_value, &new_value);
                }
                _ => self.report(
                    Rule::FieldWireCompatibleType,
                    at,
                    name,
                    format!(
                        "{label} changed from {} to {}: maps and other fields are encoded differently",
                        type_text(old),
                        type_text(new)
                    ),
                ),
            }
            return;
        }

        if old.is_group() != new.is_group() {
            self.report(
                Rule::FieldWireCompatibleType,
                at,
                name,
                format!(
                    "{label} changed from {} to {}: groups and messages are encoded differently",
                    type_text(old),
                    type_text(new)
                ),
            );
        } else {
            self.kinds(at, name, &label, &old.kind(), &new.kind());
        }

        for direction in self.directions() {
            let (reader, writer) = match direction {
                Direction::NewReadsOld => (new, old),
                Direction::OldReadsNew => (old, new),
            };
            if writer.is_list() && !reader.is_list() {
                self.report(
                    Rule::FieldWireCompatibleCardinality,
                    at,
                    name,
                    format!(
                        "{label} changed from {} to {}: {} keeps only the last element",
                        type_text(old),
                        type_text(new),
                        direction.describe()
                    ),
                );
            }
        }
    }

    /// Compares two value types: symmetric incompatibility once, lossy reads per direction.
    fn kinds(
        &mut self,
        at: (&prost_reflect::FileDescriptor, &[i32]),
        name: &str,
        label: &str,
        old_kind: &Kind,
        new_kind: &Kind,
    ) {
        if let Verdict::Incompatible(reason) = read_verdict(new_kind, old_kind) {
            self.report(
                Rule::FieldWireCompatibleType,
                at,
                name,
                format!(
                    "{label} changed type from {} to {}: {reason}",
                    kind_text(old_kind),
                    kind_text(new_kind)
                ),
            );
            return;
        }
        for direction in self.directions() {
            let (reader, writer) = match direction {
                Direction::NewReadsOld => (new_kind, old_kind),
                Direction::OldReadsNew => (old_kind, new_kind),
            };
            if let Verdict::Lossy(reason) = read_verdict(reader, writer) {
                self.report(
                    Rule::FieldWireLosslessType,
                    at,
                    name,
                    format!(
                        "{label} changed type from {} to {}: with {}, {reason}",
                        kind_text(old_kind),
                        kind_text(new_kind),
                        direction.describe()
                    ),
                );
            }
        }
    }

    fn enumeration(&mut self, old: &EnumDescriptor, new: &EnumDescriptor) {
        let new_file = new.parent_file();
        let reserved: Vec<(i64, i64)> = new
            .reserved_ranges()
            .map(|range| (i64::from(*range.start()), i64::from(*range.end()) + 1))
            .collect();
        let mut seen = BTreeSet::new();
        for old_value in old.values() {
            let number = old_value.number();
            if !seen.insert(number)
                || new.get_value(number).is_some()
                || covers(&reserved, i64::from(number))
            {
                continue;
            }
            self.report(
                Rule::EnumValueNoDeleteUnlessNumberReserved,
                (&new_file, new.path()),
                &format!("{}.{}", new.full_name(), old_value.name()),
                format!(
                    "enum value {number} `{}` was deleted from {} without reserving its number; add `reserved {number};`",
                    old_value.name(),
                    relative(new.full_name(), self.package)
                ),
            );
        }
        for range in old.reserved_ranges() {
            let old_range = (i64::from(*range.start()), i64::from(*range.end()) + 1);
            if let Some(number) = first_uncovered(old_range, &reserved) {
                self.report(
                    Rule::ReservedNumberNoDelete,
                    (&new_file, new.path()),
                    new.full_name(),
                    format!(
                        "enum number {number} was reserved in {} and no longer is",
                        relative(new.full_name(), self.package)
                    ),
                );
            }
        }
    }
}

fn map_parts(field: &FieldDescriptor) -> Option<(Kind, Kind)> {
    match field.kind() {
        Kind::Message(entry) if field.is_map() => Some((
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        )),
        _ => None,
    }
}

/// The real (not proto3-`optional` synthetic) oneof of a field.
fn real_oneof(field: &FieldDescriptor) -> Option<OneofDescriptor> {
    field
        .containing_oneof()
        .filter(|oneof| !oneof.is_synthetic())
}

/// Describes a oneof move of a field present in both versions, if there is one.
///
/// Oneofs are matched by membership, not by name: a renamed oneof with the same fields is the
/// same oneof on the wire. Two versions' oneofs differ when their fields that exist in both
/// versions differ.
fn oneof_change(
    old_message: &MessageDescriptor,
    new_message: &MessageDescriptor,
    old: &FieldDescriptor,
    new: &FieldDescriptor,
) -> Option<String> {
    match (real_oneof(old), real_oneof(new)) {
        (None, None) => None,
        (Some(from), None) => Some(format!("moved out of oneof `{}`", from.name())),
        (None, Some(to)) => Some(format!("moved into oneof `{}`", to.name())),
        (Some(from), Some(to)) => {
            let kept_from: BTreeSet<u32> = from
                .fields()
                .map(|field| field.number())
                .filter(|number| new_message.get_field(*number).is_some())
                .collect();
            let kept_to: BTreeSet<u32> = to
                .fields()
                .map(|field| field.number())
                .filter(|number| old_message.get_field(*number).is_some())
                .collect();
            (kept_from != kept_to).then(|| {
                if from.name() == to.name() {
                    format!("is in oneof `{}` with other members than before", to.name())
                } else {
                    format!(
                        "moved from oneof `{}` to oneof `{}`",
                        from.name(),
                        to.name()
                    )
                }
            })
        }
    }
}

/// Whether `number` falls in one of the half-open `ranges`.
fn covers(ranges: &[(i64, i64)], number: i64) -> bool {
    ranges
        .iter()
        .any(|&(start, end)| start <= number && number < end)
}

/// The first number of the half-open `range` that no range of `by` covers.
fn first_uncovered(range: (i64, i64), by: &[(i64, i64)]) -> Option<i64> {
    let mut sorted = by.to_vec();
    sorted.sort_unstable();
    let mut next = range.0;
    for (start, end) in sorted {
        if next >= range.1 {
            break;
        }
        if start > next {
            return Some(next);
        }
        next = next.max(end);
    }
    (next < range.1).then_some(next)
}

/// Whether a reader's type decodes what a writer's type encodes.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Safe,
    /// Decodes, but some values come out different or are dropped.
    Lossy(String),
    /// Different wire encoding or different message/enum type: broken in both directions.
    Incompatible(String),
}

/// How the wire encodes a type; types of different classes never read each other.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// Values as varints, with the range of values the type can hold. Enums hold int32s.
    Varint(i128, i128),
    /// Zigzag varints (`sint32`, `sint64`): the bit width.
    Zigzag(u32),
    Fixed32 {
        signed: bool,
    },
    Fixed64 {
        signed: bool,
    },
    Float,
    Double,
    /// Length-delimited: string, bytes, messages.
    Delimited,
}

fn class(kind: &Kind) -> Class {
    match kind {
        Kind::Bool => Class::Varint(0, 1),
        Kind::Int32 | Kind::Enum(_) => Class::Varint(i128::from(i32::MIN), i128::from(i32::MAX)),
        Kind::Uint32 => Class::Varint(0, i128::from(u32::MAX)),
        Kind::Int64 => Class::Varint(i128::from(i64::MIN), i128::from(i64::MAX)),
        Kind::Uint64 => Class::Varint(0, i128::from(u64::MAX)),
        Kind::Sint32 => Class::Zigzag(32),
        Kind::Sint64 => Class::Zigzag(64),
        Kind::Fixed32 => Class::Fixed32 { signed: false },
        Kind::Sfixed32 => Class::Fixed32 { signed: true },
        Kind::Fixed64 => Class::Fixed64 { signed: false },
        Kind::Sfixed64 => Class::Fixed64 { signed: true },
        Kind::Float => Class::Float,
        Kind::Double => Class::Double,
        Kind::String | Kind::Bytes | Kind::Message(_) => Class::Delimited,
    }
}

/// Can `reader` decode, without loss, every value `writer` can encode? Message and enum
/// types compare by full name. Incompatibility is symmetric by construction.
fn read_verdict(reader: &Kind, writer: &Kind) -> Verdict {
    if kind_text(reader) == kind_text(writer) {
        return Verdict::Safe;
    }
    match (reader, writer) {
        (Kind::Enum(_), Kind::Enum(_)) => {
            return Verdict::Incompatible("the enum types differ".to_owned())
        }
        (Kind::Enum(_), _) => {
            return Verdict::Lossy(
                "numbers that are not values of the enum are unknown to the reader".to_owned(),
            )
        }
        _ => {}
    }
    match (class(reader), class(writer)) {
        (Class::Varint(reader_min, reader_max), Class::Varint(writer_min, writer_max)) => {
            if reader_min <= writer_min && writer_max <= reader_max {
                Verdict::Safe
            } else {
                Verdict::Lossy(format!(
                    "{} values outside the range of {} are truncated or change sign",
                    kind_text(writer),
                    kind_text(reader)
                ))
            }
        }
        (Class::Zigzag(reader_bits), Class::Zigzag(writer_bits)) => {
            if reader_bits >= writer_bits {
                Verdict::Safe
            } else {
                Verdict::Lossy("64-bit values are truncated to 32 bits".to_owned())
            }
        }
        (Class::Fixed32 { .. }, Class::Fixed32 { .. })
        | (Class::Fixed64 { .. }, Class::Fixed64 { .. }) => {
            Verdict::Lossy("values with the top bit set change sign".to_owned())
        }
        (Class::Delimited, Class::Delimited) => delimited_verdict(reader, writer),
        _ => Verdict::Incompatible("the wire encodings differ".to_owned()),
    }
}

fn delimited_verdict(reader: &Kind, writer: &Kind) -> Verdict {
    match (reader, writer) {
        (Kind::Bytes, Kind::String | Kind::Message(_)) => Verdict::Safe,
        (Kind::String, Kind::Bytes) => {
            Verdict::Lossy("bytes that are not valid UTF-8 fail to decode as string".to_owned())
        }
        (Kind::Message(_), Kind::Bytes) => {
            Verdict::Lossy("bytes that are not an encoded message fail to decode".to_owned())
        }
        (Kind::Message(_), Kind::Message(_)) => {
            Verdict::Incompatible("the message types differ".to_owned())
        }
        _ => Verdict::Incompatible("strings and messages are not interchangeable".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects;
    use crate::testing::{compile_files, m, subject};
    use CompatibilityMode as Mode;
    use Rule as R;

    /// One row: the live versions (numbered 1.. oldest first), the candidate, the mode, and the
    /// rules expected to break (sorted; empty means compatible).
    struct Case {
        name: &'static str,
        mode: Mode,
        history: &'static [&'static str],
        new: &'static str,
        expect: &'static [Rule],
        /// When set, every violation must have been found against this version.
        against: Option<u32>,
    }

    const fn case(
        name: &'static str,
        mode: Mode,
        history: &'static [&'static str],
        new: &'static str,
        expect: &'static [Rule],
    ) -> Case {
        Case {
            name,
            mode,
            history,
            new,
            expect,
            against: None,
        }
    }

    const A_INT32: &str = "message M { int32 a = 1; }";
    const A_INT64: &str = "message M { int64 a = 1; }";
    const A_B: &str = "message M { int32 a = 1; int32 b = 2; }";

    const CASES: &[Case] = &[
        // Safe changes pass even FULL.
        case(
            "new field",
            Mode::Full,
            &[A_INT32],
            "message M { int32 a = 1; string b = 2; }",
            &[],
        ),
        case(
            "rename keeping number and type",
            Mode::Full,
            &[A_INT32],
            "message M { int32 renamed = 1; }",
            &[],
        ),
        case(
            "new enum value",
            Mode::Full,
            &["message M { enum E { E_0 = 0; } E e = 1; }"],
            "message M { enum E { E_0 = 0; E_1 = 1; } E e = 1; }",
            &[],
        ),
        case(
            "deleted field with reserved number",
            Mode::Full,
            &[A_B],
            "message M { int32 a = 1; reserved 2; }",
            &[],
        ),
        case(
            "deleted enum value with reserved number",
            Mode::Full,
            &["message M { enum E { E_0 = 0; E_1 = 1; } E e = 1; }"],
            "message M { enum E { E_0 = 0; reserved 1; } E e = 1; }",
            &[],
        ),
        case(
            "proto3 optional is not a oneof",
            Mode::Full,
            &[A_INT32],
            "message M { optional int32 a = 1; }",
            &[],
        ),
        case(
            "renamed oneof with the same members",
            Mode::Full,
            &["message M { oneof o { int32 a = 1; string b = 2; } }"],
            "message M { oneof renamed { int32 a = 1; string b = 2; } }",
            &[],
        ),
        case(
            "new field in an existing oneof",
            Mode::Full,
            &["message M { oneof o { int32 a = 1; } }"],
            "message M { oneof o { int32 a = 1; string b = 2; } }",
            &[],
        ),
        case(
            "NONE allows anything",
            Mode::None,
            &[A_B],
            "message M { string a = 1; }",
            &[],
        ),
        // Deleting numbers.
        case(
            "deleted field, BACKWARD",
            Mode::Backward,
            &[A_B],
            A_INT32,
            &[R::FieldNoDeleteUnlessNumberReserved],
        ),
        case(
            "deleted field, FORWARD",
            Mode::Forward,
            &[A_B],
            A_INT32,
            &[R::FieldNoDeleteUnlessNumberReserved],
        ),
        case(
            "deleted field in a nested message",
            Mode::Backward,
            &["message M { message N { int32 x = 1; int32 y = 2; } N n = 1; }"],
            "message M { message N { int32 x = 1; } N n = 1; }",
            &[R::FieldNoDeleteUnlessNumberReserved],
        ),
        case(
            "deleted enum value",
            Mode::Backward,
            &["message M { enum E { E_0 = 0; E_1 = 1; } E e = 1; }"],
            "message M { enum E { E_0 = 0; } E e = 1; }",
            &[R::EnumValueNoDeleteUnlessNumberReserved],
        ),
        case(
            "deleted value of an enum nested two levels down",
            Mode::FullTransitive,
            &["message M { message N { enum E { E_0 = 0; E_1 = 1; } E e = 1; } N n = 1; }"],
            "message M { message N { enum E { E_0 = 0; } E e = 1; } N n = 1; }",
            &[R::EnumValueNoDeleteUnlessNumberReserved],
        ),
        case(
            "dropped field reservation",
            Mode::Backward,
            &["message M { int32 a = 1; reserved 2, 5 to 7; }"],
            "message M { int32 a = 1; reserved 2, 5, 7; }",
            &[R::ReservedNumberNoDelete],
        ),
        case(
            "reserved number reused",
            Mode::Forward,
            &["message M { int32 a = 1; reserved 2; }"],
            "message M { int32 a = 1; string b = 2; }",
            &[R::ReservedNumberNoDelete],
        ),
        case(
            "dropped enum reservation",
            Mode::Full,
            &["message M { enum E { E_0 = 0; reserved 3 to 4; } E e = 1; }"],
            "message M { enum E { E_0 = 0; reserved 3; } E e = 1; }",
            &[R::ReservedNumberNoDelete],
        ),
        // Oneofs.
        case(
            "moved into a oneof",
            Mode::Backward,
            &[A_INT32],
            "message M { oneof o { int32 a = 1; } }",
            &[R::FieldSameOneof],
        ),
        case(
            "moved out of a oneof",
            Mode::Forward,
            &["message M { oneof o { int32 a = 1; } }"],
            A_INT32,
            &[R::FieldSameOneof],
        ),
        case(
            "oneof split in two",
            Mode::Backward,
            &["message M { oneof o { int32 a = 1; int32 b = 2; } }"],
            "message M { oneof o { int32 a = 1; } oneof p { int32 b = 2; } }",
            &[R::FieldSameOneof, R::FieldSameOneof],
        ),
        // Types that cannot read each other, in any mode.
        case(
            "int32 to string",
            Mode::Backward,
            &[A_INT32],
            "message M { string a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "number reused under another name and type",
            Mode::Forward,
            &[A_INT32],
            "message M { string memo = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "int32 to sint32",
            Mode::Forward,
            &[A_INT32],
            "message M { sint32 a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "float to double",
            Mode::Backward,
            &["message M { float a = 1; }"],
            "message M { double a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "message type changed",
            Mode::Backward,
            &["message A {} message B {} message M { A a = 1; }"],
            "message A {} message B {} message M { B a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "enum type changed",
            Mode::Backward,
            &["enum E { E_0 = 0; } enum F { F_0 = 0; } message M { E a = 1; }"],
            "enum E { E_0 = 0; } enum F { F_0 = 0; } message M { F a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "map value int32 to string",
            Mode::Backward,
            &["message M { map<string, int32> a = 1; }"],
            "message M { map<string, string> a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        case(
            "map to repeated",
            Mode::Backward,
            &["message M { map<string, int32> a = 1; }"],
            "message M { repeated string a = 1; }",
            &[R::FieldWireCompatibleType],
        ),
        // Directional: widening and narrowing.
        case(
            "int32 to int64, BACKWARD",
            Mode::Backward,
            &[A_INT32],
            A_INT64,
            &[],
        ),
        case(
            "int32 to int64, FORWARD",
            Mode::Forward,
            &[A_INT32],
            A_INT64,
            &[R::FieldWireLosslessType],
        ),
        case(
            "int32 to int64, FULL",
            Mode::Full,
            &[A_INT32],
            A_INT64,
            &[R::FieldWireLosslessType],
        ),
        case(
            "int64 to int32, BACKWARD",
            Mode::Backward,
            &[A_INT64],
            A_INT32,
            &[R::FieldWireLosslessType],
        ),
        case(
            "int64 to int32, FORWARD",
            Mode::Forward,
            &[A_INT64],
            A_INT32,
            &[],
        ),
        case(
            "uint32 to int32",
            Mode::Backward,
            &["message M { uint32 a = 1; }"],
            A_INT32,
            &[R::FieldWireLosslessType],
        ),
        case(
            "bool to int32",
            Mode::Backward,
            &["message M { bool a = 1; }"],
            A_INT32,
            &[],
        ),
        case(
            "sint32 to sint64, FORWARD",
            Mode::Forward,
            &["message M { sint32 a = 1; }"],
            "message M { sint64 a = 1; }",
            &[R::FieldWireLosslessType],
        ),
        case(
            "fixed32 to sfixed32",
            Mode::Backward,
            &["message M { fixed32 a = 1; }"],
            "message M { sfixed32 a = 1; }",
            &[R::FieldWireLosslessType],
        ),
        case(
            "string to bytes, BACKWARD",
            Mode::Backward,
            &["message M { string a = 1; }"],
            "message M { bytes a = 1; }",
            &[],
        ),
        case(
            "string to bytes, FORWARD",
            Mode::Forward,
            &["message M { string a = 1; }"],
            "message M { bytes a = 1; }",
            &[R::FieldWireLosslessType],
        ),
        case(
            "message to bytes, BACKWARD",
            Mode::Backward,
            &["message A {} message M { A a = 1; }"],
            "message A {} message M { bytes a = 1; }",
            &[],
        ),
        case(
            "enum to int32, BACKWARD",
            Mode::Backward,
            &["enum E { E_0 = 0; } message M { E a = 1; }"],
            "enum E { E_0 = 0; } message M { int32 a = 1; }",
            &[],
        ),
        case(
            "enum to int32, FORWARD",
            Mode::Forward,
            &["enum E { E_0 = 0; } message M { E a = 1; }"],
            "enum E { E_0 = 0; } message M { int32 a = 1; }",
            &[R::FieldWireLosslessType],
        ),
        case(
            "map value widened, FORWARD",
            Mode::Forward,
            &["message M { map<string, int32> a = 1; }"],
            "message M { map<string, int64> a = 1; }",
            &[R::FieldWireLosslessType],
        ),
        // Directional: cardinality.
        case(
            "singular to repeated, BACKWARD",
            Mode::Backward,
            &[A_INT32],
            "message M { repeated int32 a = 1; }",
            &[],
        ),
        case(
            "singular to repeated, FORWARD",
            Mode::Forward,
            &[A_INT32],
            "message M { repeated int32 a = 1; }",
            &[R::FieldWireCompatibleCardinality],
        ),
        case(
            "repeated to singular, BACKWARD",
            Mode::Backward,
            &["message M { repeated string a = 1; }"],
            "message M { string a = 1; }",
            &[R::FieldWireCompatibleCardinality],
        ),
        case(
            "repeated to singular, FULL",
            Mode::Full,
            &["message M { repeated string a = 1; }"],
            "message M { string a = 1; }",
            &[R::FieldWireCompatibleCardinality],
        ),
        case(
            "int32 to repeated int64, FORWARD",
            Mode::Forward,
            &[A_INT32],
            "message M { repeated int64 a = 1; }",
            &[R::FieldWireLosslessType, R::FieldWireCompatibleCardinality],
        ),
        // Three versions: transitive modes look past the latest.
        case(
            "v2 deleted b unreserved, v3 reuses it: BACKWARD sees only v2",
            Mode::Backward,
            &[A_B, A_INT32],
            "message M { int32 a = 1; string b = 2; }",
            &[],
        ),
        Case {
            name: "v2 deleted b unreserved, v3 reuses it: BACKWARD_TRANSITIVE sees v1",
            mode: Mode::BackwardTransitive,
            history: &[A_B, A_INT32],
            new: "message M { int32 a = 1; string b = 2; }",
            expect: &[R::FieldWireCompatibleType],
            against: Some(1),
        },
        Case {
            name: "narrowed in v2, kept in v3: BACKWARD_TRANSITIVE fails against v1",
            mode: Mode::BackwardTransitive,
            history: &[A_INT64, A_INT32],
            new: A_INT32,
            expect: &[R::FieldWireLosslessType],
            against: Some(1),
        },
        case(
            "narrowed in v2, kept in v3: BACKWARD is fine",
            Mode::Backward,
            &[A_INT64, A_INT32],
            A_INT32,
            &[],
        ),
        case(
            "narrowed in v2, kept in v3: FORWARD_TRANSITIVE is fine",
            Mode::ForwardTransitive,
            &[A_INT64, A_INT32],
            A_INT32,
            &[],
        ),
        Case {
            name: "narrowed in v2, kept in v3: FULL_TRANSITIVE fails against v1",
            mode: Mode::FullTransitive,
            history: &[A_INT64, A_INT32],
            new: A_INT32,
            expect: &[R::FieldWireLosslessType],
            against: Some(1),
        },
        Case {
            name: "widened in v3: FORWARD_TRANSITIVE reports once, against the latest",
            mode: Mode::ForwardTransitive,
            history: &[A_INT32, A_INT32],
            new: A_INT64,
            expect: &[R::FieldWireLosslessType],
            against: Some(2),
        },
        Case {
            name: "FULL fails against v2 only when v1 is fine",
            mode: Mode::FullTransitive,
            history: &[A_INT32, "message M { int32 a = 1; int32 b = 2; }"],
            new: A_INT32,
            expect: &[R::FieldNoDeleteUnlessNumberReserved],
            against: Some(2),
        },
        case(
            "FULL ignores v1",
            Mode::Full,
            &["message M { string a = 1; }", A_INT32],
            A_INT32,
            &[],
        ),
    ];

    #[test]
    fn compatibility_table() {
        assert!(CASES.len() >= 30);
        let mut failures = Vec::new();
        for case in CASES {
            let history: Vec<SubjectSchema> = case.history.iter().map(|text| m(text)).collect();
            let numbered: Vec<(u32, &SubjectSchema)> = (1..).zip(history.iter()).collect();
            let violations = check(case.mode, &m(case.new), &numbered).unwrap();
            let mut got: Vec<Rule> = violations.iter().map(|v| v.rule).collect();
            got.sort();
            let mut want = case.expect.to_vec();
            want.sort();
            if got != want {
                failures.push(format!(
                    "{} ({}): expected {want:?}, got:\n    {}",
                    case.name,
                    case.mode,
                    violations
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            } else if let Some(version) = case.against {
                if violations
                    .iter()
                    .any(|v| v.against_version != Some(version))
                {
                    failures.push(format!(
                        "{}: expected violations against version {version}, got {violations:?}",
                        case.name
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn every_rule_and_mode_is_exercised_by_the_table() {
        for rule in Rule::ALL {
            if rule == Rule::MessageNoDeleteWhileReferenced {
                continue; // Cross-subject: see deleted_message_referenced_by_another_subject.
            }
            assert!(
                CASES.iter().any(|c| c.expect.contains(&rule)),
                "{rule} is never expected"
            );
        }
        for mode in Mode::ALL {
            assert!(CASES.iter().any(|c| c.mode == mode), "{mode} is never used");
        }
    }

    #[test]
    fn no_history_means_no_violations() {
        assert!(check(Mode::FullTransitive, &m(A_INT32), &[])
            .unwrap()
            .is_empty());
    }

    const LINES_V1: &str = "syntax = \"proto3\";
package t;

message M {
  int32 a = 1;
  int32 b = 2;
  enum E {
    E_0 = 0;
    E_1 = 1;
  }
}
";

    const LINES_V2: &str = "syntax = \"proto3\";
package t;

// A comment that moves everything down a line.
message M {
  string a = 1;
  enum E {
    E_0 = 0;
  }
}
";

    #[test]
    fn violations_point_at_the_candidates_lines() {
        let old = subject(LINES_V1, "t.M");
        let new = subject(LINES_V2, "t.M");
        let violations = check(Mode::Backward, &new, &[(4, &old)]).unwrap();
        let summary: Vec<(Rule, u32, u32, &str)> = violations
            .iter()
            .map(|v| (v.rule, v.line, v.column, v.path.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                // Deleted field: the message that lost it.
                (R::FieldNoDeleteUnlessNumberReserved, 5, 1, "M.b"),
                // Changed field: the field itself.
                (R::FieldWireCompatibleType, 6, 3, "M.a"),
                // Deleted enum value: the enum.
                (R::EnumValueNoDeleteUnlessNumberReserved, 7, 3, "M.E.E_1"),
            ]
        );
        assert!(violations
            .iter()
            .all(|v| v.file == "t.proto" && v.subject == "t.M"));
        assert!(violations.iter().all(|v| v.against_version == Some(4)));
        assert_eq!(
            violations[1].to_string(),
            "t.proto:6:3: FIELD_WIRE_COMPATIBLE_TYPE: field 1 `a` changed type from int32 to string: \
             the wire encodings differ (against version 4)"
        );
        assert!(
            violations[0].message.contains("reserved 2;"),
            "{}",
            violations[0].message
        );
    }

    #[test]
    fn referenced_types_of_other_packages_are_checked() {
        let common_v1 = "syntax = \"proto3\"; package common; message Money { string amount = 1; string unit = 2; }";
        let common_v2 = "syntax = \"proto3\"; package common; message Money { string amount = 1; }";
        let user = "syntax = \"proto3\"; package t; import \"common.proto\"; message M { common.Money price = 1; }";
        let load = |common: &str| {
            let compiled = compile_files(&[("common.proto", common), ("t.proto", user)]).unwrap();
            subjects(&compiled, "t").unwrap().remove(0)
        };
        let violations = check(Mode::Backward, &load(common_v2), &[(1, &load(common_v1))]).unwrap();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].rule, R::FieldNoDeleteUnlessNumberReserved);
        assert_eq!(violations[0].file, "common.proto");
        assert_eq!(violations[0].path, "common.Money.unit");
    }

    #[test]
    fn other_subjects_of_the_same_package_are_left_to_their_own_check() {
        let v1 = m("message Other { int32 x = 1; int32 y = 2; } message M { Other o = 1; }");
        let v2 = m("message Other { int32 x = 1; } message M { Other o = 1; }");
        assert!(check(Mode::Full, &v2, &[(1, &v1)]).unwrap().is_empty());
    }

    #[test]
    fn deleted_message_referenced_by_another_subject() {
        let p_v1 = "syntax = \"proto3\";\npackage p;\nmessage A { int32 x = 1; }\nmessage B { int32 y = 1; }\n";
        let p_v2 = "syntax = \"proto3\";\npackage p;\nmessage A { int32 x = 1; }\n";
        let q = "syntax = \"proto3\";\npackage q;\nimport \"p.proto\";\n\nmessage Q {\n  p.A a = 1;\n  p.B b = 2;\n}\n";
        let before = compile_files(&[("p.proto", p_v1), ("q.proto", q)]).unwrap();
        let previous = subjects(&before, "p").unwrap();
        let others = subjects(&before, "q").unwrap();
        let current = subjects(&compile_files(&[("p.proto", p_v2)]).unwrap(), "p").unwrap();

        let violations = check_deleted_references(&previous, &current, &others).unwrap();
        assert_eq!(violations.len(), 1, "{violations:?}");
        let violation = &violations[0];
        assert_eq!(violation.rule, R::MessageNoDeleteWhileReferenced);
        assert_eq!(violation.subject, "p.B");
        assert_eq!(
            (violation.file.as_str(), violation.line, violation.column),
            ("q.proto", 7, 3)
        );
        assert_eq!(violation.path, "q.Q.b");
        assert!(
            violation.message.contains("subject q.Q"),
            "{}",
            violation.message
        );

        // Nothing references A's deletion would be fine too; deleting nothing is always fine.
        assert!(check_deleted_references(&previous, &previous, &others)
            .unwrap()
            .is_empty());
        let unreferenced = subjects(&compile_files(&[("p.proto", p_v1)]).unwrap(), "p").unwrap();
        assert!(check_deleted_references(&unreferenced, &current, &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn modes_parse_print_and_serialize_as_screaming_names() {
        assert_eq!(Mode::default(), Mode::Backward);
        for mode in Mode::ALL {
            assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::json!(mode.as_str())
            );
        }
        assert_eq!(
            "full-transitive".parse::<Mode>().unwrap(),
            Mode::FullTransitive
        );
        assert_eq!(
            serde_json::from_str::<Mode>("\"BACKWARD_TRANSITIVE\"").unwrap(),
            Mode::BackwardTransitive
        );
        let err = "SIDEWAYS".parse::<Mode>().unwrap_err();
        assert!(err.to_string().contains("SIDEWAYS"));
    }

    #[test]
    fn rule_codes_are_stable() {
        for rule in Rule::ALL {
            assert_eq!(
                serde_json::to_value(rule).unwrap(),
                serde_json::json!(rule.code())
            );
        }
        assert_eq!(
            Rule::FieldNoDeleteUnlessNumberReserved.to_string(),
            "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"
        );
    }

    #[test]
    fn reserved_range_coverage() {
        assert_eq!(first_uncovered((5, 8), &[(5, 6), (7, 8)]), Some(6));
        assert_eq!(first_uncovered((5, 8), &[(7, 9), (4, 7)]), None);
        assert_eq!(first_uncovered((5, 8), &[]), Some(5));
        assert!(covers(&[(2, 3)], 2) && !covers(&[(2, 3)], 3));
    }
}

//! A readable list of the differences between two versions of a subject.

use std::collections::BTreeSet;
use std::fmt;

use prost_reflect::{EnumDescriptor, FieldDescriptor, MessageDescriptor};
use serde::{Deserialize, Serialize};

use crate::subject::{relative, type_text, Scope, SubjectSchema};
use crate::Error;

/// Whether something appeared, disappeared or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One difference. Displays as `+ Transfer.memo: field 7 string` (`-` removed, `~` changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The element, relative to the subject's package.
    pub path: String,
    pub description: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.kind {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Changed => '~',
        };
        write!(f, "{sign} {}: {}", self.path, self.description)
    }
}

/// The changes from `old` to `new`: messages and enums (the subject's own and those it
/// references in other packages), fields by number, enum values by number, and reserved
/// numbers. Ordered by type name, then number. Empty when the schemas are equivalent.
pub fn diff(old: &SubjectSchema, new: &SubjectSchema) -> Result<Vec<Change>, Error> {
    let old_root = old.load()?;
    let new_root = new.load()?;
    let old_scope = Scope::for_checks(&old_root);
    let new_scope = Scope::for_checks(&new_root);
    let mut differ = Differ {
        package: &new.package,
        out: Vec::new(),
    };

    let names: BTreeSet<&String> = old_scope
        .messages
        .keys()
        .chain(new_scope.messages.keys())
        .collect();
    for name in names {
        match (old_scope.messages.get(name), new_scope.messages.get(name)) {
            (Some(old), _) if old.is_map_entry() => {}
            (_, Some(new)) if new.is_map_entry() => {}
            (None, Some(_)) => differ.push(ChangeKind::Added, name, "message".to_owned()),
            (Some(_), None) => differ.push(ChangeKind::Removed, name, "message".to_owned()),
            (Some(old), Some(new)) => differ.message(old, new),
            (None, None) => {}
        }
    }

    let names: BTreeSet<&String> = old_scope
        .enums
        .keys()
        .chain(new_scope.enums.keys())
        .collect();
    for name in names {
        match (old_scope.enums.get(name), new_scope.enums.get(name)) {
            (None, Some(_)) => differ.push(ChangeKind::Added, name, "enum".to_owned()),
            (Some(_), None) => differ.push(ChangeKind::Removed, name, "enum".to_owned()),
            (Some(old), Some(new)) => differ.enumeration(old, new),
            (None, None) => {}
        }
    }
    Ok(differ.out)
}

struct Differ<'a> {
    package: &'a str,
    out: Vec<Change>,
}

impl Differ<'_> {
    fn push(&mut self, kind: ChangeKind, path: &str, description: String) {
        self.out.push(Change {
            kind,
            path: relative(path, self.package).to_owned(),
            description,
        });
    }

    fn message(&mut self, old: &MessageDescriptor, new: &MessageDescriptor) {
        let numbers: BTreeSet<u32> = old
            .fields()
            .chain(new.fields())
            .map(|field| field.number())
            .collect();
        for number in numbers {
            match (old.get_field(number), new.get_field(number)) {
                (None, Some(field)) => self.push(
                    ChangeKind::Added,
                    field.full_name(),
                    format!("field {number} {}", field_text(&field)),
                ),
                (Some(field), None) => self.push(
                    ChangeKind::Removed,
                    field.full_name(),
                    format!("field {number} {}", field_text(&field)),
                ),
                (Some(before), Some(after)) => self.field(&before, &after),
                (None, None) => {}
            }
        }
        let ranges = |message: &MessageDescriptor| {
            ranges_text(
                message
                    .reserved_ranges()
                    .map(|range| (i64::from(range.start), i64::from(range.end) - 1)),
            )
        };
        let (before, after) = (ranges(old), ranges(new));
        if before != after {
            self.push(
                ChangeKind::Changed,
                new.full_name(),
                format!("reserved numbers changed from [{before}] to [{after}]"),
            );
        }
    }

    fn field(&mut self, old: &FieldDescriptor, new: &FieldDescriptor) {
        let number = new.number();
        if old.name() != new.name() {
            self.push(
                ChangeKind::Changed,
                new.full_name(),
                format!(
                    "field {number} renamed from `{}` to `{}`",
                    old.name(),
                    new.name()
                ),
            );
        }
        let (before, after) = (field_text(old), field_text(new));
        if before != after {
            self.push(
                ChangeKind::Changed,
                new.full_name(),
                format!("field {number} changed from {before} to {after}"),
            );
        }
    }

    fn enumeration(&mut self, old: &EnumDescriptor, new: &EnumDescriptor) {
        let numbers: BTreeSet<i32> = old
            .values()
            .chain(new.values())
            .map(|value| value.number())
            .collect();
        for number in numbers {
            match (old.get_value(number), new.get_value(number)) {
                (None, Some(value)) => self.push(
                    ChangeKind::Added,
                    &format!("{}.{}", new.full_name(), value.name()),
                    format!("enum value {number}"),
                ),
                (Some(value), None) => self.push(
                    ChangeKind::Removed,
                    &format!("{}.{}", old.full_name(), value.name()),
                    format!("enum value {number}"),
                ),
                (Some(before), Some(after)) if before.name() != after.name() => self.push(
                    ChangeKind::Changed,
                    &format!("{}.{}", new.full_name(), after.name()),
                    format!(
                        "enum value {number} renamed from `{}` to `{}`",
                        before.name(),
                        after.name()
                    ),
                ),
                _ => {}
            }
        }
        let ranges = |enumeration: &EnumDescriptor| {
            ranges_text(
                enumeration
                    .reserved_ranges()
                    .map(|range| (i64::from(*range.start()), i64::from(*range.end()))),
            )
        };
        let (before, after) = (ranges(old), ranges(new));
        if before != after {
            self.push(
                ChangeKind::Changed,
                new.full_name(),
                format!("reserved numbers changed from [{before}] to [{after}]"),
            );
        }
    }
}

/// `optional string memo in oneof event`: the parts of a field that a diff shows.
fn field_text(field: &FieldDescriptor) -> String {
    let mut text = String::new();
    if field.field_descriptor_proto().proto3_optional() {
        text.push_str("optional ");
    } else if field.is_required() {
        text.push_str("required ");
    }
    text.push_str(&type_text(field));
    text.push(' ');
    text.push_str(field.name());
    if let Some(oneof) = field
        .containing_oneof()
        .filter(|oneof| !oneof.is_synthetic())
    {
        text.push_str(" in oneof ");
        text.push_str(oneof.name());
    }
    text
}

/// Inclusive ranges, sorted, as `1, 4 to 6`.
fn ranges_text(ranges: impl Iterator<Item = (i64, i64)>) -> String {
    let mut ranges: Vec<(i64, i64)> = ranges.collect();
    ranges.sort_unstable();
    ranges
        .iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start} to {end}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::m;

    #[test]
    fn equivalent_schemas_have_no_changes() {
        let schema = m("message M { int32 a = 1; }");
        assert!(
            diff(&schema, &m("// comment\nmessage M {\n  int32 a = 1;\n}"))
                .unwrap()
                .is_empty()
        );
        assert!(diff(&schema, &schema).unwrap().is_empty());
    }

    #[test]
    fn lists_field_enum_and_message_changes() {
        let old = m("message M {
            int32 a = 1;
            int32 gone = 2;
            repeated string tags = 3;
            int32 old_name = 4;
            reserved 9;
            message Old {}
            enum E { E_0 = 0; E_1 = 1; E_2 = 2; }
        }");
        let new = m("message M {
            int64 a = 1;
            string tags = 3;
            int32 new_name = 4;
            optional string memo = 5;
            reserved 2, 9;
            message Fresh {}
            enum E { E_0 = 0; E_ONE = 1; E_3 = 3; }
        }");
        let lines: Vec<String> = diff(&old, &new)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "~ M.a: field 1 changed from int32 a to int64 a",
                "- M.gone: field 2 int32 gone",
                "~ M.tags: field 3 changed from repeated string tags to string tags",
                "~ M.new_name: field 4 renamed from `old_name` to `new_name`",
                "~ M.new_name: field 4 changed from int32 old_name to int32 new_name",
                "+ M.memo: field 5 optional string memo",
                "~ M: reserved numbers changed from [9] to [2, 9]",
                "+ M.Fresh: message",
                "- M.Old: message",
                "~ M.E.E_ONE: enum value 1 renamed from `E_1` to `E_ONE`",
                "- M.E.E_2: enum value 2",
                "+ M.E.E_3: enum value 3",
            ]
        );
    }

    #[test]
    fn maps_and_oneofs_are_shown_as_written() {
        let old = m("message M { map<string, int32> counts = 1; int32 x = 2; }");
        let new = m("message M { map<string, int64> counts = 1; oneof choice { int32 x = 2; } }");
        let lines: Vec<String> = diff(&old, &new)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "~ M.counts: field 1 changed from map<string, int32> counts to map<string, int64> counts",
                "~ M.x: field 2 changed from int32 x to int32 x in oneof choice",
            ]
        );
    }
}

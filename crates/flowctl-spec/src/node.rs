//! A YAML document as a tree in which every node and every mapping key keeps its line:column.
//!
//! Validation walks this tree instead of deserializing straight into typed structs, because
//! serde stops at the first error and we must report every problem at once, each with its
//! location. The tree is built through `serde-saphyr`'s `Spanned`, so anchors, aliases and
//! merge keys are resolved exactly as the parser resolves them everywhere else.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A 1-based line and column (0 and 0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: u64,
    pub column: u64,
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A mapping key and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub pos: Pos,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in source order.
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as JSON, for free-form fields such as `config`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => i64::try_from(*i)
                .map(J::from)
                .or_else(|_| u64::try_from(*i).map(J::from))
                .unwrap_or_else(|_| J::String(i.to_string())),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(|n| n.value.to_json()).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.value.to_json()))
                    .collect(),
            ),
        }
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line(),
        column: s.referenced.column(),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(NodeDe::<true>::deserialize(d)?.0)
    }
}

/// A node as deserialized: with its position when `SPANNED`, else at `Pos::default()`.
/// Skipping the spans (each `Spanned` is a map of its own in serde-saphyr) took the write
/// path's `validate` stage from 108 to 92 µs per document in cluster-bench; a valid document
/// needs no positions, which only locate problems.
struct NodeDe<const SPANNED: bool>(Node);

impl<'de, const SPANNED: bool> Deserialize<'de> for NodeDe<SPANNED> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if SPANNED {
            let s = Spanned::<ValueDe<true>>::deserialize(d)?;
            Ok(NodeDe(Node {
                pos: pos_of(&s),
                value: s.value.0,
            }))
        } else {
            Ok(NodeDe(Node {
                pos: Pos::default(),
                value: ValueDe::<false>::deserialize(d)?.0,
            }))
        }
    }
}

struct ValueDe<const SPANNED: bool>(Value);

impl<'de, const SPANNED: bool> Deserialize<'de> for ValueDe<SPANNED> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor::<SPANNED>).map(ValueDe)
    }
}

struct ValueVisitor<const SPANNED: bool>;

impl<'de, const SPANNED: bool> Visitor<'de> for ValueVisitor<SPANNED> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map_or_else(|_| Value::Str(v.to_string()), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Ok(ValueDe::<SPANNED>::deserialize(d)?.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<NodeDe<SPANNED>>()? {
            items.push(n.0);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(NodeDe(k)) = map.next_key::<NodeDe<SPANNED>>()? {
            let name = match k.value {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Null => "null".to_owned(),
                Value::Seq(_) | Value::Map(_) => {
                    return Err(de::Error::custom("mapping keys must be scalars"))
                }
            };
            let NodeDe(v) = map.next_value::<NodeDe<SPANNED>>()?;
            entries.push((Key { pos: k.pos, name }, v));
        }
        Ok(Value::Map(entries))
    }
}

/// Parses YAML text into a located tree.
///
/// Booleans follow YAML 1.2 (`true`/`false` only), so `yes`, `no`, `on`, `off`, `y` and `n`
/// stay strings: an environment value `DEBUG: yes` or a label key `on` means what it says.
pub(crate) fn parse(text: &str) -> Result<Node, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true })
}

/// [`parse`] without positions (every node at `Pos::default()`): the same tree otherwise,
/// and cheaper. For a first pass that needs positions only if it finds a problem.
pub(crate) fn parse_unlocated(text: &str) -> Result<Node, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options::<NodeDe<false>>(
        text,
        serde_saphyr::options! { strict_booleans: true },
    )
    .map(|n| n.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: u64, column: u64) -> Pos {
        Pos { line, column }
    }

    fn erase(n: &Node) -> Node {
        let value = match &n.value {
            Value::Seq(items) => Value::Seq(items.iter().map(erase).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        (
                            Key {
                                pos: Pos::default(),
                                name: k.name.clone(),
                            },
                            erase(v),
                        )
                    })
                    .collect(),
            ),
            v => v.clone(),
        };
        Node {
            pos: Pos::default(),
            value,
        }
    }

    #[test]
    fn the_unlocated_tree_is_the_located_one_without_positions() {
        for text in [
            "a: 1\nb:\n  - x\n  - {c: true, d: ~, e: 1.5, f: \"q\"}\n",
            "base: &b {x: 1, y: [1, 2]}\nuse:\n  <<: *b\n  z: yes\nagain: *b\n",
            "k: |\n  multi\n  line\n0x1f: 0o17\n",
            include_str!("../../../examples/stellar-pipeline.yaml"),
        ] {
            let located = parse(text).unwrap();
            assert_eq!(parse_unlocated(text).unwrap(), erase(&located), "{text}");
        }
        assert!(parse_unlocated("a: [1\n").is_err());
    }

    #[test]
    fn keys_and_values_carry_their_positions() {
        let n = parse("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let Value::Map(entries) = &n.value else {
            panic!("{n:?}")
        };
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.pos, p(1, 1));
        assert_eq!(entries[0].1.pos, p(1, 4));
        assert_eq!(entries[0].1.value, Value::Int(1));
        assert_eq!(entries[1].0.pos, p(2, 1));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("{n:?}")
        };
        assert_eq!(items[0].pos, p(3, 5));
        assert_eq!(items[0].value, Value::Str("x".into()));
        let Value::Map(inner) = &items[1].value else {
            panic!("{n:?}")
        };
        assert_eq!(inner[0].0.name, "c");
        assert_eq!(inner[0].0.pos, p(4, 6));
        assert_eq!(inner[0].1.value, Value::Bool(true));
    }

    #[test]
    fn quoted_numbers_stay_strings_and_null_is_null() {
        let n = parse("a: \"1\"\nb: ~\nc: 1.5\nd: yes\n").unwrap();
        let Value::Map(e) = &n.value else { panic!() };
        assert_eq!(e[0].1.value, Value::Str("1".into()));
        assert_eq!(e[1].1.value, Value::Null);
        assert_eq!(e[2].1.value, Value::Float(1.5));
        assert_eq!(e[3].1.value, Value::Str("yes".into()));
    }

    #[test]
    fn merge_keys_and_aliases_resolve() {
        let n = parse("base: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n").unwrap();
        let Value::Map(e) = &n.value else { panic!() };
        let Value::Map(c) = &e[1].1.value else {
            panic!()
        };
        let mut names: Vec<_> = c.iter().map(|(k, _)| k.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x", "y"]);
    }
}

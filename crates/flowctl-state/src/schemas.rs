//! The schema registry: subjects with numbered versions, schemas with global ids, and
//! compatibility modes.
//!
//! Compatibility is decided before proposing (it needs protobuf descriptors, which this crate
//! does not parse). To keep that decision valid, a push carries what the check saw: the
//! latest live version of every subject it touches and the mode in force. Apply refuses the
//! whole push when any of that changed in between, and the proposer checks again. Global ids
//! are assigned here, deterministically: the same fingerprint always maps to the same id.

use crate::{Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The compatibility mode names apply accepts (`flowctl_schema::CompatibilityMode`'s names;
/// a test in `flowctl-server` keeps the two lists equal).
pub const COMPATIBILITY_MODES: [&str; 7] = [
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
];

/// The mode used where neither the subject nor the registry sets one.
pub const DEFAULT_COMPATIBILITY: &str = "BACKWARD";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Registry {
    pub subjects: BTreeMap<String, Subject>,
    /// By global id.
    pub schemas: BTreeMap<u64, SchemaRecord>,
    pub meta: RegistryMeta,
    /// Fingerprint → id: derived from `schemas`, never persisted.
    #[serde(skip)]
    pub(crate) by_fingerprint: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryMeta {
    /// The id the next new schema gets (ids start at 1).
    pub next_id: u64,
    /// The registry-wide mode; `None` means [`DEFAULT_COMPATIBILITY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub package: String,
    /// Oldest first. Version numbers are never reused while the subject exists, even after a
    /// permanent delete of some versions; a permanent delete of its last version removes the
    /// subject, and a later push of it starts again at version 1. Schema ids are never reused.
    pub versions: Vec<SubjectVersion>,
    /// The subject's own mode, overriding the registry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<String>,
    pub updated_at_ms: u64,
    /// The highest version number ever given.
    pub last_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectVersion {
    pub version: u32,
    pub schema_id: u64,
    pub registered_at_ms: u64,
    /// Soft-deleted: hidden from reads and compatibility checks; a permanent delete may follow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// One distinct schema, shared by every subject version with the same fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub id: u64,
    pub fingerprint: String,
    /// The full name of the message it was first registered for.
    pub subject: String,
    pub package: String,
    /// Proto path of the defining file.
    pub file: String,
    /// Source text of the defining file.
    pub source: String,
    /// An encoded `FileDescriptorSet`: the defining file and its dependencies.
    #[serde(with = "b64")]
    pub descriptor_set: Vec<u8>,
}

impl Subject {
    /// Live (not soft-deleted) versions, oldest first.
    pub fn live(&self) -> impl Iterator<Item = &SubjectVersion> {
        self.versions.iter().filter(|v| !v.deleted)
    }

    pub fn latest(&self) -> Option<&SubjectVersion> {
        self.live().last()
    }
}

impl Registry {
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.schemas.is_empty() && self.meta == RegistryMeta::default()
    }

    /// The mode in force for `subject`.
    pub fn mode_of(&self, subject: &str) -> String {
        self.subjects
            .get(subject)
            .and_then(|s| s.compatibility.clone())
            .or_else(|| self.meta.compatibility.clone())
            .unwrap_or_else(|| DEFAULT_COMPATIBILITY.to_owned())
    }

    fn reindex(&mut self) {
        if self.by_fingerprint.len() != self.schemas.len() {
            self.by_fingerprint = self
                .schemas
                .values()
                .map(|s| (s.fingerprint.clone(), s.id))
                .collect();
        }
    }
}

/// Equality of the replicated content; the derived index does not take part.
impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.subjects == other.subjects && self.schemas == other.schemas && self.meta == other.meta
    }
}

impl Eq for Registry {}

/// A push of one package's subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSchemas {
    pub package: String,
    pub subjects: Vec<PushSubject>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubject {
    pub subject: String,
    pub fingerprint: String,
    pub file: String,
    pub source: String,
    #[serde(with = "b64")]
    pub descriptor_set: Vec<u8>,
    /// The latest live version the compatibility check compared with (`None`: no version).
    pub expect_latest: Option<u32>,
    /// The mode the check used.
    pub expect_mode: String,
}

/// What a push did to one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedSubject {
    pub subject: String,
    pub version: u32,
    pub schema_id: u64,
    /// False when the schema was already a live version of the subject.
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCompatibility {
    /// `None`: the registry-wide mode.
    pub subject: Option<String>,
    /// `None` clears the subject's own mode (it follows the registry again).
    pub mode: Option<String>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSchema {
    pub subject: String,
    /// `None`: every version.
    pub version: Option<u32>,
    pub permanent: bool,
    pub at_ms: u64,
}

fn conflict(msg: String) -> (Outcome, Vec<Touched>) {
    (Outcome::Rejected(Rejection::Conflict(msg)), vec![])
}

pub(crate) fn push(state: &mut State, c: &PushSchemas) -> (Outcome, Vec<Touched>) {
    let reg = &mut state.schemas;
    reg.reindex();
    // Preconditions first: all or nothing.
    for s in &c.subjects {
        if !COMPATIBILITY_MODES.contains(&s.expect_mode.as_str()) {
            return (
                Outcome::Rejected(Rejection::Invalid(format!(
                    "unknown compatibility mode {:?} for {}",
                    s.expect_mode, s.subject
                ))),
                vec![],
            );
        }
        let latest = reg
            .subjects
            .get(&s.subject)
            .and_then(|x| x.latest())
            .map(|v| v.version);
        if latest != s.expect_latest {
            return conflict(format!(
                "subject {} changed during the push (latest version {:?}, checked against {:?})",
                s.subject, latest, s.expect_latest
            ));
        }
        let mode = reg.mode_of(&s.subject);
        if mode != s.expect_mode {
            return conflict(format!(
                "the compatibility mode of {} changed during the push ({mode}, checked with {})",
                s.subject, s.expect_mode
            ));
        }
    }
    let mut touched = Vec::new();
    let mut results = Vec::with_capacity(c.subjects.len());
    for s in &c.subjects {
        let id = match reg.by_fingerprint.get(&s.fingerprint) {
            Some(id) => *id,
            None => {
                let id = reg.meta.next_id.max(1);
                reg.meta.next_id = id + 1;
                reg.schemas.insert(
                    id,
                    SchemaRecord {
                        id,
                        fingerprint: s.fingerprint.clone(),
                        subject: s.subject.clone(),
                        package: c.package.clone(),
                        file: s.file.clone(),
                        source: s.source.clone(),
                        descriptor_set: s.descriptor_set.clone(),
                    },
                );
                reg.by_fingerprint.insert(s.fingerprint.clone(), id);
                touched.push(Touched::Schema(id));
                touched.push(Touched::SchemaMeta);
                id
            }
        };
        let subject = reg
            .subjects
            .entry(s.subject.clone())
            .or_insert_with(|| Subject {
                name: s.subject.clone(),
                package: c.package.clone(),
                versions: Vec::new(),
                compatibility: None,
                updated_at_ms: c.at_ms,
                last_version: 0,
            });
        // A schema that is already a live version is not registered again.
        if let Some(v) = subject.live().find(|v| v.schema_id == id) {
            results.push(PushedSubject {
                subject: s.subject.clone(),
                version: v.version,
                schema_id: id,
                changed: false,
            });
            continue;
        }
        subject.last_version += 1;
        let version = subject.last_version;
        subject.versions.push(SubjectVersion {
            version,
            schema_id: id,
            registered_at_ms: c.at_ms,
            deleted: false,
        });
        subject.updated_at_ms = c.at_ms;
        touched.push(Touched::Subject(s.subject.clone()));
        results.push(PushedSubject {
            subject: s.subject.clone(),
            version,
            schema_id: id,
            changed: true,
        });
    }
    (Outcome::SchemasPushed(results), touched)
}

pub(crate) fn set_compatibility(
    state: &mut State,
    c: &SetCompatibility,
) -> (Outcome, Vec<Touched>) {
    if let Some(mode) = c
        .mode
        .as_deref()
        .filter(|m| !COMPATIBILITY_MODES.contains(m))
    {
        return (
            Outcome::Rejected(Rejection::Invalid(format!(
                "unknown compatibility mode {mode:?}; expected one of {}",
                COMPATIBILITY_MODES.join(", ")
            ))),
            vec![],
        );
    }
    let reg = &mut state.schemas;
    match &c.subject {
        None => {
            reg.meta.compatibility = c.mode.clone();
            (Outcome::CompatibilitySet, vec![Touched::SchemaMeta])
        }
        Some(name) => match reg.subjects.get_mut(name) {
            Some(s) => {
                s.compatibility = c.mode.clone();
                s.updated_at_ms = c.at_ms;
                (
                    Outcome::CompatibilitySet,
                    vec![Touched::Subject(name.clone())],
                )
            }
            None => (
                Outcome::Rejected(Rejection::NotFound {
                    kind: "subject".into(),
                    name: name.clone(),
                }),
                vec![],
            ),
        },
    }
}

pub(crate) fn delete(state: &mut State, c: &DeleteSchema) -> (Outcome, Vec<Touched>) {
    let reg = &mut state.schemas;
    let Some(subject) = reg.subjects.get_mut(&c.subject) else {
        return (
            Outcome::Rejected(Rejection::NotFound {
                kind: "subject".into(),
                name: c.subject.clone(),
            }),
            vec![],
        );
    };
    let chosen: Vec<usize> = subject
        .versions
        .iter()
        .enumerate()
        .filter(|(_, v)| c.version.is_none_or(|n| v.version == n))
        .map(|(i, _)| i)
        .collect();
    if chosen.is_empty() {
        return (
            Outcome::Rejected(Rejection::NotFound {
                kind: "version".into(),
                name: format!("{} version {}", c.subject, c.version.unwrap_or(0)),
            }),
            vec![],
        );
    }
    let mut deleted = Vec::new();
    if c.permanent {
        // As in Confluent's registry: only a soft-deleted version may be deleted for good.
        if let Some(i) = chosen.iter().find(|i| !subject.versions[**i].deleted) {
            return (
                Outcome::Rejected(Rejection::Invalid(format!(
                    "version {} of {} must be soft-deleted first (delete without --permanent)",
                    subject.versions[*i].version, c.subject
                ))),
                vec![],
            );
        }
        for i in chosen.iter().rev() {
            deleted.push(subject.versions.remove(*i).version);
        }
        deleted.reverse();
    } else {
        for i in &chosen {
            let v = &mut subject.versions[*i];
            if !v.deleted {
                v.deleted = true;
                deleted.push(v.version);
            }
        }
        if deleted.is_empty() {
            return (
                Outcome::Rejected(Rejection::Invalid(format!(
                    "{} is already soft-deleted; add --permanent to delete it for good",
                    match c.version {
                        Some(v) => format!("version {v} of {}", c.subject),
                        None => c.subject.clone(),
                    }
                ))),
                vec![],
            );
        }
    }
    subject.updated_at_ms = c.at_ms;
    let mut touched = vec![Touched::Subject(c.subject.clone())];
    if subject.versions.is_empty() {
        reg.subjects.remove(&c.subject);
        // Schemas that no version uses any more go too (ids are still never reused).
        let used: std::collections::BTreeSet<u64> = reg
            .subjects
            .values()
            .flat_map(|s| s.versions.iter().map(|v| v.schema_id))
            .collect();
        let unused: Vec<u64> = reg
            .schemas
            .keys()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        for id in unused {
            if let Some(s) = reg.schemas.remove(&id) {
                reg.by_fingerprint.remove(&s.fingerprint);
            }
            touched.push(Touched::Schema(id));
        }
    }
    (
        Outcome::SchemasDeleted {
            subject: c.subject.clone(),
            versions: deleted,
        },
        touched,
    )
}

/// Bytes as base64 in JSON.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, Command};

    fn sub(name: &str, fp: &str, expect: Option<u32>) -> PushSubject {
        PushSubject {
            subject: name.into(),
            fingerprint: fp.into(),
            file: "x.proto".into(),
            source: "syntax = \"proto3\";".into(),
            descriptor_set: vec![1, 2, 3],
            expect_latest: expect,
            expect_mode: DEFAULT_COMPATIBILITY.into(),
        }
    }

    fn push_cmd(subjects: Vec<PushSubject>) -> Command {
        Command::PushSchemas(PushSchemas {
            package: "pkg".into(),
            subjects,
            at_ms: 5,
        })
    }

    fn pushed(o: Outcome) -> Vec<PushedSubject> {
        match o {
            Outcome::SchemasPushed(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_ids_and_idempotent_pushes() {
        let mut s = State::default();
        let r = pushed(
            apply(
                &mut s,
                1,
                &push_cmd(vec![sub("pkg.A", "fa", None), sub("pkg.B", "fb", None)]),
            )
            .0,
        );
        assert_eq!((r[0].version, r[0].schema_id, r[0].changed), (1, 1, true));
        assert_eq!((r[1].version, r[1].schema_id, r[1].changed), (1, 2, true));
        // The same push again: nothing new.
        let r = pushed(apply(&mut s, 2, &push_cmd(vec![sub("pkg.A", "fa", Some(1))])).0);
        assert_eq!((r[0].version, r[0].schema_id, r[0].changed), (1, 1, false));
        // A new schema: version 2, id 3; a schema equal to another subject's shares its id.
        let r = pushed(
            apply(
                &mut s,
                3,
                &push_cmd(vec![sub("pkg.A", "fa2", Some(1)), sub("pkg.C", "fb", None)]),
            )
            .0,
        );
        assert_eq!((r[0].version, r[0].schema_id), (2, 3));
        assert_eq!((r[1].version, r[1].schema_id), (1, 2));
        // Survives an encode/decode (the derived index is rebuilt).
        let bytes = crate::codec::encode_state(&s).unwrap();
        let mut back = crate::codec::decode_state(&bytes).unwrap();
        assert_eq!(back, s);
        let r = pushed(apply(&mut back, 4, &push_cmd(vec![sub("pkg.D", "fa", None)])).0);
        assert_eq!(r[0].schema_id, 1);
    }

    #[test]
    fn a_stale_check_is_refused_whole() {
        let mut s = State::default();
        apply(&mut s, 1, &push_cmd(vec![sub("pkg.A", "fa", None)]));
        let (o, t) = apply(
            &mut s,
            2,
            &push_cmd(vec![sub("pkg.B", "fb", None), sub("pkg.A", "fa2", None)]),
        );
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Conflict(_))),
            "{o:?}"
        );
        assert!(t.is_empty());
        assert!(!s.schemas.subjects.contains_key("pkg.B"));
        // A mode change between check and commit is a conflict too.
        apply(
            &mut s,
            3,
            &Command::SetCompatibility(SetCompatibility {
                subject: None,
                mode: Some("FULL".into()),
                at_ms: 1,
            }),
        );
        let (o, _) = apply(&mut s, 4, &push_cmd(vec![sub("pkg.A", "fa2", Some(1))]));
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Conflict(_))),
            "{o:?}"
        );
    }

    #[test]
    fn soft_delete_comes_before_permanent_delete() {
        let mut s = State::default();
        apply(&mut s, 1, &push_cmd(vec![sub("pkg.A", "fa", None)]));
        apply(&mut s, 2, &push_cmd(vec![sub("pkg.A", "fa2", Some(1))]));
        let del = |version, permanent| {
            Command::DeleteSchema(DeleteSchema {
                subject: "pkg.A".into(),
                version,
                permanent,
                at_ms: 9,
            })
        };
        let (o, _) = apply(&mut s, 3, &del(Some(2), true));
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Invalid(_))),
            "{o:?}"
        );
        apply(&mut s, 4, &del(Some(2), false));
        assert_eq!(s.schemas.subjects["pkg.A"].latest().unwrap().version, 1);
        apply(&mut s, 5, &del(Some(2), true));
        assert_eq!(s.schemas.subjects["pkg.A"].versions.len(), 1);
        // Version numbers are not reused.
        let r = pushed(apply(&mut s, 6, &push_cmd(vec![sub("pkg.A", "fa3", Some(1))])).0);
        assert_eq!(r[0].version, 3);
        apply(&mut s, 7, &del(None, false));
        apply(&mut s, 8, &del(None, true));
        assert!(s.schemas.subjects.is_empty());
        assert!(s.schemas.schemas.is_empty());
    }
}

//! Writes that are safe to retry: recent outcomes remembered by request id.
//!
//! A client that loses the answer to a write (a timeout, a node killed, leadership moving)
//! sends it again. Without a memory, the second copy answers differently from the first: a
//! retried delete says "not found" after it succeeded. So a proposer wraps a write in
//! [`Command::Once`] with an id that stays the same across retries, and the state machine keeps
//! the outcome of the most recent [`MAX_REMEMBERED`] ids (client sessions, Raft thesis §6.3): a
//! second copy of a remembered id changes nothing and answers what the first one answered.
//!
//! Invariants:
//! - The table is replicated state: every node remembers the same ids, so the answer does
//!   not depend on which node becomes leader.
//! - It is bounded: beyond [`MAX_REMEMBERED`] ids the oldest is forgotten (a retry that comes
//!   after that many other writes is applied again, as before this table existed).
//! - A remembered outcome is compact: a pipeline's document is not kept twice; the answer is
//!   rebuilt from the stored pipeline while it is still at the remembered generation.

use crate::{apply, Command, Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most request ids remembered; the oldest is forgotten first.
pub const MAX_REMEMBERED: usize = 4096;
/// Longest request id, in bytes (the caller's identity, the client's id and an ordinal).
pub const MAX_REQUEST_ID_BYTES: usize = 400;
/// Most names a remembered outcome may list (changed DLQ entries, chunks, deleted versions):
/// beyond this the outcome is remembered as a conflict that says to read the state.
pub const MAX_REMEMBERED_ITEMS: usize = 1024;

/// A write's id, the same for every retry of one logical operation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RequestId {
    /// Printable ASCII without spaces, within [`MAX_REQUEST_ID_BYTES`].
    pub fn check(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("request id: empty".into());
        }
        if self.0.len() > MAX_REQUEST_ID_BYTES {
            return Err(format!(
                "request id: {} bytes, more than {MAX_REQUEST_ID_BYTES}",
                self.0.len()
            ));
        }
        if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("request id: only printable ASCII without spaces".into());
        }
        Ok(())
    }
}

/// A write to apply at most once per request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Once {
    pub request_id: RequestId,
    pub command: Box<Command>,
}

/// What the table keeps for one id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub id: RequestId,
    /// Order of arrival: the smallest is forgotten first.
    pub seq: u64,
    /// The command's kind, so that an id reused for another kind of write is refused.
    pub kind: String,
    /// The log index at which it applied.
    pub index: u64,
    pub outcome: Outcome,
}

/// The table of remembered request ids.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Requests {
    pub by_id: BTreeMap<RequestId, Remembered>,
    /// `seq` → id: derived from `by_id`, rebuilt when out of step (after loading).
    #[serde(skip)]
    order: BTreeMap<u64, RequestId>,
}

impl PartialEq for Requests {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id
    }
}

impl Eq for Requests {}

impl Requests {
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a remembered outcome as loaded from storage.
    pub fn insert_loaded(&mut self, r: Remembered) {
        self.by_id.insert(r.id.clone(), r);
    }

    fn sync_order(&mut self) {
        if self.order.len() != self.by_id.len() {
            self.order = self.by_id.values().map(|r| (r.seq, r.id.clone())).collect();
        }
    }
}

/// The variant name of a command, as remembered.
pub fn kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::ApplyPipeline(_) => "ApplyPipeline",
        Command::DeletePipeline(_) => "DeletePipeline",
        Command::RecordNodeRemoved { .. } => "RecordNodeRemoved",
        Command::RegisterComponent(_) => "RegisterComponent",
        Command::UnregisterComponent(_) => "UnregisterComponent",
        Command::SetComponentHealth(_) => "SetComponentHealth",
        Command::SetPlacement(_) => "SetPlacement",
        Command::ReportRuntime(_) => "ReportRuntime",
        Command::PushSchemas(_) => "PushSchemas",
        Command::SetCompatibility(_) => "SetCompatibility",
        Command::DeleteSchema(_) => "DeleteSchema",
        Command::IndexDlq(_) => "IndexDlq",
        Command::SetDlqState(_) => "SetDlqState",
        Command::ExpireDlq(_) => "ExpireDlq",
        Command::CreateReplay(_) => "CreateReplay",
        Command::AssignChunks(_) => "AssignChunks",
        Command::ReportChunk(_) => "ReportChunk",
        Command::RequeueChunks(_) => "RequeueChunks",
        Command::ControlReplay(_) => "ControlReplay",
        Command::SetAuth(_) => "SetAuth",
        Command::CreateToken(_) => "CreateToken",
        Command::RevokeToken(_) => "RevokeToken",
        Command::RecordAudit(_) => "RecordAudit",
        Command::Batch(_) => "Batch",
        Command::Once(_) => "Once",
    }
}

/// The outcome as the table keeps it.
fn compact(o: &Outcome) -> Outcome {
    let too_many = |n: usize| n > MAX_REMEMBERED_ITEMS;
    match o {
        Outcome::Pipeline { record, result } => {
            let mut record = record.clone();
            record.spec_yaml = String::new();
            record.canonical = String::new();
            Outcome::Pipeline {
                record,
                result: *result,
            }
        }
        Outcome::DlqStateSet { changed } if too_many(changed.len()) => forgotten(),
        Outcome::ChunksChanged { changed } if too_many(changed.len()) => forgotten(),
        Outcome::SchemasDeleted { versions, .. } if too_many(versions.len()) => forgotten(),
        Outcome::SchemasPushed(s) if too_many(s.len()) => forgotten(),
        o => o.clone(),
    }
}

fn forgotten() -> Outcome {
    Outcome::Rejected(Rejection::Conflict(
        "this request was applied already and its answer was too large to keep; read the \
         current state"
            .into(),
    ))
}

/// A remembered outcome made whole again from the current state where it can be.
fn rehydrate(state: &State, o: &Outcome) -> Outcome {
    match o {
        Outcome::Pipeline { record, result } => {
            let record = match state.pipelines.get(&record.name) {
                Some(cur) if cur.id == record.id && cur.generation == record.generation => {
                    cur.clone()
                }
                _ => record.clone(),
            };
            Outcome::Pipeline {
                record,
                result: *result,
            }
        }
        o => o.clone(),
    }
}

pub(crate) fn once(state: &mut State, index: u64, c: &Once) -> (Outcome, Vec<Touched>) {
    if let Err(m) = c.request_id.check() {
        return (Outcome::Rejected(Rejection::Invalid(m)), vec![]);
    }
    if matches!(*c.command, Command::Once(_) | Command::Batch(_)) {
        return (
            Outcome::Rejected(Rejection::Invalid(
                "a request may carry one command, not a batch or another request".into(),
            )),
            vec![],
        );
    }
    let kind = kind(&c.command);
    let table = &mut state.requests;
    table.sync_order();
    if let Some(r) = table.by_id.get(&c.request_id) {
        if r.kind != kind {
            return (
                Outcome::Rejected(Rejection::Invalid(format!(
                    "request id {} was used for a {} write, not {kind}",
                    c.request_id, r.kind
                ))),
                vec![],
            );
        }
        let o = r.outcome.clone();
        return (rehydrate(state, &o), vec![]);
    }
    let (outcome, mut touched) = apply(state, index, &c.command);
    let table = &mut state.requests;
    let seq = table.order.last_key_value().map_or(0, |(s, _)| s + 1);
    table.by_id.insert(
        c.request_id.clone(),
        Remembered {
            id: c.request_id.clone(),
            seq,
            kind: kind.to_owned(),
            index,
            outcome: compact(&outcome),
        },
    );
    table.order.insert(seq, c.request_id.clone());
    touched.push(Touched::Request(c.request_id.clone()));
    while table.by_id.len() > MAX_REMEMBERED {
        let Some((_, old)) = table.order.pop_first() else {
            break;
        };
        table.by_id.remove(&old);
        touched.push(Touched::Request(old));
    }
    (outcome, touched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::{ApplyPipeline, DeletePipeline};
    use crate::{PipelineId, Rejection};

    fn once(id: &str, cmd: Command) -> Command {
        Command::Once(Once {
            request_id: RequestId(id.into()),
            command: Box::new(cmd),
        })
    }

    fn put(name: &str, yaml: &str) -> Command {
        Command::ApplyPipeline(ApplyPipeline {
            name: name.into(),
            id_if_new: PipelineId::from_random(yaml.len() as u64),
            spec_yaml: yaml.into(),
            canonical: yaml.into(),
            at_ms: 1,
            if_generation: None,
        })
    }

    fn del(name: &str) -> Command {
        Command::DeletePipeline(DeletePipeline { name: name.into() })
    }

    #[test]
    fn a_retried_delete_answers_what_the_first_answered() {
        let mut s = State::default();
        apply(&mut s, 1, &put("p", "a"));
        let (first, t) = apply(&mut s, 2, &once("c/1", del("p")));
        assert_eq!(first, Outcome::PipelineDeleted { name: "p".into() });
        assert!(t.contains(&Touched::Request(RequestId("c/1".into()))));
        let (again, t) = apply(&mut s, 3, &once("c/1", del("p")));
        assert_eq!(again, first);
        assert!(t.is_empty(), "a remembered request changes nothing");
        // Without the id, a second delete is a second write and finds nothing.
        let (plain, _) = apply(&mut s, 4, &del("p"));
        assert!(matches!(
            plain,
            Outcome::Rejected(Rejection::NotFound { .. })
        ));
    }

    #[test]
    fn a_retried_apply_answers_created_with_the_whole_record() {
        let mut s = State::default();
        let (first, _) = apply(&mut s, 1, &once("c/1", put("p", "doc")));
        let (again, _) = apply(&mut s, 2, &once("c/1", put("p", "doc")));
        assert_eq!(again, first);
        let Outcome::Pipeline { record, .. } = &again else {
            panic!("{again:?}")
        };
        assert_eq!(record.spec_yaml, "doc");
        // The table keeps no copy of the document.
        let kept = &s.requests.by_id[&RequestId("c/1".into())];
        let Outcome::Pipeline { record, .. } = &kept.outcome else {
            panic!()
        };
        assert!(record.spec_yaml.is_empty() && record.canonical.is_empty());
    }

    #[test]
    fn an_id_reused_for_another_kind_of_write_is_refused() {
        let mut s = State::default();
        apply(&mut s, 1, &once("c/1", put("p", "doc")));
        let (o, t) = apply(&mut s, 2, &once("c/1", del("p")));
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Invalid(m)) if m.contains("ApplyPipeline"))
        );
        assert!(t.is_empty());
        assert!(s.pipelines.contains_key("p"));
    }

    #[test]
    fn the_table_forgets_the_oldest_beyond_its_bound() {
        let mut s = State::default();
        for i in 0..(MAX_REMEMBERED + 3) {
            let (_, t) = apply(
                &mut s,
                i as u64 + 1,
                &once(&format!("c/{i}"), del("nothing")),
            );
            if i >= MAX_REMEMBERED {
                let old = RequestId(format!("c/{}", i - MAX_REMEMBERED));
                assert!(t.contains(&Touched::Request(old)), "eviction is persisted");
            }
        }
        assert_eq!(s.requests.by_id.len(), MAX_REMEMBERED);
        assert!(!s.requests.by_id.contains_key(&RequestId("c/2".into())));
        assert!(s.requests.by_id.contains_key(&RequestId("c/3".into())));
    }

    #[test]
    fn the_order_is_rebuilt_after_loading() {
        let mut s = State::default();
        for i in 0..5 {
            apply(&mut s, i + 1, &once(&format!("c/{i}"), del("x")));
        }
        let mut loaded = State::default();
        for r in s.requests.by_id.values() {
            loaded.requests.insert_loaded(r.clone());
        }
        let (_, t) = apply(&mut loaded, 9, &once("c/9", del("x")));
        assert_eq!(t, vec![Touched::Request(RequestId("c/9".into()))]);
        assert_eq!(loaded.requests.by_id[&RequestId("c/9".into())].seq, 5);
    }

    #[test]
    fn bad_ids_and_nesting_are_refused() {
        let mut s = State::default();
        for id in ["", "has space", &"x".repeat(MAX_REQUEST_ID_BYTES + 1)] {
            let (o, t) = apply(&mut s, 1, &once(id, del("p")));
            assert!(
                matches!(o, Outcome::Rejected(Rejection::Invalid(_))),
                "{id:?}"
            );
            assert!(t.is_empty());
        }
        let (o, _) = apply(&mut s, 1, &once("a", once("b", del("p"))));
        assert!(matches!(o, Outcome::Rejected(Rejection::Invalid(_))));
        let (o, _) = apply(&mut s, 1, &once("a", Command::Batch(vec![del("p")])));
        assert!(matches!(o, Outcome::Rejected(Rejection::Invalid(_))));
        assert!(s.requests.is_empty());
    }
}

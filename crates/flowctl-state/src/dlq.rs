//! The dead-letter index: one entry per record in a pipeline's DLQ topic, and the next offset
//! to index in each DLQ partition.
//!
//! The leader consumes the DLQ topics and proposes entries together with the offsets they
//! advance ([`IndexDlq`]), in one command. The command says which offset it read from; apply
//! refuses it when the stored offset differs (another leader indexed those records already),
//! so after a failover the new leader resumes at the replicated offset and nothing is indexed
//! twice or skipped. An entry's id is derived from the coordinates of the failed input record,
//! so a record that fails again after a redelivery counts as another attempt of one entry.

use crate::{Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqIndex {
    pub entries: BTreeMap<String, DlqEntry>,
    /// Next offset to index, by `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
}

impl DlqIndex {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.offsets.is_empty()
    }
}

/// Where a record is in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPos {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqState {
    Pending,
    /// A replay is publishing the payload; `Replayed` follows once the broker acknowledged.
    Replaying,
    Replayed,
    Discarded,
}

impl DlqState {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqState::Pending => "pending",
            DlqState::Replaying => "replaying",
            DlqState::Replayed => "replayed",
            DlqState::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DlqState::Pending,
            "replaying" => DlqState::Replaying,
            "replayed" => DlqState::Replayed,
            "discarded" => DlqState::Discarded,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntry {
    pub id: String,
    pub pipeline: String,
    pub component: String,
    pub error: String,
    /// From the failed record's envelope; empty when it had none.
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<u64>,
    /// The record key (a ledger sequence for Stellar events), as text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Where the failed record was read.
    pub source: KafkaPos,
    /// Where its dead letter is.
    pub dlq: KafkaPos,
    pub first_seen_ms: u64,
    /// Deliveries so far: the failed one(s) reported by the component, plus replays.
    pub attempts: u32,
    pub state: DlqState,
    pub updated_ms: u64,
}

/// A stable entry id from a record's coordinates (FNV-1a, 64 bits, hex).
pub fn entry_id(topic: &str, partition: i32, offset: i64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic
        .bytes()
        .chain([0xff])
        .chain(partition.to_be_bytes())
        .chain(offset.to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn offset_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Entries read from one DLQ partition, and how far they advance its offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDlq {
    pub topic: String,
    pub partition: i32,
    /// The stored next offset this batch was read from (`None`: nothing stored yet).
    pub from: Option<i64>,
    /// The next offset after this batch.
    pub next: i64,
    pub entries: Vec<DlqEntry>,
}

/// A state change of entries: replay start and end, discard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDlqState {
    pub ids: Vec<String>,
    /// Each entry must be in one of these states, else it is left alone and reported.
    pub from: Vec<DlqState>,
    pub to: DlqState,
    /// Count one more delivery attempt (a replay starting).
    pub attempt: bool,
    pub at_ms: u64,
}

/// Drops entries first seen before `before_ms` (retention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireDlq {
    pub before_ms: u64,
}

pub(crate) fn index(state: &mut State, c: &IndexDlq) -> (Outcome, Vec<Touched>) {
    let key = offset_key(&c.topic, c.partition);
    // An offset never moves back: records before it would be indexed again, and entries
    // already expired or dropped would come back.
    if c.next < 0 || c.from.is_some_and(|from| c.next < from) {
        return (
            Outcome::Rejected(Rejection::Invalid(format!(
                "DLQ {key}: next offset {} is behind the batch's start {:?}",
                c.next, c.from
            ))),
            vec![],
        );
    }
    let stored = state.dlq.offsets.get(&key).copied();
    if stored != c.from {
        return (
            Outcome::Rejected(Rejection::Conflict(format!(
                "DLQ {key} is indexed up to {stored:?}, not {:?}",
                c.from
            ))),
            vec![],
        );
    }
    let mut touched = vec![Touched::DlqOffset(key.clone())];
    let mut added = 0;
    for e in &c.entries {
        match state.dlq.entries.get_mut(&e.id) {
            // The same input failed again (redelivered after a restart): one more attempt.
            Some(old) if old.dlq != e.dlq => {
                old.attempts += 1;
                old.updated_ms = e.updated_ms;
                touched.push(Touched::DlqEntry(e.id.clone()));
            }
            Some(_) => {}
            None => {
                state.dlq.entries.insert(e.id.clone(), e.clone());
                touched.push(Touched::DlqEntry(e.id.clone()));
                added += 1;
            }
        }
    }
    state.dlq.offsets.insert(key, c.next);
    (Outcome::DlqIndexed { added }, touched)
}

pub(crate) fn set_state(state: &mut State, c: &SetDlqState) -> (Outcome, Vec<Touched>) {
    let mut changed = Vec::new();
    let mut skipped = Vec::new();
    let mut touched = Vec::new();
    for id in &c.ids {
        match state.dlq.entries.get_mut(id) {
            Some(e) if c.from.contains(&e.state) => {
                e.state = c.to;
                if c.attempt {
                    e.attempts += 1;
                }
                e.updated_ms = c.at_ms;
                changed.push(id.clone());
                touched.push(Touched::DlqEntry(id.clone()));
            }
            Some(e) => skipped.push((id.clone(), e.state)),
            None => skipped.push((id.clone(), DlqState::Discarded)),
        }
    }
    if c.ids.len() == 1 && changed.is_empty() {
        let id = &c.ids[0];
        return match state.dlq.entries.get(id) {
            None => (
                Outcome::Rejected(Rejection::NotFound {
                    kind: "DLQ entry".into(),
                    name: id.clone(),
                }),
                vec![],
            ),
            Some(e) => (
                Outcome::Rejected(Rejection::Conflict(format!(
                    "DLQ entry {id} is {}",
                    e.state.as_str()
                ))),
                vec![],
            ),
        };
    }
    (Outcome::DlqStateSet { changed }, touched)
}

pub(crate) fn expire(state: &mut State, c: &ExpireDlq) -> (Outcome, Vec<Touched>) {
    let old: Vec<String> = state
        .dlq
        .entries
        .values()
        .filter(|e| e.first_seen_ms < c.before_ms && e.state != DlqState::Replaying)
        .map(|e| e.id.clone())
        .collect();
    let touched = old.iter().map(|id| Touched::DlqEntry(id.clone())).collect();
    for id in &old {
        state.dlq.entries.remove(id);
    }
    (Outcome::DlqExpired { removed: old.len() }, touched)
}

/// A deleted pipeline's entries go with it (its offsets stay, so a pipeline re-created with
/// the same name does not index its old DLQ records again).
pub(crate) fn drop_pipeline(state: &mut State, pipeline: &str) -> Vec<Touched> {
    let ids: Vec<String> = state
        .dlq
        .entries
        .values()
        .filter(|e| e.pipeline == pipeline)
        .map(|e| e.id.clone())
        .collect();
    for id in &ids {
        state.dlq.entries.remove(id);
    }
    ids.into_iter().map(Touched::DlqEntry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, Command};

    fn entry(offset: i64) -> DlqEntry {
        DlqEntry {
            id: entry_id("flowctl.p.dlq", 0, offset),
            pipeline: "p".into(),
            component: "proc".into(),
            error: "bad".into(),
            event_type: "x.Ev".into(),
            schema_id: None,
            key: offset.to_string(),
            source: KafkaPos {
                topic: "flowctl.p.src".into(),
                partition: 0,
                offset,
            },
            dlq: KafkaPos {
                topic: "flowctl.p.dlq".into(),
                partition: 0,
                offset,
            },
            first_seen_ms: 10 + offset as u64,
            attempts: 1,
            state: DlqState::Pending,
            updated_ms: 0,
        }
    }

    fn idx(from: Option<i64>, next: i64, offsets: &[i64]) -> Command {
        Command::IndexDlq(IndexDlq {
            topic: "flowctl.p.dlq".into(),
            partition: 0,
            from,
            next,
            entries: offsets.iter().map(|o| entry(*o)).collect(),
        })
    }

    #[test]
    fn indexing_is_exactly_once_across_competing_leaders() {
        let mut s = State::default();
        let (o, _) = apply(&mut s, 1, &idx(None, 2, &[0, 1]));
        assert_eq!(o, Outcome::DlqIndexed { added: 2 });
        // A deposed leader that read the same records from the same offset is refused.
        let (o, _) = apply(&mut s, 2, &idx(None, 2, &[0, 1]));
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Conflict(_))),
            "{o:?}"
        );
        let (o, _) = apply(&mut s, 3, &idx(Some(2), 3, &[2]));
        assert_eq!(o, Outcome::DlqIndexed { added: 1 });
        assert_eq!(s.dlq.entries.len(), 3);
        assert_eq!(s.dlq.offsets["flowctl.p.dlq/0"], 3);
        // The same input failing again (a new dead letter at offset 3) is one more attempt.
        let mut again = entry(2);
        again.dlq.offset = 3;
        let (o, _) = apply(
            &mut s,
            4,
            &Command::IndexDlq(IndexDlq {
                topic: "flowctl.p.dlq".into(),
                partition: 0,
                from: Some(3),
                next: 4,
                entries: vec![again],
            }),
        );
        assert_eq!(o, Outcome::DlqIndexed { added: 0 });
        assert_eq!(s.dlq.entries.len(), 3);
        assert_eq!(s.dlq.entries[&entry(2).id].attempts, 2);
    }

    #[test]
    fn replay_and_discard_follow_the_state_machine() {
        let mut s = State::default();
        apply(&mut s, 1, &idx(None, 2, &[0, 1]));
        let id = entry(0).id;
        let begin = Command::SetDlqState(SetDlqState {
            ids: vec![id.clone()],
            from: vec![DlqState::Pending],
            to: DlqState::Replaying,
            attempt: true,
            at_ms: 5,
        });
        assert!(matches!(
            apply(&mut s, 2, &begin).0,
            Outcome::DlqStateSet { .. }
        ));
        assert_eq!(s.dlq.entries[&id].attempts, 2);
        // A second replay of the same entry cannot start while (or after) the first runs.
        assert!(matches!(
            apply(&mut s, 3, &begin).0,
            Outcome::Rejected(Rejection::Conflict(_))
        ));
        let (o, _) = apply(
            &mut s,
            4,
            &Command::ExpireDlq(ExpireDlq { before_ms: 1_000 }),
        );
        // The entry being replayed is kept.
        assert_eq!(o, Outcome::DlqExpired { removed: 1 });
        assert!(s.dlq.entries.contains_key(&id));
    }
}

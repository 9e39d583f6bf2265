//! The audit log: a replicated, bounded record of accepted writes.
//!
//! The proposer stamps each entry (time, caller, method, node) and says how many records to
//! keep, so that apply stays deterministic. Every record gets the next sequence number, which
//! never goes back, not even after old records are trimmed: readers page on it.

use crate::{NodeId, Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most records kept. Every node holds them all in memory, so the log is bounded like
/// every other replicated collection.
pub const MAX_AUDIT_KEEP: u32 = 100_000;

/// The most entries one command may carry.
pub const MAX_AUDIT_BATCH: usize = 1_000;

/// The most bytes of each string field of an entry.
pub const MAX_AUDIT_FIELD: usize = 256;

/// One accepted write, as the proposer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The proposer's clock when the write was accepted.
    pub at_ms: u64,
    /// Who made the request (a token name, for example).
    pub who: String,
    /// The request's method.
    pub method: String,
    /// The node that accepted the request.
    pub node: NodeId,
    /// What it changed (`pipeline/NAME`, `token/NAME`…), when the handler named it; records
    /// written before resources were recorded have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

/// A stored entry with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
}

/// The replicated audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// By sequence number; at most the last command's `keep` of them.
    pub records: BTreeMap<u64, AuditRecord>,
    /// The sequence number the next record gets.
    pub next_seq: u64,
}

impl AuditLog {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.next_seq == 0
    }
}

/// Appends entries, then trims the oldest records down to `keep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAudit {
    pub entries: Vec<AuditEntry>,
    /// How many records to keep after appending: 1 to [`MAX_AUDIT_KEEP`].
    pub keep: u32,
}

fn rejected(r: Rejection) -> (Outcome, Vec<Touched>) {
    (Outcome::Rejected(r), vec![])
}

fn invalid(m: String) -> (Outcome, Vec<Touched>) {
    rejected(Rejection::Invalid(m))
}

pub(crate) fn record(state: &mut State, c: &RecordAudit) -> (Outcome, Vec<Touched>) {
    // The proposer validates too, but a command may come from anywhere that can propose, and
    // every node keeps what it holds.
    if c.entries.is_empty() || c.entries.len() > MAX_AUDIT_BATCH {
        return invalid(format!(
            "audit: {} entries, expected 1 to {MAX_AUDIT_BATCH}",
            c.entries.len()
        ));
    }
    if c.keep == 0 || c.keep > MAX_AUDIT_KEEP {
        return invalid(format!(
            "audit: keep {}, expected 1 to {MAX_AUDIT_KEEP}",
            c.keep
        ));
    }
    for (i, e) in c.entries.iter().enumerate() {
        for (field, value) in [
            ("who", &e.who),
            ("method", &e.method),
            ("resource", &e.resource),
        ] {
            if value.len() > MAX_AUDIT_FIELD {
                return invalid(format!(
                    "audit: entries[{i}].{field} is {} bytes, the most is {MAX_AUDIT_FIELD}",
                    value.len()
                ));
            }
        }
    }
    let log = &mut state.audit;
    let first_seq = log.next_seq;
    // At most MAX_AUDIT_BATCH, so the conversion cannot fail; the sum can only in theory.
    let Some(next_seq) = u64::try_from(c.entries.len())
        .ok()
        .and_then(|n| first_seq.checked_add(n))
    else {
        return invalid("audit: the sequence numbers are exhausted".into());
    };
    let mut touched = Vec::with_capacity(c.entries.len() + 1);
    touched.push(Touched::AuditMeta);
    for (seq, e) in (first_seq..next_seq).zip(&c.entries) {
        log.records.insert(
            seq,
            AuditRecord {
                seq,
                entry: e.clone(),
            },
        );
        touched.push(Touched::AuditRecord(seq));
    }
    log.next_seq = next_seq;
    // `keep` is at most MAX_AUDIT_KEEP, which fits in usize.
    let keep = usize::try_from(c.keep).unwrap_or(usize::MAX);
    while log.records.len() > keep {
        let Some((seq, _)) = log.records.pop_first() else {
            break;
        };
        // A record inserted and trimmed by this same command is touched already.
        if seq < first_seq {
            touched.push(Touched::AuditRecord(seq));
        }
    }
    (
        Outcome::AuditRecorded {
            first_seq,
            count: c.entries.len(),
        },
        touched,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, codec, Command};

    fn entry(n: u64) -> AuditEntry {
        AuditEntry {
            at_ms: 1_000 + n,
            who: format!("user{n}"),
            method: "/flowctl.admin.v1.Admin/ApplyPipeline".into(),
            node: NodeId(7),
            resource: String::new(),
        }
    }

    fn rec(entries: Vec<AuditEntry>, keep: u32) -> Command {
        Command::RecordAudit(RecordAudit { entries, keep })
    }

    fn is_invalid(o: &Outcome) -> bool {
        matches!(o, Outcome::Rejected(Rejection::Invalid(_)))
    }

    fn seqs(s: &State) -> Vec<u64> {
        s.audit.records.keys().copied().collect()
    }

    #[test]
    fn record_assigns_seqs_from_next_seq_and_touches_them() {
        let mut s = State::default();
        let (o, t) = apply(&mut s, 3, &rec(vec![entry(0), entry(1)], 10));
        assert_eq!(
            o,
            Outcome::AuditRecorded {
                first_seq: 0,
                count: 2
            }
        );
        assert_eq!(
            t,
            vec![
                Touched::AuditMeta,
                Touched::AuditRecord(0),
                Touched::AuditRecord(1)
            ]
        );
        assert_eq!(s.audit.next_seq, 2);
        assert_eq!(seqs(&s), [0, 1]);
        assert_eq!(
            s.audit.records[&1],
            AuditRecord {
                seq: 1,
                entry: entry(1)
            }
        );
    }

    #[test]
    fn an_empty_or_too_large_batch_is_invalid() {
        let mut s = State::default();
        let too_many = (0..=MAX_AUDIT_BATCH as u64).map(entry).collect();
        for cmd in [rec(vec![], 10), rec(too_many, MAX_AUDIT_KEEP)] {
            let (o, t) = apply(&mut s, 1, &cmd);
            assert!(is_invalid(&o), "{o:?}");
            assert!(t.is_empty());
        }
        assert_eq!(s, State::default());
        let most = (0..MAX_AUDIT_BATCH as u64).map(entry).collect();
        let (o, _) = apply(&mut s, 2, &rec(most, MAX_AUDIT_KEEP));
        assert_eq!(
            o,
            Outcome::AuditRecorded {
                first_seq: 0,
                count: MAX_AUDIT_BATCH
            }
        );
    }

    #[test]
    fn a_keep_of_zero_or_over_the_maximum_is_invalid() {
        let mut s = State::default();
        for keep in [0, MAX_AUDIT_KEEP + 1, u32::MAX] {
            let (o, t) = apply(&mut s, 1, &rec(vec![entry(0)], keep));
            assert!(is_invalid(&o), "{keep}: {o:?}");
            assert!(t.is_empty());
        }
        assert_eq!(s, State::default());
        for keep in [1, MAX_AUDIT_KEEP] {
            let (o, _) = apply(&mut s, 2, &rec(vec![entry(0)], keep));
            assert!(matches!(o, Outcome::AuditRecorded { .. }), "{keep}: {o:?}");
        }
    }

    #[test]
    fn a_string_field_over_the_byte_limit_is_invalid() {
        let mut s = State::default();
        // 129 two-byte characters: 129 chars, but 258 bytes.
        let long = "é".repeat(MAX_AUDIT_FIELD / 2 + 1);
        let mut who = entry(0);
        who.who = long.clone();
        let mut method = entry(0);
        method.method = "m".repeat(MAX_AUDIT_FIELD + 1);
        for bad in [who, method] {
            // A bad entry anywhere in the batch rejects all of it.
            let (o, t) = apply(&mut s, 1, &rec(vec![entry(1), bad], 10));
            assert!(is_invalid(&o), "{o:?}");
            assert!(t.is_empty());
        }
        assert_eq!(s, State::default());
        let mut most = entry(0);
        most.who = "w".repeat(MAX_AUDIT_FIELD);
        most.method = "m".repeat(MAX_AUDIT_FIELD);
        let (o, _) = apply(&mut s, 2, &rec(vec![most], 10));
        assert!(matches!(o, Outcome::AuditRecorded { .. }), "{o:?}");
    }

    #[test]
    fn the_oldest_records_are_trimmed_to_keep_across_commands_and_seq_keeps_increasing() {
        let mut s = State::default();
        apply(&mut s, 1, &rec((0..3).map(entry).collect(), 5));
        assert_eq!(seqs(&s), [0, 1, 2]);

        let (o, t) = apply(&mut s, 2, &rec((3..6).map(entry).collect(), 4));
        assert_eq!(
            o,
            Outcome::AuditRecorded {
                first_seq: 3,
                count: 3
            }
        );
        assert_eq!(seqs(&s), [2, 3, 4, 5]);
        assert_eq!(
            t,
            vec![
                Touched::AuditMeta,
                Touched::AuditRecord(3),
                Touched::AuditRecord(4),
                Touched::AuditRecord(5),
                Touched::AuditRecord(0),
                Touched::AuditRecord(1),
            ]
        );
        assert_eq!(s.audit.records[&2].entry, entry(2));

        // After trimming, numbering continues where it was, never from the oldest record left.
        let (o, t) = apply(&mut s, 3, &rec(vec![entry(6)], 2));
        assert_eq!(
            o,
            Outcome::AuditRecorded {
                first_seq: 6,
                count: 1
            }
        );
        assert_eq!(seqs(&s), [5, 6]);
        assert_eq!(s.audit.next_seq, 7);
        assert_eq!(
            t,
            vec![
                Touched::AuditMeta,
                Touched::AuditRecord(6),
                Touched::AuditRecord(2),
                Touched::AuditRecord(3),
                Touched::AuditRecord(4),
            ]
        );
    }

    #[test]
    fn a_batch_larger_than_keep_keeps_its_newest_entries_and_touches_each_seq_once() {
        let mut s = State::default();
        apply(&mut s, 1, &rec(vec![entry(0)], 10));
        let (o, t) = apply(&mut s, 2, &rec((1..5).map(entry).collect(), 2));
        assert_eq!(
            o,
            Outcome::AuditRecorded {
                first_seq: 1,
                count: 4
            }
        );
        assert_eq!(seqs(&s), [3, 4]);
        assert_eq!(s.audit.next_seq, 5);
        assert_eq!(
            t,
            vec![
                Touched::AuditMeta,
                Touched::AuditRecord(1),
                Touched::AuditRecord(2),
                Touched::AuditRecord(3),
                Touched::AuditRecord(4),
                Touched::AuditRecord(0),
            ]
        );
    }

    #[test]
    fn exhausted_sequence_numbers_are_invalid_not_a_panic() {
        let mut s = State::default();
        s.audit.next_seq = u64::MAX - 1;
        let before = s.clone();
        let (o, t) = apply(&mut s, 1, &rec(vec![entry(0), entry(1)], 10));
        assert!(is_invalid(&o), "{o:?}");
        assert!(t.is_empty());
        assert_eq!(s, before);
        let (o, _) = apply(&mut s, 2, &rec(vec![entry(0)], 10));
        assert_eq!(
            o,
            Outcome::AuditRecorded {
                first_seq: u64::MAX - 1,
                count: 1
            }
        );
        assert_eq!(s.audit.next_seq, u64::MAX);
    }

    #[test]
    fn record_audit_applies_inside_a_batch() {
        let mut s = State::default();
        let (o, t) = apply(
            &mut s,
            5,
            &Command::Batch(vec![rec(vec![entry(0)], 10), rec(vec![], 10)]),
        );
        let Outcome::Batch(outs) = o else {
            panic!("{o:?}")
        };
        assert_eq!(
            outs[0],
            Outcome::AuditRecorded {
                first_seq: 0,
                count: 1
            }
        );
        assert!(is_invalid(&outs[1]), "{:?}", outs[1]);
        assert!(t.contains(&Touched::AuditRecord(0)));
        assert_eq!(s.audit.next_seq, 1);
    }

    // Golden bytes: the encodings of the audit command and of the audit part of the state are
    // persisted in logs and snapshots. Add a new version instead of editing them.
    const GOLDEN_RECORD: &str = "\u{1}{\"RecordAudit\":{\"entries\":[{\"at_ms\":1000,\"who\":\"ci\",\"method\":\"/flowctl.admin.v1.Admin/ApplyPipeline\",\"node\":7}],\"keep\":100}}";

    fn golden_entry() -> AuditEntry {
        AuditEntry {
            at_ms: 1_000,
            who: "ci".into(),
            method: "/flowctl.admin.v1.Admin/ApplyPipeline".into(),
            node: NodeId(7),
            resource: String::new(),
        }
    }

    #[test]
    fn audit_command_golden_bytes() {
        let cmd = rec(vec![golden_entry()], 100);
        assert_eq!(
            codec::encode_v1("command", &cmd).unwrap(),
            GOLDEN_RECORD.as_bytes()
        );
        assert_eq!(
            codec::decode_command(&codec::encode_command(&cmd).unwrap()).unwrap(),
            cmd
        );
        assert_eq!(
            codec::decode_command(GOLDEN_RECORD.as_bytes()).unwrap(),
            cmd
        );
    }

    #[test]
    fn audit_state_round_trips_and_an_empty_one_is_not_written() {
        let mut s = State::default();
        let empty = String::from_utf8(codec::encode_v1("state", &s).unwrap()).unwrap();
        assert!(!empty.contains("audit"), "{empty}");

        apply(&mut s, 3, &rec(vec![golden_entry()], 100));
        let bytes = codec::encode_v1("state", &s).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.ends_with("\"audit\":{\"records\":{\"0\":{\"seq\":0,\"entry\":{\"at_ms\":1000,\"who\":\"ci\",\"method\":\"/flowctl.admin.v1.Admin/ApplyPipeline\",\"node\":7}}},\"next_seq\":1}}"),
            "{text}"
        );
        let back = codec::decode_state(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            codec::decode_state(&codec::encode_state(&s).unwrap()).unwrap(),
            s
        );
        assert_eq!(back.audit, s.audit);

        // States differing only in the audit log are not equal.
        let mut other = s.clone();
        other.audit.next_seq = 2;
        assert_ne!(other, s);
    }
}

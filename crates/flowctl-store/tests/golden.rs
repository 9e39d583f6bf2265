//! Golden bytes of every record the RocksDB store persists, with their keys: the state
//! machine's records (one kind per `Touched` variant), its applied log id, membership and
//! snapshot record, the snapshot file, the vote, the purged log id, and log entries (blank,
//! membership and normal).
//!
//! The test drives a real store through openraft's storage traits with a log that fills every
//! record kind, dumps every column family and the snapshot directory, and compares the dump
//! with `tests/golden/records.txt`. Then it writes the golden records into an empty store,
//! opens it, and checks that it loads the same state, applied log id, membership, snapshot,
//! vote and log: the golden bytes decode, as well as encode. If an encoding changes, stores
//! written by earlier releases stop loading: add a new codec version instead of editing the
//! golden file. `GOLDEN_REWRITE=1 cargo test -p flowctl-store --test golden` rewrites it.
//!
//! The snapshot file is pinned in the current (streaming) format in `records.txt`, and in the
//! format of earlier releases (one JSON document) in `snapshot-v1.txt`, which is never
//! rewritten; both must install: the current one to the state the log made, format 1 to the
//! state `codec::decode_state` reads from it (fields added since then have their defaults).
//!
//! Coverage: every `Touched` variant must be touched by the log (an exhaustive `match` names
//! each variant's key prefix, so a new variant does not compile until it has one), and every
//! key in the `sm` column family must have one of those prefixes. The store does not export
//! its prefixes, so they are restated here; a key the test does not know fails it.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_state::audit::{AuditEntry, RecordAudit};
use flowctl_state::auth::{CreateToken, Role, SetAuth, TokenRecord};
use flowctl_state::components::{Api, ComponentKind, ComponentSpec, Register, SetHealth};
use flowctl_state::dlq::{DlqEntry, DlqState, IndexDlq, KafkaPos};
use flowctl_state::pipelines::ApplyPipeline;
use flowctl_state::placements::SetPlacement;
use flowctl_state::replay::{AssignChunks, CreateReplay, Job, JobState};
use flowctl_state::requests::{Once, RequestId};
use flowctl_state::runtime::{
    InstanceState, InstanceStatus, PipelineReport, ReportRuntime, RuntimeEvent,
};
use flowctl_state::schemas::{PushSchemas, PushSubject};
use flowctl_state::{Command, ComponentId, NodeId, PipelineId, State, Touched};
use flowctl_store::{open, Entry, LogId, Member, StoreOptions, Vote};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const REWRITE_VAR: &str = "GOLDEN_REWRITE";
const GOLDEN: &str = "tests/golden/records.txt";
/// The same store as written by releases before the version-2 (MessagePack) codec: every
/// record, log entry and the snapshot file's records in version 1 (JSON). Kept, not
/// rewritten: a data dir written by those releases must still open.
const GOLDEN_V1_STORE: &str = "tests/golden/records-v1.txt";
/// The snapshot file the same log gave in the format before the streaming one (one
/// `codec::encode_state` document), in the golden file's text form. Kept, not rewritten: this
/// release must still install what the previous one sends.
const GOLDEN_V1_SNAPSHOT: &str = "tests/golden/snapshot-v1.txt";
/// The pseudo column family of files in the snapshot directory.
const SNAPSHOT_FILES: &str = "snapshot-file";

// ---------------------------------------------------------------------------------------------
// The record kinds of the `sm` column family.

/// Each kind of state-machine record: its `Touched` variant's name, and the key prefix (or, for
/// a single record, the whole key) that `flowctl-store`'s `sm_store.rs` writes it under.
fn record_kind(t: &Touched) -> (&'static str, &'static str) {
    match t {
        Touched::Pipeline(_) => ("Pipeline", "p/"),
        Touched::RemovedNode(_) => ("RemovedNode", "r/"),
        Touched::Component(_) => ("Component", "c/"),
        Touched::Placement(_) => ("Placement", "l/"),
        Touched::Runtime(_) => ("Runtime", "x/"),
        Touched::Subject(_) => ("Subject", "S/"),
        Touched::Schema(_) => ("Schema", "I/"),
        Touched::SchemaMeta => ("SchemaMeta", "M/schema-registry"),
        Touched::DlqEntry(_) => ("DlqEntry", "D/"),
        Touched::DlqOffset(_) => ("DlqOffset", "O/"),
        Touched::ReplayJob(_) => ("ReplayJob", "Q/"),
        Touched::ReplayChunk(..) => ("ReplayChunk", "K/"),
        Touched::AuthMeta => ("AuthMeta", "M/auth"),
        Touched::Token(_) => ("Token", "T/"),
        Touched::AuditRecord(_) => ("AuditRecord", "U/"),
        Touched::AuditMeta => ("AuditMeta", "M/audit"),
        Touched::Request(_) => ("Request", "q/"),
    }
}

/// Every `Touched` variant. `Touched` has no list of its variants to compare with, so a new
/// one must be added here (as well as to [`record_kind`], which does not compile without it)
/// and touched by [`log`].
const TOUCHED_VARIANTS: [&str; 17] = [
    "AuditMeta",
    "AuditRecord",
    "AuthMeta",
    "Component",
    "DlqEntry",
    "DlqOffset",
    "Pipeline",
    "Placement",
    "RemovedNode",
    "ReplayChunk",
    "ReplayJob",
    "Request",
    "Runtime",
    "Schema",
    "SchemaMeta",
    "Subject",
    "Token",
];

// ---------------------------------------------------------------------------------------------
// The log.

const PIPELINE: &str = "orders";
const AT: u64 = 1_712_000_000_000;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn component_spec() -> ComponentSpec {
    ComponentSpec {
        id: ComponentId("ttp-processor-1".into()),
        api: Api::V1,
        kind: ComponentKind::Processor,
        name: "ttp".into(),
        description: "token transfers".into(),
        version: "1.2.0".into(),
        input_event_types: vec!["stellar.LedgerCloseMeta".into()],
        output_event_types: vec!["ttp.TokenTransferEvent".into()],
        endpoint: "10.0.0.5:50051".into(),
        health_endpoint: String::new(),
        max_inflight: 16,
        metadata: [("network".to_owned(), "testnet".to_owned())].into(),
    }
}

/// Commands that leave at least one record of every kind in the state.
fn commands() -> Vec<Command> {
    vec![
        Command::ApplyPipeline(ApplyPipeline {
            name: PIPELINE.into(),
            id_if_new: PipelineId::from_random(0x0123_4567_89ab_cdef),
            spec_yaml: "kind: Pipeline\nmetadata:\n  name: orders\n".into(),
            canonical: r#"{"kind":"Pipeline","metadata":{"name":"orders"}}"#.into(),
            at_ms: AT,
            if_generation: None,
        }),
        Command::RecordNodeRemoved { node_id: NodeId(9) },
        Command::RegisterComponent(Register {
            spec: component_spec(),
            at_ms: AT,
        }),
        Command::SetPlacement(SetPlacement {
            pipeline: PIPELINE.into(),
            generation: 1,
            instances: [("ttp/0".to_owned(), NodeId(1))].into(),
        }),
        Command::ReportRuntime(ReportRuntime {
            node: NodeId(1),
            pipelines: vec![PipelineReport {
                pipeline: PIPELINE.into(),
                instances: vec![(
                    "ttp/0".into(),
                    Some(InstanceStatus {
                        node: NodeId(1),
                        spec_hash: "3f9a0c".into(),
                        state: InstanceState::Running,
                        pid: Some(4242),
                        restarts: 0,
                        started_at_ms: AT,
                        last_exit: None,
                        epoch: None,
                    }),
                )],
                events: vec![RuntimeEvent {
                    at_ms: AT,
                    node: NodeId(1),
                    instance: "ttp/0".into(),
                    reason: "Started".into(),
                    message: "pid 4242".into(),
                    warning: false,
                }],
            }],
        }),
        Command::PushSchemas(PushSchemas {
            package: "ttp.v1".into(),
            subjects: vec![PushSubject {
                subject: "ttp.v1.TokenTransferEvent".into(),
                fingerprint: "sha256:7d1f".into(),
                file: "ttp/v1/event.proto".into(),
                source: "syntax = \"proto3\";\npackage ttp.v1;\n".into(),
                descriptor_set: vec![0x0a, 0x12, 0x00, 0xff],
                expect_latest: None,
                expect_mode: "BACKWARD".into(),
            }],
            at_ms: AT,
        }),
        Command::IndexDlq(IndexDlq {
            topic: "flowctl.orders.dlq".into(),
            partition: 0,
            from: None,
            next: 18,
            entries: vec![DlqEntry {
                id: "5c2d7e0f9a1b3c4d".into(),
                pipeline: PIPELINE.into(),
                component: "ttp".into(),
                error: "decode: unexpected EOF".into(),
                event_type: "stellar.LedgerCloseMeta".into(),
                schema_id: Some(1),
                key: "51234567".into(),
                source: KafkaPos {
                    topic: "flowctl.orders.src.ttp".into(),
                    partition: 2,
                    offset: 1_000,
                },
                dlq: KafkaPos {
                    topic: "flowctl.orders.dlq".into(),
                    partition: 0,
                    offset: 17,
                },
                first_seen_ms: AT,
                attempts: 1,
                state: DlqState::Pending,
                updated_ms: AT,
            }],
        }),
        Command::CreateReplay(CreateReplay {
            job: Job {
                id: "rj-7".into(),
                pipeline: PIPELINE.into(),
                source: "stellar-source".into(),
                from_ledger: 51_000_000,
                to_ledger: 51_000_099,
                chunk_size: 64,
                max_parallel: 2,
                max_attempts: 3,
                state: JobState::Running,
                created_ms: AT,
                updated_ms: AT,
                records: 0,
            },
        }),
        Command::AssignChunks(AssignChunks {
            job: "rj-7".into(),
            assignments: vec![(0, "stellar-source-0".into())],
            at_ms: AT,
        }),
        Command::SetAuth(SetAuth { enabled: true }),
        Command::CreateToken(CreateToken {
            token: TokenRecord {
                name: "deploy-bot".into(),
                role: Role::Admin,
                hash: "0123456789abcdef".repeat(4),
                created_ms: AT,
                expires_ms: Some(AT + 86_400_000),
            },
        }),
        Command::RecordAudit(RecordAudit {
            entries: vec![AuditEntry {
                at_ms: AT,
                who: "deploy-bot".into(),
                method: "/flowctl.v1.PipelineService/Apply".into(),
                node: NodeId(1),
                resource: "pipeline/orders".into(),
            }],
            keep: 100,
        }),
        Command::Once(Once {
            request_id: RequestId("agent/ttp-processor-1/3".into()),
            command: Box::new(Command::SetComponentHealth(SetHealth {
                id: ComponentId("ttp-processor-1".into()),
                healthy: false,
                at_ms: AT + 10,
            })),
        }),
    ]
}

/// The log of term 1 (a blank entry, the membership, the commands), then term 2's blank entry.
fn log() -> Vec<Entry> {
    let mut entries = vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([1, 2])],
                BTreeMap::from([
                    (1, Member::new("10.0.0.1:8080", "10.0.0.1:8081")),
                    (2, Member::new("10.0.0.2:8080", "")),
                ]),
            )),
        },
    ];
    for c in commands() {
        let index = entries.len() as u64 + 1;
        entries.push(Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(c),
        });
    }
    let index = entries.len() as u64 + 1;
    entries.push(Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Blank,
    });
    entries
}

/// The log index up to which the log is purged.
const PURGED: u64 = 1;

fn vote() -> Vote {
    Vote::new_committed(2, 1)
}

// ---------------------------------------------------------------------------------------------
// Dumping and loading raw records.

/// Every record: (column family, key) → value. Files of the snapshot directory are in the
/// pseudo column family [`SNAPSHOT_FILES`], keyed by file name.
type Records = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn dump(dir: &Path) -> Records {
    let db_path = dir.join("rocksdb");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db_path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &db_path, &cfs).unwrap();
    let mut out = Records::new();
    for name in &cfs {
        let cf = db.cf_handle(name).unwrap();
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            out.insert((name.clone(), k.to_vec()), v.to_vec());
        }
    }
    for e in std::fs::read_dir(dir.join("snapshots")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        out.insert(
            (SNAPSHOT_FILES.to_owned(), name.into_bytes()),
            std::fs::read(e.path()).unwrap(),
        );
    }
    out
}

/// Writes `records` into the store under `dir`, which `open` has created.
fn load(dir: &Path, records: &Records) {
    let db_path = dir.join("rocksdb");
    let mut opts = rocksdb::Options::default();
    opts.create_missing_column_families(true);
    let mut cfs: BTreeSet<String> = rocksdb::DB::list_cf(&opts, &db_path)
        .unwrap()
        .into_iter()
        .collect();
    cfs.extend(
        records
            .keys()
            .map(|(cf, _)| cf.clone())
            .filter(|cf| cf != SNAPSHOT_FILES),
    );
    let db = rocksdb::DB::open_cf(&opts, &db_path, &cfs).unwrap();
    for ((cf, key), value) in records {
        if cf == SNAPSHOT_FILES {
            let name = String::from_utf8(key.clone()).unwrap();
            std::fs::write(dir.join("snapshots").join(name), value).unwrap();
        } else {
            db.put_cf(db.cf_handle(cf).unwrap(), key, value).unwrap();
        }
    }
    db.flush_wal(true).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The golden file: `<column family> <key>` then the value, for each record.

/// A key: printable ASCII as it is, except `\`; other bytes as `\xNN`.
fn render_key(k: &[u8]) -> String {
    let mut s = String::new();
    for &b in k {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn parse_key(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let hex = s.get(i + 2..i + 4).expect("\\xNN");
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A value: `v1 <text>` for the version-1 encodings (a version byte of 1, then one line of
/// UTF-8), `v2 <hex>` for the version-2 ones (a version byte of 2, then the MessagePack body
/// in hex), `hex <bytes>` for anything else.
fn render_value(v: &[u8]) -> String {
    if let Some((&2, body)) = v.split_first() {
        return format!("v2 {}", hex(body));
    }
    if let Some((&1, body)) = v.split_first() {
        if let Ok(text) = std::str::from_utf8(body) {
            if !text.contains(['\n', '\r']) {
                return format!("v1 {text}");
            }
        }
    }
    format!("hex {}", hex(v))
}

fn parse_value(s: &str) -> Vec<u8> {
    if let Some(text) = s.strip_prefix("v1 ") {
        let mut v = vec![1];
        v.extend_from_slice(text.as_bytes());
        v
    } else if let Some(body) = s.strip_prefix("v2 ") {
        let mut v = vec![2];
        v.extend(unhex(body));
        v
    } else if let Some(h) = s.strip_prefix("hex ") {
        unhex(h)
    } else {
        panic!("a golden value starts with `v1 `, `v2 ` or `hex `: {s:?}")
    }
}

const HEADER: &str = "\
# Golden bytes of every record flowctl-store persists, written by tests/golden.rs (rewrite
# with GOLDEN_REWRITE=1). Each record is a `<column family> <key>` line and a value line:
# `v1 <JSON>` is the version byte 1 and the JSON body, `v2 <hex>` the version byte 2 and the
# MessagePack body, `hex <bytes>` anything else.
";

fn render(records: &Records) -> String {
    let mut out = HEADER.to_owned();
    for ((cf, key), value) in records {
        out.push_str(&format!(
            "\n{cf} {}\n{}\n",
            render_key(key),
            render_value(value)
        ));
    }
    out
}

fn parse(text: &str) -> Records {
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
    let mut out = Records::new();
    while let Some(head) = lines.next() {
        let (cf, key) = head
            .split_once(' ')
            .unwrap_or_else(|| panic!("{GOLDEN}: {head:?} is not `<cf> <key>`"));
        let value = lines
            .next()
            .unwrap_or_else(|| panic!("{GOLDEN}: {head:?} has no value"));
        out.insert((cf.to_owned(), parse_key(key)), parse_value(value));
    }
    out
}

/// Each record that differs, named by its column family and key.
fn record_diff(golden: &Records, actual: &Records) -> Vec<String> {
    let keys: BTreeSet<&(String, Vec<u8>)> = golden.keys().chain(actual.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let name = format!("{} {}", k.0, render_key(&k.1));
        match (golden.get(k), actual.get(k)) {
            (Some(g), Some(a)) if g == a => {}
            (Some(g), Some(a)) => out.push(format!(
                "{name}: the bytes differ\n  golden: {}\n  stored: {}",
                render_value(g),
                render_value(a)
            )),
            (Some(_), None) => out.push(format!("{name}: in the golden file, no longer stored")),
            (None, Some(a)) => out.push(format!(
                "{name}: stored, not in the golden file\n  stored: {}",
                render_value(a)
            )),
            (None, None) => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The test.

/// What the store holds after the log, for comparing with what a store loads.
struct Expected {
    state: State,
    applied: Option<LogId>,
    membership: flowctl_store::StoredMembership,
    snapshot: flowctl_store::SnapshotMeta,
}

/// Runs the log through a fresh store under `dir`, as a node would: append, apply, snapshot,
/// vote, purge.
async fn write_store(dir: &Path) -> Expected {
    let (mut log_store, mut sm) = open(dir, StoreOptions::default()).unwrap();
    log_store.blocking_append(log()).await.unwrap();
    log_store.save_vote(&vote()).await.unwrap();
    let outcomes = sm.apply(log()).await.unwrap();
    for (o, e) in outcomes.iter().zip(log()) {
        assert!(
            !matches!(o, flowctl_state::Outcome::Rejected(_)),
            "{e:?} gave {o:?}"
        );
    }
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    log_store.purge(log_id(1, PURGED)).await.unwrap();
    let (applied, membership) = sm.applied_state().await.unwrap();
    Expected {
        state: sm.reader().read(|s, _| s.clone()),
        applied,
        membership,
        snapshot: snap.meta,
    }
}

#[tokio::test]
async fn every_record_kind_has_golden_bytes_and_the_golden_records_load() {
    // The state the log gives, by the pure state machine; the store must hold the same.
    let mut pure = State::default();
    let mut touched = Vec::new();
    for e in log() {
        if let EntryPayload::Normal(c) = &e.payload {
            touched.extend(flowctl_state::apply(&mut pure, e.log_id.index, c).1);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let expected = write_store(dir.path()).await;
    assert_eq!(expected.state, pure, "the store's state after the log");
    let actual = dump(dir.path());

    // Coverage: the log touches every kind, and the `sm` keys are exactly those kinds.
    let variants: BTreeSet<&str> = touched.iter().map(|t| record_kind(t).0).collect();
    let all: BTreeSet<&str> = TOUCHED_VARIANTS.into_iter().collect();
    assert_eq!(variants, all, "the record kinds the log touches");
    let prefixes: BTreeSet<&str> = touched.iter().map(|t| record_kind(t).1).collect();
    let mut seen = BTreeSet::new();
    for (cf, key) in actual.keys() {
        if cf != "sm" {
            continue;
        }
        let key = String::from_utf8_lossy(key);
        let matching: Vec<&&str> = prefixes
            .iter()
            .filter(|p| {
                if p.ends_with('/') {
                    key.starts_with(**p)
                } else {
                    key == **p
                }
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "sm key {key:?} must have exactly one known record prefix, has {matching:?}"
        );
        seen.insert(*matching[0]);
    }
    assert_eq!(seen, prefixes, "record kinds with no record in the store");

    // Encoding: the stored bytes are the golden bytes.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    let rewrite = std::env::var(REWRITE_VAR).is_ok_and(|v| v == "1");
    let text = render(&actual);
    if rewrite {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let golden_text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e} (write it with {REWRITE_VAR}=1)"));
    let golden = parse(&golden_text);
    let diff = record_diff(&golden, &actual);
    assert!(
        diff.is_empty(),
        "{} record(s) differ from {GOLDEN} (a changed encoding needs a new version; rewrite \
         with {REWRITE_VAR}=1 only for a new record):\n\n{}",
        diff.len(),
        diff.join("\n\n")
    );
    assert_eq!(golden_text, text, "{GOLDEN} is not in its canonical form");

    // Decoding: a store made of the golden records loads what the log made, and so does one
    // made of the records of the releases before the version-2 codec.
    check_loads(&golden, &expected, GOLDEN).await;
    let v1_store_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_V1_STORE);
    let v1_store = parse(&std::fs::read_to_string(&v1_store_path).unwrap());
    check_loads(&v1_store, &expected, GOLDEN_V1_STORE).await;

    // The golden snapshot files install into an empty store and give what the log made: the
    // streaming format this release writes, and the JSON document of the releases before it.
    let current = golden
        .iter()
        .find(|((cf, _), _)| cf == SNAPSHOT_FILES)
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(current.starts_with(b"FLOWSNAP\x02\x00\x00\x00"));
    let current_v1_records = v1_store
        .iter()
        .find(|((cf, _), _)| cf == SNAPSHOT_FILES)
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(current_v1_records.starts_with(b"FLOWSNAP\x02\x00\x00\x00"));
    let v1_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_V1_SNAPSHOT);
    let v1 = parse(&std::fs::read_to_string(&v1_path).unwrap());
    assert_eq!(v1.len(), 1, "{GOLDEN_V1_SNAPSHOT} holds one snapshot file");
    let ((cf, name), v1) = v1.into_iter().next().unwrap();
    assert_eq!(cf, SNAPSHOT_FILES);
    assert_eq!(
        String::from_utf8(name).unwrap(),
        format!("{}.snap", expected.snapshot.snapshot_id)
    );
    assert!(v1.starts_with(b"\x01{"));
    // Format 1 installs as that release decoded it (`decode_state`): a field added to a
    // record since then has its default, where the log gives it a value.
    let v1_state = flowctl_state::codec::decode_state(&v1).unwrap();
    for (what, bytes, state) in [
        ("the current format", current, &expected.state),
        (
            "the current format with version-1 records",
            current_v1_records,
            &expected.state,
        ),
        ("format 1", v1, &v1_state),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bytes)
            .await
            .unwrap();
        sm.install_snapshot(&expected.snapshot, incoming)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(sm.reader().read(|s, _| s.clone()), *state, "{what}");
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, expected.applied, "{what}");
        assert_eq!(membership, expected.membership, "{what}");
    }
}

/// A store made of `golden`'s records opens with the state, applied log id, membership,
/// snapshot, vote and log that the log made.
async fn check_loads(golden: &Records, expected: &Expected, what: &str) {
    let fresh = tempfile::tempdir().unwrap();
    drop(open(fresh.path(), StoreOptions::default()).unwrap());
    load(fresh.path(), golden);
    let (mut log_store, mut sm) = open(fresh.path(), StoreOptions::default()).unwrap();
    assert_eq!(sm.reader().read(|s, _| s.clone()), expected.state, "{what}");
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, expected.applied, "{what}");
    assert_eq!(membership, expected.membership, "{what}");
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snap.meta, expected.snapshot, "{what}");
    assert_eq!(log_store.read_vote().await.unwrap(), Some(vote()), "{what}");
    let st = log_store.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, PURGED)), "{what}");
    let entries = log_store.try_get_log_entries(0..u64::MAX).await.unwrap();
    let want: Vec<Entry> = log().into_iter().skip(PURGED as usize).collect();
    assert_eq!(entries, want, "{what}");
}

#[test]
fn golden_keys_and_values_round_trip_through_their_text_form() {
    for k in [
        &b"p/orders"[..],
        b"K/rj-7/0000000001",
        &7u64.to_be_bytes(),
        b"a\\b c",
    ] {
        assert_eq!(parse_key(&render_key(k)), k, "{k:?}");
    }
    for v in [
        &b"\x01{\"a\":1}"[..],
        b"\x01multi\nline",
        b"\x02{}",
        b"\x02",
        b"\x03{}",
        b"",
        b"\x01",
    ] {
        assert_eq!(parse_value(&render_value(v)), v, "{v:?}");
    }
    assert_eq!(render_value(b"\x01{}"), "v1 {}");
    assert_eq!(render_value(b"\x02{}"), "v2 7b7d");
    assert_eq!(render_value(b"\x03{}"), "hex 037b7d");
}

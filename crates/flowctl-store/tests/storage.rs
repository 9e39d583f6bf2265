//! openraft's storage conformance suite against the RocksDB store, plus snapshot and restart
//! round trips of our own.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_state::pipelines::ApplyPipeline;
use flowctl_state::{Command, PipelineId};
use flowctl_store::{open, LogStore, StateMachineStore, StoreOptions, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};
use tokio::io::AsyncReadExt;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open(dir.path(), StoreOptions::default()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}

fn normal(term: u64, index: u64, name: &str, canonical: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Command::ApplyPipeline(ApplyPipeline {
            name: name.into(),
            id_if_new: PipelineId::from_random(index),
            spec_yaml: format!("name: {name}\n"),
            canonical: canonical.into(),
            at_ms: index * 1000,
            if_generation: None,
        })),
    }
}

/// Builds a snapshot of `sm` and reads it whole.
async fn snapshot_bytes(sm: &mut StateMachineStore) -> (flowctl_store::SnapshotMeta, Vec<u8>) {
    let mut snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = Vec::new();
    snap.snapshot.read_to_end(&mut bytes).await.unwrap();
    (snap.meta, bytes)
}

/// Installs a snapshot's bytes into `dst`, as a follower receives it.
async fn install(dst: &mut StateMachineStore, meta: &flowctl_store::SnapshotMeta, bytes: &[u8]) {
    try_install(dst, meta, bytes).await.unwrap();
}

async fn try_install(
    dst: &mut StateMachineStore,
    meta: &flowctl_store::SnapshotMeta,
    bytes: &[u8],
) -> Result<(), StorageError<u64>> {
    let mut incoming = dst.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *incoming, bytes)
        .await
        .unwrap();
    dst.install_snapshot(meta, incoming).await
}

fn membership(index: u64, voters: &[u64]) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Membership(openraft::Membership::new(
            vec![voters.iter().copied().collect()],
            voters
                .iter()
                .map(|&n| {
                    (
                        n,
                        flowctl_store::Member::new(format!("10.0.0.{n}:8080"), ""),
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>(),
        )),
    }
}

/// Everything a node's state machine shows: the state, what it has applied, the current
/// snapshot's meta.
#[derive(Debug, PartialEq)]
struct Seen {
    state: flowctl_state::State,
    applied: Option<openraft::LogId<u64>>,
    membership: flowctl_store::StoredMembership,
    snapshot: Option<flowctl_store::SnapshotMeta>,
}

async fn seen(sm: &mut StateMachineStore) -> Seen {
    let (applied, membership) = sm.applied_state().await.unwrap();
    Seen {
        state: sm.reader().read(|s, _| s.clone()),
        applied,
        membership,
        snapshot: sm.get_current_snapshot().await.unwrap().map(|s| s.meta),
    }
}

/// The `sm_meta` keys of the store under `dir` (closed), to check that nothing staged is left.
fn sm_meta_keys(dir: &std::path::Path) -> Vec<String> {
    let db_path = dir.join("rocksdb");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db_path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &db_path, &cfs).unwrap();
    db.iterator_cf(
        db.cf_handle("sm_meta").unwrap(),
        rocksdb::IteratorMode::Start,
    )
    .map(|item| String::from_utf8_lossy(&item.unwrap().0).into_owned())
    .collect()
}

/// A source store with pipelines, a membership and a token, and a built snapshot of it.
async fn source_snapshot(
    dir: &std::path::Path,
) -> (StateMachineStore, flowctl_store::SnapshotMeta, Vec<u8>) {
    let (_log, mut src) = open(dir, StoreOptions::default()).unwrap();
    let mut entries = vec![membership(1, &[1, 2, 3])];
    entries.extend((2..=6).map(|i| normal(2, i, &format!("src{i}"), &format!("{i}"))));
    entries.push(Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(2, 1), 7),
        payload: EntryPayload::Normal(Command::CreateToken(flowctl_state::auth::CreateToken {
            token: flowctl_state::auth::TokenRecord {
                name: "ci".into(),
                role: flowctl_state::auth::Role::Agent,
                hash: "b".repeat(64),
                created_ms: 9,
                expires_ms: Some(99),
            },
        })),
    });
    src.apply(entries).await.unwrap();
    let (meta, bytes) = snapshot_bytes(&mut src).await;
    (src, meta, bytes)
}

/// A target store with a state of its own (other pipelines, another membership) and a current
/// snapshot of it.
async fn target(dir: &std::path::Path) -> (LogStore, StateMachineStore) {
    let (log, mut dst) = open(dir, StoreOptions::default()).unwrap();
    let mut entries = vec![membership(1, &[7])];
    entries.extend((2..=4).map(|i| normal(1, i, &format!("dst{i}"), "{}")));
    dst.apply(entries).await.unwrap();
    snapshot_bytes(&mut dst).await;
    (log, dst)
}

#[tokio::test]
async fn applied_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
        let entries: Vec<_> = (1..=10)
            .map(|i| normal(1, i, &format!("p{}", i % 4), &format!("{i}")))
            .collect();
        sm.apply(entries).await.unwrap();
    }
    let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 10);
    let names = sm.reader().read(|s, idx| {
        assert_eq!(idx, 10);
        s.pipelines.keys().cloned().collect::<Vec<_>>()
    });
    assert_eq!(names, ["p0", "p1", "p2", "p3"]);
}

#[tokio::test]
async fn snapshot_round_trips_into_a_fresh_store() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_log, mut src) = open(src_dir.path(), StoreOptions::default()).unwrap();
    let entries: Vec<_> = (1..=100)
        .map(|i| normal(2, i, &format!("p{i}"), "{}"))
        .collect();
    src.apply(entries).await.unwrap();
    let mut builder = src.get_snapshot_builder().await;
    let mut snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 100);
    let mut bytes = Vec::new();
    snap.snapshot.read_to_end(&mut bytes).await.unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut dst) = open(dst_dir.path(), StoreOptions::default()).unwrap();
        let mut incoming = dst.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bytes)
            .await
            .unwrap();
        dst.install_snapshot(&snap.meta, incoming).await.unwrap();
        let current = dst.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snap.meta);
    }
    // The installed state is durable: a reopened store has it without the log.
    let (_log, dst) = open(dst_dir.path(), StoreOptions::default()).unwrap();
    let src_state = src.reader().read(|s, _| s.clone());
    let dst_state = dst.reader().read(|s, i| {
        assert_eq!(i, 100);
        s.clone()
    });
    assert_eq!(src_state, dst_state);
}

#[tokio::test]
async fn large_state_snapshot_of_200_mb_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
    // 800 pipelines with 256 KiB specs each: a little over 200 MB of state.
    let spec = "x".repeat(256 * 1024);
    for chunk in (1..=800u64).collect::<Vec<_>>().chunks(50) {
        let entries: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let mut e = normal(1, i, &format!("big{i}"), &i.to_string());
                if let EntryPayload::Normal(Command::ApplyPipeline(a)) = &mut e.payload {
                    a.spec_yaml = spec.clone();
                }
                e
            })
            .collect();
        sm.apply(entries).await.unwrap();
    }
    let mut snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = Vec::new();
    snap.snapshot.read_to_end(&mut bytes).await.unwrap();
    assert!(
        bytes.len() > 200 * 1024 * 1024,
        "snapshot is {} bytes",
        bytes.len()
    );

    let dst_dir = tempfile::tempdir().unwrap();
    let (_l, mut dst) = open(dst_dir.path(), StoreOptions::default()).unwrap();
    let mut incoming = dst.begin_receiving_snapshot().await.unwrap();
    // Write it in 1 MiB chunks, as the Raft transport does.
    for c in bytes.chunks(1024 * 1024) {
        tokio::io::AsyncWriteExt::write_all(&mut *incoming, c)
            .await
            .unwrap();
    }
    dst.install_snapshot(&snap.meta, incoming).await.unwrap();
    assert_eq!(dst.reader().read(|s, _| s.pipelines.len()), 800);
}

#[tokio::test]
async fn log_entries_survive_reopen_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path(), StoreOptions::default()).unwrap();
        let entries: Vec<_> = (1..=20).map(|i| normal(1, i, "a", "{}")).collect();
        // `blocking_append` waits for the flush callback.
        openraft::testing::log_id(1, 1, 1);
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries)
            .await
            .unwrap();
        log.purge(LogId::new(openraft::CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
    }
    let (mut log, _sm) = open(dir.path(), StoreOptions::default()).unwrap();
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id.unwrap().index, 5);
    assert_eq!(st.last_log_id.unwrap().index, 20);
    let got = openraft::RaftLogReader::try_get_log_entries(&mut log, 0..100)
        .await
        .unwrap();
    assert_eq!(got.first().unwrap().log_id.index, 6);
    assert_eq!(got.len(), 15);
}

/// Golden bytes of a persisted log entry: the log written by this release must stay readable.
/// If this changes, add a new codec version instead of editing the constant.
#[test]
fn log_entry_encoding_golden_bytes() {
    let e = normal(3, 7, "demo", "{}");
    let bytes = flowctl_state::codec::encode_v1("log entry", &e).unwrap();
    const GOLDEN: &str = "\u{1}{\"log_id\":{\"leader_id\":{\"term\":3,\"node_id\":1},\"index\":7},\"payload\":{\"Normal\":{\"ApplyPipeline\":{\"name\":\"demo\",\"id_if_new\":\"pl-0000000000000007\",\"spec_yaml\":\"name: demo\\n\",\"canonical\":\"{}\",\"at_ms\":7000}}}}";
    assert_eq!(String::from_utf8(bytes).unwrap(), GOLDEN);
    let back: Entry<TypeConfig> =
        flowctl_state::codec::decode("log entry", GOLDEN.as_bytes()).unwrap();
    assert_eq!(back.log_id, e.log_id);
    // What this release writes: version 2.
    let bytes = flowctl_state::codec::encode("log entry", &e).unwrap();
    const GOLDEN_V2: &str = "0282a66c6f675f696482a96c65616465725f696482a47465726d03a76e6f64655f696401a5696e64657807a77061796c6f616481a64e6f726d616c81ad4170706c79506970656c696e6585a46e616d65a464656d6fa969645f69665f6e6577b3706c2d30303030303030303030303030303037a9737065635f79616d6cab6e616d653a2064656d6f0aa963616e6f6e6963616ca27b7da561745f6d73cd1b58";
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN_V2);
    let back: Entry<TypeConfig> = flowctl_state::codec::decode("log entry", &bytes).unwrap();
    assert_eq!(back, e);
}

/// Every kind of replicated record (runtime reports, schemas, DLQ entries and offsets, replay
/// jobs and chunks, authentication tokens and the auth flag, audit records and their sequence) is
/// persisted under its own key: a reopened store and a store installed from a snapshot both
/// hold exactly the applied state.
#[tokio::test]
async fn every_record_kind_survives_reopen_and_snapshot_install() {
    use flowctl_state::audit::{AuditEntry, RecordAudit};
    use flowctl_state::auth::{CreateToken, RevokeToken, Role, SetAuth, TokenRecord};
    use flowctl_state::dlq::{entry_id, DlqEntry, DlqState, IndexDlq, KafkaPos, SetDlqState};
    use flowctl_state::runtime::{
        InstanceState, InstanceStatus, PipelineReport, ReportRuntime, RuntimeEvent,
    };
    use flowctl_state::schemas::{PushSchemas, PushSubject, SetCompatibility};
    use flowctl_state::NodeId;
    let entry = |index: u64, cmd: Command| Entry::<TypeConfig> {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    };
    let dlq_entry = |offset: i64| DlqEntry {
        id: entry_id("flowctl.p1.dlq", 0, offset),
        pipeline: "p1".into(),
        component: "proc".into(),
        error: "bad".into(),
        event_type: "x.Ev".into(),
        schema_id: Some(1),
        key: "7".into(),
        source: KafkaPos {
            topic: "flowctl.p1.src".into(),
            partition: 0,
            offset,
        },
        dlq: KafkaPos {
            topic: "flowctl.p1.dlq".into(),
            partition: 0,
            offset,
        },
        first_seen_ms: 1,
        attempts: 1,
        state: DlqState::Pending,
        updated_ms: 1,
    };
    let token = |name: &str, role: Role, hash_digit: char| {
        Command::CreateToken(CreateToken {
            token: TokenRecord {
                name: name.into(),
                role,
                hash: hash_digit.to_string().repeat(64),
                created_ms: 9,
                expires_ms: (role == Role::Agent).then_some(99),
            },
        })
    };
    let audit = |from: u64, to: u64, keep: u32| {
        Command::RecordAudit(RecordAudit {
            entries: (from..to)
                .map(|n| AuditEntry {
                    at_ms: n,
                    who: format!("user{n}"),
                    method: "/flowctl.admin.v1.Admin/ApplyPipeline".into(),
                    node: NodeId(1),
                    resource: String::new(),
                })
                .collect(),
            keep,
        })
    };
    let cmds = vec![
        normal(1, 1, "p1", "{}"),
        entry(
            2,
            Command::ReportRuntime(ReportRuntime {
                node: NodeId(1),
                pipelines: vec![PipelineReport {
                    pipeline: "p1".into(),
                    instances: vec![(
                        "a/0".into(),
                        Some(InstanceStatus {
                            node: NodeId(1),
                            spec_hash: "h".into(),
                            state: InstanceState::Running,
                            pid: Some(9),
                            restarts: 2,
                            started_at_ms: 3,
                            last_exit: Some("exit code 1".into()),
                            epoch: None,
                        }),
                    )],
                    events: vec![RuntimeEvent {
                        at_ms: 3,
                        node: NodeId(1),
                        instance: "a/0".into(),
                        reason: "Restarted".into(),
                        message: "pid 9".into(),
                        warning: true,
                    }],
                }],
            }),
        ),
        entry(
            3,
            Command::PushSchemas(PushSchemas {
                package: "x".into(),
                subjects: vec![PushSubject {
                    subject: "x.Ev".into(),
                    fingerprint: "f1".into(),
                    file: "x.proto".into(),
                    source: "syntax = \"proto3\";".into(),
                    descriptor_set: vec![0, 1, 2, 255],
                    expect_latest: None,
                    expect_mode: "BACKWARD".into(),
                }],
                at_ms: 4,
            }),
        ),
        entry(
            4,
            Command::SetCompatibility(SetCompatibility {
                subject: None,
                mode: Some("FULL".into()),
                at_ms: 5,
            }),
        ),
        entry(
            5,
            Command::IndexDlq(IndexDlq {
                topic: "flowctl.p1.dlq".into(),
                partition: 0,
                from: None,
                next: 2,
                entries: vec![dlq_entry(0), dlq_entry(1)],
            }),
        ),
        entry(
            6,
            Command::SetDlqState(SetDlqState {
                ids: vec![entry_id("flowctl.p1.dlq", 0, 1)],
                from: vec![DlqState::Pending],
                to: DlqState::Discarded,
                attempt: false,
                at_ms: 6,
            }),
        ),
        entry(
            7,
            Command::CreateReplay(flowctl_state::replay::CreateReplay {
                job: flowctl_state::replay::Job {
                    id: "rj-1".into(),
                    pipeline: "p1".into(),
                    source: "src".into(),
                    from_ledger: 1,
                    to_ledger: 200,
                    chunk_size: 64,
                    max_parallel: 2,
                    max_attempts: 3,
                    state: flowctl_state::replay::JobState::Running,
                    created_ms: 7,
                    updated_ms: 7,
                    records: 0,
                },
            }),
        ),
        entry(
            8,
            Command::AssignChunks(flowctl_state::replay::AssignChunks {
                job: "rj-1".into(),
                assignments: vec![(1, "src-0".into())],
                at_ms: 8,
            }),
        ),
        entry(9, Command::SetAuth(SetAuth { enabled: true })),
        entry(10, token("admin", Role::Admin, 'a')),
        entry(11, token("ci", Role::Agent, 'b')),
        entry(12, token("gone", Role::Reader, 'c')),
        // A revoked token's record is deleted, not left behind for a reopen to find.
        entry(
            13,
            Command::RevokeToken(RevokeToken {
                name: "gone".into(),
            }),
        ),
        entry(14, audit(0, 3, 10)),
        // Trimmed records are deleted, not left behind for a reopen to find.
        entry(15, audit(3, 5, 3)),
        // A remembered request: a retry after a reopen or an install answers the same.
        entry(
            16,
            Command::Once(flowctl_state::requests::Once {
                request_id: flowctl_state::requests::RequestId("admin/r-1/0".into()),
                command: Box::new(Command::DeletePipeline(
                    flowctl_state::pipelines::DeletePipeline { name: "p9".into() },
                )),
            }),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
        sm.apply(cmds).await.unwrap();
        sm.reader().read(|s, _| s.clone())
    };
    assert_eq!(expected.runtime["p1"].instances["a/0"].restarts, 2);
    assert_eq!(expected.schemas.subjects["x.Ev"].versions.len(), 1);
    assert_eq!(expected.dlq.entries.len(), 2);
    assert_eq!(expected.replays.chunks["rj-1"].len(), 4);
    assert_eq!(expected.replays.chunks["rj-1"][&1].attempt, 1);
    assert!(expected.auth.enabled);
    assert_eq!(expected.auth.revision, 13);
    assert_eq!(
        expected.auth.tokens.keys().collect::<Vec<_>>(),
        ["admin", "ci"]
    );
    assert_eq!(expected.auth.tokens["ci"].expires_ms, Some(99));
    assert_eq!(
        expected.audit.records.keys().copied().collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(expected.audit.records[&4].entry.who, "user4");
    assert_eq!(expected.audit.next_seq, 5);
    assert_eq!(expected.requests.by_id.len(), 1);
    let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(sm.reader().read(|s, _| s.clone()), expected);

    let (meta, bytes) = snapshot_bytes(&mut sm).await;
    let dst_dir = tempfile::tempdir().unwrap();
    {
        let (_l, mut dst) = open(dst_dir.path(), StoreOptions::default()).unwrap();
        install(&mut dst, &meta, &bytes).await;
    }
    let (_l, mut dst) = open(dst_dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(dst.reader().read(|s, _| s.clone()), expected);
    assert_eq!(
        dst.applied_state().await.unwrap(),
        sm.applied_state().await.unwrap()
    );
    assert_eq!(dst.applied_state().await.unwrap().0, meta.last_log_id);
}

#[tokio::test]
async fn a_slow_older_snapshot_build_does_not_replace_a_newer_installed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
    sm.apply(vec![normal(1, 1, "old", "1")]).await.unwrap();
    // A build starts from the state at index 1...
    let mut slow = sm.get_snapshot_builder().await;
    // ...while a newer snapshot (index 50, from another store) is installed.
    let src_dir = tempfile::tempdir().unwrap();
    let (_l, mut src) = open(src_dir.path(), StoreOptions::default()).unwrap();
    let entries: Vec<_> = (1..=50)
        .map(|i| normal(2, i, "new", &format!("{i}")))
        .collect();
    src.apply(entries).await.unwrap();
    let (meta, bytes) = snapshot_bytes(&mut src).await;
    install(&mut sm, &meta, &bytes).await;
    // The slow build finishes last: its snapshot is readable, but the newer one stays current.
    let mut older = slow.build_snapshot().await.unwrap();
    assert_eq!(older.meta.last_log_id.unwrap().index, 1);
    let mut old_bytes = Vec::new();
    older.snapshot.read_to_end(&mut old_bytes).await.unwrap();
    assert!(!old_bytes.is_empty());
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, [format!("{}.snap", meta.snapshot_id)]);
}

#[tokio::test]
async fn a_snapshot_over_the_size_limit_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut src) = open(&dir.path().join("src"), StoreOptions::default()).unwrap();
    src.apply(vec![normal(1, 1, "p", "{}")]).await.unwrap();
    let (meta, _) = snapshot_bytes(&mut src).await;
    let (_log, mut dst) = open(&dir.path().join("dst"), StoreOptions::default()).unwrap();
    let incoming = dst.begin_receiving_snapshot().await.unwrap();
    // Sparse: the file claims one byte over the limit without using the disk.
    incoming
        .set_len(flowctl_store::MAX_SNAPSHOT_BYTES + 1)
        .await
        .unwrap();
    let e = dst.install_snapshot(&meta, incoming).await.unwrap_err();
    assert!(e.to_string().contains("byte limit"), "{e}");
    let names = dst.reader().read(|s, _| s.pipelines.len());
    assert_eq!(names, 0, "nothing of the refused snapshot was installed");

    // A store with a state of its own keeps it.
    let (_l, mut dst) = target(&dir.path().join("dst2")).await;
    let before = seen(&mut dst).await;
    let incoming = dst.begin_receiving_snapshot().await.unwrap();
    incoming
        .set_len(flowctl_store::MAX_SNAPSHOT_BYTES + 1)
        .await
        .unwrap();
    let e = dst.install_snapshot(&meta, incoming).await.unwrap_err();
    assert!(e.to_string().contains("byte limit"), "{e}");
    assert_eq!(seen(&mut dst).await, before);
}

/// A snapshot is installed into a store that has a state of its own: the store ends up with
/// exactly the source's state, applied log id and membership, now and after a reopen, and
/// serves the snapshot it received.
#[tokio::test]
async fn a_built_snapshot_installs_with_its_state_applied_log_id_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, meta, bytes) = source_snapshot(&dir.path().join("src")).await;
    assert!(bytes.starts_with(b"FLOWSNAP"), "the streaming format");
    assert_eq!(meta.last_log_id.unwrap().index, 7);
    let want = seen(&mut src).await;
    assert_eq!(want.state.pipelines.len(), 5);
    assert_eq!(want.membership.log_id().unwrap().index, 1);
    let dst_dir = dir.path().join("dst");
    {
        let (_l, mut dst) = target(&dst_dir).await;
        install(&mut dst, &meta, &bytes).await;
        assert_eq!(seen(&mut dst).await, want);
        let mut served = Vec::new();
        let mut current = dst.get_current_snapshot().await.unwrap().unwrap();
        current.snapshot.read_to_end(&mut served).await.unwrap();
        assert_eq!(
            served, bytes,
            "the installed snapshot is served as received"
        );
    }
    assert!(
        !sm_meta_keys(&dst_dir)
            .iter()
            .any(|k| k.starts_with("staged/") || k == "installing"),
        "nothing of the install is left behind: {:?}",
        sm_meta_keys(&dst_dir)
    );
    let (_l, mut dst) = open(&dst_dir, StoreOptions::default()).unwrap();
    assert_eq!(seen(&mut dst).await, want);
}

/// Truncated, bit-flipped, oversized and mislabelled snapshots are each refused with an
/// error, and the target keeps its state, applied log id, membership and current snapshot,
/// in memory and on disk.
#[tokio::test]
async fn corrupt_snapshots_are_refused_and_leave_the_state_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (src, meta, bytes) = source_snapshot(&dir.path().join("src")).await;
    let dst_dir = dir.path().join("dst");
    let (log, mut dst) = target(&dst_dir).await;
    let before = seen(&mut dst).await;
    assert_ne!(before.state, src.reader().read(|s, _| s.clone()));

    let mut refused = 0;
    let mut refuse = async |bad: Vec<u8>, meta: &flowctl_store::SnapshotMeta, why: &str| {
        let e = try_install(&mut dst, meta, &bad)
            .await
            .expect_err(why)
            .to_string();
        assert_eq!(seen(&mut dst).await, before, "{why}: {e}");
        refused += 1;
        e
    };

    // Truncated anywhere, down to empty.
    let mut cuts: Vec<usize> = (0..40).collect();
    cuts.extend((40..bytes.len()).step_by(97));
    cuts.extend(bytes.len() - 13..bytes.len());
    for len in cuts {
        let e = refuse(bytes[..len].to_vec(), &meta, &format!("truncated to {len}")).await;
        assert!(
            e.contains("truncated") || e.contains("past the end") || e.contains("empty"),
            "truncated to {len}: {e}"
        );
    }
    // A flipped byte anywhere: header, meta, lengths, keys, values, count, checksum.
    let mut flips: Vec<usize> = (0..64).collect();
    flips.extend((64..bytes.len()).step_by(31));
    flips.extend(bytes.len() - 12..bytes.len());
    for i in flips {
        let mut bad = bytes.clone();
        bad[i] ^= 0xff;
        refuse(bad, &meta, &format!("byte {i} flipped")).await;
    }
    // A record length prefix over the record limit, and one past the end of the file. The
    // first record follows the magic, the version and the two length-prefixed meta values.
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let first = {
        let applied = 12;
        let membership = applied + 4 + u32_at(applied);
        membership + 4 + u32_at(membership)
    };
    assert_eq!(bytes[first], b'R');
    for (at, len, says) in [
        (first + 5, u32::MAX, "larger than"),
        (first + 5, 64 * 1024 * 1024 + 1, "larger than"),
        (first + 1, 64 * 1024 + 1, "larger than"),
        (first + 5, 1 << 20, "past the end"),
    ] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&len.to_le_bytes());
        let e = refuse(bad, &meta, &format!("length {len} at {at}")).await;
        assert!(e.contains(says), "length {len} at {at}: {e}");
    }
    // Intact, but not the snapshot the meta names.
    let mut other = meta.clone();
    other.last_log_id = Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 6));
    let e = refuse(bytes.clone(), &other, "another log id").await;
    assert!(e.contains("meta says"), "{e}");
    let mut other = meta.clone();
    other.last_membership = before.membership.clone();
    refuse(bytes.clone(), &other, "another membership").await;
    // Neither format, and an old-format document that does not decode.
    refuse(b"garbage".to_vec(), &meta, "garbage").await;
    refuse(b"\x01{\"pipelines\":".to_vec(), &meta, "truncated JSON").await;
    refuse(
        b"\x01{} trailing".to_vec(),
        &meta,
        "JSON with trailing bytes",
    )
    .await;
    assert!(refused > 100, "{refused}");

    // The refused installs left nothing on disk either: a reopened store has the old state.
    drop((log, dst));
    let keys = sm_meta_keys(&dst_dir);
    assert_eq!(keys, ["applied", "membership", "snapshot"], "{keys:?}");
    let (_l, mut dst) = open(&dst_dir, StoreOptions::default()).unwrap();
    assert_eq!(seen(&mut dst).await, before);
    // And the snapshot it was refused still installs.
    install(&mut dst, &meta, &bytes).await;
    assert_eq!(dst.reader().read(|s, _| s.pipelines.len()), 5);
}

/// A snapshot from a release before the streaming format (one `codec::encode_state` JSON
/// document) still installs, and is served on as received.
#[tokio::test]
async fn an_old_format_json_snapshot_installs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut src, meta, _) = source_snapshot(&dir.path().join("src")).await;
    let want = seen(&mut src).await;
    let json = flowctl_state::codec::encode_v1("state", &want.state).unwrap();
    assert_eq!(&json[..2], b"\x01{");
    let dst_dir = dir.path().join("dst");
    {
        let (_l, mut dst) = target(&dst_dir).await;
        install(&mut dst, &meta, &json).await;
        assert_eq!(seen(&mut dst).await, want);
        let mut served = Vec::new();
        let mut current = dst.get_current_snapshot().await.unwrap().unwrap();
        current.snapshot.read_to_end(&mut served).await.unwrap();
        assert_eq!(served, json);
    }
    let (_l, mut dst) = open(&dst_dir, StoreOptions::default()).unwrap();
    assert_eq!(seen(&mut dst).await, want);
    // A snapshot this node builds from it is in the new format, and installs the same state.
    let (meta2, bytes2) = snapshot_bytes(&mut dst).await;
    assert!(bytes2.starts_with(b"FLOWSNAP"));
    let (_l, mut again) = target(&dir.path().join("again")).await;
    install(&mut again, &meta2, &bytes2).await;
    assert_eq!(again.reader().read(|s, _| s.clone()), want.state);
}

/// A build holds the state of the moment its builder was taken: applies after that are not in
/// its records, and its meta names that moment, not a later one.
#[tokio::test]
async fn a_build_started_before_further_applies_is_of_the_state_when_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(&dir.path().join("src"), StoreOptions::default()).unwrap();
    let mut entries = vec![membership(1, &[1])];
    entries.extend((2..=5).map(|i| normal(1, i, &format!("p{i}"), "old")));
    sm.apply(entries).await.unwrap();
    let at_start = seen(&mut sm).await;
    let mut builder = sm.get_snapshot_builder().await;
    // More applies: new pipelines, changed ones, a new membership.
    let mut later: Vec<_> = (6..=9)
        .map(|i| normal(1, i, &format!("p{}", i - 3), "new"))
        .collect();
    later.push(membership(10, &[1, 2]));
    later.extend((11..=12).map(|i| normal(1, i, &format!("q{i}"), "new")));
    sm.apply(later).await.unwrap();
    let now = seen(&mut sm).await;
    assert_ne!(now.state, at_start.state);

    let mut snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, at_start.applied);
    assert_eq!(snap.meta.last_membership, at_start.membership);
    assert_eq!(snap.meta.last_log_id.unwrap().index, 5);
    let mut bytes = Vec::new();
    snap.snapshot.read_to_end(&mut bytes).await.unwrap();
    // It is recorded as current (nothing newer is), and the store itself is unchanged.
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        snap.meta
    );
    assert_eq!(sm.reader().read(|s, _| s.clone()), now.state);
    // A builder builds once.
    assert!(builder.build_snapshot().await.is_err());

    let (_l, mut dst) = open(&dir.path().join("dst"), StoreOptions::default()).unwrap();
    install(&mut dst, &snap.meta, &bytes).await;
    let installed = seen(&mut dst).await;
    assert_eq!(installed.state, at_start.state);
    assert_eq!(installed.applied, at_start.applied);
    assert_eq!(installed.membership, at_start.membership);
    // A builder dropped unused releases its view and builds nothing.
    drop(sm.get_snapshot_builder().await);
}

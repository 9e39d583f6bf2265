//! Golden bytes of every persisted encoding of the state machine: every `Command` variant (log
//! entries), every `Outcome` variant (remembered requests, forwarded answers), the snapshot of
//! a state with every section filled, and the pipeline record.
//!
//! Each case is one file under `tests/golden/<category>/<case>.golden` (version 1, JSON) and
//! `tests/golden/v2/<category>/<case>.golden` (version 2, MessagePack) holding the exact
//! encoded bytes (the version byte, then the body). A case passes when encoding its value
//! gives exactly those bytes and decoding those bytes gives the value back. If an encoding
//! changes, logs and snapshots written by earlier releases stop decoding: add a new version
//! instead of editing a golden file. New cases (and, deliberately, changed ones) are written with
//! `GOLDEN_REWRITE=1 cargo test -p flowctl-state --test golden`.
//!
//! Coverage is enforced: the cases of an enum must name every one of its variants. The names
//! come from an exhaustive `match` (a new variant does not compile until it has an arm), and the
//! list they are compared with comes from serde's own list of variant names (a new variant
//! fails the test until it has a case). The record kinds of the RocksDB store are checked in
//! `crates/flowctl-store/tests/golden.rs`, since this crate cannot depend on the store.
//!
//! The inline golden tests in `codec.rs`, `audit.rs` and `auth.rs` stay; the cases here use
//! other values, so they add to those rather than repeat them.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_state::audit::{AuditEntry, RecordAudit};
use flowctl_state::auth::{CreateToken, RevokeToken, Role, SetAuth, TokenRecord};
use flowctl_state::components::{
    Api, ComponentKind, ComponentSpec, Register, SetHealth, Unregister,
};
use flowctl_state::dlq::{DlqEntry, DlqState, ExpireDlq, IndexDlq, KafkaPos, SetDlqState};
use flowctl_state::pipelines::{ApplyPipeline, DeletePipeline};
use flowctl_state::placements::SetPlacement;
use flowctl_state::replay::{
    AssignChunks, ChunkProgress, ControlReplay, CreateReplay, Job, JobState, ReplayAction,
    ReportChunk, RequeueChunks,
};
use flowctl_state::requests::{Once, RequestId};
use flowctl_state::runtime::{
    InstanceState, InstanceStatus, PipelineReport, ReportRuntime, RuntimeEvent,
};
use flowctl_state::schemas::{
    DeleteSchema, PushSchemas, PushSubject, PushedSubject, SetCompatibility,
};
use flowctl_state::{
    codec, ApplyResult, Command, ComponentId, ComponentRecord, NodeId, Outcome, PipelineId,
    PipelineRecord, Rejection, State,
};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The harness.

const REWRITE_VAR: &str = "GOLDEN_REWRITE";
const EXT: &str = "golden";

/// One category of golden files: checks cases, remembers them, and reports every failure at
/// the end, each naming its case.
struct Goldens {
    category: &'static str,
    dir: PathBuf,
    rewrite: bool,
    cases: BTreeSet<String>,
    failures: Vec<String>,
}

impl Goldens {
    fn new(category: &'static str) -> Self {
        Goldens {
            category,
            dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(category),
            rewrite: std::env::var(REWRITE_VAR).is_ok_and(|v| v == "1"),
            cases: BTreeSet::new(),
            failures: Vec::new(),
        }
    }

    /// A golden file's path as the failure messages show it: relative to the crate.
    fn shown(&self, path: &Path) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        path.strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Checks one case in both directions: `encode(value)` gives the golden bytes, and
    /// `decode(golden bytes)` gives `value`.
    fn check<T: PartialEq + Debug, E: std::fmt::Display>(
        &mut self,
        case: &str,
        value: &T,
        encode: impl Fn(&T) -> Result<Vec<u8>, E>,
        decode: impl Fn(&[u8]) -> Result<T, E>,
    ) {
        assert!(
            self.cases.insert(case.to_owned()),
            "{}/{case}: two cases have this name",
            self.category
        );
        let name = format!("{}/{case}", self.category);
        let path = self.dir.join(format!("{case}.{EXT}"));
        let encoded = match encode(value) {
            Ok(b) => b,
            Err(e) => {
                self.failures.push(format!("{name}: cannot encode: {e}"));
                return;
            }
        };
        let golden = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let golden = if self.rewrite {
            if golden.as_deref() != Some(encoded.as_slice()) {
                std::fs::create_dir_all(&self.dir).unwrap();
                std::fs::write(&path, &encoded).unwrap();
            }
            encoded.clone()
        } else {
            match golden {
                None => {
                    self.failures.push(format!(
                        "{name}: no golden file {} (write it with {REWRITE_VAR}=1)",
                        self.shown(&path)
                    ));
                    return;
                }
                Some(g) => g,
            }
        };
        if let Some(diff) = byte_diff(&golden, &encoded) {
            self.failures.push(format!(
                "{name}: the encoding differs from {}\n{diff}",
                self.shown(&path)
            ));
        }
        match decode(&golden) {
            Ok(back) if back == *value => {}
            Ok(back) => self.failures.push(format!(
                "{name}: the golden bytes decode to another value\n  decoded: {back:?}\n  \
                 expected: {value:?}"
            )),
            Err(e) => self
                .failures
                .push(format!("{name}: the golden bytes do not decode: {e}")),
        }
    }

    /// Fails on golden files that no case checked (a renamed or removed case), and reports
    /// every failure. With the rewrite flag, stray files are removed instead.
    fn finish(mut self) {
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for entry in dir {
                let path = entry.unwrap().path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let is_case =
                    path.extension().is_some_and(|e| e == EXT) && self.cases.contains(stem);
                if is_case {
                    continue;
                }
                if self.rewrite {
                    std::fs::remove_file(&path).unwrap();
                } else {
                    self.failures.push(format!(
                        "{}: {} belongs to no case (remove it, or run with {REWRITE_VAR}=1)",
                        self.category,
                        self.shown(&path)
                    ));
                }
            }
        }
        assert!(
            self.failures.is_empty(),
            "{} golden failure(s) in {}:\n\n{}",
            self.failures.len(),
            self.category,
            self.failures.join("\n\n")
        );
    }
}

/// Bytes as text: printable ASCII as it is, anything else as `\xNN`.
fn render(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `None` when equal, else where the bytes first differ, with some context and both in full.
fn byte_diff(golden: &[u8], encoded: &[u8]) -> Option<String> {
    if golden == encoded {
        return None;
    }
    const CONTEXT: usize = 40;
    let at = golden
        .iter()
        .zip(encoded)
        .position(|(a, b)| a != b)
        .unwrap_or(golden.len().min(encoded.len()));
    let window = |b: &[u8]| {
        let from = at.saturating_sub(CONTEXT);
        let to = (at + CONTEXT).min(b.len());
        let mut s = render(&b[from..to]);
        if from > 0 {
            s.insert(0, '…');
        }
        if to < b.len() {
            s.push('…');
        }
        s
    };
    Some(format!(
        "  first difference at byte {at} (golden {} bytes, encoded {} bytes)\n  \
         golden : {}\n  encoded: {}\n  golden  (whole): {}\n  encoded (whole): {}",
        golden.len(),
        encoded.len(),
        window(golden),
        window(encoded),
        render(golden),
        render(encoded)
    ))
}

/// Every variant name of `T`, as its derived `Deserialize` lists them. This is the list a new
/// variant joins automatically, without anyone remembering to add it here.
fn serde_variants<T: DeserializeOwned + Debug>() -> BTreeSet<String> {
    let msg = match serde_json::from_str::<T>("\"NoSuchVariant\"") {
        Ok(v) => panic!("\"NoSuchVariant\" decoded as {v:?}"),
        Err(e) => e.to_string(),
    };
    // "unknown variant `NoSuchVariant`, expected one of `A`, `B`, `C` at line 1 column 15"
    let list = msg
        .split_once("expected one of ")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.rsplit_once(" at line").map(|(l, _)| l))
        .unwrap_or_else(|| panic!("cannot read the variant names from {msg:?}"));
    list.split(", ")
        .map(|v| v.trim_matches('`').to_owned())
        .collect()
}

/// Asserts that `covered` (the variants the cases name) is every variant of the enum.
fn assert_covers_all(what: &str, covered: &BTreeSet<&'static str>, all: &BTreeSet<String>) {
    let covered: BTreeSet<String> = covered.iter().map(|s| (*s).to_owned()).collect();
    let missing: Vec<&String> = all.difference(&covered).collect();
    let unknown: Vec<&String> = covered.difference(all).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what}: variants without a golden case: {missing:?}; names that are not variants: \
         {unknown:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Variant names, by exhaustive matches: a new variant does not compile until it is named here.

/// A command's variant name: `requests::kind`, an exhaustive match (a new variant does not
/// compile until it is named there).
fn command_variant(c: &Command) -> &'static str {
    flowctl_state::requests::kind(c)
}

fn outcome_variant(o: &Outcome) -> &'static str {
    match o {
        Outcome::None => "None",
        Outcome::Pipeline { .. } => "Pipeline",
        Outcome::PipelineDeleted { .. } => "PipelineDeleted",
        Outcome::NodeRemoved { .. } => "NodeRemoved",
        Outcome::Component { .. } => "Component",
        Outcome::ComponentRemoved { .. } => "ComponentRemoved",
        Outcome::HealthChanged { .. } => "HealthChanged",
        Outcome::HealthUnchanged => "HealthUnchanged",
        Outcome::PlacementSet { .. } => "PlacementSet",
        Outcome::PlacementUnchanged => "PlacementUnchanged",
        Outcome::RuntimeReported => "RuntimeReported",
        Outcome::SchemasPushed(_) => "SchemasPushed",
        Outcome::CompatibilitySet => "CompatibilitySet",
        Outcome::SchemasDeleted { .. } => "SchemasDeleted",
        Outcome::DlqIndexed { .. } => "DlqIndexed",
        Outcome::DlqStateSet { .. } => "DlqStateSet",
        Outcome::DlqExpired { .. } => "DlqExpired",
        Outcome::ReplayCreated { .. } => "ReplayCreated",
        Outcome::ChunksChanged { .. } => "ChunksChanged",
        Outcome::ChunkReport { .. } => "ChunkReport",
        Outcome::ReplayControlled { .. } => "ReplayControlled",
        Outcome::AuthSet { .. } => "AuthSet",
        Outcome::TokenCreated { .. } => "TokenCreated",
        Outcome::TokenRevoked { .. } => "TokenRevoked",
        Outcome::AuditRecorded { .. } => "AuditRecorded",
        Outcome::Rejected(_) => "Rejected",
        Outcome::Batch(_) => "Batch",
    }
}

fn rejection_variant(r: &Rejection) -> &'static str {
    match r {
        Rejection::NotFound { .. } => "NotFound",
        Rejection::Invalid(_) => "Invalid",
        Rejection::Conflict(_) => "Conflict",
    }
}

// ---------------------------------------------------------------------------------------------
// Sample values. They differ from the inline golden tests' values on purpose.

const PIPELINE: &str = "orders";
const AT: u64 = 1_712_000_000_000;

fn pipeline_id() -> PipelineId {
    PipelineId::from_random(0x0123_4567_89ab_cdef)
}

fn apply_pipeline(if_generation: Option<u64>) -> ApplyPipeline {
    ApplyPipeline {
        name: PIPELINE.into(),
        id_if_new: pipeline_id(),
        // Non-ASCII text is written as UTF-8, not escaped; newlines and quotes are escaped.
        spec_yaml: "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: orders # café\n"
            .into(),
        canonical: r#"{"apiVersion":"flowctl/v1","kind":"Pipeline","metadata":{"name":"orders"}}"#
            .into(),
        at_ms: AT,
        if_generation,
    }
}

fn pipeline_record() -> PipelineRecord {
    let c = apply_pipeline(None);
    PipelineRecord {
        name: c.name,
        id: c.id_if_new,
        generation: 3,
        spec_yaml: c.spec_yaml,
        canonical: c.canonical,
        created_at_ms: AT - 60_000,
        updated_at_ms: AT,
        revision: 42,
    }
}

fn component_id() -> ComponentId {
    ComponentId("ttp-processor-1".into())
}

fn component_spec(api: Api, kind: ComponentKind) -> ComponentSpec {
    ComponentSpec {
        id: component_id(),
        api,
        kind,
        name: "ttp".into(),
        description: "token transfers".into(),
        version: "1.2.0".into(),
        input_event_types: vec!["stellar.LedgerCloseMeta".into()],
        output_event_types: vec!["ttp.TokenTransferEvent".into()],
        endpoint: "10.0.0.5:50051".into(),
        health_endpoint: "http://10.0.0.5:8088/health".into(),
        max_inflight: 16,
        metadata: [("network", "testnet"), ("team", "data")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

fn instance_status() -> InstanceStatus {
    InstanceStatus {
        node: NodeId(1),
        spec_hash: "3f9a0c".into(),
        state: InstanceState::Backoff,
        pid: Some(4242),
        restarts: 2,
        started_at_ms: AT - 5_000,
        last_exit: Some("exit status: 1".into()),
        epoch: None,
    }
}

fn report_runtime() -> ReportRuntime {
    ReportRuntime {
        node: NodeId(1),
        pipelines: vec![PipelineReport {
            pipeline: PIPELINE.into(),
            instances: vec![
                ("ttp/0".into(), Some(instance_status())),
                ("sink/0".into(), None),
            ],
            events: vec![RuntimeEvent {
                at_ms: AT,
                node: NodeId(1),
                instance: "ttp/0".into(),
                reason: "Exited".into(),
                message: "exit status: 1; restarting in 2s".into(),
                warning: true,
            }],
        }],
    }
}

fn push_schemas() -> PushSchemas {
    PushSchemas {
        package: "ttp.v1".into(),
        subjects: vec![PushSubject {
            subject: "ttp.v1.TokenTransferEvent".into(),
            fingerprint: "sha256:7d1f".into(),
            file: "ttp/v1/event.proto".into(),
            source: "syntax = \"proto3\";\npackage ttp.v1;\nmessage TokenTransferEvent {}\n".into(),
            descriptor_set: vec![0x0a, 0x12, 0x00, 0xff, 0x7f],
            expect_latest: None,
            expect_mode: "BACKWARD".into(),
        }],
        at_ms: AT,
    }
}

fn dlq_entry() -> DlqEntry {
    DlqEntry {
        id: "5c2d7e0f9a1b3c4d".into(),
        pipeline: PIPELINE.into(),
        component: "ttp".into(),
        error: "decode: unexpected EOF".into(),
        event_type: "stellar.LedgerCloseMeta".into(),
        schema_id: Some(3),
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
    }
}

fn index_dlq() -> IndexDlq {
    IndexDlq {
        topic: "flowctl.orders.dlq".into(),
        partition: 0,
        from: None,
        next: 18,
        entries: vec![dlq_entry()],
    }
}

fn replay_job() -> Job {
    Job {
        id: "rj-7".into(),
        pipeline: PIPELINE.into(),
        source: "stellar-source".into(),
        from_ledger: 51_000_000,
        to_ledger: 51_000_199,
        chunk_size: 64,
        max_parallel: 2,
        max_attempts: 3,
        state: JobState::Running,
        created_ms: AT,
        updated_ms: AT,
        records: 0,
    }
}

fn report_chunk(progress: ChunkProgress) -> Command {
    Command::ReportChunk(ReportChunk {
        job: "rj-7".into(),
        chunk: 1,
        attempt: 2,
        instance: "stellar-source-0".into(),
        progress,
        at_ms: AT,
        epoch: None,
    })
}

fn token() -> TokenRecord {
    TokenRecord {
        name: "deploy-bot".into(),
        role: Role::Admin,
        hash: "0123456789abcdef".repeat(4),
        created_ms: AT,
        expires_ms: None,
    }
}

fn record_audit() -> RecordAudit {
    RecordAudit {
        entries: vec![
            AuditEntry {
                at_ms: AT,
                who: "deploy-bot".into(),
                method: "/flowctl.v1.PipelineService/Apply".into(),
                node: NodeId(2),
                resource: "pipeline/orders".into(),
            },
            AuditEntry {
                at_ms: AT + 1,
                who: "deploy-bot".into(),
                method: "/flowctl.v1.AuthService/CreateToken".into(),
                node: NodeId(2),
                resource: String::new(),
            },
        ],
        keep: 50_000,
    }
}

fn once(id: &str, c: Command) -> Command {
    Command::Once(Once {
        request_id: RequestId(id.into()),
        command: Box::new(c),
    })
}

/// The command cases: every variant at least once, and the encodings that options and nested
/// enums make different.
fn command_cases() -> Vec<(&'static str, Command)> {
    vec![
        (
            "ApplyPipeline",
            Command::ApplyPipeline(apply_pipeline(Some(3))),
        ),
        (
            "ApplyPipeline-create-only",
            Command::ApplyPipeline(apply_pipeline(Some(0))),
        ),
        (
            "DeletePipeline",
            Command::DeletePipeline(DeletePipeline {
                name: PIPELINE.into(),
            }),
        ),
        (
            "RecordNodeRemoved",
            Command::RecordNodeRemoved {
                node_id: NodeId(0x1234_5678_9abc),
            },
        ),
        (
            "RegisterComponent",
            Command::RegisterComponent(Register {
                spec: component_spec(Api::V1, ComponentKind::Processor),
                at_ms: AT,
            }),
        ),
        (
            "RegisterComponent-legacy-sink",
            Command::RegisterComponent(Register {
                spec: component_spec(Api::Legacy, ComponentKind::Sink),
                at_ms: AT,
            }),
        ),
        (
            "UnregisterComponent",
            Command::UnregisterComponent(Unregister {
                id: component_id(),
                reason: "expired".into(),
            }),
        ),
        (
            "SetComponentHealth",
            Command::SetComponentHealth(SetHealth {
                id: component_id(),
                healthy: false,
                at_ms: AT,
            }),
        ),
        (
            "SetPlacement",
            Command::SetPlacement(SetPlacement {
                pipeline: PIPELINE.into(),
                generation: 3,
                instances: [("sink/0", 2), ("ttp/0", 1), ("ttp/1", 3)]
                    .into_iter()
                    .map(|(k, n)| (k.to_owned(), NodeId(n)))
                    .collect(),
            }),
        ),
        ("ReportRuntime", Command::ReportRuntime(report_runtime())),
        ("PushSchemas", Command::PushSchemas(push_schemas())),
        (
            "SetCompatibility",
            Command::SetCompatibility(SetCompatibility {
                subject: Some("ttp.v1.TokenTransferEvent".into()),
                mode: None,
                at_ms: AT,
            }),
        ),
        (
            "SetCompatibility-registry",
            Command::SetCompatibility(SetCompatibility {
                subject: None,
                mode: Some("FULL_TRANSITIVE".into()),
                at_ms: AT,
            }),
        ),
        (
            "DeleteSchema",
            Command::DeleteSchema(DeleteSchema {
                subject: "ttp.v1.TokenTransferEvent".into(),
                version: Some(2),
                permanent: true,
                at_ms: AT,
            }),
        ),
        ("IndexDlq", Command::IndexDlq(index_dlq())),
        (
            "SetDlqState",
            Command::SetDlqState(SetDlqState {
                ids: vec!["5c2d7e0f9a1b3c4d".into(), "00000000000000ff".into()],
                from: vec![DlqState::Pending, DlqState::Replaying],
                to: DlqState::Discarded,
                attempt: false,
                at_ms: AT,
            }),
        ),
        (
            "ExpireDlq",
            Command::ExpireDlq(ExpireDlq {
                before_ms: AT - 86_400_000,
            }),
        ),
        (
            "CreateReplay",
            Command::CreateReplay(CreateReplay { job: replay_job() }),
        ),
        (
            "AssignChunks",
            Command::AssignChunks(AssignChunks {
                job: "rj-7".into(),
                assignments: vec![
                    (0, "stellar-source-0".into()),
                    (1, "stellar-source-1".into()),
                ],
                at_ms: AT,
            }),
        ),
        (
            "ReportChunk",
            report_chunk(ChunkProgress::Failed {
                error: "captive core: timeout".into(),
                retryable: true,
            }),
        ),
        ("ReportChunk-running", report_chunk(ChunkProgress::Running)),
        (
            "ReportChunk-done",
            report_chunk(ChunkProgress::Done { records: 12_345 }),
        ),
        (
            "RequeueChunks",
            Command::RequeueChunks(RequeueChunks {
                job: "rj-7".into(),
                chunks: vec![(1, 2), (3, 1)],
                reason: "instance stellar-source-1 is gone".into(),
                at_ms: AT,
            }),
        ),
        (
            "ControlReplay",
            Command::ControlReplay(ControlReplay {
                job: "rj-7".into(),
                action: ReplayAction::Pause,
                at_ms: AT,
            }),
        ),
        ("SetAuth", Command::SetAuth(SetAuth { enabled: false })),
        (
            "CreateToken",
            Command::CreateToken(CreateToken { token: token() }),
        ),
        (
            "RevokeToken",
            Command::RevokeToken(RevokeToken {
                name: "deploy-bot".into(),
            }),
        ),
        ("RecordAudit", Command::RecordAudit(record_audit())),
        (
            "Once",
            once(
                "deploy-bot/cli-8f2e/17",
                Command::DeletePipeline(DeletePipeline {
                    name: PIPELINE.into(),
                }),
            ),
        ),
        (
            "Batch",
            Command::Batch(vec![
                Command::SetAuth(SetAuth { enabled: true }),
                once(
                    "agent/ttp-processor-1/3",
                    Command::SetComponentHealth(SetHealth {
                        id: component_id(),
                        healthy: true,
                        at_ms: AT,
                    }),
                ),
                Command::Batch(vec![]),
            ]),
        ),
    ]
}

fn component_record() -> ComponentRecord {
    ComponentRecord {
        spec: component_spec(Api::V1, ComponentKind::Source),
        healthy: true,
        registered_at_ms: AT - 1_000,
        status_changed_at_ms: AT,
        revision: 12,
        awaiting_heartbeat: false,
    }
}

fn outcome_cases() -> Vec<(&'static str, Outcome)> {
    vec![
        ("None", Outcome::None),
        (
            "Pipeline",
            Outcome::Pipeline {
                record: pipeline_record(),
                result: ApplyResult::Configured,
            },
        ),
        (
            "PipelineDeleted",
            Outcome::PipelineDeleted {
                name: PIPELINE.into(),
            },
        ),
        (
            "NodeRemoved",
            Outcome::NodeRemoved {
                node_id: NodeId(0x1234_5678_9abc),
            },
        ),
        (
            "Component",
            Outcome::Component {
                record: component_record(),
                created: true,
            },
        ),
        (
            "ComponentRemoved",
            Outcome::ComponentRemoved { id: component_id() },
        ),
        (
            "HealthChanged",
            Outcome::HealthChanged {
                id: component_id(),
                healthy: false,
            },
        ),
        ("HealthUnchanged", Outcome::HealthUnchanged),
        (
            "PlacementSet",
            Outcome::PlacementSet {
                pipeline: PIPELINE.into(),
            },
        ),
        ("PlacementUnchanged", Outcome::PlacementUnchanged),
        ("RuntimeReported", Outcome::RuntimeReported),
        (
            "SchemasPushed",
            Outcome::SchemasPushed(vec![
                PushedSubject {
                    subject: "ttp.v1.TokenTransferEvent".into(),
                    version: 2,
                    schema_id: 5,
                    changed: true,
                },
                PushedSubject {
                    subject: "ttp.v1.Amount".into(),
                    version: 1,
                    schema_id: 4,
                    changed: false,
                },
            ]),
        ),
        ("CompatibilitySet", Outcome::CompatibilitySet),
        (
            "SchemasDeleted",
            Outcome::SchemasDeleted {
                subject: "ttp.v1.TokenTransferEvent".into(),
                versions: vec![1, 2],
            },
        ),
        ("DlqIndexed", Outcome::DlqIndexed { added: 3 }),
        (
            "DlqStateSet",
            Outcome::DlqStateSet {
                changed: vec!["5c2d7e0f9a1b3c4d".into()],
            },
        ),
        ("DlqExpired", Outcome::DlqExpired { removed: 7 }),
        (
            "ReplayCreated",
            Outcome::ReplayCreated {
                job: "rj-7".into(),
                chunks: 4,
            },
        ),
        (
            "ChunksChanged",
            Outcome::ChunksChanged {
                changed: vec![0, 2],
            },
        ),
        ("ChunkReport", Outcome::ChunkReport { accepted: false }),
        (
            "ReplayControlled",
            Outcome::ReplayControlled {
                state: "paused".into(),
            },
        ),
        ("AuthSet", Outcome::AuthSet { enabled: true }),
        (
            "TokenCreated",
            Outcome::TokenCreated {
                name: "deploy-bot".into(),
            },
        ),
        (
            "TokenRevoked",
            Outcome::TokenRevoked {
                name: "deploy-bot".into(),
            },
        ),
        (
            "AuditRecorded",
            Outcome::AuditRecorded {
                first_seq: 100,
                count: 2,
            },
        ),
        (
            "Rejected-NotFound",
            Outcome::Rejected(Rejection::NotFound {
                kind: "pipeline".into(),
                name: "nope".into(),
            }),
        ),
        (
            "Rejected-Invalid",
            Outcome::Rejected(Rejection::Invalid(
                "pipeline name: must not be empty".into(),
            )),
        ),
        (
            "Rejected-Conflict",
            Outcome::Rejected(Rejection::Conflict(
                "pipeline orders is at generation 3, not 2 (--if-generation)".into(),
            )),
        ),
        (
            "Batch",
            Outcome::Batch(vec![
                Outcome::AuthSet { enabled: true },
                Outcome::HealthUnchanged,
                Outcome::Rejected(Rejection::Invalid("nested batch".into())),
            ]),
        ),
    ]
}

/// A state with every section filled, built by applying commands as a log would.
fn full_state() -> State {
    let log = vec![
        Command::ApplyPipeline(apply_pipeline(None)),
        Command::RecordNodeRemoved { node_id: NodeId(9) },
        Command::RegisterComponent(Register {
            spec: component_spec(Api::V1, ComponentKind::Processor),
            at_ms: AT,
        }),
        Command::SetPlacement(SetPlacement {
            pipeline: PIPELINE.into(),
            generation: 1,
            instances: [("ttp/0".to_owned(), NodeId(1))].into(),
        }),
        Command::ReportRuntime(report_runtime()),
        Command::PushSchemas(push_schemas()),
        Command::IndexDlq(index_dlq()),
        Command::CreateReplay(CreateReplay { job: replay_job() }),
        Command::AssignChunks(AssignChunks {
            job: "rj-7".into(),
            assignments: vec![(0, "stellar-source-0".into())],
            at_ms: AT,
        }),
        Command::SetAuth(SetAuth { enabled: true }),
        Command::CreateToken(CreateToken { token: token() }),
        Command::RecordAudit(record_audit()),
        once(
            "agent/ttp-processor-1/3",
            Command::SetComponentHealth(SetHealth {
                id: component_id(),
                healthy: false,
                at_ms: AT + 10,
            }),
        ),
    ];
    let mut s = State::default();
    for (i, c) in log.iter().enumerate() {
        let (o, _) = flowctl_state::apply(&mut s, i as u64 + 1, c);
        assert!(
            !matches!(o, Outcome::Rejected(_)),
            "building the golden state: {c:?} gave {o:?}"
        );
    }
    s
}

/// The top-level keys of an encoded state.
const STATE_SECTIONS: [&str; 11] = [
    "pipelines",
    "removed_nodes",
    "components",
    "placements",
    "runtime",
    "schemas",
    "dlq",
    "replays",
    "auth",
    "audit",
    "requests",
];

// ---------------------------------------------------------------------------------------------
// The tests. Each encoding is checked at every version: version 1 (JSON, what earlier releases
// wrote: its golden files must keep decoding) under `tests/golden/<category>/`, and version 2
// (MessagePack, written now) under `tests/golden/v2/<category>/`.

type Encoder<T> = Box<dyn Fn(&T) -> Result<Vec<u8>, codec::Error>>;

/// The version-1 encoder of `what`.
fn v1<T: serde::Serialize + 'static>(what: &'static str) -> Encoder<T> {
    Box::new(move |v: &T| codec::encode_v1(what, v))
}

#[test]
fn every_command_variant_has_a_golden_encoding_that_round_trips() {
    let cases = command_cases();
    let mut g = Goldens::new("command");
    let mut g2 = Goldens::new("v2/command");
    for (case, cmd) in &cases {
        assert!(
            case.split('-').next() == Some(command_variant(cmd)),
            "case {case} must be named after its variant {}",
            command_variant(cmd)
        );
        g.check(case, cmd, v1("command"), codec::decode_command);
        g2.check(case, cmd, codec::encode_command, codec::decode_command);
    }
    g.finish();
    g2.finish();
    let covered = cases.iter().map(|(_, c)| command_variant(c)).collect();
    assert_covers_all("Command", &covered, &serde_variants::<Command>());
}

#[test]
fn every_outcome_variant_has_a_golden_encoding_that_round_trips() {
    let cases = outcome_cases();
    let mut g = Goldens::new("outcome");
    let mut g2 = Goldens::new("v2/outcome");
    for (case, o) in &cases {
        assert!(
            case.split('-').next() == Some(outcome_variant(o)),
            "case {case} must be named after its variant {}",
            outcome_variant(o)
        );
        g.check(case, o, v1("outcome"), codec::decode_outcome);
        g2.check(case, o, codec::encode_outcome, codec::decode_outcome);
    }
    g.finish();
    g2.finish();
    let covered = cases.iter().map(|(_, o)| outcome_variant(o)).collect();
    assert_covers_all("Outcome", &covered, &serde_variants::<Outcome>());
    let rejections = cases
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Rejected(r) => Some(rejection_variant(r)),
            _ => None,
        })
        .collect();
    assert_covers_all("Rejection", &rejections, &serde_variants::<Rejection>());
}

#[test]
fn snapshots_and_pipeline_records_have_golden_encodings_that_round_trip() {
    let full = full_state();
    // Every section of the state is in the golden snapshot, so none of them goes unchecked.
    let json: serde_json::Value =
        serde_json::from_slice(&codec::encode_v1("state", &full).unwrap()[1..]).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| match v {
            serde_json::Value::Object(m) => !m.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            _ => true,
        })
        .map(|(k, _)| k.as_str())
        .collect();
    let mut sections = STATE_SECTIONS.to_vec();
    sections.sort_unstable();
    // serde_json's map sorts its keys.
    assert_eq!(keys, sections, "the non-empty sections of the golden state");

    for (snapshot, record, encode_state, encode_pipeline) in [
        (
            "snapshot",
            "pipeline-record",
            v1::<State>("state"),
            v1::<PipelineRecord>("pipeline record"),
        ),
        (
            "v2/snapshot",
            "v2/pipeline-record",
            Box::new(codec::encode_state) as Encoder<State>,
            Box::new(codec::encode_pipeline) as Encoder<PipelineRecord>,
        ),
    ] {
        let mut g = Goldens::new(snapshot);
        g.check(
            "empty",
            &State::default(),
            &encode_state,
            codec::decode_state,
        );
        g.check("full", &full, &encode_state, codec::decode_state);
        g.finish();

        let mut g = Goldens::new(record);
        g.check(
            "PipelineRecord",
            &pipeline_record(),
            &encode_pipeline,
            codec::decode_pipeline,
        );
        g.finish();
    }
}

#[test]
fn a_changed_encoding_is_reported_with_its_case_and_first_difference() {
    let diff = byte_diff(b"\x01{\"name\":\"demo\"}", b"\x01{\"name\":\"dem0\"}").unwrap();
    assert!(diff.contains("first difference at byte 13"), "{diff}");
    assert!(diff.contains("\\x01{\"name\":\"demo\"}"), "{diff}");
    assert!(byte_diff(b"\x01{}", b"\x01{}").is_none());
    // A shorter encoding differs where the shorter one ends.
    let diff = byte_diff(b"\x01{}", b"\x01{}x").unwrap();
    assert!(diff.contains("at byte 3"), "{diff}");
}

#[test]
fn variant_names_come_from_serde_and_a_missing_case_fails() {
    let all = serde_variants::<Rejection>();
    assert_eq!(
        all,
        ["Conflict", "Invalid", "NotFound"]
            .map(String::from)
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    let partial: BTreeSet<&'static str> = ["Invalid", "NotFound"].into_iter().collect();
    let r = std::panic::catch_unwind(|| assert_covers_all("Rejection", &partial, &all));
    assert!(r.is_err(), "a missing variant must fail the coverage check");
    // A second guard on the reading of serde's message: the first and last variants are there.
    let commands = serde_variants::<Command>();
    assert!(
        commands.contains("ApplyPipeline") && commands.contains("Batch"),
        "{commands:?}"
    );
}

//! The replicated state machine of flowctl.
//!
//! This crate decides; it does no I/O. [`apply`] takes the current [`State`] and one
//! [`Command`] and returns an [`Outcome`] plus the keys it touched, so that `flowctl-store` can
//! persist exactly those records.
//!
//! Invariants:
//! - `apply` is deterministic. It never reads a clock or a random source: the proposer stamps
//!   times and ids into the command. All maps are `BTreeMap`, so iteration order is fixed.
//! - `apply` never panics on a command. A command that is invalid against the current state is
//!   applied as a recorded [`Rejection`].
//! - Every persisted encoding starts with a version byte (see [`codec`]).

pub mod audit;
pub mod auth;
pub mod codec;
pub mod components;
pub mod dlq;
pub mod ids;
pub mod pipelines;
pub mod placements;
pub mod replay;
pub mod requests;
pub mod runtime;
pub mod schemas;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use components::{ComponentId, ComponentRecord};
pub use ids::{NodeId, PipelineId};
pub use pipelines::{ApplyResult, PipelineRecord};

/// One replicated write. Proposers build these after validating the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update a pipeline document.
    ApplyPipeline(pipelines::ApplyPipeline),
    /// Delete a pipeline by name.
    DeletePipeline(pipelines::DeletePipeline),
    /// Record that a node left the cluster, so that its id is never admitted again.
    RecordNodeRemoved {
        node_id: NodeId,
    },
    /// Register (or re-register) a component.
    RegisterComponent(components::Register),
    /// Remove a component (unregistered by itself, or expired by the leader).
    UnregisterComponent(components::Unregister),
    /// A liveness transition decided by the leader.
    SetComponentHealth(components::SetHealth),
    /// The leader's placement of a pipeline's instances on nodes.
    SetPlacement(placements::SetPlacement),
    /// A node's report of the instances it runs and what happened to them.
    ReportRuntime(runtime::ReportRuntime),
    /// Register a package's schemas (checked for compatibility by the proposer).
    PushSchemas(schemas::PushSchemas),
    /// Set or clear a compatibility mode.
    SetCompatibility(schemas::SetCompatibility),
    /// Soft- or permanently delete subject versions.
    DeleteSchema(schemas::DeleteSchema),
    /// DLQ records read by the leader, with the offset they advance to.
    IndexDlq(dlq::IndexDlq),
    /// Replay and discard transitions of DLQ entries.
    SetDlqState(dlq::SetDlqState),
    /// Retention of the DLQ index.
    ExpireDlq(dlq::ExpireDlq),
    /// Range replay jobs.
    CreateReplay(replay::CreateReplay),
    AssignChunks(replay::AssignChunks),
    ReportChunk(replay::ReportChunk),
    RequeueChunks(replay::RequeueChunks),
    ControlReplay(replay::ControlReplay),
    /// Turn authentication on or off.
    SetAuth(auth::SetAuth),
    /// Store a new authentication token (its hash, never its secret).
    CreateToken(auth::CreateToken),
    /// Remove an authentication token.
    RevokeToken(auth::RevokeToken),
    /// Append accepted writes to the audit log and trim it to a bound.
    RecordAudit(audit::RecordAudit),
    /// A write applied at most once per request id: a retry answers what the first copy
    /// answered (see [`requests`]).
    Once(requests::Once),
    /// Several commands proposed together as one log entry (the leader batches concurrent
    /// proposals). They apply in order; each gets its own outcome.
    Batch(Vec<Command>),
}

impl Command {
    /// An upper estimate of the command's encoded size, in bytes, cheap to compute: the
    /// proposer bounds a batched log entry by it. Text counts twice (JSON escapes it), binary
    /// 4/3 (base64), and every command a fixed 512 for its other fields.
    pub fn approx_bytes(&self) -> usize {
        const BASE: usize = 512;
        match self {
            Command::ApplyPipeline(c) => BASE + 2 * (c.spec_yaml.len() + c.canonical.len()),
            Command::PushSchemas(c) => {
                BASE + c
                    .subjects
                    .iter()
                    .map(|s| BASE + 2 * s.source.len() + s.descriptor_set.len() * 4 / 3)
                    .sum::<usize>()
            }
            Command::IndexDlq(c) => {
                BASE + c
                    .entries
                    .iter()
                    .map(|e| BASE + 2 * (e.error.len() + e.key.len()))
                    .sum::<usize>()
            }
            Command::RecordAudit(c) => BASE + c.entries.len() * 4 * audit::MAX_AUDIT_FIELD,
            Command::Once(o) => BASE + o.command.approx_bytes(),
            Command::Batch(cmds) => BASE + cmds.iter().map(Command::approx_bytes).sum::<usize>(),
            _ => BASE,
        }
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("invalid: {0}")]
    Invalid(String),
    /// What the proposer checked against changed before the command committed; check again.
    #[error("conflict: {0}")]
    Conflict(String),
}

/// The result of applying one command (or one non-command log entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A blank or membership log entry: nothing for the application.
    None,
    Pipeline {
        record: PipelineRecord,
        result: ApplyResult,
    },
    PipelineDeleted {
        name: String,
    },
    NodeRemoved {
        node_id: NodeId,
    },
    Component {
        record: ComponentRecord,
        created: bool,
    },
    ComponentRemoved {
        id: ComponentId,
    },
    HealthChanged {
        id: ComponentId,
        healthy: bool,
    },
    HealthUnchanged,
    PlacementSet {
        pipeline: String,
    },
    PlacementUnchanged,
    RuntimeReported,
    SchemasPushed(Vec<schemas::PushedSubject>),
    CompatibilitySet,
    SchemasDeleted {
        subject: String,
        versions: Vec<u32>,
    },
    DlqIndexed {
        added: usize,
    },
    DlqStateSet {
        changed: Vec<String>,
    },
    DlqExpired {
        removed: usize,
    },
    ReplayCreated {
        job: String,
        chunks: u32,
    },
    ChunksChanged {
        changed: Vec<u32>,
    },
    ChunkReport {
        accepted: bool,
    },
    ReplayControlled {
        state: String,
    },
    AuthSet {
        enabled: bool,
    },
    TokenCreated {
        name: String,
    },
    TokenRevoked {
        name: String,
    },
    AuditRecorded {
        first_seq: u64,
        count: usize,
    },
    Rejected(Rejection),
    /// The outcomes of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
}

/// A record key that an `apply` call may have changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    Pipeline(String),
    RemovedNode(NodeId),
    Component(ComponentId),
    Placement(String),
    Runtime(String),
    Subject(String),
    Schema(u64),
    SchemaMeta,
    DlqEntry(String),
    DlqOffset(String),
    ReplayJob(String),
    ReplayChunk(String, u32),
    /// The authentication flag and revision.
    AuthMeta,
    /// An authentication token, by name.
    Token(String),
    /// An audit record, by sequence number.
    AuditRecord(u64),
    /// The audit log's next sequence number.
    AuditMeta,
    /// A remembered request, by id.
    Request(requests::RequestId),
}

/// The whole replicated application state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub pipelines: BTreeMap<String, PipelineRecord>,
    pub removed_nodes: BTreeSet<NodeId>,
    #[serde(default)]
    pub components: BTreeMap<ComponentId, ComponentRecord>,
    /// Placements by pipeline name.
    #[serde(default)]
    pub placements: BTreeMap<String, placements::Placement>,
    /// What the supervisors report, by pipeline name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime: BTreeMap<String, runtime::PipelineRuntime>,
    /// The schema registry.
    #[serde(default, skip_serializing_if = "schemas::Registry::is_empty")]
    pub schemas: schemas::Registry,
    /// The dead-letter index.
    #[serde(default, skip_serializing_if = "dlq::DlqIndex::is_empty")]
    pub dlq: dlq::DlqIndex,
    /// Range replay jobs.
    #[serde(default, skip_serializing_if = "replay::ReplayJobs::is_empty")]
    pub replays: replay::ReplayJobs,
    /// Authentication: the enabled flag and the tokens.
    #[serde(default, skip_serializing_if = "auth::AuthState::is_empty")]
    pub auth: auth::AuthState,
    /// The audit log of accepted writes.
    #[serde(default, skip_serializing_if = "audit::AuditLog::is_empty")]
    pub audit: audit::AuditLog,
    /// Outcomes of recent writes by request id, so that retries are safe.
    #[serde(default, skip_serializing_if = "requests::Requests::is_empty")]
    pub requests: requests::Requests,
    /// Index of pipeline ids to names: derived from `pipelines`, never persisted. `apply`
    /// rebuilds it when it is out of step (after decoding or loading from disk).
    #[serde(skip)]
    pub(crate) pipeline_ids: BTreeMap<PipelineId, String>,
}

/// Equality of the replicated content; derived indexes do not take part.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.pipelines == other.pipelines
            && self.removed_nodes == other.removed_nodes
            && self.components == other.components
            && self.placements == other.placements
            && self.runtime == other.runtime
            && self.schemas == other.schemas
            && self.dlq == other.dlq
            && self.replays == other.replays
            && self.auth == other.auth
            && self.audit == other.audit
            && self.requests == other.requests
    }
}

impl Eq for State {}

/// Applies `cmd`, committed at log index `index`, to `state`.
pub fn apply(state: &mut State, index: u64, cmd: &Command) -> (Outcome, Vec<Touched>) {
    match cmd {
        Command::ApplyPipeline(c) => pipelines::apply_pipeline(state, index, c),
        Command::DeletePipeline(c) => pipelines::delete_pipeline(state, c),
        Command::RegisterComponent(c) => components::register(state, index, c),
        Command::UnregisterComponent(c) => components::unregister(state, c),
        Command::SetComponentHealth(c) => components::set_health(state, index, c),
        Command::SetPlacement(c) => placements::set(state, index, c),
        Command::ReportRuntime(c) => runtime::report(state, c),
        Command::PushSchemas(c) => schemas::push(state, c),
        Command::SetCompatibility(c) => schemas::set_compatibility(state, c),
        Command::DeleteSchema(c) => schemas::delete(state, c),
        Command::IndexDlq(c) => dlq::index(state, c),
        Command::SetDlqState(c) => dlq::set_state(state, c),
        Command::ExpireDlq(c) => dlq::expire(state, c),
        Command::CreateReplay(c) => replay::create(state, c),
        Command::AssignChunks(c) => replay::assign(state, c),
        Command::ReportChunk(c) => replay::report(state, c),
        Command::RequeueChunks(c) => replay::requeue(state, c),
        Command::ControlReplay(c) => replay::control(state, c),
        Command::SetAuth(c) => auth::set_auth(state, index, c),
        Command::CreateToken(c) => auth::create_token(state, index, c),
        Command::RevokeToken(c) => auth::revoke_token(state, index, c),
        Command::RecordAudit(c) => audit::record(state, c),
        Command::Once(c) => requests::once(state, index, c),
        Command::Batch(cmds) => {
            let mut outcomes = Vec::with_capacity(cmds.len());
            let mut touched = Vec::new();
            for c in cmds {
                if matches!(c, Command::Batch(_)) {
                    outcomes.push(Outcome::Rejected(Rejection::Invalid("nested batch".into())));
                    continue;
                }
                let (o, t) = apply(state, index, c);
                outcomes.push(o);
                touched.extend(t);
            }
            (Outcome::Batch(outcomes), touched)
        }
        Command::RecordNodeRemoved { node_id } => {
            state.removed_nodes.insert(*node_id);
            (
                Outcome::NodeRemoved { node_id: *node_id },
                vec![Touched::RemovedNode(*node_id)],
            )
        }
    }
}

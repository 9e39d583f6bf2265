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

pub mod codec;
pub mod ids;
pub mod pipelines;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    RecordNodeRemoved { node_id: NodeId },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("invalid: {0}")]
    Invalid(String),
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
    Rejected(Rejection),
}

/// A record key that an `apply` call may have changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    Pipeline(String),
    RemovedNode(NodeId),
}

/// The whole replicated application state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub pipelines: BTreeMap<String, PipelineRecord>,
    pub removed_nodes: BTreeSet<NodeId>,
}

/// Applies `cmd`, committed at log index `index`, to `state`.
pub fn apply(state: &mut State, index: u64, cmd: &Command) -> (Outcome, Vec<Touched>) {
    match cmd {
        Command::ApplyPipeline(c) => pipelines::apply_pipeline(state, index, c),
        Command::DeletePipeline(c) => pipelines::delete_pipeline(state, c),
        Command::RecordNodeRemoved { node_id } => {
            state.removed_nodes.insert(*node_id);
            (
                Outcome::NodeRemoved { node_id: *node_id },
                vec![Touched::RemovedNode(*node_id)],
            )
        }
    }
}

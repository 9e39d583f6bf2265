//! Identifier newtypes. A bare `u64` or `String` is never an id.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A Raft node's id: random, generated once per data dir, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A pipeline's stable id, assigned by the proposer on first apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PipelineId(pub String);

impl PipelineId {
    /// Formats a pipeline id from 64 random bits supplied by the proposer.
    pub fn from_random(bits: u64) -> Self {
        PipelineId(format!("pl-{bits:016x}"))
    }
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

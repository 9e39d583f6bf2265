//! The Raft layer's [`Error`] and its mapping to and from gRPC statuses.

use flowctl_store::Member;
use openraft::error::{ClientWriteError, RaftError};

/// Errors of the Raft layer. Retryable kinds are kept apart from fatal ones.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("not the leader (leader: {})", leader.as_ref().map(|(id, a)| format!("{id} at {a}")).unwrap_or_else(|| "unknown".into()))]
    NotLeader { leader: Option<(u64, String)> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

pub(crate) fn write_error(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::FailedPrecondition(c.to_string())
        }
        RaftError::Fatal(f) => Error::Fatal(f.to_string()),
    }
}

/// Maps an internal-service status back to a Raft-layer error.
pub fn status_to_error(s: tonic::Status) -> Error {
    let leader = s
        .metadata()
        .get(LEADER_HINT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_leader_hint);
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            if leader.is_some() {
                Error::NotLeader { leader }
            } else {
                Error::Unavailable(s.message().to_owned())
            }
        }
        tonic::Code::InvalidArgument => Error::Invalid(s.message().to_owned()),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(s.message().to_owned()),
        tonic::Code::NotFound => Error::NotFound(s.message().to_owned()),
        tonic::Code::ResourceExhausted => Error::Overloaded(s.message().to_owned()),
        _ => Error::Unavailable(format!("{}: {}", s.code(), s.message())),
    }
}

/// gRPC metadata key carrying `id@addr` of the leader on `UNAVAILABLE` replies.
pub const LEADER_HINT_HEADER: &str = "x-flowctl-leader";

fn parse_leader_hint(v: &str) -> Option<(u64, String)> {
    let (id, addr) = v.split_once('@')?;
    Some((id.parse().ok()?, addr.to_owned()))
}

/// Maps a Raft-layer error to a gRPC status. The one place this happens for both the internal
/// and (through `flowctl-server`) the public services.
pub fn error_to_status(e: &Error) -> tonic::Status {
    match e {
        Error::NotLeader { leader } => {
            let mut s = tonic::Status::unavailable(e.to_string());
            if let Some((id, addr)) = leader {
                if let Ok(v) = format!("{id}@{addr}").parse() {
                    s.metadata_mut().insert(LEADER_HINT_HEADER, v);
                }
            }
            s
        }
        Error::Unavailable(m) => tonic::Status::unavailable(m.clone()),
        Error::Overloaded(m) => tonic::Status::resource_exhausted(m.clone()),
        Error::Invalid(m) => tonic::Status::invalid_argument(m.clone()),
        Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m.clone()),
        Error::NotFound(m) => tonic::Status::not_found(m.clone()),
        Error::Fatal(m) => {
            tracing::error!(error = %m, "raft failure");
            tonic::Status::unavailable("this node's raft has stopped")
        }
    }
}

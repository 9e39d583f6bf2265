//! The Raft layer of a flowctl node: openraft's configuration, the gRPC network, the internal
//! service, and [`RaftNode`], the handle the server uses to propose, read and manage members.
//!
//! It is not the public API: handlers in `flowctl-server` validate requests and call
//! [`RaftNode::propose`], [`RaftNode::read_linearizable`] or [`RaftNode::read_stale`].
//!
//! Write path (follower):
//! ```text
//! client ─▶ follower.propose ──Forward(hops=1)──▶ leader.client_write ─▶ commit+apply
//!        ◀──────────────── outcome + log index ◀──────────────────────────┘
//! ```
//! If the leader moved, the forwarding node retries once on the new leader; the client sees
//! `NotLeader` (with a hint) only if that fails too.
//!
//! Linearizable read (follower):
//! ```text
//! follower ──ReadIndex──▶ leader: confirm leadership with a quorum, return commit index
//! follower: wait until applied ≥ read index, then read the local state machine
//! ```

mod error;
mod membership;
mod network;
mod node;
mod peers;
mod read;
mod request;
mod service;
mod util;
mod write;

pub use error::{error_to_status, status_to_error, Error, LEADER_HINT_HEADER};
pub use flowctl_store::Member;
pub use node::{NodeStatus, RaftNode, RaftOptions};
pub use peers::{PeerChannel, PeerCredentials, Peers, MAX_INTERNAL_MESSAGE_BYTES};
pub use read::ReadMeta;
pub use request::with_request_id;
pub use service::InternalService;
pub use util::{jitter, split_host_port, REQUEST_TIMEOUT};
pub use write::{Applied, MAX_FORWARD_HOPS, PROPOSAL_QUEUE};

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

mod network;
mod peers;
mod request;
mod service;

pub use peers::{PeerChannel, PeerCredentials, Peers, MAX_INTERNAL_MESSAGE_BYTES};
pub use request::with_request_id;
pub use service::InternalService;

use flowctl_proto::internal::v1 as pb;
use flowctl_state::{codec, Command, NodeId, Outcome, State};
pub use flowctl_store::Member;
use flowctl_store::{LogStore, Raft, StateMachineStore, StateReader};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a write or read may wait for Raft before the caller gets `Unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The forwarding hop limit: a follower forwards to the leader, and the leader never forwards.
pub const MAX_FORWARD_HOPS: u32 = 1;

/// Proposals waiting on the leader to be batched; beyond this, writes get `Overloaded`.
pub const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one log entry.
const MAX_BATCH: usize = 256;
/// Most bytes of commands (as [`Command::approx_bytes`] counts them) in one batched log
/// entry, well under the [`MAX_INTERNAL_MESSAGE_BYTES`] an AppendEntries may carry. A single
/// command larger than this still goes alone (requests are bounded where they enter).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Batches being committed at once. While they are in flight, new proposals gather into the
/// next batch.
const MAX_INFLIGHT_BATCHES: usize = 4;

type Proposal = (
    Command,
    Instant,
    tokio::sync::oneshot::Sender<Result<Applied, Error>>,
);

type ReadWaiter = tokio::sync::oneshot::Sender<Result<u64, Error>>;

/// Timing and snapshot settings.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many applied entries.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind the latest snapshot, for slow followers.
    pub keep_logs_after_snapshot: u64,
    pub snapshot_chunk_bytes: u64,
    /// The credentials this node's calls to other nodes carry (the cluster's peer secret).
    pub peer_bearer: flowctl_proto::auth::Bearer,
    /// TLS for calls to other nodes' peer ports (the peer CA and this node's certificate);
    /// `None` calls them in plaintext.
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The local address calls to other nodes leave from (`None`: the system's choice).
    pub peer_local_ip: Option<std::net::IpAddr>,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat_ms: 150,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            snapshot_threshold: 10_000,
            keep_logs_after_snapshot: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            peer_bearer: flowctl_proto::auth::Bearer::default(),
            peer_tls: None,
            peer_local_ip: None,
        }
    }
}

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

/// A committed and applied write.
#[derive(Debug, Clone)]
pub struct Applied {
    pub outcome: Outcome,
    pub log_index: u64,
}

/// How a read was served.
#[derive(Debug, Clone, Copy)]
pub struct ReadMeta {
    pub node_id: u64,
    pub linearizable: bool,
    pub applied_index: u64,
    pub known_commit_index: u64,
}

/// This node's view of Raft, for status and metrics.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: u64,
    /// This node's public address.
    pub addr: String,
    /// This node's peer address.
    pub peer_addr: String,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub voters: BTreeSet<u64>,
    /// Every member's public address (for clients and components).
    pub nodes: BTreeMap<u64, String>,
    /// Every member's peer address (for node-to-node calls).
    pub peers: BTreeMap<u64, String>,
}

/// The handle on this node's Raft. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    member: Member,
    cluster_id: Arc<RwLock<String>>,
    raft: Raft,
    reader: StateReader,
    committed: Arc<AtomicU64>,
    peers: Peers,
    options: RaftOptions,
    /// Set while this node hands leadership away: new proposals wait for the new leader.
    transferring: AtomicBool,
    /// The proposal batcher's queue (see [`run_batcher`]).
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    /// Writes this follower forwards to the leader (see [`run_forwarder`]).
    forwards: tokio::sync::mpsc::Sender<Proposal>,
    /// Linearizable reads waiting for a read index (see [`run_read_index`]).
    read_waiters: tokio::sync::mpsc::Sender<ReadWaiter>,
}

impl RaftNode {
    /// Starts openraft on the given storage. The node serves nothing until its
    /// [`InternalService`] is mounted on a gRPC server.
    pub async fn start(
        id: u64,
        member: Member,
        cluster_id: String,
        log: LogStore,
        sm: StateMachineStore,
        options: RaftOptions,
    ) -> Result<Self, Error> {
        let config = Config {
            cluster_name: "flowctl".into(),
            heartbeat_interval: options.heartbeat_ms,
            election_timeout_min: options.election_timeout_min_ms,
            election_timeout_max: options.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_threshold),
            max_in_snapshot_log_to_keep: options.keep_logs_after_snapshot,
            snapshot_max_chunk_size: options.snapshot_chunk_bytes,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 1000,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| Error::Invalid(e.to_string()))?,
        );
        let cluster_id = Arc::new(RwLock::new(cluster_id));
        let peers = Peers::new(options.peer_bearer.clone(), id, cluster_id.clone())
            .with_tls(options.peer_tls.clone())
            .with_local_ip(options.peer_local_ip);
        let reader = sm.reader();
        let committed = log.committed_index();
        let net = network::NetworkFactory {
            peers: peers.clone(),
        };
        let raft = Raft::new(id, config, net, log, sm)
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?;
        let (proposals, rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        // The batcher stops when the last RaftNode handle (and so the sender) drops.
        tokio::spawn(run_batcher(raft.clone(), rx));
        let (forwards, frx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(run_forwarder(id, raft.clone(), peers.clone(), frx));
        let (read_waiters, rrx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        let inner = Arc::new(Inner {
            id,
            member,
            cluster_id,
            raft,
            reader,
            committed,
            peers,
            options,
            transferring: AtomicBool::new(false),
            proposals,
            forwards,
            read_waiters,
        });
        // Holds only a weak reference, so it stops when the last handle drops.
        tokio::spawn(run_read_index(Arc::downgrade(&inner), rrx));
        Ok(RaftNode { inner })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// This node's public address.
    pub fn addr(&self) -> &str {
        &self.inner.member.addr
    }

    /// This node's peer address.
    pub fn peer_addr(&self) -> String {
        self.inner.member.peer()
    }

    /// The cluster's id, empty until this node has created or joined one.
    pub fn cluster_id(&self) -> String {
        self.inner
            .cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the cluster's id (learned when joining).
    pub fn set_cluster_id(&self, id: &str) {
        *self
            .inner
            .cluster_id
            .write()
            .unwrap_or_else(|p| p.into_inner()) = id.to_owned();
    }

    /// Returns once openraft has stopped with a fatal error (a storage failure, say), with
    /// that error. A node in that state can only answer `UNAVAILABLE`, so the server exits
    /// and lets its supervisor restart it.
    pub async fn stopped(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &rx.borrow().running_state {
                return fatal.to_string();
            }
            if rx.changed().await.is_err() {
                return "the Raft core is gone".into();
            }
        }
    }

    /// The peer address this node's membership records for `id`.
    pub fn peer_addr_of(&self, id: u64) -> Option<String> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(Member::peer)
    }

    /// Whether `id` is a voter or learner in this node's membership.
    pub fn is_member(&self, id: u64) -> bool {
        self.peer_addr_of(id).is_some()
    }

    /// Whether `id` was removed from the cluster for good.
    pub fn was_removed(&self, id: u64) -> bool {
        self.inner
            .reader
            .read(|s, _| s.removed_nodes.contains(&NodeId(id)))
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    pub fn options(&self) -> &RaftOptions {
        &self.inner.options
    }

    /// True once this node has a vote or log: it belongs to a cluster.
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        self.inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Fatal(e.to_string()))
    }

    /// Makes this node a one-member cluster. Only for an empty data dir.
    pub async fn initialize_single(&self) -> Result<(), Error> {
        let mut nodes = BTreeMap::new();
        nodes.insert(self.inner.id, self.inner.member.clone());
        self.inner
            .raft
            .initialize(nodes)
            .await
            .map_err(|e| Error::FailedPrecondition(e.to_string()))
    }

    /// This node's current view.
    pub fn status(&self) -> NodeStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        NodeStatus {
            node_id: self.inner.id,
            addr: self.inner.member.addr.clone(),
            peer_addr: self.inner.member.peer(),
            role,
            term: m.current_term,
            leader: m.current_leader,
            commit_index: self.inner.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            voters: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            peers: membership.nodes().map(|(id, n)| (*id, n.peer())).collect(),
        }
    }

    /// The leader's id and public address, as this node knows them (for clients' hints).
    pub fn leader(&self) -> Option<(u64, String)> {
        self.leader_member().map(|(id, m)| (id, m.addr))
    }

    /// The leader's id and peer address, as this node knows them.
    pub fn leader_peer(&self) -> Option<(u64, String)> {
        self.leader_member().map(|(id, m)| (id, m.peer()))
    }

    fn leader_member(&self) -> Option<(u64, Member)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, member))
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.inner.id)
    }

    /// Waits until some leader is known, up to `timeout`, and returns its id and peer address.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(u64, String), Error> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Some(l) = self.leader_peer() {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Unavailable("no leader is known".into()));
            }
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    /// Proposes `cmd` and returns once it is committed and applied. On a follower the command
    /// is forwarded to the leader; if leadership moves meanwhile, it is retried once. A write
    /// whose second copy could answer differently is proposed with a request id (see
    /// [`with_request_id`]), so that the retry answers what the first copy answered.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, Error> {
        let cmd = request::once(self.inner.id, cmd);
        let mut last_err = None;
        for _attempt in 0..2 {
            match self.propose_once(&cmd).await {
                // Counted where the entry commits (the leader's batcher), once per write.
                Ok(a) => return Ok(a),
                Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_))) => {
                    last_err = Some(e);
                    // Leadership is moving: give the election a moment, then try the new leader.
                    let _ = self.wait_for_leader(Duration::from_secs(3)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Unavailable("no leader".into())))
    }

    async fn propose_once(&self, cmd: &Command) -> Result<Applied, Error> {
        let (leader, addr) = self.wait_for_leader(REQUEST_TIMEOUT).await?;
        if leader == self.inner.id {
            return self.write_as_leader(cmd.clone()).await;
        }
        if leader_only(cmd) {
            return Err(Error::NotLeader {
                leader: Some((leader, addr)),
            });
        }
        // Forwarded through the follower's own batcher: one Forward RPC carries every write
        // that arrived together (see `run_forwarder`).
        let cmd = cmd.clone();
        enqueue_and_wait(
            &self.inner.forwards,
            |tx| (cmd, Instant::now(), tx),
            "writes",
            "forwarder",
        )
        .await
    }

    /// Writes on this node, which must be the leader (a forwarded command lands here).
    /// Concurrent writes are batched into one log entry by [`run_batcher`].
    pub async fn write_as_leader(&self, cmd: Command) -> Result<Applied, Error> {
        if self.inner.transferring.load(Ordering::Acquire) {
            return Err(Error::Unavailable("leadership transfer in progress".into()));
        }
        enqueue_and_wait(
            &self.inner.proposals,
            |tx| (cmd, Instant::now(), tx),
            "writes",
            "proposal batcher",
        )
        .await
    }

    fn write_error(&self, e: RaftError<u64, ClientWriteError<u64, Member>>) -> Error {
        write_error(e)
    }

    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must wait for.
    pub async fn read_index_as_leader(&self) -> Result<u64, Error> {
        let fut = self.inner.raft.get_read_log_id();
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Err(_) => Err(Error::Unavailable("timed out confirming leadership".into())),
            Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(Error::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(Error::Unavailable(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(Error::Fatal(f.to_string())),
        }
    }

    /// Confirms that this node reaches a leader that holds a quorum now, and that its own
    /// state has caught up with what that leader had committed (a linearizable read, whose
    /// read index is shared with the reads waiting at the same time): the supervisor's
    /// fencing check.
    pub async fn confirm_quorum(&self) -> Result<(), Error> {
        self.read_linearizable(|_| ()).await.map(|_| ())
    }

    /// A read index for a linearizable read, shared with every read that is waiting at the
    /// same time (see [`run_read_index`]).
    async fn read_index(&self) -> Result<u64, Error> {
        enqueue_and_wait(
            &self.inner.read_waiters,
            |tx| tx,
            "reads",
            "read-index task",
        )
        .await
    }

    async fn read_index_now(&self) -> Result<u64, Error> {
        let (leader, addr) = self.wait_for_leader(REQUEST_TIMEOUT).await?;
        if leader == self.inner.id {
            return self.read_index_as_leader().await;
        }
        let mut client = self.inner.peers.client(&addr).map_err(Error::Unavailable)?;
        let mut req = tonic::Request::new(pb::ReadIndexRequest {});
        req.set_timeout(REQUEST_TIMEOUT);
        let resp = client
            .read_index(req)
            .await
            .map_err(status_to_error)?
            .into_inner();
        Ok(resp.read_index)
    }

    /// Reads the local state after it has caught up with a read index from the leader.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&State) -> T,
    ) -> Result<(T, ReadMeta), Error> {
        let mut index = None;
        for _attempt in 0..2 {
            match self.read_index().await {
                Ok(i) => {
                    index = Some(i);
                    break;
                }
                Err(Error::NotLeader { .. } | Error::Unavailable(_)) => {
                    let _ = self.wait_for_leader(Duration::from_secs(3)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let index = match index {
            Some(i) => i,
            None => self.read_index().await?,
        };
        self.inner
            .raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "local state did not catch up to index {index}: {e}"
                ))
            })?;
        let (value, applied) = self.inner.reader.read(|s, applied| (f(s), applied));
        Ok((
            value,
            ReadMeta {
                node_id: self.inner.id,
                linearizable: true,
                applied_index: applied,
                known_commit_index: self.inner.committed.load(Ordering::Relaxed).max(index),
            },
        ))
    }

    /// Reads the local state at once; the meta says how far it has applied.
    pub fn read_stale<T>(&self, f: impl FnOnce(&State) -> T) -> (T, ReadMeta) {
        let (value, applied) = self.inner.reader.read(|s, applied| (f(s), applied));
        (
            value,
            ReadMeta {
                node_id: self.inner.id,
                linearizable: false,
                applied_index: applied,
                known_commit_index: self.inner.committed.load(Ordering::Relaxed),
            },
        )
    }

    /// On the leader: adds a node as a learner, waits until it has caught up, then promotes it
    /// to voter. Joining again when already a voter changes nothing.
    pub async fn add_member(&self, node_id: u64, member: Member) -> Result<u64, Error> {
        let removed = self
            .inner
            .reader
            .read(|s, _| s.removed_nodes.contains(&NodeId(node_id)));
        if removed {
            return Err(Error::FailedPrecondition(format!(
                "node id {node_id} was removed from this cluster and cannot rejoin; start it with an empty data dir"
            )));
        }
        let st = self.status();
        if st.voters.contains(&node_id) {
            if st.nodes.get(&node_id) != Some(&member.addr)
                || st.peers.get(&node_id) != Some(&member.peer())
            {
                tracing::warn!(
                    node_id,
                    %member,
                    "join from a voter with changed addresses; keeping the recorded ones"
                );
            }
            return Ok(st.applied_index);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = async {
                self.inner
                    .raft
                    .add_learner(node_id, member.clone(), true)
                    .await
                    .map_err(|e| self.write_error(e))?;
                let mut ids = BTreeSet::new();
                ids.insert(node_id);
                self.inner
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                    .map_err(|e| self.write_error(e))
            }
            .await;
            match result {
                Ok(resp) => return Ok(resp.log_id.index),
                // Another membership change is in flight (for example a concurrent join).
                Err(Error::FailedPrecondition(msg)) if Instant::now() < deadline => {
                    tracing::info!(node_id, %msg, "membership change busy; retrying");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// On the leader: demotes and removes a member, and records its id as never reusable.
    pub async fn remove_member(&self, node_id: u64) -> Result<u64, Error> {
        let st = self.status();
        if !st.nodes.contains_key(&node_id) {
            return Err(Error::NotFound(format!("node {node_id} is not a member")));
        }
        if st.voters.contains(&node_id) {
            if st.voters.len() == 1 {
                return Err(Error::FailedPrecondition(
                    "cannot remove the last voter".into(),
                ));
            }
            let ids: BTreeSet<u64> = [node_id].into();
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveVoters(ids), true)
                .await
                .map_err(|e| self.write_error(e))?;
        }
        let ids: BTreeSet<u64> = [node_id].into();
        let resp = self
            .inner
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(|e| self.write_error(e))?;
        // The leader may have removed itself; the record is then proposed through the new one.
        let _ = self
            .propose(Command::RecordNodeRemoved {
                node_id: NodeId(node_id),
            })
            .await;
        Ok(resp.log_id.index)
    }

    /// On the leader: hands leadership to `target` (or the most caught-up voter when `None`).
    ///
    /// openraft 0.9 has no leader transfer, so this follows Raft's TimeoutNow idea: the leader
    /// pauses proposals and heartbeats and holds elections on the other voters; once the
    /// followers' leader lease has run out, the target campaigns and wins.
    pub async fn transfer_leadership(&self, target: Option<u64>) -> Result<u64, Error> {
        let st = self.status();
        if st.leader != Some(self.inner.id) {
            return Err(Error::NotLeader {
                leader: self.leader(),
            });
        }
        let target = match target {
            Some(t) if t == self.inner.id => return Ok(t),
            Some(t) if !st.voters.contains(&t) => {
                return Err(Error::NotFound(format!("node {t} is not a voter")))
            }
            Some(t) => t,
            None => match self.best_transfer_target() {
                Some(t) => t,
                None => {
                    return Err(Error::FailedPrecondition(
                        "no other voter to transfer leadership to".into(),
                    ))
                }
            },
        };
        let addr = st.peers.get(&target).cloned().unwrap_or_default();
        let lease = Duration::from_millis(self.inner.options.election_timeout_max_ms);
        // Heartbeats, elections and proposals come back however this ends: also when the
        // caller's future is dropped mid-transfer (client gone, deadline), which would
        // otherwise leave a node that refuses writes and never campaigns again.
        let _paused = TransferPause::start(&self.inner);
        let hold = lease * 3;
        for (&id, a) in &st.peers {
            if id == target || id == self.inner.id || !st.voters.contains(&id) {
                continue;
            }
            if let Ok(mut c) = self.inner.peers.client(a) {
                let mut req = tonic::Request::new(pb::TimeoutNowRequest {
                    from_leader: self.inner.id,
                    term: 0,
                });
                req.set_timeout(Duration::from_secs(1));
                // term 0 means "hold elections": see InternalService::timeout_now.
                let _ = c.timeout_now(req).await;
            }
        }
        let result = async {
            let mut c = self.inner.peers.client(&addr).map_err(Error::Unavailable)?;
            let mut req = tonic::Request::new(pb::TimeoutNowRequest {
                from_leader: self.inner.id,
                term: st.term,
            });
            req.set_timeout(Duration::from_secs(2));
            c.timeout_now(req).await.map_err(status_to_error)?;
            self.inner
                .raft
                .wait(Some(lease + hold))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != self.inner.id),
                    "leadership moved",
                )
                .await
                .map_err(|e| Error::Unavailable(format!("leadership did not move: {e}")))?;
            Ok(self.status().leader.unwrap_or(target))
        }
        .await;
        result
    }

    fn best_transfer_target(&self) -> Option<u64> {
        let m = self.inner.raft.metrics().borrow().clone();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let repl = m.replication.as_ref()?;
        repl.iter()
            .filter(|(id, _)| **id != self.inner.id && voters.contains(id))
            .max_by_key(|(_, l)| l.map(|l| l.index))
            .map(|(id, _)| *id)
    }

    /// Called on the target of a transfer: wait out the followers' leader lease, then campaign.
    pub(crate) fn campaign_after_lease(&self) {
        let node = self.clone();
        let lease = Duration::from_millis(self.inner.options.election_timeout_max_ms);
        tokio::spawn(async move {
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
            if let Err(e) = node.inner.raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaign for leadership transfer failed");
            }
        });
    }

    /// Called on the other voters during a transfer: do not start elections of our own until
    /// the target has had its chance.
    pub(crate) fn hold_elections(&self) {
        let node = self.clone();
        let hold = Duration::from_millis(self.inner.options.election_timeout_max_ms * 3);
        node.inner.raft.runtime_config().elect(false);
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            node.inner.raft.runtime_config().elect(true);
        });
    }

    /// Stops openraft. The store is closed when the last handle drops.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Error {
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

/// Group proposals: openraft 0.9 appends and replicates one log entry per `client_write`, so
/// the leader merges the proposals that arrive together into one [`Command::Batch`] entry.
/// Up to [`MAX_INFLIGHT_BATCHES`] batches commit at once; while they are in flight, new
/// proposals gather into the next batch, so batches grow with load and a lone write goes
/// out at once.
async fn run_batcher(raft: Raft, rx: tokio::sync::mpsc::Receiver<Proposal>) {
    run_batches(rx, move |batch| {
        let raft = raft.clone();
        async move { commit_batch(&raft, batch).await }
    })
    .await;
}

/// Takes whatever is queued (up to [`MAX_BATCH`]) once one of [`MAX_INFLIGHT_BATCHES`]
/// slots is free, and hands it to `handle` on its own task. While batches are in flight, new
/// items gather into the next one, so batches grow with load and a lone item goes at once.
async fn run_batches<F, Fut>(mut rx: tokio::sync::mpsc::Receiver<Proposal>, handle: F)
where
    F: Fn(Vec<Proposal>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_BATCHES));
    // A proposal that did not fit the last batch starts the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    let b = p.0.approx_bytes();
                    if bytes + b > MAX_BATCH_BYTES {
                        carried = Some(p);
                        break;
                    }
                    bytes += b;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let work = handle(batch);
        // Bounded by the slots: at most MAX_INFLIGHT_BATCHES of these run at once.
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

async fn commit_batch(raft: &Raft, batch: Vec<Proposal>) {
    let n = batch.len();
    let mut cmds = Vec::with_capacity(n);
    let mut waiters = Vec::with_capacity(n);
    for (cmd, at, tx) in batch {
        cmds.push(cmd);
        waiters.push((at, tx));
    }
    let entry = if n == 1 {
        cmds.pop().expect("a batch has one command")
    } else {
        Command::Batch(cmds)
    };
    match raft.client_write(entry).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            let outcomes = match (n, resp.data) {
                (1, o) => vec![o],
                (_, Outcome::Batch(outs)) if outs.len() == n => outs,
                (_, other) => {
                    // The commands were applied, but what each did is unknown: telling the
                    // callers anything would be a guess. The state machine is not the code
                    // this node runs; stop it loudly so that it restarts from its log.
                    tracing::error!(
                        ?other,
                        n,
                        index,
                        "batch outcome does not match the batch; stopping Raft"
                    );
                    let err = Error::Fatal(format!(
                        "the outcome of log entry {index} does not match its batch of {n}"
                    ));
                    for (_, tx) in waiters {
                        let _ = tx.send(Err(err.clone()));
                    }
                    let _ = raft.shutdown().await;
                    return;
                }
            };
            metrics::counter!("flowctl_raft_proposals_committed_total").increment(n as u64);
            metrics::histogram!("flowctl_raft_proposal_batch_size").record(n as f64);
            for ((at, tx), outcome) in waiters.into_iter().zip(outcomes) {
                metrics::histogram!("flowctl_raft_propose_to_apply_seconds")
                    .record(at.elapsed().as_secs_f64());
                let _ = tx.send(Ok(Applied {
                    outcome,
                    log_index: index,
                }));
            }
        }
        Err(e) => {
            metrics::counter!("flowctl_raft_proposals_failed_total").increment(n as u64);
            let err = write_error(e);
            for (_, tx) in waiters {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }
}

/// The follower's side of batching: writes that arrive together are forwarded to the leader
/// in one `Forward` RPC carrying a [`Command::Batch`]; the leader proposes each through its
/// own batcher and answers with one outcome per command.
async fn run_forwarder(
    me: u64,
    raft: Raft,
    peers: Peers,
    rx: tokio::sync::mpsc::Receiver<Proposal>,
) {
    run_batches(rx, move |batch| {
        let raft = raft.clone();
        let peers = peers.clone();
        async move { forward_batch(me, &raft, &peers, batch).await }
    })
    .await;
}

/// Whether only a leader proposes `cmd`: its own periodic decisions (placements, liveness
/// transitions, the DLQ index, chunk assignment) and the batches it merges itself. A node
/// that has just lost leadership must not forward them (the leader refuses them).
fn leader_only(cmd: &Command) -> bool {
    match cmd {
        Command::Once(o) => leader_only(&o.command),
        Command::Batch(_)
        | Command::SetComponentHealth(_)
        | Command::SetPlacement(_)
        | Command::IndexDlq(_)
        | Command::ExpireDlq(_)
        | Command::AssignChunks(_)
        | Command::RequeueChunks(_) => true,
        _ => false,
    }
}

/// Whether `cmd` goes to the leader in a Forward of its own. The leader checks a forwarded
/// batch as a whole, so a command it may refuse (a leader's decision, a removal record)
/// would fail the other writes forwarded with it.
fn forwarded_alone(cmd: &Command) -> bool {
    leader_only(cmd) || matches!(cmd, Command::RecordNodeRemoved { .. })
}

async fn forward_batch(me: u64, raft: &Raft, peers: &Peers, mut batch: Vec<Proposal>) {
    let alone: Vec<Proposal> = {
        let (alone, rest) = batch.drain(..).partition(|p| forwarded_alone(&p.0));
        batch = rest;
        alone
    };
    let groups = alone
        .into_iter()
        .map(|p| vec![p])
        .chain((!batch.is_empty()).then_some(batch));
    futures::future::join_all(groups.map(|g| forward_group(me, raft, peers, g))).await;
}

async fn forward_group(me: u64, raft: &Raft, peers: &Peers, batch: Vec<Proposal>) {
    let n = batch.len();
    let mut cmds = Vec::with_capacity(n);
    let mut waiters = Vec::with_capacity(n);
    for (cmd, _, tx) in batch {
        cmds.push(cmd);
        waiters.push(tx);
    }
    let result = async {
        let m = raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .ok_or_else(|| Error::Unavailable("no leader is known".into()))?;
        let member = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or_else(|| Error::Unavailable("the leader's address is unknown".into()))?;
        if leader == me {
            // This node has just become leader: the caller retries and writes locally.
            return Err(Error::NotLeader {
                leader: Some((me, member.addr)),
            });
        }
        let addr = member.peer();
        let entry = if n == 1 {
            cmds.pop().expect("a batch has one command")
        } else {
            Command::Batch(cmds)
        };
        let bytes = codec::encode_command(&entry).map_err(|e| Error::Invalid(e.to_string()))?;
        metrics::counter!("flowctl_raft_forwarded_total").increment(n as u64);
        let mut client = peers.client(&addr).map_err(Error::Unavailable)?;
        let mut req = tonic::Request::new(pb::ForwardRequest {
            command: bytes,
            hops: 1,
        });
        req.set_timeout(REQUEST_TIMEOUT);
        let resp = client
            .forward(req)
            .await
            .map_err(status_to_error)?
            .into_inner();
        let outcome =
            codec::decode_outcome(&resp.outcome).map_err(|e| Error::Fatal(e.to_string()))?;
        let outcomes = match (n, outcome) {
            (1, o) => vec![o],
            (_, Outcome::Batch(outs)) if outs.len() == n => outs,
            (_, other) => {
                return Err(Error::Fatal(format!(
                    "forwarded batch answered with {other:?}"
                )))
            }
        };
        Ok((outcomes, resp.log_index))
    }
    .await;
    match result {
        Ok((outcomes, log_index)) => {
            for (tx, outcome) in waiters.into_iter().zip(outcomes) {
                let _ = tx.send(Ok(Applied { outcome, log_index }));
            }
        }
        Err(e) => {
            for tx in waiters {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// Coalesces linearizable reads: every read waiting when a read-index request starts shares
/// its answer. That is safe because the index is obtained after each of those reads arrived,
/// and it turns N concurrent reads into one quorum round (and, on a follower, one RPC).
async fn run_read_index(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::mpsc::Receiver<ReadWaiter>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let node = RaftNode { inner };
        let result = node.read_index_now().await;
        drop(node);
        metrics::histogram!("flowctl_raft_read_index_batch_size").record(waiters.len() as f64);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Queues a request built around a reply channel on `queue` and waits for the reply: the
/// pattern of the batcher, the forwarder and the read-index task. A full queue is
/// `Overloaded`; a stopped task is `Fatal`.
async fn enqueue_and_wait<T, R>(
    queue: &tokio::sync::mpsc::Sender<T>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<R, Error>>) -> T,
    what: &str,
    task: &str,
) -> Result<R, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    queue.try_send(make(tx)).map_err(|e| match e {
        tokio::sync::mpsc::error::TrySendError::Full(_) => Error::Overloaded(format!(
            "more than {PROPOSAL_QUEUE} {what} are waiting; retry later"
        )),
        tokio::sync::mpsc::error::TrySendError::Closed(_) => {
            Error::Fatal(format!("the {task} stopped"))
        }
    })?;
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Err(_) => Err(Error::Unavailable(format!(
            "timed out waiting for the {task}"
        ))),
        Ok(Err(_)) => Err(Error::Fatal(format!("the {task} stopped"))),
        Ok(Ok(r)) => r,
    }
}

/// Adds up to 50% random jitter to a backoff delay.
pub fn jitter(d: Duration) -> Duration {
    let extra = rand::random::<f64>() * 0.5;
    d.mul_f64(1.0 + extra)
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

/// Pauses this leader's heartbeats, elections and proposals for a leadership transfer, and
/// resumes them when dropped.
struct TransferPause<'a> {
    inner: &'a Inner,
}

impl<'a> TransferPause<'a> {
    fn start(inner: &'a Inner) -> Self {
        inner.transferring.store(true, Ordering::Release);
        let rt = inner.raft.runtime_config();
        rt.heartbeat(false);
        rt.elect(false);
        TransferPause { inner }
    }
}

impl Drop for TransferPause<'_> {
    fn drop(&mut self) {
        let rt = self.inner.raft.runtime_config();
        rt.heartbeat(true);
        rt.elect(true);
        self.inner.transferring.store(false, Ordering::Release);
    }
}

/// Splits `host:port` (a name, an IPv4 address or a bracketed IPv6 address, and a non-zero
/// port); `None` if `addr` is not of that form.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && host.chars().all(plain)
    };
    ok.then_some((host, port))
}

#[cfg(test)]
mod address_tests {
    use super::split_host_port;

    #[test]
    fn host_port_is_a_name_or_address_and_a_non_zero_port() {
        assert_eq!(split_host_port("127.0.0.1:8081"), Some(("127.0.0.1", 8081)));
        assert_eq!(
            split_host_port("node-1.example:1"),
            Some(("node-1.example", 1))
        );
        assert_eq!(split_host_port("[::1]:8081"), Some(("[::1]", 8081)));
        for bad in [
            "", "h", ":1", "h:0", "h:65536", "a b:1", "h/x:1", "[zz]:1", "h:x",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use flowctl_state::pipelines::ApplyPipeline;
    use flowctl_state::PipelineId;

    fn big(name: &str, bytes: usize) -> Command {
        Command::ApplyPipeline(ApplyPipeline {
            name: name.into(),
            id_if_new: PipelineId::from_random(1),
            spec_yaml: "x".repeat(bytes),
            canonical: String::new(),
            at_ms: 0,
            if_generation: None,
        })
    }

    /// A torture run failed on this: a deposed leader's placement (a batch of its own) was
    /// forwarded in one batch with a client's write, and the leader refused both ("a
    /// forwarded batch may not nest batches").
    #[test]
    fn leader_decisions_are_never_forwarded_with_other_writes() {
        use flowctl_state::placements::SetPlacement;
        let place = Command::SetPlacement(SetPlacement {
            pipeline: "p".into(),
            generation: 1,
            instances: Default::default(),
        });
        let write = big("p", 1);
        assert!(leader_only(&place) && forwarded_alone(&place));
        assert!(leader_only(&Command::Batch(vec![
            place.clone(),
            write.clone()
        ])));
        assert!(!leader_only(&write) && !forwarded_alone(&write));
        assert!(forwarded_alone(&Command::RecordNodeRemoved {
            node_id: flowctl_state::NodeId(3)
        }));
    }

    #[tokio::test]
    async fn batches_are_bounded_by_bytes_and_a_proposal_that_does_not_fit_starts_the_next() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Proposal>(16);
        let mut waiters = Vec::new();
        // Five commands of 4 MiB each, 8 MiB and a little as counted: two would exceed the
        // bound, so each one goes in a batch of its own.
        for i in 0..5 {
            let (otx, orx) = tokio::sync::oneshot::channel();
            tx.send((big(&format!("p{i}"), 4 * 1024 * 1024), Instant::now(), otx))
                .await
                .unwrap();
            waiters.push(orx);
        }
        drop(tx);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        run_batches(rx, move |batch: Vec<Proposal>| {
            let s = s.clone();
            async move {
                let bytes: usize = batch.iter().map(|p| p.0.approx_bytes()).sum();
                s.lock().unwrap().push((batch.len(), bytes));
                for (_, _, tx) in batch {
                    let _ = tx.send(Err(Error::Unavailable("test".into())));
                }
            }
        })
        .await;
        for w in waiters {
            assert!(w.await.is_ok(), "every proposal was handed to a batch");
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.iter().map(|b| b.0).sum::<usize>(), 5);
        assert!(seen.iter().all(|b| b.0 == 1), "{seen:?}");
        assert!(seen.iter().all(|b| b.1 <= MAX_BATCH_BYTES), "{seen:?}");
    }
}

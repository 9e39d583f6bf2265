//! [`RaftNode`]: starting openraft, its options, and this node's view of the cluster.

use crate::network;
use crate::read::{run_read_index, ReadWaiter};
use crate::write::{run_batcher, run_forwarder, Proposal, PROPOSAL_QUEUE};
use crate::{Error, Peers};
use flowctl_store::{LogStore, Member, Raft, StateMachineStore, StateReader};
use openraft::{Config, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) member: Member,
    pub(crate) cluster_id: Arc<RwLock<String>>,
    pub(crate) raft: Raft,
    pub(crate) reader: StateReader,
    pub(crate) committed: Arc<AtomicU64>,
    pub(crate) peers: Peers,
    pub(crate) options: RaftOptions,
    /// Set while this node hands leadership away: new proposals wait for the new leader.
    pub(crate) transferring: AtomicBool,
    /// The proposal batcher's queue (see [`run_batcher`]).
    pub(crate) proposals: tokio::sync::mpsc::Sender<Proposal>,
    /// Writes this follower forwards to the leader (see [`run_forwarder`]).
    pub(crate) forwards: tokio::sync::mpsc::Sender<Proposal>,
    /// Linearizable reads waiting for a read index (see [`run_read_index`]).
    pub(crate) read_waiters: tokio::sync::mpsc::Sender<ReadWaiter>,
}

impl RaftNode {
    /// Starts openraft on the given storage. The node serves nothing until its
    /// [`InternalService`] is mounted on a gRPC server.
    ///
    /// [`InternalService`]: crate::InternalService
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

    /// Stops openraft. The store is closed when the last handle drops.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

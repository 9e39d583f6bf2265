//! Membership: adding and removing members, leadership transfer, and who is a member.

use crate::error::{status_to_error, write_error};
use crate::node::Inner;
use crate::util::jitter;
use crate::{Error, RaftNode};
use flowctl_proto::internal::v1 as pb;
use flowctl_state::{Command, NodeId};
use flowctl_store::Member;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl RaftNode {
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

    fn write_error(&self, e: RaftError<u64, ClientWriteError<u64, Member>>) -> Error {
        write_error(e)
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
                    tokio::time::sleep(jitter(backoff, 0.5)).await;
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

//! The read path: read indexes (coalesced by the read-index task), linearizable and stale reads.

use crate::error::status_to_error;
use crate::node::Inner;
use crate::util::enqueue_and_wait;
use crate::{Error, RaftNode, REQUEST_TIMEOUT};
use flowctl_proto::internal::v1 as pb;
use flowctl_state::State;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(crate) type ReadWaiter = tokio::sync::oneshot::Sender<Result<u64, Error>>;

/// How a read was served.
#[derive(Debug, Clone, Copy)]
pub struct ReadMeta {
    pub node_id: u64,
    pub linearizable: bool,
    pub applied_index: u64,
    pub known_commit_index: u64,
}

impl RaftNode {
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
}

/// Coalesces linearizable reads: every read waiting when a read-index request starts shares
/// its answer. That is safe because the index is obtained after each of those reads arrived,
/// and it turns N concurrent reads into one quorum round (and, on a follower, one RPC).
pub(crate) async fn run_read_index(
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

//! The write path: proposing, the leader's proposal batcher and the follower's forwarder.

use crate::error::{status_to_error, write_error};
use crate::util::enqueue_and_wait;
use crate::{request, Error, Peers, RaftNode, REQUEST_TIMEOUT};
use flowctl_proto::internal::v1 as pb;
use flowctl_state::{codec, Command, Outcome};
use flowctl_store::Raft;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The forwarding hop limit: a follower forwards to the leader, and the leader never forwards.
pub const MAX_FORWARD_HOPS: u32 = 1;

/// Proposals waiting on the leader to be batched; beyond this, writes get `Overloaded`.
pub const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one log entry.
const MAX_BATCH: usize = 256;
/// Most bytes of commands (as [`Command::approx_bytes`] counts them) in one batched log
/// entry, well under the [`MAX_INTERNAL_MESSAGE_BYTES`] an AppendEntries may carry. A single
/// command larger than this still goes alone (requests are bounded where they enter).
///
/// [`MAX_INTERNAL_MESSAGE_BYTES`]: crate::MAX_INTERNAL_MESSAGE_BYTES
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Batches being committed at once. While they are in flight, new proposals gather into the
/// next batch.
const MAX_INFLIGHT_BATCHES: usize = 4;

pub(crate) type Proposal = (
    Command,
    Instant,
    tokio::sync::oneshot::Sender<Result<Applied, Error>>,
);

/// A committed and applied write.
#[derive(Debug, Clone)]
pub struct Applied {
    pub outcome: Outcome,
    pub log_index: u64,
}

impl RaftNode {
    /// Proposes `cmd` and returns once it is committed and applied. On a follower the command
    /// is forwarded to the leader; if leadership moves meanwhile, it is retried once. A write
    /// whose second copy could answer differently is proposed with a request id (see
    /// [`with_request_id`]), so that the retry answers what the first copy answered.
    ///
    /// [`with_request_id`]: crate::with_request_id
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
        let started = Instant::now();
        let r = enqueue_and_wait(
            &self.inner.forwards,
            |tx| (cmd, started, tx),
            "writes",
            "forwarder",
        )
        .await;
        flowctl_store::record_stage("forward", started.elapsed());
        r
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
}

/// Group proposals: openraft 0.9 appends and replicates one log entry per `client_write`, so
/// the leader merges the proposals that arrive together into one [`Command::Batch`] entry.
/// Up to [`MAX_INFLIGHT_BATCHES`] batches commit at once; while they are in flight, new
/// proposals gather into the next batch, so batches grow with load and a lone write goes
/// out at once.
pub(crate) async fn run_batcher(raft: Raft, rx: tokio::sync::mpsc::Receiver<Proposal>) {
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
    let started = Instant::now();
    for (cmd, at, tx) in batch {
        flowctl_store::record_stage("batch_wait", started.saturating_duration_since(at));
        cmds.push(cmd);
        waiters.push((at, tx));
    }
    let entry = if n == 1 {
        cmds.pop().expect("a batch has one command")
    } else {
        Command::Batch(cmds)
    };
    let written = raft.client_write(entry).await;
    flowctl_store::record_stage("commit", started.elapsed());
    match written {
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
pub(crate) async fn run_forwarder(
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
pub(crate) fn leader_only(cmd: &Command) -> bool {
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

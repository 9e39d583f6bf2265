//! The audit log: the auth layer hands every accepted write (who, which method) to this node's
//! writer, which batches them into `RecordAudit` commands (one Raft entry per batch, not per
//! write); the replicated log keeps the last `--audit-keep` records. `AuditService.List`
//! serves it from any node.
//!
//! The queue is bounded: when it is full (the cluster cannot commit), entries are dropped and
//! counted in `flowctl_audit_dropped_total`, so that auditing never blocks or fails a write.

use crate::clock::{now_ms, ts};
use crate::errors::ServiceError;
use flowctl_proto::admin::v1 as pb;
use flowctl_raft::RaftNode;
use flowctl_state::audit::{AuditEntry, RecordAudit, MAX_AUDIT_BATCH, MAX_AUDIT_FIELD};
use flowctl_state::{Command, NodeId};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

/// Entries waiting for the writer.
pub const AUDIT_QUEUE: usize = 4096;
/// How long the writer gathers entries into one command.
pub const AUDIT_FLUSH: Duration = Duration::from_millis(500);
/// Records kept when `--audit-keep` is not given.
pub const DEFAULT_AUDIT_KEEP: u32 = 10_000;
/// Records one List returns when the request names no limit, and at most.
const LIST_DEFAULT: usize = 1_000;
const LIST_MAX: usize = 10_000;

/// What a write changed, as its handler names it in the response's extensions (see
/// [`resource`]); the auth layer records it with the write.
#[derive(Debug, Clone)]
pub struct AuditResource(pub String);

/// `resp`, naming `what` (`kind/name`) as the resource the write changed.
pub fn resource<T>(mut resp: tonic::Response<T>, what: String) -> tonic::Response<T> {
    resp.extensions_mut().insert(AuditResource(what));
    resp
}

/// Where the auth layer sends accepted writes. Cheap to clone.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<AuditEntry>,
    node: NodeId,
}

impl AuditHandle {
    /// Queues one record; never waits.
    pub fn record(&self, who: &str, method: &str, resource: &str) {
        let clip = |s: &str| {
            let mut end = s.len().min(MAX_AUDIT_FIELD);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        let entry = AuditEntry {
            at_ms: now_ms(),
            who: clip(who),
            method: clip(method),
            node: self.node,
            resource: clip(resource),
        };
        if self.tx.try_send(entry).is_err() {
            metrics::counter!("flowctl_audit_dropped_total").increment(1);
        }
    }
}

/// Starts this node's writer.
pub fn start(
    node: RaftNode,
    keep: u32,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> AuditHandle {
    let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
    let handle = AuditHandle {
        tx,
        node: NodeId(node.id()),
    };
    tracker.spawn(run(node, keep, rx, cancel));
    handle
}

async fn run(
    node: RaftNode,
    keep: u32,
    mut rx: mpsc::Receiver<AuditEntry>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let mut entries = vec![first];
        let flush = tokio::time::sleep(AUDIT_FLUSH);
        tokio::pin!(flush);
        while entries.len() < MAX_AUDIT_BATCH {
            tokio::select! {
                _ = &mut flush => break,
                e = rx.recv() => match e {
                    Some(e) => entries.push(e),
                    None => break,
                },
            }
        }
        let count = entries.len();
        let cmd = Command::RecordAudit(RecordAudit { entries, keep });
        let proposed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = node.propose(cmd) => r,
        };
        if let Err(e) = proposed {
            metrics::counter!("flowctl_audit_dropped_total").increment(count as u64);
            tracing::warn!(error = %e, count, "audit records not committed; dropped");
        }
    }
}

pub struct AuditApi {
    pub node: RaftNode,
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn list(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let r = req.into_inner();
        let since_ms = r
            .since
            .map(|t| u64::try_from(t.seconds.max(0)).unwrap_or(0) * 1000)
            .unwrap_or(0);
        let limit = match r.limit as usize {
            0 => LIST_DEFAULT,
            n => n.min(LIST_MAX),
        };
        let (records, _) = self
            .node
            .read_linearizable(|s| {
                let mut out: Vec<pb::AuditRecord> = s
                    .audit
                    .records
                    .values()
                    .rev()
                    .filter(|x| x.entry.at_ms >= since_ms)
                    .filter(|x| r.who.is_empty() || x.entry.who == r.who)
                    .take(limit)
                    .map(|x| pb::AuditRecord {
                        seq: x.seq,
                        time: ts(x.entry.at_ms),
                        who: x.entry.who.clone(),
                        method: x.entry.method.clone(),
                        node_id: x.entry.node.0,
                        resource: x.entry.resource.clone(),
                    })
                    .collect();
                out.reverse();
                out
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListAuditResponse { records }))
    }
}

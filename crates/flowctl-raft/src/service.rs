//! The internal gRPC service: Raft transport, forwarding, read-index and membership.

use crate::{error_to_status, RaftNode, MAX_FORWARD_HOPS, REQUEST_TIMEOUT};
use flowctl_proto::internal::v1 as pb;
use flowctl_proto::internal::v1::raft_service_server::RaftService;
use flowctl_state::{codec, Command, Outcome};
use flowctl_store::TypeConfig;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use tonic::{Request, Response, Status};

/// Serves `flowctl.internal.v1.RaftService` for one node.
#[derive(Clone)]
pub struct InternalService {
    node: RaftNode,
}

impl InternalService {
    pub fn new(node: RaftNode) -> Self {
        InternalService { node }
    }

    fn cluster_id(&self) -> String {
        self.node.cluster_id()
    }
}

fn reply<T: Serialize>(value: &T) -> Result<Response<pb::RaftPayload>, Status> {
    match codec::encode("raft response", value) {
        Ok(data) => Ok(Response::new(pb::RaftPayload { data })),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode raft response");
            Err(Status::internal("cannot encode raft response"))
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<pb::RaftPayload>) -> Result<T, Status> {
    codec::decode("raft request", &req.into_inner().data)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

impl InternalService {
    /// Refuses what no follower proposes: the decisions only a leader makes (placements,
    /// liveness transitions, the DLQ index, chunk assignment), nested batches, and the record of
    /// a removal for a node that is still a member. A follower's own forwarded writes are
    /// everything else.
    fn check_forwarded(&self, cmd: &Command, top: bool) -> Result<(), Status> {
        let leader_only = |kind: &str| {
            Err(Status::permission_denied(format!(
                "{kind} is decided by the leader alone; a forwarded one is refused"
            )))
        };
        match cmd {
            Command::Batch(cmds) if top => {
                cmds.iter().try_for_each(|c| self.check_forwarded(c, false))
            }
            Command::Batch(_) => Err(Status::invalid_argument(
                "a forwarded batch may not nest batches",
            )),
            // A request id changes nothing about what may be forwarded.
            Command::Once(o) => {
                o.request_id.check().map_err(Status::invalid_argument)?;
                if matches!(*o.command, Command::Once(_) | Command::Batch(_)) {
                    return Err(Status::invalid_argument(
                        "a forwarded request carries one command",
                    ));
                }
                self.check_forwarded(&o.command, false)
            }
            Command::SetComponentHealth(_) => leader_only("a component health transition"),
            Command::SetPlacement(_) => leader_only("a placement"),
            Command::IndexDlq(_) | Command::ExpireDlq(_) => leader_only("the DLQ index"),
            Command::AssignChunks(_) | Command::RequeueChunks(_) => {
                leader_only("a replay chunk assignment")
            }
            // A leader that removed itself records the removal through its successor.
            Command::RecordNodeRemoved { node_id }
                if self.node.status().nodes.contains_key(&node_id.0) =>
            {
                Err(Status::failed_precondition(format!(
                    "node {} is still a member; only a removed node's id is recorded",
                    node_id.0
                )))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl RaftService for InternalService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let started = (!rpc.entries.is_empty()).then(std::time::Instant::now);
        let r = self.node.raft().append_entries(rpc).await;
        if let Some(t) = started {
            flowctl_store::record_stage("follower_append", t.elapsed());
        }
        reply(&r)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode(req)?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        let end = rpc.offset.saturating_add(rpc.data.len() as u64);
        if end > flowctl_store::MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "snapshot {} would be over {} bytes (a chunk ends at byte {end}); refused",
                rpc.meta.snapshot_id,
                flowctl_store::MAX_SNAPSHOT_BYTES
            )));
        }
        reply(&self.node.raft().install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let req = req.into_inner();
        if req.hops > MAX_FORWARD_HOPS {
            return Err(Status::failed_precondition("forwarding hop limit exceeded"));
        }
        let cmd = codec::decode_command(&req.command)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_forwarded(&cmd, true)?;
        let applied = match cmd {
            // A follower's batch: each command goes through this leader's own batcher and gets
            // its own outcome. If any fails (leadership moved), the follower retries them all;
            // every command kind is safe to apply twice (idempotent or a recorded rejection).
            Command::Batch(cmds) => {
                let results = futures::future::join_all(
                    cmds.into_iter().map(|c| self.node.write_as_leader(c)),
                )
                .await;
                let mut outcomes = Vec::with_capacity(results.len());
                let mut index = 0;
                for r in results {
                    let a = r.map_err(|e| error_to_status(&e))?;
                    index = index.max(a.log_index);
                    outcomes.push(a.outcome);
                }
                crate::Applied {
                    outcome: Outcome::Batch(outcomes),
                    log_index: index,
                }
            }
            cmd => self
                .node
                .write_as_leader(cmd)
                .await
                .map_err(|e| error_to_status(&e))?,
        };
        let outcome = codec::encode_outcome(&applied.outcome).map_err(|e| {
            tracing::error!(error = %e, "cannot encode outcome");
            Status::internal("cannot encode outcome")
        })?;
        Ok(Response::new(pb::ForwardResponse {
            outcome,
            log_index: applied.log_index,
        }))
    }

    async fn read_index(
        &self,
        _req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self
            .node
            .read_index_as_leader()
            .await
            .map_err(|e| error_to_status(&e))?;
        Ok(Response::new(pb::ReadIndexResponse {
            read_index: index,
            leader_id: self.node.id(),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let req = req.into_inner();
        let mine = self.cluster_id();
        if !req.cluster_id.is_empty() && !mine.is_empty() && req.cluster_id != mine {
            return Err(Status::failed_precondition(format!(
                "the joining node's data dir belongs to cluster {}, but this is cluster {mine}",
                req.cluster_id
            )));
        }
        let (leader, addr) = self
            .node
            .wait_for_leader(REQUEST_TIMEOUT)
            .await
            .map_err(|e| error_to_status(&e))?;
        if leader != self.node.id() {
            // Forward once to the leader.
            let mut c = self
                .node
                .peers()
                .client(&addr)
                .map_err(Status::unavailable)?;
            let mut fwd = Request::new(req);
            fwd.set_timeout(std::time::Duration::from_secs(120));
            return c.join(fwd).await;
        }
        if req.node_id == 0 || req.addr.is_empty() {
            return Err(Status::invalid_argument(
                "join needs a node id and an address",
            ));
        }
        for (field, a) in [("addr", &req.addr), ("peer_addr", &req.peer_addr)] {
            if a.len() > 255 || (!a.is_empty() && crate::split_host_port(a).is_none()) {
                return Err(Status::invalid_argument(format!(
                    "join: {field} {a:?} is not host:port"
                )));
            }
        }
        let member = flowctl_store::Member::new(req.addr, req.peer_addr);
        tracing::info!(node_id = req.node_id, %member, "adding member");
        self.node
            .add_member(req.node_id, member)
            .await
            .map_err(|e| error_to_status(&e))?;
        let st = self.node.status();
        Ok(Response::new(pb::JoinResponse {
            cluster_id: mine,
            leader_id: self.node.id(),
            voters: st.voters.into_iter().collect(),
        }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let id = req.into_inner().node_id;
        let index = self
            .node
            .remove_member(id)
            .await
            .map_err(|e| error_to_status(&e))?;
        Ok(Response::new(pb::MembershipResponse {
            leader_id: self.node.status().leader.unwrap_or(0),
            log_index: index,
        }))
    }

    async fn timeout_now(
        &self,
        req: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let req = req.into_inner();
        if req.term == 0 {
            self.node.hold_elections();
        } else {
            self.node.campaign_after_lease();
        }
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let target = req.into_inner().target;
        let target = (target != 0).then_some(target);
        let leader = self
            .node
            .transfer_leadership(target)
            .await
            .map_err(|e| error_to_status(&e))?;
        Ok(Response::new(pb::MembershipResponse {
            leader_id: leader,
            log_index: 0,
        }))
    }

    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let st = self.node.status();
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: st.node_id,
            addr: st.addr,
            role: st.role.into(),
            term: st.term,
            leader_id: st.leader.unwrap_or(0),
            has_leader: st.leader.is_some(),
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            last_log_index: st.last_log_index,
            cluster_id: self.cluster_id(),
        }))
    }
}

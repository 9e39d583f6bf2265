//! Cluster administration: status gathered from every member, and membership operations run
//! on the leader (forwarded there from any node).

use flowctl_proto::admin::v1 as pb;
use flowctl_proto::internal::v1 as ipb;
use flowctl_raft::{status_to_error, Error, RaftNode};
use std::time::Duration;

const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

fn role(s: &str) -> pb::MemberRole {
    match s {
        "leader" => pb::MemberRole::Leader,
        "follower" => pb::MemberRole::Follower,
        "learner" => pb::MemberRole::Learner,
        "candidate" => pb::MemberRole::Candidate,
        _ => pb::MemberRole::Unspecified,
    }
}

/// Asks every member for its own view, concurrently; members that do not answer are marked
/// unreachable.
pub async fn status(node: &RaftNode, cluster_id: String) -> pb::ClusterStatusResponse {
    let me = node.status();
    let futs = me.nodes.iter().map(|(&id, addr)| {
        let node = node.clone();
        let addr = addr.clone();
        let peer_addr = me.peers.get(&id).cloned().unwrap_or_default();
        let voter = me.voters.contains(&id);
        async move {
            let view = if id == node.id() {
                let s = node.status();
                Some(ipb::NodeStatusResponse {
                    node_id: s.node_id,
                    addr: s.addr,
                    role: s.role.into(),
                    term: s.term,
                    leader_id: s.leader.unwrap_or(0),
                    has_leader: s.leader.is_some(),
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                    last_log_index: s.last_log_index,
                    cluster_id: String::new(),
                })
            } else {
                match node.peers().client(&peer_addr) {
                    Ok(mut c) => {
                        let mut req = tonic::Request::new(ipb::NodeStatusRequest {});
                        req.set_timeout(STATUS_TIMEOUT);
                        c.node_status(req).await.ok().map(|r| r.into_inner())
                    }
                    Err(_) => None,
                }
            };
            match view {
                Some(v) => pb::Member {
                    id,
                    addr,
                    role: role(&v.role) as i32,
                    voter,
                    term: v.term,
                    leader_id: v.leader_id,
                    commit_index: v.commit_index,
                    applied_index: v.applied_index,
                    last_log_index: v.last_log_index,
                    peer_addr,
                },
                None => pb::Member {
                    id,
                    addr,
                    role: pb::MemberRole::Unreachable as i32,
                    voter,
                    peer_addr,
                    ..Default::default()
                },
            }
        }
    });
    let members = futures::future::join_all(futs).await;
    pb::ClusterStatusResponse {
        cluster_id,
        leader_id: me.leader.unwrap_or(0),
        term: me.term,
        members,
        served_by: me.node_id,
    }
}

async fn leader_client(
    node: &RaftNode,
) -> Result<
    flowctl_proto::internal::v1::raft_service_client::RaftServiceClient<flowctl_raft::PeerChannel>,
    Error,
> {
    let (_, addr) = node.wait_for_leader(Duration::from_secs(5)).await?;
    node.peers().client(&addr).map_err(Error::Unavailable)
}

pub async fn remove(node: &RaftNode, id: u64) -> Result<u64, Error> {
    if node.is_leader() {
        return node.remove_member(id).await;
    }
    let mut c = leader_client(node).await?;
    let r = c
        .remove_node(ipb::RemoveNodeRequest { node_id: id })
        .await
        .map_err(status_to_error)?;
    Ok(r.into_inner().log_index)
}

pub async fn transfer(node: &RaftNode, target: u64) -> Result<u64, Error> {
    if node.is_leader() {
        return node
            .transfer_leadership((target != 0).then_some(target))
            .await;
    }
    let mut c = leader_client(node).await?;
    let r = c
        .transfer_leader(ipb::TransferLeaderRequest { target })
        .await
        .map_err(status_to_error)?;
    Ok(r.into_inner().leader_id)
}

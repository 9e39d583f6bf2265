//! Thin gRPC handlers for the public admin API: decode, call the service layer, encode.

use crate::clock::ts;
use crate::cluster;
use crate::errors::ServiceError;
use crate::pipelines;
use flowctl_proto::admin::v1 as pb;
use flowctl_raft::{RaftNode, ReadMeta};
use flowctl_state::{ApplyResult, ComponentId, PipelineRecord};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Api {
    pub(crate) node: RaftNode,
    pub(crate) specs: crate::spec_cache::SpecCache,
}

pub(crate) fn meta_pb(m: ReadMeta) -> pb::ReadMeta {
    pb::ReadMeta {
        node_id: m.node_id,
        consistency: if m.linearizable {
            pb::Consistency::Linearizable
        } else {
            pb::Consistency::Stale
        } as i32,
        applied_index: m.applied_index,
        known_commit_index: m.known_commit_index,
    }
}

impl Api {
    /// The stored record plus its deployment view: placements, and how many of the desired
    /// instances are registered and healthy.
    fn pipeline_pb(&self, r: PipelineRecord) -> pb::Pipeline {
        let members = self.node.status().nodes;
        let (mut desired, mut ready) = (0u32, 0u32);
        let mut status = "Invalid";
        let spec = self.specs.get(&r.name, r.generation, &r.spec_yaml);
        let instance_ids: Vec<String> = spec
            .as_ref()
            .map(|v| {
                v.components()
                    .flat_map(|(_, c)| (0..c.replicas).map(move |r| c.instance_id(r)))
                    .collect()
            })
            .unwrap_or_default();
        // Count under the read lock; nothing is copied but this pipeline's placement.
        let (placement, healthy) = self
            .node
            .read_stale(|s| {
                let healthy = instance_ids
                    .iter()
                    .filter(|id| {
                        s.components
                            .get(&ComponentId((*id).clone()))
                            .is_some_and(|c| c.healthy)
                    })
                    .count() as u32;
                (s.placements.get(&r.name).cloned(), healthy)
            })
            .0;
        if let Some(v) = spec {
            desired = instance_ids.len() as u32;
            ready = healthy;
            let placed = placement
                .as_ref()
                .is_some_and(|p| p.generation == r.generation);
            status = if v.spec().driver == flowctl_spec::Driver::Kubernetes {
                // Kubernetes runs those workloads; flowctl stores the pipeline, not runs it.
                "External"
            } else if !placed {
                "Deploying"
            } else if ready == desired {
                "Running"
            } else {
                "Degraded"
            };
        }
        pb::Pipeline {
            name: r.name,
            id: r.id.0,
            generation: r.generation,
            spec_yaml: r.spec_yaml,
            created_at: ts(r.created_at_ms),
            updated_at: ts(r.updated_at_ms),
            revision: r.revision,
            ready,
            desired,
            status: status.to_owned(),
            placements: placement
                .map(|p| {
                    p.instances
                        .into_iter()
                        .map(|(k, n)| {
                            (
                                k,
                                members
                                    .get(&n.0)
                                    .cloned()
                                    .unwrap_or_else(|| n.0.to_string()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            instances: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl Api {
    /// Adds what the supervisors reported: instances with their health, and recent events.
    fn add_runtime(&self, name: &str, p: &mut pb::Pipeline) {
        let members = self.node.status().nodes;
        let (instances, events) = self
            .node
            .read_stale(|s| {
                let Some(rt) = s.runtime.get(name) else {
                    return (Vec::new(), Vec::new());
                };
                let count = |cid: &str| {
                    rt.instances
                        .keys()
                        .chain(
                            s.placements
                                .get(name)
                                .into_iter()
                                .flat_map(|p| p.instances.keys()),
                        )
                        .filter(|k| k.rsplit_once('/').is_some_and(|(c, _)| c == cid))
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                };
                let instances: Vec<pb::Instance> = rt
                    .instances
                    .iter()
                    .map(|(key, st)| {
                        let component_id = match key.rsplit_once('/') {
                            Some((c, r)) => match r.parse::<u32>() {
                                Ok(r) => flowctl_spec::instance_id(c, r, count(c) as u32),
                                Err(_) => key.clone(),
                            },
                            None => key.clone(),
                        };
                        let healthy = s
                            .components
                            .get(&ComponentId(component_id.clone()))
                            .is_some_and(|c| c.healthy);
                        pb::Instance {
                            key: key.clone(),
                            node_id: st.node.0,
                            node_addr: members.get(&st.node.0).cloned().unwrap_or_default(),
                            state: st.state.as_str().to_owned(),
                            pid: st.pid.unwrap_or(0),
                            restarts: st.restarts,
                            started_at: ts(st.started_at_ms),
                            last_exit: st.last_exit.clone().unwrap_or_default(),
                            component_id,
                            healthy,
                            spec_hash: st.spec_hash.clone(),
                        }
                    })
                    .collect();
                let events: Vec<pb::PipelineEvent> = rt
                    .events
                    .iter()
                    .map(|e| pb::PipelineEvent {
                        time: ts(e.at_ms),
                        node_id: e.node.0,
                        instance: e.instance.clone(),
                        reason: e.reason.clone(),
                        message: e.message.clone(),
                        warning: e.warning,
                    })
                    .collect();
                (instances, events)
            })
            .0;
        p.instances = instances;
        p.events = events;
    }
}

#[tonic::async_trait]
impl pb::pipeline_service_server::PipelineService for Api {
    async fn apply_pipeline(
        &self,
        req: Request<pb::ApplyPipelineRequest>,
    ) -> Result<Response<pb::ApplyPipelineResponse>, Status> {
        let req = req.into_inner();
        let file = if req.file_name.is_empty() {
            "<request>"
        } else {
            &req.file_name
        };
        let report = pipelines::apply(
            &self.node,
            &self.specs,
            file,
            &req.yaml,
            pipelines::ApplyOptions {
                dry_run: req.dry_run,
                allow_unregistered_types: req.allow_unregistered_types,
                if_generation: req.if_generation,
            },
        )
        .await?;
        let what = report
            .record
            .as_ref()
            .map(|r| format!("pipeline/{}", r.name))
            .unwrap_or_default();
        let result = match report.result {
            ApplyResult::Created => pb::ApplyResult::Created,
            ApplyResult::Configured => pb::ApplyResult::Configured,
            ApplyResult::Unchanged => pb::ApplyResult::Unchanged,
        };
        let resp = Response::new(pb::ApplyPipelineResponse {
            pipeline: report.record.map(|r| self.pipeline_pb(r)),
            result: result as i32,
            applied_index: report.applied_index,
            changes: report
                .changes
                .into_iter()
                .map(|c| pb::ComponentChange {
                    component: c.id,
                    action: c.action.to_owned(),
                    changed: c.changed,
                })
                .collect(),
            stored_yaml: report.stored_yaml,
        });
        Ok(crate::audit::resource(resp, what))
    }

    async fn get_pipeline(
        &self,
        req: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        let req = req.into_inner();
        let (rec, meta) = pipelines::get(
            &self.node,
            &req.name,
            crate::pipelines::consistency_of(req.consistency),
        )
        .await?;
        let name = rec.name.clone();
        let mut p = self.pipeline_pb(rec);
        self.add_runtime(&name, &mut p);
        Ok(Response::new(pb::GetPipelineResponse {
            pipeline: Some(p),
            meta: Some(meta_pb(meta)),
        }))
    }

    async fn list_pipelines(
        &self,
        req: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let req = req.into_inner();
        let (recs, meta) = pipelines::list(
            &self.node,
            crate::pipelines::consistency_of(req.consistency),
        )
        .await?;
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines: recs.into_iter().map(|r| self.pipeline_pb(r)).collect(),
            meta: Some(meta_pb(meta)),
        }))
    }

    async fn delete_pipeline(
        &self,
        req: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        let name = req.into_inner().name;
        let index = pipelines::delete(&self.node, &name).await?;
        let resp = Response::new(pb::DeletePipelineResponse {
            applied_index: index,
        });
        Ok(crate::audit::resource(resp, format!("pipeline/{name}")))
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Api {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(
            cluster::status(&self.node, self.node.cluster_id()).await,
        ))
    }

    async fn members(
        &self,
        _req: Request<pb::ClusterMembersRequest>,
    ) -> Result<Response<pb::ClusterMembersResponse>, Status> {
        let st = cluster::status(&self.node, String::new()).await;
        Ok(Response::new(pb::ClusterMembersResponse {
            members: st.members,
            leader_id: st.leader_id,
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let id = req.into_inner().node_id;
        let index = cluster::remove(&self.node, id)
            .await
            .map_err(ServiceError::from)?;
        let resp = Response::new(pb::RemoveMemberResponse {
            applied_index: index,
        });
        Ok(crate::audit::resource(resp, format!("node/{id}")))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let leader = cluster::transfer(&self.node, req.into_inner().node_id)
            .await
            .map_err(ServiceError::from)?;
        let resp = Response::new(pb::TransferLeaderResponse { leader_id: leader });
        Ok(crate::audit::resource(resp, format!("node/{leader}")))
    }
}
